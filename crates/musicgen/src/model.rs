//! The loaded model and the one entry point that turns a request into audio.
//!
//! [`MusicGen::generate`] is [`MusicGen::start`] (validate, tokenize, encode the text, prepare
//! the decoder) followed by one [`Generation::step`] per decoder step and
//! [`Generation::finish`] (undo the delay, decode with EnCodec, trim). Tests drive the same
//! [`Generation`] step by step to compare every step with transformers.

pub(crate) mod architecture;
mod generation;
pub(crate) mod random;

use candle_core::{DType as TensorDType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};

pub use self::generation::{Generation, Step, StreamOptions, DEFAULT_CHUNK_SECS};
use crate::audio::Audio;
use crate::chroma::{ChromaConfig, ChromaExtractor};
use crate::config::MusicgenConfig;
use crate::decoder::{Decoder, StepMode};
use crate::device::{DType, DeviceSpec, Weights};
use crate::encodec::{EncodecDecoder, EncodecEncoder};
use crate::error::{Error, Result};
use crate::request::{CancelToken, GenerationRequest, Progress, WINDOW_SECS};
use crate::t5::T5Encoder;
use crate::tokenizer::Tokenizer;
use crate::weights::{Checkpoint, Fingerprint};

/// How to load a checkpoint.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub device: DeviceSpec,
    /// Precision of the decoder; the T5 encoder and EnCodec always run in f32.
    pub dtype: DType,
    /// How the decoder's projection weights are stored: in `dtype`, or int8 (opt-in).
    pub weights: Weights,
    /// On a GPU, launch every kernel of a decoder step from the host instead of replaying the
    /// step from a CUDA graph: slower, for comparisons and diagnosis. No effect on the CPU.
    pub eager: bool,
    /// Receives the progress of a hub download (nothing is drawn or printed by the engine).
    pub on_download: Option<crate::hub::OnDownload>,
}

/// What a loaded model is, for logs, `/api/v1/models` and `bench`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ModelInfo {
    /// The `--model` value it was loaded from (hub id, short name or directory), as given.
    pub source: String,
    /// What the checkpoint is called wherever it is stored or compared (job records, the
    /// server's claims): the hub id for hub ids and short names (`small` is
    /// `facebook/musicgen-small`), the canonical absolute path for a local directory. A path
    /// rather than `config.json`'s `_name_or_path`, which is often absent and is shared by
    /// every fine-tune of one base model: two different checkpoints never get the same id.
    pub id: String,
    pub device: String,
    pub dtype: String,
    /// The decoder projections' storage: the dtype's name, or `int8` (absent from records of
    /// workers older than int8 weights, which stored their dtype).
    #[serde(default)]
    pub weights: String,
    /// Bytes of weights one decoder step reads: with the device's bandwidth, a step's floor.
    #[serde(default)]
    pub step_weight_bytes: usize,
    pub sample_rate: u32,
    pub audio_channels: usize,
    pub num_codebooks: usize,
    pub decoder_layers: usize,
    pub decoder_hidden_size: usize,
    pub vocab_size: usize,
    pub parameters: usize,
    /// How decoder steps run: `graph` (CUDA graph replay), `growing` (kernel by kernel).
    pub step_mode: String,
    /// Whether it follows a melody (musicgen-melody) besides the text.
    pub melody: bool,
}

/// [`ModelInfo::id`] of `model`, which resolved to the checkpoint directory `dir`.
fn canonical_id(model: &str, dir: &std::path::Path) -> String {
    match crate::hub::hub_id(model) {
        Some(id) if !std::path::Path::new(model).is_dir() => id,
        _ => dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()).display().to_string(),
    }
}

/// Where prompt token ids come from.
enum Prompts {
    /// Boxed: a tokenizer is a kilobyte, the other variant nothing.
    Tokenizer(Box<Tokenizer>),
    /// Random-weight models have no vocabulary: every prompt becomes the same token sequence
    /// of a typical prompt's length, so the encoder does the same work as for real text.
    Synthetic,
}

