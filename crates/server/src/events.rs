//! Change notifications for Server-Sent Events: the worker and the API announce "job X changed";
//! each SSE stream re-reads its job from the store, so the store stays the one source of truth
//! and a slow client that misses notifications (lag) still converges on the latest state.

use tokio::sync::broadcast;
use uuid::Uuid;

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

    pub fn subscribe(&self) -> broadcast::Receiver<Uuid> {
        self.sender.subscribe()
    }
}
