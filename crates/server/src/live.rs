//! The audio of running jobs as it is made, for `GET /jobs/{id}/stream` and `audio_seconds_ready`.
//!
//! The worker opens a [`LiveTrack`] per job when its batch starts, appends each streamed piece
//! (loudness-normalised with a gain fixed on the first audible piece, as 16-bit PCM: the bytes a WAV
//! carries) and ends it when the job ends, whatever the outcome. Readers hold the track itself, so a
//! stream already open drains what was made after the registry forgot it; a new reader of a finished
//! job reads the stored file instead. Memory is one job's PCM, freed when its last reader leaves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use tokio::sync::watch;
use uuid::Uuid;

/// How far a track has got: bytes appended, and whether more will come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Extent {
    pub bytes: usize,
    pub ended: bool,
}

/// One running job's audio so far.
pub struct LiveTrack {
    pub sample_rate: u32,
    pub channels: u16,
    /// Samples per channel of the whole track (an extended track's head included): the WAV header's length.
    pub total_samples: usize,
    pcm: Mutex<Vec<u8>>,
    extent: watch::Sender<Extent>,
}

impl LiveTrack {
    fn pcm(&self) -> MutexGuard<'_, Vec<u8>> {
        self.pcm.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends interleaved 16-bit PCM and wakes the readers.
    pub fn push(&self, bytes: &[u8]) {
        let len = {
            let mut pcm = self.pcm();
            pcm.extend_from_slice(bytes);
            pcm.len()
        };
        // Bytes are in place before the extent says so: a reader never waits for bytes it was told of.
        self.extent.send_modify(|extent| extent.bytes = len);
    }

    fn end(&self) {
        self.extent.send_modify(|extent| extent.ended = true);
    }

    /// Seconds of audio appended so far.
    pub fn seconds(&self) -> f64 {
        let frame_bytes = 2 * usize::from(self.channels.max(1));
        (self.extent.borrow().bytes / frame_bytes) as f64 / f64::from(self.sample_rate)
    }

    /// The bytes from `from` on (all there are now), and whether the track had ended before they were
    /// read, so that an ended reader has everything.
    pub fn read_from(&self, from: usize, watcher: &mut watch::Receiver<Extent>) -> (Bytes, bool) {
        let ended = watcher.borrow_and_update().ended;
        let pcm = self.pcm();
        (Bytes::copy_from_slice(&pcm[from.min(pcm.len())..]), ended)
    }

    pub fn watch(&self) -> watch::Receiver<Extent> {
        self.extent.subscribe()
    }
}

/// The live tracks of the running batch, by job.
#[derive(Clone, Default)]
pub struct LiveAudio {
    tracks: Arc<Mutex<HashMap<Uuid, Arc<LiveTrack>>>>,
}

impl LiveAudio {
    fn tracks(&self) -> MutexGuard<'_, HashMap<Uuid, Arc<LiveTrack>>> {
        self.tracks.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts the track of job `id`, `total_samples` long, beginning with `head` (already PCM).
    pub fn open(
        &self,
        id: Uuid,
        sample_rate: u32,
        channels: u16,
        total_samples: usize,
        head: Vec<u8>,
    ) -> Arc<LiveTrack> {
        let extent = watch::Sender::new(Extent { bytes: head.len(), ended: false });
        let track = Arc::new(LiveTrack { sample_rate, channels, total_samples, pcm: Mutex::new(head), extent });
        self.tracks().insert(id, track.clone());
        track
    }

    pub fn get(&self, id: Uuid) -> Option<Arc<LiveTrack>> {
        self.tracks().get(&id).cloned()
    }

    /// Seconds of job `id`'s audio that a stream has now; 0 when it has no live track.
    pub fn seconds(&self, id: Uuid) -> f64 {
        self.get(id).map_or(0.0, |track| track.seconds())
    }

    /// Job `id` ended: its readers finish with what was made, and new ones go to the store.
    pub fn end(&self, id: Uuid) {
        if let Some(track) = self.tracks().remove(&id) {
            track.end();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reader_sees_what_exists_then_each_piece_then_the_end() {
        let live = LiveAudio::default();
        let id = Uuid::new_v4();
        let track = live.open(id, 4, 1, 6, vec![1, 0]);
        let mut watcher = track.watch();
        assert_eq!(track.read_from(0, &mut watcher), (Bytes::from_static(&[1, 0]), false));
        track.push(&[2, 0, 3, 0]);
        watcher.changed().await.unwrap();
        assert_eq!(track.read_from(2, &mut watcher), (Bytes::from_static(&[2, 0, 3, 0]), false));
        assert_eq!(live.seconds(id), 0.75);
        live.end(id);
        watcher.changed().await.unwrap();
        assert_eq!(track.read_from(6, &mut watcher), (Bytes::new(), true));
        assert!(live.get(id).is_none(), "an ended job's readers go to the store");
        assert_eq!(live.seconds(id), 0.0);
    }
}
