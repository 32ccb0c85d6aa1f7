//! Finding a checkpoint: a local directory as is, or a Hugging Face hub id downloaded into the
//! standard HF cache (the one Python's `huggingface_hub` uses, so both share downloads).
//!
//! Settings come from the same environment variables as Python: `HF_HOME`, `HF_HUB_CACHE`,
//! `HF_TOKEN` (read by hf-hub itself), and `HF_HUB_OFFLINE`, which hf-hub ignores and we honour
//! by never touching the network. Only the files a MusicGen checkpoint needs are fetched:
//! configs, tokenizer files and one set of weights (safetensors, sharded safetensors, or
//! `pytorch_model.bin` where a repository has nothing else).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hf_hub::progress::{DownloadEvent, ProgressEvent, ProgressHandler};
use hf_hub::{HFClient, HFClientSync, HFError, HFRepositorySync, RepoTypeModel};

use crate::error::{Error, Result};
use crate::weights;

/// Checkpoints published by Meta that this engine runs, by short name.
pub const KNOWN_MODELS: &[(&str, &str)] = &[
    ("small", "facebook/musicgen-small"),
    ("medium", "facebook/musicgen-medium"),
    ("large", "facebook/musicgen-large"),
    ("stereo-small", "facebook/musicgen-stereo-small"),
    ("stereo-medium", "facebook/musicgen-stereo-medium"),
    ("stereo-large", "facebook/musicgen-stereo-large"),
];

/// The model loaded when none is named.
pub const DEFAULT_MODEL: &str = "facebook/musicgen-small";

/// Where and how the hub is reached, read from the environment by [`HubSettings::from_env`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSettings {
    /// The hub cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// `HF_HUB_OFFLINE` set: use the cache only.
    pub offline: bool,
}

impl HubSettings {
    pub fn from_env() -> Self {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Settings from an arbitrary variable lookup, in the order of precedence `huggingface_hub` uses.
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Self {
        let set = |key: &str| var(key).filter(|v| !v.is_empty());
        let cache_dir =
            set("HF_HUB_CACHE").or_else(|| set("HUGGINGFACE_HUB_CACHE")).map(PathBuf::from).unwrap_or_else(|| {
                let home = set("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
                    let base = set("XDG_CACHE_HOME")
                        .map(PathBuf::from)
                        .unwrap_or_else(|| PathBuf::from(set("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache"));
                    base.join("huggingface")
                });
                home.join("hub")
            });
        let offline = set("HF_HUB_OFFLINE")
            .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        Self { cache_dir, offline }
    }

    fn client(&self, model: &str) -> Result<HFClientSync> {
        HFClient::builder().cache_dir(&self.cache_dir).build_sync().map_err(|e| Error::Download {
            model: model.to_string(),
            message: format!("cannot set up the hub client: {e}"),
        })
    }
}

/// The hub id a `--model` value names: short names map to `facebook/musicgen-*`; `owner/name`
/// is kept; anything else is not a hub id.
pub fn hub_id(model: &str) -> Option<String> {
    let model = model.trim();
    let short = model.strip_prefix("musicgen-").unwrap_or(model);
    if let Some((_, id)) = KNOWN_MODELS.iter().find(|(name, _)| *name == short) {
        return Some((*id).to_string());
    }
    let (owner, name) = model.split_once('/')?;
    let valid = |part: &str| {
        !part.is_empty()
            && !part.starts_with('.')
            && part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    (valid(owner) && valid(name)).then(|| model.to_string())
}

/// Resolves a `--model` value to a checkpoint directory: an existing directory is used as is;
/// a hub id is fetched into the HF cache (or found there), showing a progress bar when `progress`.
pub fn resolve(model: &str, progress: bool) -> Result<PathBuf> {
    resolve_with(model, &HubSettings::from_env(), progress)
}

pub fn resolve_with(model: &str, settings: &HubSettings, progress: bool) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    match hub_id(model) {
        Some(id) => download_with(&id, settings, progress),
        None => Err(Error::MissingFile {
            path: path.to_path_buf(),
            hint: "no such directory, and not a hub id; pass a checkpoint directory in the Hugging Face layout \
                   or a hub id such as facebook/musicgen-small (short names: small, medium, large, stereo-small, \
                   stereo-medium, stereo-large)"
                .into(),
        }),
    }
}

/// Fetches the files of hub repository `id` that a MusicGen checkpoint needs and returns the
/// snapshot directory holding them. Files already cached are not downloaded again.
pub fn download_with(id: &str, settings: &HubSettings, progress: bool) -> Result<PathBuf> {
    let (owner, name) = id.split_once('/').ok_or_else(|| Error::Download {
        model: id.to_string(),
        message: "a hub id has the form owner/name, e.g. facebook/musicgen-small".into(),
    })?;
    if name.starts_with("musicgen-melody") {
        return Err(Error::Unsupported(format!(
            "{id}: musicgen-melody (melody conditioning) is not supported yet; use a text-only checkpoint such as \
             {DEFAULT_MODEL}"
        )));
    }
    let client = settings.client(id)?;
    let fetcher = Fetcher { id, settings, repo: client.model(owner, name), progress };
    let config = fetcher.required(weights::CONFIG_FILE)?;
    fetcher.required(weights::TOKENIZER_FILE)?;
    for optional in [weights::GENERATION_CONFIG_FILE, "tokenizer_config.json", "special_tokens_map.json"] {
        fetcher.optional(optional)?;
    }
    fetcher.weights()?;
    config.parent().map(Path::to_path_buf).ok_or_else(|| Error::Download {
        model: id.to_string(),
        message: format!("the cache returned {} without a directory", config.display()),
    })
}

struct Fetcher<'a> {
    id: &'a str,
    settings: &'a HubSettings,
    repo: HFRepositorySync<RepoTypeModel>,
    progress: bool,
}