/// Token ids of [`Prompts::Synthetic`]: eleven word pieces and T5's `</s>` (taken modulo the
/// vocabulary size of smaller test encoders).
const SYNTHETIC_PROMPT: [u32; 12] = [3, 9, 2003, 5640, 1287, 28, 4836, 5941, 11, 3, 7, 1];

/// What a musicgen-melody checkpoint adds: the projection of chroma frames into the decoder's
/// prefix.
struct Melody {
    /// transformers' `MusicgenMelodyFeatureExtractor`, from `preprocessor_config.json`.
    chroma: ChromaExtractor,
    /// `audio_enc_to_dec_proj`, chroma bins to the decoder width; absent when they are equal,
    /// as transformers creates it.
    proj: Option<Linear>,
    num_chroma: usize,
    chroma_length: usize,
}

/// A MusicGen checkpoint loaded on one device, reusable across requests.
pub struct MusicGen {
    info: ModelInfo,
    config: MusicgenConfig,
    prompts: Prompts,
    text_encoder: T5Encoder,
    /// Present when the text encoder's width differs from the decoder's (transformers creates
    /// it under exactly that condition).
    enc_to_dec_proj: Option<Linear>,
    decoder: Decoder,
    codec: EncodecDecoder,
    /// Turns a continuation's audio into the codes its windows start from.
    audio_encoder: EncodecEncoder,
    /// musicgen-melody's chroma conditioning; `None` for text-to-music checkpoints.
    melody: Option<Melody>,
    decoder_start_token: u32,
    device: Device,
    /// Set by [`MusicGen::load_sharing`], so that later checkpoints can find what they share.
    fingerprints: Option<Fingerprints>,
}

/// A GPU's memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    pub used_bytes: u64,
    pub total_bytes: u64,
}

/// Which parts of one loaded model another uses rather than copies of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedParts {
    pub text_encoder: bool,
    /// EnCodec, both halves.
    pub codec: bool,
}

#[derive(Debug, Clone, Copy)]
struct Fingerprints {
    text_encoder: Fingerprint,
    codec: Fingerprint,
}

/// What a model being built takes from models already loaded (candle tensors are reference
/// counted: a clone is the same memory).
#[derive(Default)]
struct Parts {
    text_encoder: Option<T5Encoder>,
    codec: Option<(EncodecDecoder, EncodecEncoder)>,
    fingerprints: Option<Fingerprints>,
}

impl Parts {
    fn borrowed(checkpoint: &Checkpoint, device: &Device, lenders: &[&MusicGen]) -> Result<Self> {
        let config = checkpoint.config();
        let fingerprints = Fingerprints {
            text_encoder: checkpoint.fingerprint("text_encoder.", &format!("{:?}", config.text_encoder))?,
            codec: checkpoint.fingerprint(
                "audio_encoder.",
                &format!("{:?} {}", config.audio_encoder, config.codebooks_per_channel()),
            )?,
        };
        let on_device = || lenders.iter().filter(|lender| lender.device.same_device(device));
        let text_encoder = on_device()
            .find(|lender| lender.fingerprints.is_some_and(|f| f.text_encoder == fingerprints.text_encoder))
            .map(|lender| lender.text_encoder.clone());
        let codec = on_device()
            .find(|lender| lender.fingerprints.is_some_and(|f| f.codec == fingerprints.codec))
            .map(|lender| (lender.codec.clone(), lender.audio_encoder.clone()));
        Ok(Parts { text_encoder, codec, fingerprints: Some(fingerprints) })
    }
}

impl MusicGen {
    /// Loads a hub id (`facebook/musicgen-small`, downloaded into the HF cache on first use)
    /// or a local checkpoint directory.
    pub fn load(model: &str, options: &LoadOptions) -> Result<Self> {
        Self::load_with(model, options, None)
    }

    /// [`MusicGen::load`] for a process that holds several checkpoints: a T5 encoder or an EnCodec
    /// that one of `loaded` already has (the same tensors and settings, on the same device) is
    /// taken from it rather than loaded again. Costs one pass over those tensors' bytes (SHA-256
    /// of about half a gigabyte for the published checkpoints).
    pub fn load_sharing(model: &str, options: &LoadOptions, loaded: &[&MusicGen]) -> Result<Self> {
        Self::load_with(model, options, Some(loaded))
    }

