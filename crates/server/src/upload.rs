//! Stored audio that jobs continue or follow as a melody: a client's upload, or the snapshot of a
//! finished job's track that a job extends or follows. The record lives in the job database (so that no upload a job references can be
//! deleted: a foreign key), the audio in the uploads [`AudioStore`](crate::store::AudioStore).
//!
//! Lifetime: an upload is deleted with the last job that references it; one that no job references is
//! swept once it is older than the configured age (24 h by default), at start-up and periodically.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use musicgen::request::WINDOW_SECS;
use musicgen::Audio;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::job::{timestamp, UploadRef};
use crate::request::DURATION_LIMITS;
use crate::store::{AudioStore, JobStore, StoreResult};

/// The longest audio an upload holds: a client's file is at most one window ([`WINDOW_SECS`]), a
/// snapshot of a track at most the longest track, with a little room for rounding.
pub const MAX_UPLOAD_SECS: f64 = *DURATION_LIMITS.end() + 1.0;

/// How often unused uploads are looked for, at most (more often when they expire sooner).
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// A stored upload as the database keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Upload {
    pub id: Uuid,
    /// As the client named it; shown to people, never used as a path.
    pub filename: String,
    /// Samples per channel.
    pub frames: u64,
    pub sample_rate: u32,
    pub channels: u16,
    /// The finished job whose track this is a copy of, for a snapshot.
    pub source_job: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    /// The API key that uploaded it (or made the job it copies); `None` on a server without keys.
    pub owner: Option<Uuid>,
}

impl Upload {
    pub fn duration_secs(&self) -> f64 {
        self.frames as f64 / self.sample_rate as f64
    }

    /// What a job that uses this upload records.
    pub fn reference(&self) -> UploadRef {
        UploadRef {
            upload: self.id,
            source_job: self.source_job,
            filename: self.filename.clone(),
            duration_secs: self.duration_secs(),
        }
    }

    pub fn view(&self) -> UploadView {
        UploadView {
            id: self.id.to_string(),
            filename: self.filename.clone(),
            duration_secs: self.duration_secs(),
            sample_rate: self.sample_rate,
            channels: self.channels,
            source_job: self.source_job.map(|id| id.to_string()),
            created_at: timestamp(self.created_at),
        }
    }
}

/// `/api/v1/uploads/<id>`: the one place upload URLs are spelled.
pub fn upload_path(id: Uuid) -> String {
    format!("/api/v1/uploads/{id}")
}

/// The upload JSON.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct UploadView {
    /// Pass it as `continue_from` (or, to a melody model, as `melody`) to `POST /api/v1/generate`.
    #[schema(format = Uuid, example = "9d0c7b7e-3c55-4f59-8a7e-1b2a3c4d5e6f")]
    pub id: String,
    /// The name the file was uploaded with.
    pub filename: String,
    /// Seconds of audio, as decoded.
    pub duration_secs: f64,
    /// The stored audio's rate: the model's (the file was resampled to it).
    pub sample_rate: u32,
    /// The stored audio's channels: the model's (the file was mixed to them).
    pub channels: u16,
    /// For a snapshot of a finished track that a job extends or follows: that job. Null for a client's upload.
    #[schema(format = Uuid)]
    pub source_job: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// Deletes an upload once no job references it: record first, then its file (an orphaned file is
/// harmless and removed at the next start; a record without its file is not).
pub async fn delete_if_unused(jobs: &dyn JobStore, files: &dyn AudioStore, id: Uuid) -> StoreResult<bool> {
    if !jobs.delete_upload_if_unused(id).await? {
        return Ok(false);
    }
    files.delete(id).await?;
    tracing::info!("upload {id} deleted: no job uses it any more");
    Ok(true)
}

/// Deletes the uploads no job references that are older than `max_age`.
pub async fn sweep(jobs: &dyn JobStore, files: &dyn AudioStore, max_age: Duration) -> StoreResult<usize> {
    let cutoff = chrono::Duration::from_std(max_age).ok().and_then(|age| Utc::now().checked_sub_signed(age));
    let Some(created_before) = cutoff else { return Ok(0) };
    let ids = jobs.sweep_unused_uploads(created_before).await?;
    for &id in &ids {
        files.delete(id).await?;
    }
    if !ids.is_empty() {
        tracing::info!("{} upload(s) no job used were deleted", ids.len());
    }
    Ok(ids.len())
}

