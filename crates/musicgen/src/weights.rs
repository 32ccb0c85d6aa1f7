//! A checkpoint directory in the Hugging Face layout, checked before any model is built.
//!
//! [`Checkpoint::open`] reads `config.json`, `generation_config.json` (optional) and finds
//! `tokenizer.json` and the weights, which come in one of four shapes (first match wins):
//! `model.safetensors`; shards listed by `model.safetensors.index.json`; `pytorch_model.bin`;
//! shards listed by `pytorch_model.bin.index.json`. Safetensors are memory-mapped and their
//! headers parsed at open time, so a truncated or foreign file is refused before any layer is
//! built; `.bin` files are read whole (their pickles cannot be mapped).
//!
//! Layers are built from [`Checkpoint::var_builder`] with `load(vb, cfg)` functions that return
//! `candle_core::Result`; [`Checkpoint::load_error`] turns what those report about the file
//! (a missing tensor, a shape that does not match `config.json`) into [`Error::BadCheckpoint`].

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::MusicgenConfig;
use crate::error::{Error, Result};

pub const CONFIG_FILE: &str = "config.json";
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
/// musicgen-melody's feature extractor settings (optional: transformers' defaults otherwise).
pub const PREPROCESSOR_CONFIG_FILE: &str = "preprocessor_config.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const SAFETENSORS_FILE: &str = "model.safetensors";
pub const SAFETENSORS_INDEX_FILE: &str = "model.safetensors.index.json";
pub const PYTORCH_FILE: &str = "pytorch_model.bin";
pub const PYTORCH_INDEX_FILE: &str = "pytorch_model.bin.index.json";

const REDOWNLOAD: &str = "delete the checkpoint and download it again \
    (`dgx-music models remove ID`, then `dgx-music models download ID`)";

/// What [`Checkpoint::fingerprint`] computes: equal for equal parts, different otherwise (SHA-256).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

/// How the weights of a checkpoint are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    Safetensors,
    ShardedSafetensors,
    PytorchBin,
    ShardedPytorchBin,
}

/// What `generation_config.json` says about decoding, with the decoder config's token ids as
/// fallbacks (transformers does the same when the file or a key is missing).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationDefaults {
    /// First token of every codebook stream (2048 in the published checkpoints).
    pub decoder_start_token_id: u32,
    /// Token the delay pattern pads with.
    pub pad_token_id: u32,
    /// Classifier-free guidance scale the checkpoint was published with (3.0 for facebook/*).
    pub guidance_scale: Option<f64>,
    pub do_sample: Option<bool>,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub temperature: Option<f64>,
    /// Upper bound on decoder steps, BOS included (1500 = 30 s for facebook/*).
    pub max_length: Option<usize>,
    pub max_new_tokens: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
struct RawGenerationConfig {
    decoder_start_token_id: Option<u32>,
    bos_token_id: Option<u32>,
    pad_token_id: Option<u32>,
    guidance_scale: Option<f64>,
    do_sample: Option<bool>,
    top_k: Option<usize>,
    top_p: Option<f64>,
    temperature: Option<f64>,
    max_length: Option<usize>,
    max_new_tokens: Option<usize>,
}

impl GenerationDefaults {
    fn resolve(raw: RawGenerationConfig, config: &MusicgenConfig) -> Self {
        let decoder = &config.decoder;
        Self {
            decoder_start_token_id: raw
                .decoder_start_token_id
                .or(decoder.decoder_start_token_id)
                .or(raw.bos_token_id)
                .unwrap_or(decoder.bos_token_id),
            pad_token_id: raw.pad_token_id.unwrap_or(decoder.pad_token_id),
            guidance_scale: raw.guidance_scale,
            do_sample: raw.do_sample,
            top_k: raw.top_k,
            top_p: raw.top_p,
            temperature: raw.temperature,
            max_length: raw.max_length,
            max_new_tokens: raw.max_new_tokens,
        }
    }
}

