//! What every handler shares.

use std::sync::Arc;

use musicgen::ModelInfo;
use tokio::sync::watch;

use crate::events::Events;
use crate::metrics::Metrics;
use crate::store::{AudioStore, JobStore};
use crate::worker::WorkerHandle;

#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub jobs: Arc<dyn JobStore>,
    pub audio: Arc<dyn AudioStore>,
    pub model: ModelInfo,
    pub max_queue: usize,
    pub events: Events,
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
