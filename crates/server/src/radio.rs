//! The radio: an endless track (`GET /api/v1/radio`), generated window after window by the worker
//! for as long as its listener listens, its prompt changeable between windows (`PUT /radio/{id}`).
//!
//! One station at a time: the worker that makes it is the one that runs jobs, so while it plays
//! queued jobs wait (and say so). The listener's response holds a [`Listening`] guard; the worker
//! looks at it after every step and stops at once when it is gone, and a full audio channel (a
//! listener slower than generation) blocks the worker until the listener reads or leaves, so memory
//! stays a few pieces whatever the pace.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use tokio::sync::mpsc;
use uuid::Uuid;

/// Pieces (about 0.5 s each) that may wait for the listener before the worker waits instead.
const BUFFERED_PIECES: usize = 8;

/// One radio station: what it plays, and the channel its audio goes through.
pub struct Station {
    pub id: Uuid,
    /// The key that started it, who alone may change it (`None` on a server without keys).
    pub owner: Option<Uuid>,
    /// The canonical id of its model.
    pub model: String,
    pub seed: u64,
    prompt: Mutex<Prompt>,
    listening: AtomicBool,
    /// Taken by the worker when it starts playing.
    audio: Mutex<Option<mpsc::Sender<Bytes>>>,
}

struct Prompt {
    /// The prompt asked for last: what plays from the next window on, if not already.
    latest: String,
    /// Whether `latest` is new to the worker.
    changed: bool,
}

impl Station {
    fn lock_prompt(&self) -> MutexGuard<'_, Prompt> {
        self.prompt.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn prompt(&self) -> String {
        self.lock_prompt().latest.clone()
    }

    /// A new prompt for the next window on.
    pub fn change_prompt(&self, prompt: String) {
        *self.lock_prompt() = Prompt { latest: prompt, changed: true };
    }

    /// The prompt changed since the last call, if it did (the worker's side).
    pub fn take_new_prompt(&self) -> Option<String> {
        let mut prompt = self.lock_prompt();
        std::mem::take(&mut prompt.changed).then(|| prompt.latest.clone())
    }

    pub fn is_listened(&self) -> bool {
        self.listening.load(Ordering::SeqCst)
    }

    /// The audio channel, once: the worker takes it when it starts the station.
    pub fn take_audio(&self) -> Option<mpsc::Sender<Bytes>> {
        self.audio.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }
}

/// Held by the listener's response body: dropping it (the client left, or the server stops) tells
/// the worker to stop.
pub struct Listening(Arc<Station>);

impl Drop for Listening {
    fn drop(&mut self) {
        self.0.listening.store(false, Ordering::SeqCst);
    }
}

/// The server's one station slot.
#[derive(Clone, Default)]
pub struct Radio {
    current: Arc<Mutex<Option<Arc<Station>>>>,
}

impl Radio {
    fn slot(&self) -> MutexGuard<'_, Option<Arc<Station>>> {
        self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Opens a station, unless one is listened to (that one is returned): its listening guard, and
    /// the receiving end of its audio.
    pub fn open(
        &self,
        owner: Option<Uuid>,
        model: String,
        prompt: String,
        seed: u64,
    ) -> Result<(Arc<Station>, Listening, mpsc::Receiver<Bytes>), Arc<Station>> {
        let mut slot = self.slot();
        if let Some(playing) = slot.as_ref().filter(|station| station.is_listened()) {
            return Err(playing.clone());
        }
        let (sender, receiver) = mpsc::channel(BUFFERED_PIECES);
        let station = Arc::new(Station {
            id: Uuid::new_v4(),
            owner,
            model,
            seed,
            prompt: Mutex::new(Prompt { latest: prompt, changed: false }),
            listening: AtomicBool::new(true),
            audio: Mutex::new(Some(sender)),
        });
        *slot = Some(station.clone());
        Ok((station.clone(), Listening(station), receiver))
    }

    /// The station with `id`, if it is the current one.
    pub fn get(&self, id: Uuid) -> Option<Arc<Station>> {
        self.slot().as_ref().filter(|station| station.id == id).cloned()
    }

    /// The station waiting for the worker, if one is (its audio not taken yet, its listener there).
    pub fn waiting(&self) -> Option<Arc<Station>> {
        self.slot()
            .as_ref()
            .filter(|station| station.is_listened() && station.audio.lock().is_ok_and(|a| a.is_some()))
            .cloned()
    }

    /// Whether a station is being listened to, so the worker is (or soon is) busy with it.
    pub fn is_on(&self) -> bool {
        self.slot().as_ref().is_some_and(|station| station.is_listened())
    }

    /// The worker is done with station `id`.
    pub fn close(&self, id: Uuid) {
        let mut slot = self.slot();
        if slot.as_ref().is_some_and(|station| station.id == id) {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_station_at_a_time_until_its_listener_leaves() {
        let radio = Radio::default();
        let Ok((station, listening, _audio)) = radio.open(None, "tiny".into(), "piano".into(), 1) else {
            panic!("the first station opens")
        };
        assert!(radio.is_on() && radio.waiting().is_some());
        let busy = radio.open(None, "tiny".into(), "drums".into(), 2).err().expect("a second station is refused");
        assert_eq!(busy.id, station.id);
        assert!(station.take_audio().is_some() && radio.waiting().is_none(), "the worker took it");
        station.change_prompt("strings".into());
        assert_eq!(station.take_new_prompt().as_deref(), Some("strings"));
        assert_eq!(station.take_new_prompt(), None, "a change is handed over once");
        drop(listening);
        assert!(!station.is_listened() && !radio.is_on());
        let Ok((next, _listening, _audio)) = radio.open(None, "tiny".into(), "drums".into(), 2) else {
            panic!("the slot is free again")
        };
        assert!(radio.get(station.id).is_none() && radio.get(next.id).is_some());
        radio.close(station.id);
        assert!(radio.get(next.id).is_some(), "closing an old station leaves the new one");
    }
}