/// A validated checkpoint directory. Cheap to clone; the weights are shared.
#[derive(Clone)]
pub struct Checkpoint {
    dir: PathBuf,
    config: MusicgenConfig,
    generation: GenerationDefaults,
    tokenizer: PathBuf,
    format: WeightFormat,
    files: Vec<PathBuf>,
    weights: Arc<Weights>,
    preprocessor: Option<serde_json::Value>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("dir", &self.dir)
            .field("format", &self.format)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Checkpoint {
    /// Opens and checks a checkpoint directory: every file we need is there and parses.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::MissingFile {
                path: dir.to_path_buf(),
                hint: "not a directory; pass a checkpoint directory in the Hugging Face layout (config.json, \
                       model.safetensors, tokenizer.json) or a hub id such as facebook/musicgen-small"
                    .into(),
            });
        }
        let config = MusicgenConfig::from_file(&dir.join(CONFIG_FILE))?;
        let generation = read_generation_config(dir, &config)?;
        let tokenizer = dir.join(TOKENIZER_FILE);
        if !tokenizer.is_file() {
            return Err(Error::MissingFile {
                path: tokenizer,
                hint: "MusicGen checkpoints ship their T5 tokenizer as tokenizer.json; every facebook/musicgen-* \
                       repository has the same one, copy it from there (`dgx-music models download small`)"
                    .into(),
            });
        }
        let (format, files) = find_weights(dir)?;
        let weights = Weights::open(format, &files)?;
        let preprocessor = read_optional_json(&dir.join(PREPROCESSOR_CONFIG_FILE))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            generation,
            tokenizer,
            format,
            files,
            weights: Arc::new(weights),
            preprocessor,
        })
    }

    /// `preprocessor_config.json`, when the checkpoint has one (musicgen-melody's chroma settings).
    pub fn preprocessor_config(&self) -> Option<&serde_json::Value> {
        self.preprocessor.as_ref()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &MusicgenConfig {
        &self.config
    }

    pub fn generation(&self) -> &GenerationDefaults {
        &self.generation
    }

    pub fn tokenizer_path(&self) -> &Path {
        &self.tokenizer
    }

    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// The weight files, in the order they were opened.
    pub fn weight_files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Every tensor name in the checkpoint, sorted.
    pub fn tensor_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.weights.location.keys().cloned().collect();
        names.sort();
        names
    }

    /// Number of scalars over all tensors (tied tensors stored twice count twice).
    pub fn parameter_count(&self) -> usize {
        self.weights.location.keys().filter_map(|n| self.weights.shape(n)).map(|s| s.elem_count()).sum()
    }

    /// A digest of every tensor whose name starts with `prefix` (names, dtypes, shapes and bytes)
    /// and of `settings`: two checkpoints with the same fingerprint for a part hold the same part,
    /// so one loaded copy can serve both (every facebook/musicgen-* has the same T5 and EnCodec).
    pub fn fingerprint(&self, prefix: &str, settings: &str) -> Result<Fingerprint> {
        let mut names: Vec<&String> = self.weights.location.keys().filter(|name| name.starts_with(prefix)).collect();
        names.sort();
        let mut digest = Sha256::new();
        digest.update(settings.as_bytes());
        for name in names {
            digest.update((name.len() as u64).to_le_bytes());
            digest.update(name.as_bytes());
            self.weights.hash_tensor(name, &mut digest).map_err(|e| self.load_error(e))?;
        }
        Ok(Fingerprint(digest.finalize().into()))
    }

    /// A VarBuilder over the weights, converting each tensor to `dtype` on `device` as it is read.
    /// Shapes are checked against what the layer asks for before any data is copied.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        let backend = CheckedBackend(Arc::clone(&self.weights));
        Ok(VarBuilder::from_backend(Box::new(backend), dtype, device.clone()))
    }

    /// Turns an error from building layers out of [`Checkpoint::var_builder`] into one that
    /// names the file and the tensor when the checkpoint, not the code, is at fault.
    pub fn load_error(&self, err: candle_core::Error) -> Error {
        match innermost(&err) {
            candle_core::Error::UnexpectedShape { msg, expected, got } => {
                let name = msg.strip_prefix("shape mismatch for ").unwrap_or(msg);
                Error::BadCheckpoint {
                    path: self.file_of(name),
                    message: format!(
                        "tensor {name} has shape {got:?} but config.json implies {expected:?}; the weights and \
                         config.json come from different models, {REDOWNLOAD}"
                    ),
                }
            }
            candle_core::Error::CannotFindTensor { path } => Error::BadCheckpoint {
                path: self.files.first().cloned().unwrap_or_else(|| self.dir.clone()),
                message: format!(
                    "tensor {path} is missing; the weights do not match config.json (or were saved by an \
                     unsupported exporter), {REDOWNLOAD}"
                ),
            },
            _ => Error::Tensor(err),
        }
    }

    fn file_of(&self, name: &str) -> PathBuf {
        match self.weights.location.get(name) {
            Some(&i) => self.files[i].clone(),
            None => self.dir.clone(),
        }
    }
}