impl Fetcher<'_> {
    /// `Ok(None)` when the repository has no such file (or, offline, the cache lacks it).
    fn fetch(&self, file: &str) -> Result<Option<PathBuf>> {
        let bar = self.progress.then(|| DownloadBar::new(file));
        let result = self
            .repo
            .download_file()
            .filename(file)
            .local_files_only(self.settings.offline)
            .maybe_progress(bar.clone().map(hf_hub::progress::Progress::new))
            .send();
        if let Some(bar) = bar {
            bar.finish();
        }
        match result {
            Ok(path) => Ok(Some(path)),
            Err(HFError::EntryNotFound { .. }) => Ok(None),
            Err(HFError::LocalEntryNotFound { .. }) if self.settings.offline => Ok(None),
            Err(e) => Err(self.error(file, e)),
        }
    }

    fn required(&self, file: &str) -> Result<PathBuf> {
        self.fetch(file)?.ok_or_else(|| self.absent(file))
    }

    fn optional(&self, file: &str) -> Result<()> {
        self.fetch(file).map(|_| ())
    }

    /// One set of weights, in the order `Checkpoint::open` looks for them.
    fn weights(&self) -> Result<()> {
        if self.fetch(weights::SAFETENSORS_FILE)?.is_some() {
            return Ok(());
        }
        if let Some(index) = self.fetch(weights::SAFETENSORS_INDEX_FILE)? {
            return self.shards(&index);
        }
        if self.fetch(weights::PYTORCH_FILE)?.is_some() {
            return Ok(());
        }
        if let Some(index) = self.fetch(weights::PYTORCH_INDEX_FILE)? {
            return self.shards(&index);
        }
        Err(self.absent(weights::SAFETENSORS_FILE))
    }

    fn shards(&self, index: &Path) -> Result<()> {
        for shard in shard_names(index)? {
            self.required(&shard)?;
        }
        Ok(())
    }

    fn absent(&self, file: &str) -> Error {
        let message = if self.settings.offline {
            format!(
                "{file} is not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set, so nothing is \
                 downloaded. {}",
                self.settings.cache_dir.display(),
                local_advice(self.id)
            )
        } else {
            format!("the repository has no {file}; it is not a MusicGen checkpoint in the transformers layout")
        };
        Error::Download { model: self.id.to_string(), message }
    }

    fn error(&self, file: &str, err: HFError) -> Error {
        let message = match &err {
            HFError::RepoNotFound { .. } => format!(
                "no repository {} on the hub (a private or gated one needs HF_TOKEN set to a token with access). {}",
                self.id,
                local_advice(self.id)
            ),
            HFError::AuthRequired { .. } | HFError::Forbidden { .. } => {
                format!("the hub refused access to {file} ({err}); set HF_TOKEN to a token that can read {}", self.id)
            }
            _ => format!(
                "cannot download {file} from the hub ({err}); check the network or proxy (HTTPS_PROXY). {}",
                local_advice(self.id)
            ),
        };
        Error::Download { model: self.id.to_string(), message }
    }
}

