//! What every handler shares.

use std::path::PathBuf;
use std::sync::Arc;

use musicgen::ModelInfo;
use tokio::sync::watch;

use crate::auth::AuthPolicy;
use crate::events::{Events, StreamLimit};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::store::{AudioStore, JobStore, KeyStore};
use crate::worker::WorkerHandle;

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
    pub model: ModelInfo,
    pub max_queue: usize,
    pub events: Events,
    /// Open SSE streams, bounded.
    pub event_streams: StreamLimit,
    pub metrics: Arc<Metrics>,
    pub worker: WorkerHandle,
    /// Becomes `true` when the server stops accepting work; open SSE streams end on it.
    pub shutdown: watch::Receiver<bool>,
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}