    fn load_with(model: &str, options: &LoadOptions, lenders: Option<&[&MusicGen]>) -> Result<Self> {
        // Opening a CUDA device twice gives two devices whose tensors cannot mix: a model that may
        // borrow parts runs on its lenders' device when they were opened from the same spec.
        let spec = options.device.to_string();
        let device = match lenders.unwrap_or_default().iter().find(|lender| lender.info.device == spec) {
            Some(lender) => lender.device.clone(),
            None => options.device.open()?,
        };
        let dir = crate::hub::resolve(model, &crate::hub::HubSettings::from_env(), options.on_download.as_ref())?;
        let checkpoint = Checkpoint::open(&dir)?;
        let id = canonical_id(model, &dir);
        let tokenizer = Tokenizer::from_file(checkpoint.tokenizer_path())?;
        let vb = checkpoint.var_builder(TensorDType::F32, &device)?;
        let generation = checkpoint.generation();
        let chroma = match checkpoint.preprocessor_config() {
            Some(json) => ChromaConfig::from_preprocessor_config(json)?,
            None => ChromaConfig::default(),
        };
        let parts = match lenders {
            Some(lenders) => Parts::borrowed(&checkpoint, &device, lenders)?,
            None => Parts::default(),
        };
        Self::build(
            model,
            id,
            checkpoint.config().clone(),
            chroma,
            Prompts::Tokenizer(Box::new(tokenizer)),
            vb,
            options,
            device,
            generation.decoder_start_token_id,
            checkpoint.parameter_count(),
            parts,
        )
        .map_err(|e| match e {
            Error::Tensor(e) => checkpoint.load_error(e),
            other => other,
        })
    }

    /// Builds a published architecture (`small`, `medium`, `large`, `stereo-small`,
    /// `stereo-medium`, `stereo-large`, with or without the `facebook/musicgen-` prefix) with
    /// random weights and no tokenizer: the same compute as the real model, for benchmarks.
    pub fn random(architecture: &str, options: &LoadOptions) -> Result<Self> {
        let mut model = Self::random_with_config(architecture::config(architecture)?, options)?;
        model.info.source = format!("random weights: {}", architecture.trim());
        model.info.id = model.info.source.clone();
        Ok(model)
    }