fn local_advice(id: &str) -> String {
    format!(
        "To run without the hub, pass `--model /path/to/dir`, a directory in the Hugging Face layout \
         (config.json, tokenizer.json, model.safetensors): on a machine with internet run \
         `dgx-music models download {id}` (or `huggingface-cli download {id}`) and copy the directory it prints, \
         or copy the whole cache and point HF_HUB_CACHE at it"
    )
}

fn shard_names(index: &Path) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: std::collections::HashMap<String, String>,
    }
    let text = std::fs::read_to_string(index)?;
    let parsed: Index = serde_json::from_str(&text)
        .map_err(|e| Error::BadCheckpoint { path: index.to_path_buf(), message: format!("{e}") })?;
    let mut shards: Vec<String> = parsed.weight_map.into_values().collect();
    shards.sort();
    shards.dedup();
    Ok(shards)
}

/// A progress bar for one file, fed by hf-hub's download events.
#[derive(Clone)]
struct DownloadBar(std::sync::Arc<Mutex<indicatif::ProgressBar>>);

impl DownloadBar {
    fn new(file: &str) -> Self {
        let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        let style = indicatif::ProgressStyle::with_template(
            "{msg:>28} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message(file.to_string());
        Self(std::sync::Arc::new(Mutex::new(bar)))
    }

    fn with_bar(&self, f: impl FnOnce(&indicatif::ProgressBar)) {
        if let Ok(bar) = self.0.lock() {
            f(&bar);
        }
    }

    fn finish(&self) {
        self.with_bar(|bar| {
            // A bar that never started (file already cached) leaves no line behind.
            if bar.length().is_some() {
                bar.finish();
            } else {
                bar.finish_and_clear();
            }
        });
    }
}

impl ProgressHandler for DownloadBar {
    fn on_progress(&self, event: &ProgressEvent) {
        let ProgressEvent::Download(event) = event else { return };
        self.with_bar(|bar| match event {
            DownloadEvent::Start { total_bytes, .. } => bar.set_length(*total_bytes),
            DownloadEvent::Progress { files } => {
                if let Some(done) = files.iter().map(|f| f.bytes_completed).max() {
                    bar.set_position(done);
                }
            }
            DownloadEvent::AggregateProgress { bytes_completed, total_bytes, .. } => {
                bar.set_length(*total_bytes);
                bar.set_position(*bytes_completed);
            }
            DownloadEvent::Complete => {}
        });
    }
}

/// A MusicGen checkpoint found in the HF cache.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedModel {
    pub id: String,
    /// The snapshot directory of its newest revision (what `--model` can be given).
    pub path: PathBuf,
    /// Bytes on disk over all revisions.
    pub size_bytes: u64,
    /// Whether its config.json is one this engine runs (`musicgen`, not e.g. `musicgen_melody`).
    pub supported: bool,
}

