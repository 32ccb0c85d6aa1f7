//! Change notifications for Server-Sent Events: the worker and the API announce "job X changed";
//! each SSE stream re-reads its job from the store, so the store stays the one source of truth
//! and a slow client that misses notifications (lag) still converges on the latest state.

use std::sync::Arc;

use tokio::sync::{broadcast, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::error::ApiError;

#[derive(Clone)]
pub struct Events {
    sender: broadcast::Sender<Uuid>,
}

impl Default for Events {
    fn default() -> Self {
        Events { sender: broadcast::channel(1024).0 }
    }
}

impl Events {
    /// Announces that a job changed (status, progress, queue position of the jobs behind it).
    pub fn changed(&self, id: Uuid) {
        // No subscribers is the common case, not an error.
        let _ = self.sender.send(id);
    }

    /// Announces that any job may have changed (the store's notifications were interrupted): every
    /// stream re-reads its job. The nil id stands for all.
    pub fn everything(&self) {
        let _ = self.sender.send(Uuid::nil());
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Uuid> {
        self.sender.subscribe()
    }
}

/// The bound on open SSE streams (`--max-event-streams`): each holds a connection and a subscription.
#[derive(Clone)]
pub struct StreamLimit {
    slots: Arc<Semaphore>,
    max: usize,
}

impl StreamLimit {
    pub fn new(max: usize) -> Self {
        StreamLimit { slots: Arc::new(Semaphore::new(max)), max }
    }

    /// A slot for one more stream, or the 503 that says why there is none.
    pub fn open(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.slots.clone().try_acquire_owned().map_err(|_| {
            ApiError::Unavailable(format!(
                "{} event streams are open, the most this server keeps (--max-event-streams); close one, or poll \
                 GET /api/v1/jobs/{{id}} instead, and retry",
                self.max
            ))
        })
    }
}