    /// A model of any configuration with random weights (see [`MusicGen::random`]).
    pub fn random_with_config(config: MusicgenConfig, options: &LoadOptions) -> Result<Self> {
        let device = options.device.open()?;
        let weights = random::RandomWeights::new(0);
        let vb = weights.var_builder(TensorDType::F32, &device);
        let start = config.decoder.bos_token_id;
        let mut model = Self::build(
            "random weights",
            "random weights".into(),
            config,
            ChromaConfig::default(),
            Prompts::Synthetic,
            vb,
            options,
            device,
            start,
            0,
            Parts::default(),
        )?;
        model.info.parameters = weights.values_drawn();
        Ok(model)
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        source: &str,
        id: String,
        config: MusicgenConfig,
        chroma: ChromaConfig,
        prompts: Prompts,
        vb: VarBuilder<'static>,
        options: &LoadOptions,
        device: Device,
        decoder_start_token: u32,
        parameters: usize,
        parts: Parts,
    ) -> Result<Self> {
        let text = &config.text_encoder;
        let text_encoder = match parts.text_encoder {
            Some(lent) => lent,
            None => T5Encoder::load(vb.pp("text_encoder"), text)?,
        };
        let hidden = config.decoder.hidden_size;
        let enc_to_dec_proj = if text.d_model != hidden {
            Some(candle_nn::linear(text.d_model, hidden, vb.pp("enc_to_dec_proj"))?)
        } else {
            None
        };
        let mut decoder = Decoder::load(&config.decoder, vb.pp("decoder").set_dtype(options.dtype.into()))?;
        if options.eager {
            decoder.set_step_mode(StepMode::Growing)?;
        }
        if options.weights == Weights::Int8 {
            decoder.quantize_int8()?;
        }
        let (codec, audio_encoder) = match parts.codec {
            Some(lent) => lent,
            None => {
                let codebooks = config.codebooks_per_channel();
                (
                    EncodecDecoder::load(vb.pp("audio_encoder"), &config.audio_encoder, codebooks)?,
                    EncodecEncoder::load(vb.pp("audio_encoder"), &config.audio_encoder, codebooks)?,
                )
            }
        };
        let melody = if config.is_melody() {
            let proj = if config.num_chroma != hidden {
                Some(candle_nn::linear(config.num_chroma, hidden, vb.pp("audio_enc_to_dec_proj"))?)
            } else {
                None
            };
            let chroma = ChromaExtractor::new(chroma)?;
            Some(Melody { chroma, proj, num_chroma: config.num_chroma, chroma_length: config.chroma_length })
        } else {
            None
        };
        let info = ModelInfo {
            source: source.to_string(),
            id,
            device: options.device.to_string(),
            dtype: options.dtype.to_string(),
            weights: match options.weights {
                Weights::Dtype => options.dtype.to_string(),
                Weights::Int8 => "int8".into(),
            },
            step_weight_bytes: decoder.step_weight_bytes(),
            sample_rate: codec.sample_rate(),
            audio_channels: config.decoder.audio_channels,
            num_codebooks: config.decoder.num_codebooks,
            decoder_layers: config.decoder.num_hidden_layers,
            decoder_hidden_size: hidden,
            vocab_size: config.decoder.vocab_size,
            parameters,
            step_mode: match decoder.step_mode() {
                StepMode::Growing => "growing",
                StepMode::Fixed => "fixed",
                StepMode::Graph => "graph",
            }
            .to_string(),
            melody: config.is_melody(),
        };
        Ok(Self {
            info,
            config,
            prompts,
            text_encoder,
            enc_to_dec_proj,
            decoder,
            codec,
            audio_encoder,
            melody,
            decoder_start_token,
            device,
            fingerprints: parts.fingerprints,
        })
    }

    /// Which parts this model and `other` hold as one copy in memory (see
    /// [`MusicGen::load_sharing`]): equal parts loaded separately do not count.
    pub fn shared_with(&self, other: &MusicGen) -> SharedParts {
        SharedParts {
            text_encoder: self.text_encoder.same_tensors(&other.text_encoder),
            codec: self.codec.same_tensors(&other.codec),
        }
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn config(&self) -> &MusicgenConfig {
        &self.config
    }

    /// Generates one track per request item. `progress` is called after every decoder step;
    /// `cancel` is checked before every step.
    pub fn generate(
        &self,
        request: &GenerationRequest,
        progress: &mut dyn FnMut(&Progress),
        cancel: &CancelToken,
    ) -> Result<Vec<Audio>> {
        if request.is_endless() {
            return Err(Error::invalid("duration", "an endless track can only be streamed (generate_streaming)"));
        }
        self.run(self.start(request)?, progress, &mut |_| Ok(()), cancel)
    }

    /// [`Self::generate`], handing each item's audio to `on_audio` as it is made (see
    /// [`Generation::take_audio`]): the pieces, end to end, are the tracks returned. An endless
    /// request runs until `cancel` is set or `on_audio` returns an error, which is returned.
    pub fn generate_streaming(
        &self,
        request: &GenerationRequest,
        options: StreamOptions,
        progress: &mut dyn FnMut(&Progress),
        on_audio: &mut dyn FnMut(&[Audio]) -> Result<()>,
        cancel: &CancelToken,
    ) -> Result<Vec<Audio>> {
        let mut generation = self.start(request)?;
        generation.stream(options)?;
        self.run(generation, progress, on_audio, cancel)
    }

    fn run(
        &self,
        mut generation: Generation<'_>,
        progress: &mut dyn FnMut(&Progress),
        on_audio: &mut dyn FnMut(&[Audio]) -> Result<()>,
        cancel: &CancelToken,
    ) -> Result<Vec<Audio>> {
        let started = std::time::Instant::now();
        let total_steps = generation.total_steps();
        while !generation.is_finished() {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            generation.step()?;
            progress(&Progress { step: generation.steps_done(), total_steps, elapsed: started.elapsed() });
            if let Some(pieces) = generation.take_audio()? {
                on_audio(&pieces)?;
            }
        }
        // The last piece, whatever its length; then the tracks.
        while let Some(pieces) = generation.take_audio()? {
            on_audio(&pieces)?;
        }
        generation.finish()
    }

    /// Validates `request`, encodes its prompts and prepares the decoder; no decoder step runs yet.
    pub fn start(&self, request: &GenerationRequest) -> Result<Generation<'_>> {
        request.validate(self.config.decoder.vocab_size)?;
        if let Some(melody) = &request.melody {
            self.check_melody(melody)?;
        }
        let prompt = request.continuation.as_ref().map(|audio| self.encode_audio(audio)).transpose()?;
        let (memory, mask) = self.encode_prompts(request)?;
        Generation::new(self, request, memory, mask, prompt)
    }