/// MusicGen checkpoints in the HF cache, sorted by id. Other models in the cache are skipped.
pub fn cached_models() -> Result<Vec<CachedModel>> {
    cached_models_in(&HubSettings::from_env())
}

pub fn cached_models_in(settings: &HubSettings) -> Result<Vec<CachedModel>> {
    let client = settings.client("(cache)")?;
    let info = client.scan_cache().send().map_err(|e| Error::Download {
        model: "(cache)".into(),
        message: format!("cannot read the Hugging Face cache at {}: {e}", settings.cache_dir.display()),
    })?;
    let mut models = Vec::new();
    for repo in info.repos.into_iter().filter(|r| r.repo_type == "model") {
        let Some(newest) = repo.revisions.iter().max_by_key(|r| r.last_modified) else { continue };
        let config = newest.snapshot_path.join(weights::CONFIG_FILE);
        let Some(model_type) = std::fs::read_to_string(&config)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|json| json.get("model_type").and_then(|v| v.as_str()).map(String::from))
        else {
            continue;
        };
        if !model_type.starts_with("musicgen") {
            continue;
        }
        models.push(CachedModel {
            id: repo.repo_id,
            path: newest.snapshot_path.clone(),
            size_bytes: repo.size_on_disk,
            supported: model_type == "musicgen",
        });
    }
    models.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(models)
}

/// Deletes a cached model (all revisions) and returns the bytes freed.
pub fn remove_cached(model: &str) -> Result<u64> {
    remove_cached_in(model, &HubSettings::from_env())
}

pub fn remove_cached_in(model: &str, settings: &HubSettings) -> Result<u64> {
    let id = hub_id(model)
        .ok_or_else(|| Error::invalid("model", format!("{model:?} is not a hub id such as facebook/musicgen-small")))?;
    let folder = settings.cache_dir.join(format!("models--{}", id.replace('/', "--")));
    if !folder.is_dir() {
        return Err(Error::MissingFile {
            path: folder,
            hint: format!("{id} is not in the cache; `dgx-music models list` shows what is"),
        });
    }
    let size = directory_size(&folder);
    std::fs::remove_dir_all(&folder)?;
    Ok(size)
}

/// Bytes of the regular files under `dir`, symlinks not followed (snapshots link into blobs).
fn directory_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => directory_size(&entry.path()),
            Ok(t) if t.is_file() => entry.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_map_to_facebook_checkpoints() {
        assert_eq!(hub_id("small").as_deref(), Some("facebook/musicgen-small"));
        assert_eq!(hub_id("musicgen-stereo-large").as_deref(), Some("facebook/musicgen-stereo-large"));
        assert_eq!(hub_id("someone/my-finetune").as_deref(), Some("someone/my-finetune"));
        assert_eq!(hub_id("./local/dir"), None);
        assert_eq!(hub_id("/abs/dir"), None);
        assert_eq!(hub_id("a/b/c"), None);
        assert_eq!(hub_id("tiny"), None);
    }

    #[test]
    fn settings_follow_huggingface_hub_precedence() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |key: &str| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| v.to_string())
        };
        let s = HubSettings::from_lookup(env(&[("HOME", "/home/u")]));
        assert_eq!(s.cache_dir, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert!(!s.offline);
        let s = HubSettings::from_lookup(env(&[("HOME", "/home/u"), ("HF_HOME", "/data/hf"), ("HF_HUB_OFFLINE", "1")]));
        assert_eq!(s.cache_dir, PathBuf::from("/data/hf/hub"));
        assert!(s.offline);
        let s = HubSettings::from_lookup(env(&[
            ("HF_HOME", "/data/hf"),
            ("HF_HUB_CACHE", "/fast/hub"),
            ("HF_HUB_OFFLINE", "0"),
        ]));
        assert_eq!(s.cache_dir, PathBuf::from("/fast/hub"));
        assert!(!s.offline);
    }
}
