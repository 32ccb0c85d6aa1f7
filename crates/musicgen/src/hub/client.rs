//! The hub client (the `hub` feature): downloads into the HF cache, and the cache's listing and
//! removal for `dgx-music models`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use hf_hub::progress::{ProgressEvent, ProgressHandler};
use hf_hub::{HFClient, HFClientSync, HFError, HFRepositorySync, RepoTypeModel};

use super::{hub_id, DownloadEvent, HubSettings, OnDownload};
use crate::error::{Error, Result};
use crate::weights;

fn client(settings: &HubSettings, model: &str) -> Result<HFClientSync> {
    HFClient::builder().cache_dir(&settings.cache_dir).build_sync().map_err(|e| Error::Download {
        model: model.to_string(),
        message: format!("cannot set up the hub client: {e}"),
    })
}

/// Fetches the files of hub repository `id` that a MusicGen checkpoint needs and returns the
/// snapshot directory holding them. Files already cached are not downloaded again.
pub fn download(id: &str, settings: &HubSettings, on_download: Option<&OnDownload>) -> Result<PathBuf> {
    let (owner, name) = id.split_once('/').ok_or_else(|| Error::Download {
        model: id.to_string(),
        message: "a hub id has the form owner/name, e.g. facebook/musicgen-small".into(),
    })?;
    let client = client(settings, id)?;
    let fetcher = Fetcher { id, settings, repo: client.model(owner, name), on_download };
    let config = fetcher.required(weights::CONFIG_FILE)?;
    fetcher.required(weights::TOKENIZER_FILE)?;
    for optional in [
        weights::GENERATION_CONFIG_FILE,
        weights::PREPROCESSOR_CONFIG_FILE,
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
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
    on_download: Option<&'a OnDownload>,
}

impl Fetcher<'_> {
    /// `Ok(None)` when the repository has no such file (or, offline, the cache lacks it).
    fn fetch(&self, file: &str) -> Result<Option<PathBuf>> {
        let reporter = self.on_download.map(|receiver| Reporter::new(file, receiver.clone()));
        let result = self
            .repo
            .download_file()
            .filename(file)
            .local_files_only(self.settings.offline)
            .maybe_progress(reporter.clone().map(hf_hub::progress::Progress::new))
            .send();
        if let (Some(reporter), Ok(_)) = (&reporter, &result) {
            reporter.finish();
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

/// Turns hf-hub's events for one file into [`DownloadEvent`]s.
#[derive(Clone)]
struct Reporter(std::sync::Arc<ReporterState>);

struct ReporterState {
    file: String,
    receiver: OnDownload,
    /// Whether a transfer began: a file found in the cache reports nothing, not even its end.
    started: AtomicBool,
}

impl Reporter {
    fn new(file: &str, receiver: OnDownload) -> Self {
        Self(std::sync::Arc::new(ReporterState { file: file.to_string(), receiver, started: AtomicBool::new(false) }))
    }

    fn finish(&self) {
        if self.0.started.load(Ordering::SeqCst) {
            self.0.receiver.send(&DownloadEvent::Finished { file: self.0.file.clone() });
        }
    }
}

impl ProgressHandler for Reporter {
    fn on_progress(&self, event: &ProgressEvent) {
        use hf_hub::progress::DownloadEvent as Hub;
        let ProgressEvent::Download(event) = event else { return };
        let file = self.0.file.clone();
        let event = match event {
            Hub::Start { total_bytes, .. } => {
                self.0.started.store(true, Ordering::SeqCst);
                DownloadEvent::Started { file, total_bytes: *total_bytes }
            }
            Hub::Progress { files } => {
                let Some(latest) = files.iter().max_by_key(|f| f.bytes_completed) else { return };
                DownloadEvent::Progress { file, bytes: latest.bytes_completed, total_bytes: latest.total_bytes }
            }
            Hub::AggregateProgress { bytes_completed, total_bytes, .. } => {
                DownloadEvent::Progress { file, bytes: *bytes_completed, total_bytes: *total_bytes }
            }
            Hub::Complete => return,
        };
        self.0.receiver.send(&event);
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
    /// Whether its config.json is one this engine runs (`musicgen` or `musicgen_melody`).
    pub supported: bool,
}

/// MusicGen checkpoints in the HF cache, sorted by id. Other models in the cache are skipped.
pub fn cached_models(settings: &HubSettings) -> Result<Vec<CachedModel>> {
    let client = client(settings, "(cache)")?;
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
            supported: model_type == crate::config::MUSICGEN || model_type == crate::config::MUSICGEN_MELODY,
        });
    }
    models.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(models)
}

/// Deletes a cached model (all revisions) and returns the bytes freed.
pub fn remove_cached(model: &str, settings: &HubSettings) -> Result<u64> {
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