/// Strips the backtrace, path and context layers candle wraps errors in.
fn innermost(err: &candle_core::Error) -> &candle_core::Error {
    match err {
        candle_core::Error::WithBacktrace { inner, .. }
        | candle_core::Error::WithPath { inner, .. }
        | candle_core::Error::Context { inner, .. } => innermost(inner),
        other => other,
    }
}

/// A JSON file that may be absent; present but unreadable or malformed is an error naming it.
fn read_optional_json(path: &Path) -> Result<Option<serde_json::Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| Error::BadCheckpoint {
            path: path.to_path_buf(),
            message: format!("{e}; fix the JSON or delete the file (transformers' defaults then apply)"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::BadCheckpoint { path: path.to_path_buf(), message: e.to_string() }),
    }
}

fn read_generation_config(dir: &Path, config: &MusicgenConfig) -> Result<GenerationDefaults> {
    let path = dir.join(GENERATION_CONFIG_FILE);
    let raw = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str::<RawGenerationConfig>(&text).map_err(|e| Error::BadCheckpoint {
            path: path.clone(),
            message: format!("{e}; fix the JSON or delete the file (it is optional)"),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => RawGenerationConfig::default(),
        Err(e) => return Err(Error::BadCheckpoint { path, message: e.to_string() }),
    };
    Ok(GenerationDefaults::resolve(raw, config))
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

/// Picks the weight files of `dir`, preferring safetensors, and checks that every listed shard exists.
fn find_weights(dir: &Path) -> Result<(WeightFormat, Vec<PathBuf>)> {
    let single = dir.join(SAFETENSORS_FILE);
    if single.is_file() {
        return Ok((WeightFormat::Safetensors, vec![single]));
    }
    let index = dir.join(SAFETENSORS_INDEX_FILE);
    if index.is_file() {
        return Ok((WeightFormat::ShardedSafetensors, shard_files(dir, &index)?));
    }
    let bin = dir.join(PYTORCH_FILE);
    if bin.is_file() {
        return Ok((WeightFormat::PytorchBin, vec![bin]));
    }
    let bin_index = dir.join(PYTORCH_INDEX_FILE);
    if bin_index.is_file() {
        return Ok((WeightFormat::ShardedPytorchBin, shard_files(dir, &bin_index)?));
    }
    Err(Error::MissingFile {
        path: single,
        hint: format!(
            "no weights in {}: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX_FILE} with its shards, or \
             {PYTORCH_FILE}; download the checkpoint again",
            dir.display()
        ),
    })
}

fn shard_files(dir: &Path, index: &Path) -> Result<Vec<PathBuf>> {
    let bad = |message: String| Error::BadCheckpoint { path: index.to_path_buf(), message };
    let text = std::fs::read_to_string(index)?;
    let parsed: ShardIndex = serde_json::from_str(&text).map_err(|e| bad(format!("{e}; {REDOWNLOAD}")))?;
    let shards: BTreeSet<&String> = parsed.weight_map.values().collect();
    if shards.is_empty() {
        return Err(bad(format!("the weight_map is empty; {REDOWNLOAD}")));
    }
    let mut files = Vec::with_capacity(shards.len());
    for shard in shards {
        // Shard names come from the file; keep them inside the checkpoint directory.
        if shard.contains('/') || shard.contains('\\') || shard == ".." {
            return Err(bad(format!("shard name {shard:?} is not a plain file name")));
        }
        let path = dir.join(shard);
        if !path.is_file() {
            return Err(Error::MissingFile {
                path,
                hint: format!("listed in {}; the download is incomplete, {REDOWNLOAD}", index.display()),
            });
        }
        files.push(path);
    }
    Ok(files)
}

enum Store {
    /// One map per file; `Weights::location` routes names to them.
    Mmaped(Vec<MmapedSafetensors>),
    /// Tensors read from pickles, on the CPU in their stored dtype.
    Loaded(HashMap<String, Tensor>),
}

struct Weights {
    store: Store,
    /// Tensor name -> index of the file holding it, for error messages.
    location: HashMap<String, usize>,
}

impl Weights {
    fn open(format: WeightFormat, files: &[PathBuf]) -> Result<Self> {
        let mut location = HashMap::new();
        match format {
            WeightFormat::Safetensors | WeightFormat::ShardedSafetensors => {
                let mut maps = Vec::with_capacity(files.len());
                for (i, file) in files.iter().enumerate() {
                    // SAFETY: the files are only read; a checkpoint rewritten while we run is outside
                    // what any loader can defend against (transformers maps them the same way).
                    let map = unsafe { MmapedSafetensors::new(file) }.map_err(|e| Error::BadCheckpoint {
                        path: file.clone(),
                        message: format!(
                            "not a valid safetensors file ({}): it is truncated or corrupt; {REDOWNLOAD}",
                            innermost(&e)
                        ),
                    })?;
                    location.extend(map.tensors().into_iter().map(|(name, _)| (name, i)));
                    maps.push(map);
                }
                Ok(Self { store: Store::Mmaped(maps), location })
            }
            WeightFormat::PytorchBin | WeightFormat::ShardedPytorchBin => {
                let mut tensors = HashMap::new();
                for (i, file) in files.iter().enumerate() {
                    let read = candle_core::pickle::read_all(file).map_err(|e| Error::BadCheckpoint {
                        path: file.clone(),
                        message: format!("cannot read this PyTorch file ({e}); {REDOWNLOAD}"),
                    })?;
                    if read.is_empty() {
                        return Err(Error::BadCheckpoint {
                            path: file.clone(),
                            message: format!("it holds no tensors; {REDOWNLOAD}"),
                        });
                    }
                    for (name, tensor) in read {
                        location.insert(name.clone(), i);
                        tensors.insert(name, tensor);
                    }
                }
                Ok(Self { store: Store::Loaded(tensors), location })
            }
        }
    }

    fn shape(&self, name: &str) -> Option<Shape> {
        match &self.store {
            Store::Mmaped(maps) => {
                let view = maps[*self.location.get(name)?].get(name).ok()?;
                Some(Shape::from(view.shape().to_vec()))
            }
            Store::Loaded(map) => map.get(name).map(|t| t.shape().clone()),
        }
    }

    /// Feeds `name`'s dtype, shape and bytes to `digest`, as stored.
    fn hash_tensor(&self, name: &str, digest: &mut Sha256) -> candle_core::Result<()> {
        let missing = || candle_core::Error::CannotFindTensor { path: name.to_string() };
        match &self.store {
            Store::Mmaped(maps) => {
                let view = maps[*self.location.get(name).ok_or_else(missing)?].get(name)?;
                digest.update(format!("{:?}{:?}", view.dtype(), view.shape()).as_bytes());
                digest.update(view.data());
            }
            Store::Loaded(map) => {
                let tensor = map.get(name).ok_or_else(missing)?;
                digest.update(format!("{:?}{:?}", tensor.dtype(), tensor.dims()).as_bytes());
                // A pickle's tensor is on the CPU in its stored dtype; f64 holds every value exactly.
                for value in tensor.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()? {
                    digest.update(value.to_le_bytes());
                }
            }
        }
        Ok(())
    }

    fn read(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let tensor = match &self.store {
            Store::Mmaped(maps) => {
                let file = self
                    .location
                    .get(name)
                    .ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.to_string() })?;
                maps[*file].load(name, device)?
            }
            Store::Loaded(map) => map
                .get(name)
                .ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.to_string() })?
                .to_device(device)?,
        };
        tensor.to_dtype(dtype)
    }
}

/// Reads tensors by name and refuses a shape other than the one the layer asks for, with the
/// name, expected and found shape (mapped to `BadCheckpoint` by [`Checkpoint::load_error`]).
struct CheckedBackend(Arc<Weights>);

impl SimpleBackend for CheckedBackend {
    fn get(
        &self,
        expected: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let found =
            self.0.shape(name).ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.to_string() })?;
        if found != expected {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected,
                got: found,
            });
        }
        self.0.read(name, dtype, device)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        if !self.0.location.contains_key(name) {
            return Err(candle_core::Error::CannotFindTensor { path: name.to_string() });
        }
        self.0.read(name, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.location.contains_key(name)
    }
}