    /// The memory of the GPU this model runs on as its driver reports it (every process's use
    /// counts); `None` on the CPU.
    pub fn device_memory(&self) -> Option<DeviceMemory> {
        #[cfg(feature = "cuda")]
        if let Device::Cuda(cuda) = &self.device {
            let (free, total) = cuda.cuda_stream().context().mem_get_info().ok()?;
            return Some(DeviceMemory { used_bytes: (total - free) as u64, total_bytes: total as u64 });
        }
        None
    }

    /// Whether this checkpoint follows a melody (musicgen-melody).
    pub fn is_melody(&self) -> bool {
        self.melody.is_some()
    }

    fn check_melody(&self, melody: &Audio) -> Result<()> {
        if self.melody.is_none() {
            return Err(Error::invalid(
                "melody",
                format!(
                    "{} is a text-to-music checkpoint and cannot follow a melody; use a melody checkpoint \
                     (facebook/musicgen-melody, -melody-large, -stereo-melody, -stereo-melody-large) or leave \
                     the melody out",
                    self.info.source
                ),
            ));
        }
        let rate = self.codec.sample_rate();
        if melody.sample_rate != rate || melody.channels.len() != 1 {
            return Err(Error::invalid(
                "melody",
                format!(
                    "the melody is {} channel(s) at {} Hz; it must be mono at {rate} Hz \
                     (musicgen::audio::read_audio with 1 channel converts a file)",
                    melody.channels.len(),
                    melody.sample_rate
                ),
            ));
        }
        Ok(())
    }

    /// The one-hot chroma `(frames, num_chroma)` of `melody`: all of it (the extractor keeps its
    /// first 30 s) for a one-window track, or for a window starting at sample `window_start`, the
    /// 30 s from there, looping a shorter melody (audiocraft's `wav[..., positions % length]`).
    pub(crate) fn melody_chroma(&self, melody: &[f32], window_start: Option<usize>) -> Result<Tensor> {
        let extractor = &self.melody.as_ref().expect("a melody only reaches a melody checkpoint").chroma;
        match window_start {
            None => extractor.one_hot(melody),
            Some(start) => {
                let length = (WINDOW_SECS * self.codec.sample_rate() as f64).round() as usize;
                let segment: Vec<f32> = (start..start + length).map(|i| melody[i % melody.len()]).collect();
                extractor.one_hot(&segment)
            }
        }
    }

