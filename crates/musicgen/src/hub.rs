//! Finding a checkpoint: a local directory as is, or a Hugging Face hub id downloaded into the
//! standard HF cache (the one Python's `huggingface_hub` uses, so both share downloads).
//!
//! Settings come from the same environment variables as Python: `HF_HOME`, `HF_HUB_CACHE`,
//! `HF_TOKEN` (read by hf-hub itself), and `HF_HUB_OFFLINE`, which hf-hub ignores and we honour
//! by never touching the network. Only the files a MusicGen checkpoint needs are fetched:
//! configs, tokenizer files and one set of weights (safetensors, sharded safetensors, or
//! `pytorch_model.bin` where a repository has nothing else).
//!
//! The network and cache half ([`client`]: downloads, listing and removing cached checkpoints) is
//! the `hub` cargo feature, on by default. Without it a build has no HTTP client at all and loads
//! checkpoint directories only. Downloads draw nothing: they report [`DownloadEvent`]s to the
//! caller's [`OnDownload`], which the binary turns into progress bars.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};

#[cfg(feature = "hub")]
mod client;
#[cfg(feature = "hub")]
pub use client::{cached_models, download, remove_cached, CachedModel};

/// Checkpoints published by Meta that this engine runs, by short name.
pub const KNOWN_MODELS: &[(&str, &str)] = &[
    ("small", "facebook/musicgen-small"),
    ("medium", "facebook/musicgen-medium"),
    ("large", "facebook/musicgen-large"),
    ("stereo-small", "facebook/musicgen-stereo-small"),
    ("stereo-medium", "facebook/musicgen-stereo-medium"),
    ("stereo-large", "facebook/musicgen-stereo-large"),
    ("melody", "facebook/musicgen-melody"),
    ("melody-large", "facebook/musicgen-melody-large"),
    ("stereo-melody", "facebook/musicgen-stereo-melody"),
    ("stereo-melody-large", "facebook/musicgen-stereo-melody-large"),
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
}

/// What a download reports while it runs. Files already in the cache report nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadEvent {
    /// The transfer of `file` began; `total_bytes` is its size as the hub reports it.
    Started { file: String, total_bytes: u64 },
    /// `bytes` of `file` have arrived, out of `total_bytes`.
    Progress { file: String, bytes: u64, total_bytes: u64 },
    /// `file` is complete in the cache.
    Finished { file: String },
}

/// The caller's receiver of [`DownloadEvent`]s, called from the downloading thread.
#[derive(Clone)]
pub struct OnDownload(Arc<dyn Fn(&DownloadEvent) + Send + Sync>);

impl OnDownload {
    pub fn new(receive: impl Fn(&DownloadEvent) + Send + Sync + 'static) -> Self {
        Self(Arc::new(receive))
    }

    pub fn send(&self, event: &DownloadEvent) {
        (self.0)(event)
    }
}

impl fmt::Debug for OnDownload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OnDownload(..)")
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
/// a hub id is fetched into the HF cache (or found there), reporting to `on_download`.
pub fn resolve(model: &str, settings: &HubSettings, on_download: Option<&OnDownload>) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    match hub_id(model) {
        Some(id) => fetch(&id, settings, on_download),
        None => Err(Error::MissingFile {
            path: path.to_path_buf(),
            hint: "no such directory, and not a hub id; pass a checkpoint directory in the Hugging Face layout \
                   or a hub id such as facebook/musicgen-small (short names: small, medium, large, stereo-small, \
                   stereo-medium, stereo-large)"
                .into(),
        }),
    }
}

#[cfg(feature = "hub")]
fn fetch(id: &str, settings: &HubSettings, on_download: Option<&OnDownload>) -> Result<PathBuf> {
    download(id, settings, on_download)
}

#[cfg(not(feature = "hub"))]
fn fetch(id: &str, _: &HubSettings, _: Option<&OnDownload>) -> Result<PathBuf> {
    Err(Error::Unsupported(format!(
        "{id} is a hub id, but this build has no hub client (built without the `hub` feature); pass a checkpoint \
         directory in the Hugging Face layout instead"
    )))
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