/// At start-up, before anything is served: the files a crash left without a record.
pub async fn remove_orphan_files(jobs: &dyn JobStore, files: &dyn AudioStore) -> StoreResult<usize> {
    let known: HashSet<Uuid> = jobs.upload_ids().await?.into_iter().collect();
    let mut removed = 0;
    for id in files.ids()? {
        if !known.contains(&id) {
            tracing::info!("removing upload file {id} that has no record (an interrupted upload)");
            files.delete(id).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Sweeps every `max_age / 4` (at most hourly) for as long as the runtime runs.
pub fn spawn_sweeper(jobs: Arc<dyn JobStore>, files: Arc<dyn AudioStore>, max_age: Duration) {
    let every = (max_age / 4).clamp(Duration::from_secs(1), SWEEP_EVERY);
    tokio::spawn(async move {
        // The first sweep ran at start-up.
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(err) = sweep(&*jobs, &*files, max_age).await {
                tracing::warn!("cannot sweep unused uploads: {err}; retrying in {} s", every.as_secs_f64());
            }
        }
    });
}

/// How a track of `total_secs` continues `frames` samples at `sample_rate`: the engine is prompted
/// with the last [`WINDOW_SECS`] at most and generates the rest of the track from there; whatever
/// comes before the prompt (the head, for a track longer than one window that is being extended) is
/// put back in front of the engine's output untouched.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    pub head_frames: usize,
    pub prompt_frames: usize,
    /// What the engine is asked for: the track without its head.
    pub engine_duration_secs: f64,
}

impl Plan {
    pub fn new(total_secs: f64, frames: usize, sample_rate: u32) -> Plan {
        let window = (WINDOW_SECS * sample_rate as f64).round() as usize;
        let head_frames = frames.saturating_sub(window);
        Plan {
            head_frames,
            prompt_frames: frames - head_frames,
            engine_duration_secs: total_secs - head_frames as f64 / sample_rate as f64,
        }
    }

    /// `audio` (the upload this plan was made for) cut into its head, if it has one, and the prompt.
    pub fn split(&self, audio: Audio) -> (Option<Audio>, Audio) {
        let rate = audio.sample_rate;
        let (head, prompt): (Vec<Vec<f32>>, Vec<Vec<f32>>) = audio
            .channels
            .into_iter()
            .map(|mut samples| {
                let prompt = samples.split_off(self.head_frames.min(samples.len()));
                (samples, prompt)
            })
            .unzip();
        let head = (self.head_frames > 0).then_some(Audio { sample_rate: rate, channels: head });
        (head, Audio { sample_rate: rate, channels: prompt })
    }
}

/// The melody for the engine when it generates a track from `skip` frames on (after the head of
/// an extended track): the engine's window at time t follows `melody[t..t + 30 s]`, looping a short
/// melody, so starting it `skip` frames on (modulo its length) keeps it lined up with the whole track.
pub fn melody_from(mut melody: Audio, skip: usize) -> Audio {
    for samples in &mut melody.channels {
        if !samples.is_empty() {
            let shift = skip % samples.len();
            samples.rotate_left(shift);
        }
    }
    melody
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_melody_is_lined_up_with_the_whole_track() {
        let melody = Audio { sample_rate: 10, channels: vec![(0..50).map(|i| i as f32).collect()] };
        assert_eq!(melody_from(melody.clone(), 0), melody, "a track without a head starts the melody at 0");
        let later = melody_from(melody.clone(), 120);
        assert_eq!(later.channels[0][..3], [20.0, 21.0, 22.0], "120 frames on is 20 frames into the third loop");
        assert_eq!(later.channels[0][29..31], [49.0, 0.0], "and it loops from there");
    }

    #[test]
    fn a_plan_prompts_with_the_last_window_and_keeps_the_head() {
        let short = Plan::new(20.0, 32000 * 4, 32000);
        assert_eq!(short, Plan { head_frames: 0, prompt_frames: 128000, engine_duration_secs: 20.0 });
        let long = Plan::new(60.0, 32000 * 45, 32000);
        assert_eq!(long, Plan { head_frames: 32000 * 15, prompt_frames: 32000 * 30, engine_duration_secs: 45.0 });
        let exact = Plan::new(40.0, 32000 * 30, 32000);
        assert_eq!((exact.head_frames, exact.prompt_frames), (0, 960000));
    }

    #[test]
    fn a_split_keeps_the_first_samples_as_the_head_and_the_last_window_as_the_prompt() {
        let rate = 100;
        let ramp = |offset: f32| (0..4500).map(|i| i as f32 + offset).collect::<Vec<f32>>();
        let audio = Audio { sample_rate: rate, channels: vec![ramp(0.0), ramp(0.5)] };
        let plan = Plan::new(60.0, audio.len(), rate);
        let (head, prompt) = plan.split(audio.clone());
        let head = head.unwrap();
        assert_eq!((head.len(), prompt.len()), (1500, 3000));
        assert_eq!((head.channels[1][0], head.channels[1][1499]), (0.5, 1499.5));
        assert_eq!((prompt.channels[0][0], prompt.channels[0][2999]), (1500.0, 4499.0), "the last 30 s");
        assert_eq!(prompt.sample_rate, rate);
        let short = Audio { sample_rate: rate, channels: vec![ramp(0.0)[..700].to_vec()] };
        let (head, prompt) = Plan::new(20.0, short.len(), rate).split(short.clone());
        assert_eq!((head, prompt), (None, short), "audio within one window is all prompt");
    }
}