    /// The melody part of a melody checkpoint's prefix, `(rows, chroma_length, hidden)` f32:
    /// `chroma` `(frames, num_chroma)` one-hot frames for the rows in `follows` (transformers'
    /// null melody, one-hot on bin 0, where `chroma` is `None` and for the other rows),
    /// projected, then repeated and cut to `chroma_length` frames as transformers'
    /// `_prepare_encoder_hidden_states_kwargs_for_generation` does. `None` for text-to-music.
    pub(crate) fn melody_prefix(&self, chroma: Option<&Tensor>, follows: &[bool]) -> Result<Option<Tensor>> {
        let Some(melody) = &self.melody else { return Ok(None) };
        let frames = chroma.map_or(Ok(1), |c| c.dim(0))?;
        let mut null = vec![0f32; frames * melody.num_chroma];
        null.iter_mut().step_by(melody.num_chroma).for_each(|v| *v = 1.0);
        let null = Tensor::from_vec(null, (frames, melody.num_chroma), &self.device)?;
        let chroma = chroma.map(|c| c.to_device(&self.device)).transpose()?;
        let rows = follows
            .iter()
            .map(|&follows| if follows { chroma.as_ref().unwrap_or(&null) } else { &null })
            .collect::<Vec<_>>();
        let states = Tensor::stack(&rows, 0)?;
        let states = match &melody.proj {
            Some(proj) => proj.forward(&states)?,
            None => states,
        };
        let states = states.repeat((1, melody.chroma_length.div_ceil(frames), 1))?;
        Ok(Some(states.narrow(1, 0, melody.chroma_length)?.contiguous()?))
    }

    /// The codes `(K, frames)` row-major a continuation starts from, and their frame count:
    /// EnCodec's encoding of `audio`, each channel alone and their codebooks interleaved for
    /// stereo, as transformers' `_prepare_audio_encoder_kwargs_for_generation` makes them.
    pub fn encode_audio(&self, audio: &Audio) -> Result<(Vec<u32>, usize)> {
        let (rate, channels) = (self.codec.sample_rate(), self.config.decoder.audio_channels);
        if audio.sample_rate != rate || audio.channels.len() != channels || audio.is_empty() {
            return Err(Error::invalid(
                "continue",
                format!(
                    "the audio to continue is {} channel(s) of {} samples at {} Hz; this model needs {channels} \
                     channel(s) at {rate} Hz (musicgen::audio::read_audio converts a file)",
                    audio.channels.len(),
                    audio.len(),
                    audio.sample_rate
                ),
            ));
        }
        let samples: Vec<f32> = audio.channels.concat();
        let input = Tensor::from_vec(samples, (1, channels, audio.len()), &self.device)?;
        let codes = self.audio_encoder.encode_interleaved(&input, channels)?;
        let frames = codes.dim(2)?;
        Ok((codes.flatten_all()?.to_vec1::<u32>()?, frames))
    }

    /// The text memory the decoder cross-attends to, `(B, L, hidden)` f32 (projected and zeroed
    /// at padding, as transformers), with the attention mask `(B, L)` u32.
    fn encode_prompts(&self, request: &GenerationRequest) -> Result<(Tensor, Tensor)> {
        let prompts: Vec<&str> = request.items.iter().map(|item| item.prompt.as_str()).collect();
        self.encode_texts(&prompts)
    }

    /// [`Self::encode_prompts`] of the texts themselves.
    pub(crate) fn encode_texts(&self, prompts: &[&str]) -> Result<(Tensor, Tensor)> {
        let (ids, mask) = match &self.prompts {
            Prompts::Tokenizer(tokenizer) => tokenizer.encode_batch(prompts, &self.device)?,
            Prompts::Synthetic => {
                let batch = prompts.len();
                let vocab = self.config.text_encoder.vocab_size as u32;
                let ids: Vec<u32> = SYNTHETIC_PROMPT.iter().map(|id| id % vocab).collect();
                let ids = Tensor::new(ids.as_slice(), &self.device)?.unsqueeze(0)?.repeat((batch, 1))?;
                let mask = ids.ones_like()?;
                (ids, mask)
            }
        };
        let hidden = self.text_encoder.forward(&ids, &mask)?;
        let hidden = match &self.enc_to_dec_proj {
            Some(proj) => proj.forward(&hidden)?,
            None => hidden,
        };
        let keep = mask.to_dtype(TensorDType::F32)?.unsqueeze(2)?;
        Ok((hidden.broadcast_mul(&keep)?, mask))
    }
}
