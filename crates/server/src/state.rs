//! What every handler shares.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use musicgen::ModelInfo;
use tokio::sync::watch;

use crate::auth::AuthPolicy;
use crate::events::{Events, StreamLimit};
use crate::job::{public_model_id, Job, JobStatus, JobView};
use crate::limits::Limits;
use crate::live::LiveAudio;
use crate::metrics::Metrics;
use crate::radio::Radio;
use crate::store::{AudioStore, JobStore, KeyStore};
use crate::worker::Workers;

#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub jobs: Arc<dyn JobStore>,
    /// The API keys (in the job database).
    pub keys: Arc<dyn KeyStore>,
    pub auth: AuthPolicy,
    /// Per-key request rate and queue share.
    pub limits: Limits,
    /// The tracks of completed jobs.
    pub audio: Arc<dyn AudioStore>,
    /// The audio jobs continue (uploads and snapshots of tracks); records in `jobs`.
    pub uploads: Arc<dyn AudioStore>,
    /// Scratch directory where an upload is received and checked before it is stored.
    pub incoming: PathBuf,
    /// Largest upload accepted, in bytes of the file.
    pub max_upload_bytes: u64,
    /// The models offered: those of this process's workers, or on an API-only node those of the
    /// live workers the store knows (refreshed by [`crate::catalog`]).
    pub models: Arc<ModelCatalog>,
    pub max_queue: usize,
    pub events: Events,
    /// Open SSE streams, bounded.
    pub event_streams: StreamLimit,
    /// The audio of running jobs so far, for their streams.
    pub live: LiveAudio,
    pub metrics: Arc<Metrics>,
    /// The worker threads of this process (none on an API-only node).
    pub workers: Workers,
    /// Becomes `true` when the server stops accepting work; open SSE streams end on it.
    pub shutdown: watch::Receiver<bool>,
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl Shared {
    /// The models offered now.
    pub fn models(&self) -> Arc<Models> {
        self.models.current()
    }

    /// The job JSON as this server tells it: its models, and the audio a running job has made.
    pub fn view(&self, job: &Job) -> JobView {
        let mut view = job.view(self.models().ids(), self.live.seconds(job.id));
        if view.status == JobStatus::Queued
            && view.waiting_reason.is_none()
            && self.workers.radio().is_some_and(Radio::is_on)
        {
            view.waiting_reason = Some(
                "the radio (GET /api/v1/radio) is playing on this server's worker; queued jobs run once its \
                 listener leaves"
                    .into(),
            );
        }
        view
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The models offered, swapped whole when workers come and go, so a request sees one consistent set.
pub struct ModelCatalog {
    current: RwLock<Arc<Models>>,
    /// On an API node: the `--model`s to list first among the live workers' models.
    follows: Option<Vec<String>>,
}

impl ModelCatalog {
    /// The models of this process's own workers: fixed.
    pub fn new(models: Models) -> Self {
        ModelCatalog { current: RwLock::new(Arc::new(models)), follows: None }
    }

    /// An API node's: the live workers' models, `preferred` first, as [`ModelCatalog::refresh`] finds them.
    pub fn following(preferred: Vec<String>) -> Self {
        ModelCatalog { current: RwLock::new(Arc::new(Models::from_list(Vec::new()))), follows: Some(preferred) }
    }

    /// Reads the live workers' models again (an API node only; the log says when they change).
    pub async fn refresh(&self, jobs: &dyn JobStore) {
        let Some(preferred) = &self.follows else { return };
        let mut infos = match jobs.served_models().await {
            Ok(infos) => infos,
            Err(err) => return tracing::debug!("cannot read the workers' models: {err}"),
        };
        let rank = |info: &ModelInfo| {
            let public = public_model_id(&info.id);
            preferred
                .iter()
                .position(|name| {
                    let name = name.trim();
                    public == name
                        || info.id == name
                        || musicgen::hub::hub_id(name).as_deref() == Some(info.id.as_str())
                })
                .unwrap_or(usize::MAX)
        };
        infos.sort_by_key(|info| rank(info));
        let ids: Vec<String> = infos.iter().map(|info| public_model_id(&info.id)).collect();
        if self.replace(Models::from_list(infos)) {
            tracing::info!("the live workers run: {}", if ids.is_empty() { "nothing".into() } else { ids.join(", ") });
        }
    }

    pub fn current(&self) -> Arc<Models> {
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Replaces the set; `true` when it changed.
    pub fn replace(&self, models: Models) -> bool {
        let mut current = self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if current.ids == models.ids {
            return false;
        }
        *current = Arc::new(models);
        true
    }
}

/// The models a server offers; the first is the default. Empty on an API node no worker serves yet.
pub struct Models {
    all: Vec<ModelInfo>,
    ids: Vec<String>,
}

impl Models {
    pub fn new(default: ModelInfo, others: Vec<ModelInfo>) -> Self {
        Self::from_list(std::iter::once(default).chain(others).collect())
    }

    /// The models in this order, the first the default (none at all on an API node no worker serves).
    pub fn from_list(all: Vec<ModelInfo>) -> Self {
        let ids = all.iter().map(|model| model.id.clone()).collect();
        Models { all, ids }
    }

    /// The model of requests that name none: the first `--model`.
    pub fn default_model(&self) -> Option<&ModelInfo> {
        self.all.first()
    }

    pub fn all(&self) -> &[ModelInfo] {
        &self.all
    }

    /// Their canonical ids: the jobs this server runs.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// The model `name` stands for: its public id (`facebook/musicgen-small`, `local/<parent>/<dir>`),
    /// a short name (`small`) or the `--model` value it was started with.
    pub fn find(&self, name: &str) -> Option<&ModelInfo> {
        let name = name.trim();
        let hub = musicgen::hub::hub_id(name);
        self.all.iter().find(|model| {
            public_model_id(&model.id) == name || model.source == name || hub.as_deref() == Some(model.id.as_str())
        })
    }

    /// The sample rate and channel count uploads are kept at: enough for every model (the worker
    /// converts to the model's own when it reads them).
    pub fn upload_format(&self) -> (u32, usize) {
        let rate = self.all.iter().map(|model| model.sample_rate).max().unwrap_or(32_000);
        let channels = self.all.iter().map(|model| model.audio_channels).max().unwrap_or(1);
        (rate, channels)
    }
}
