//! Persistence behind two traits, so that the API and the worker are the same on one machine and on many:
//! - [`JobStore`]: the queue, the history and the records of uploads: [`SqliteJobStore`] (one process,
//!   `serve`) or [`PgJobStore`] (PostgreSQL, shared by API nodes and workers on many machines).
//! - [`AudioStore`]: audio files by id, in a local directory ([`LocalAudioStore`]) or an S3 bucket
//!   ([`S3AudioStore`]); one holds the generated tracks, another the uploads that jobs continue.
//!   What is done to the bytes (`encoding`: names, WAV, decoding, conversions) and how HTTP asks for
//!   them (`ranges`: Range, If-Range, types) is written once, for both.
//!
//! A claim names its worker: in PostgreSQL it is a lease that the worker renews ([`JobStore::heartbeat`])
//! and that every later write of the worker is fenced by, so a worker presumed dead can never complete a
//! job that was given to another. SQLite runs in one process, whose worker threads die with it: it
//! keeps no leases, and a start requeues what was running ([`JobStore::recover_interrupted`]).
//!
//! Methods return boxed futures so that both traits are object safe (`Arc<dyn JobStore>`).

mod audio;
mod encoding;
mod open;
mod postgres;
mod ranges;
mod s3;
mod sqlite;
#[cfg(test)]
mod testing;

use std::collections::HashMap;

use axum::body::Body;
use axum::http::Request;
use axum::response::Response;
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use musicgen::audio::{Format, Tags};
use musicgen::ModelInfo;
use uuid::Uuid;

pub use audio::LocalAudioStore;
pub use open::{redact, Database, DatabaseUrl, Storage, StorageUrl};
pub use postgres::{Leases, PgJobStore, CHANGES_CHANNEL};
pub use s3::S3AudioStore;
pub use sqlite::SqliteJobStore;

use crate::job::{Job, JobStatus};
use crate::keys::{ApiKey, NewKey};
use crate::upload::Upload;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(String),
    /// The database cannot be reached now (restarting, network): worth retrying, unlike [`Self::Database`].
    #[error("the database is unreachable: {0}")]
    Unavailable(String),
    #[error("database migration: {0}")]
    Migration(String),
    #[error(
        "the database {} {problem}; it is kept as it is: move it away (e.g. to {}.damaged) to start with \
         an empty history, or put back a copy from a backup, then start again",
        .path.display(),
        .path.display()
    )]
    Damaged { path: std::path::PathBuf, problem: String },
    #[error("stored job {id} is unreadable: {message}")]
    Corrupt { id: String, message: String },
    #[error("audio file {path}: {source}")]
    AudioIo { path: std::path::PathBuf, source: std::io::Error },
    #[error("audio encoding: {0}")]
    AudioEncoding(String),
    /// A stored file that does not decode; the message names no path, since job errors reach clients.
    #[error("the stored audio {id} cannot be read: {message}")]
    AudioDecoding { id: Uuid, message: String },
    /// A request to an object store (S3) that failed; `key` is the object's key, or the bucket's
    /// URL for a store-wide request.
    #[error("object store, {key}: {message}")]
    ObjectStore { key: String, message: String },
    /// An object store URL that is not of the form the store takes.
    #[error("the object store URL {url:?} {problem}; expected s3://<bucket>/<prefix> (the prefix may be empty)")]
    ObjectStoreUrl { url: String, problem: String },
}

impl StoreError {
    /// What went wrong in words that name no file system path, for a job's `error`, which clients read.
    pub fn public_message(&self) -> String {
        match self {
            StoreError::AudioIo { source, .. } if source.kind() == std::io::ErrorKind::StorageFull => {
                "the server's disk is full".into()
            }
            StoreError::AudioIo { source, .. } => format!("the audio file could not be written ({source})"),
            StoreError::Damaged { .. } => "the database is damaged".into(),
            StoreError::Database(_) | StoreError::Migration(_) | StoreError::Unavailable(_) => {
                "a database error".into()
            }
            // The message may quote the endpoint's answer; the bucket and keys are the operator's business.
            StoreError::ObjectStore { .. } | StoreError::ObjectStoreUrl { .. } => "an object store error".into(),
            StoreError::Corrupt { .. } | StoreError::AudioEncoding(_) | StoreError::AudioDecoding { .. } => {
                self.to_string()
            }
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A page of the history.
#[derive(Debug, Clone, PartialEq)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    pub total: u64,
}

/// The queue as [`JobStore::queue_load`] sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueLoad {
    /// Queued jobs of the owner asked about.
    pub own_queued: u64,
    /// Audio seconds of the jobs queued before that owner's oldest queued job.
    pub audio_secs_ahead: f64,
    /// The oldest running job.
    pub running: Option<RunningLoad>,
    /// Generation seconds per audio second over the last completed jobs; `None` before the first.
    pub secs_per_audio_sec: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunningLoad {
    pub duration_secs: f64,
    pub progress: f64,
    pub elapsed_secs: f64,
}

impl QueueLoad {
    /// Seconds until the running job ends: from its own pace once it has made progress, else from
    /// the recent pace (real time when nothing has run yet).
    pub fn running_secs_left(&self) -> f64 {
        let Some(running) = &self.running else { return 0.0 };
        if running.progress >= 0.02 && running.elapsed_secs > 0.0 {
            return running.elapsed_secs * (1.0 - running.progress) / running.progress;
        }
        (running.duration_secs * self.pace() - running.elapsed_secs).max(0.0)
    }

    /// Seconds until the owner's oldest queued job starts.
    pub fn secs_until_own_turn(&self) -> f64 {
        self.running_secs_left() + self.audio_secs_ahead * self.pace()
    }

    fn pace(&self) -> f64 {
        self.secs_per_audio_sec.unwrap_or(1.0)
    }
}

/// What [`JobStore::enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    /// `max_queue` jobs are already queued.
    QueueFull,
    /// An upload the job uses (this one) was deleted meanwhile (swept, or its last job deleted).
    UploadGone(Uuid),
}

/// A worker as the store knows it: its id (unique across machines and restarts) and its models.
#[derive(Debug, Clone)]
pub struct Registration {
    pub worker: String,
    pub models: Vec<ModelInfo>,
}

/// How a running job ended, as the worker reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Completed { audio_duration: f64, generation_time: f64 },
    Failed { error: String },
}

/// The queue and the history of jobs. Every state change is one atomic conditional update, so
/// the API (cancel) and the worker (claim, finish) never overwrite each other's decisions:
/// a job leaves a terminal status only by deletion.
pub trait JobStore: Send + Sync + 'static {
    /// Inserts a queued job unless `max_queue` jobs are already queued or an upload it uses is gone,
    /// in one atomic step.
    fn enqueue(&self, job: &Job, max_queue: usize) -> BoxFuture<'_, StoreResult<Enqueued>>;

    /// The job with its queue position (among queued jobs of its model), if it exists.
    fn get(&self, id: Uuid) -> BoxFuture<'_, StoreResult<Option<Job>>>;

    /// Newest first, optionally of one status, optionally only the jobs of one key (`owner`).
    fn list(
        &self,
        status: Option<JobStatus>,
        owner: Option<Uuid>,
        limit: u64,
        offset: u64,
    ) -> BoxFuture<'_, StoreResult<JobPage>>;

    /// What the queue holds ahead of `owner` (a key; `None` for a server without keys), for its share
    /// and for `Retry-After`.
    fn queue_load(&self, owner: Option<Uuid>) -> BoxFuture<'_, StoreResult<QueueLoad>>;

    /// Marks the oldest queued job of one of `models` (canonical ids) and up to `max_batch - 1`
    /// later queued jobs of its model with the same duration, continuation, melody (upload or none)
    /// and stride as running for `worker`, oldest first. Jobs of other models are never claimed: they
    /// wait for a worker that runs theirs. Concurrent claims never take the same job.
    fn claim_batch<'a>(
        &'a self,
        worker: &'a str,
        models: &'a [String],
        max_batch: usize,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, StoreResult<Vec<Job>>>;

    /// Updates the progress of a job `worker` runs; `false` when it no longer does (cancelled, or its
    /// lease lost): the worker drops it.
    fn set_progress<'a>(&'a self, id: Uuid, worker: &'a str, progress: f64) -> BoxFuture<'a, StoreResult<bool>>;

    /// Ends a job `worker` runs; `false` when it no longer does (cancelled meanwhile, or its lease
    /// lost and the job given to another worker).
    fn finish<'a>(
        &'a self,
        id: Uuid,
        worker: &'a str,
        outcome: Outcome,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, StoreResult<bool>>;

    /// Cancels a queued or running job; returns the job after the attempt, or `None` if unknown.
    fn cancel(&self, id: Uuid, now: DateTime<Utc>) -> BoxFuture<'_, StoreResult<Option<Job>>>;

    /// Gives a job `worker` runs back to the queue (a worker that stops), not counted as an attempt;
    /// `false` if it no longer runs it.
    fn requeue<'a>(&'a self, id: Uuid, worker: &'a str) -> BoxFuture<'a, StoreResult<bool>>;

    /// A worker says it is alive: records the models it runs (which API nodes offer and queue
    /// positions count across), renews its claims on `holding`, and returns those it still holds.
    fn heartbeat<'a>(&'a self, worker: &'a Registration, holding: &'a [Uuid]) -> BoxFuture<'a, StoreResult<Vec<Uuid>>>;

    /// A worker stops: its models are no longer offered on its account.
    fn leave<'a>(&'a self, worker: &'a str) -> BoxFuture<'a, StoreResult<()>>;

    /// The models of the workers alive now, each once, for an API node without a worker of its own.
    fn served_models(&self) -> BoxFuture<'_, StoreResult<Vec<ModelInfo>>>;

    /// Puts jobs whose worker is gone back in the queue, or fails those that lost their worker
    /// `max_attempts` times, saying so; returns how many. SQLite (one process, called at its start):
    /// every running job. PostgreSQL: only jobs whose lease expired, never a live worker's.
    fn recover_interrupted(&self) -> BoxFuture<'_, StoreResult<u64>>;

    /// Deletes a job in a terminal status; `false` if it is not (or does not exist).
    fn delete_finished(&self, id: Uuid) -> BoxFuture<'_, StoreResult<bool>>;

    /// Number of jobs per status (every status present, zero included).
    fn count_by_status(&self) -> BoxFuture<'_, StoreResult<HashMap<JobStatus, u64>>>;

    /// Records an upload whose audio is already stored.
    fn insert_upload(&self, upload: &Upload) -> BoxFuture<'_, StoreResult<()>>;

    fn get_upload(&self, id: Uuid) -> BoxFuture<'_, StoreResult<Option<Upload>>>;

    /// Deletes the record of an upload no job references; `false` if a job does (or it is unknown).
    fn delete_upload_if_unused(&self, id: Uuid) -> BoxFuture<'_, StoreResult<bool>>;

    /// Deletes the records of the uploads created before `created_before` that no job references,
    /// returning their ids.
    fn sweep_unused_uploads(&self, created_before: DateTime<Utc>) -> BoxFuture<'_, StoreResult<Vec<Uuid>>>;

    /// Every recorded upload.
    fn upload_ids(&self) -> BoxFuture<'_, StoreResult<Vec<Uuid>>>;
}

/// Audio files by id: the tracks of completed jobs, or the uploads jobs continue. A file becomes
/// visible only once it is complete: `put` writes under a temporary name and renames (or copies).
pub trait AudioStore: Send + Sync + 'static {
    /// Encodes and stores audio as a WAV of `format`, replacing any previous one. Blocking: called
    /// from the worker thread or `spawn_blocking`.
    fn put(&self, id: Uuid, audio: &musicgen::Audio, format: musicgen::audio::SampleFormat) -> StoreResult<()>;

    /// Decodes the stored audio to `sample_rate` and `channels`; `None` when there is none. Refuses
    /// audio longer than `max_secs`. Blocking.
    fn read(&self, id: Uuid, sample_rate: u32, channels: usize, max_secs: f64) -> StoreResult<Option<musicgen::Audio>>;

    /// The ids of every stored file. Blocking.
    fn ids(&self) -> StoreResult<Vec<Uuid>>;

    /// Makes sure the audio of `id` is also stored in `format`, converted from the WAV once (tagged
    /// with `tags`) and kept beside it; `false` when there is no audio for it. The WAV itself is
    /// always there. Blocking.
    fn convert(&self, id: Uuid, format: Format, tags: &Tags) -> StoreResult<bool>;

    /// Answers an HTTP request for the audio of a job in `format` (Range requests included), once
    /// `convert` made it; `None` when there is no audio for it.
    fn serve(&self, id: Uuid, format: Format, request: Request<Body>) -> BoxFuture<'_, StoreResult<Option<Response>>>;

    /// Removes the audio of a job and its conversions; absent audio is not an error.
    fn delete(&self, id: Uuid) -> BoxFuture<'_, StoreResult<()>>;
}

/// API keys ([`crate::keys`]): kept in the job database, so that jobs can reference their owner.
pub trait KeyStore: Send + Sync + 'static {
    fn insert_key(&self, key: &NewKey) -> BoxFuture<'_, StoreResult<()>>;

    /// Every key, revoked ones included, in the order they were made.
    fn keys(&self) -> BoxFuture<'_, StoreResult<Vec<ApiKey>>>;

    /// The key whose token hashes to `hash`, revoked or not.
    fn key_by_hash<'a>(&'a self, hash: &'a str) -> BoxFuture<'a, StoreResult<Option<ApiKey>>>;

    /// Revokes a key; `false` when it is unknown or already revoked.
    fn revoke_key(&self, id: Uuid, now: DateTime<Utc>) -> BoxFuture<'_, StoreResult<bool>>;

    /// Whether any key is not revoked: then every API request needs one.
    fn has_active_keys(&self) -> BoxFuture<'_, StoreResult<bool>>;
}

/// Jobs per status from the database's (status, count) rows; every status present, zero included.
fn status_counts(rows: Vec<(String, i64)>) -> StoreResult<HashMap<JobStatus, u64>> {
    let mut counts: HashMap<JobStatus, u64> = JobStatus::ALL.into_iter().map(|s| (s, 0)).collect();
    for (status, n) in rows {
        let status = <JobStatus as std::str::FromStr>::from_str(&status)
            .map_err(|message| StoreError::Corrupt { id: "(count)".into(), message })?;
        counts.insert(status, n.max(0) as u64);
    }
    Ok(counts)
}

/// The models workers registered, from the JSON both stores keep them as.
fn models_from_json(infos: &[String]) -> StoreResult<Vec<ModelInfo>> {
    infos
        .iter()
        .map(|info| {
            serde_json::from_str(info)
                .map_err(|e| StoreError::Corrupt { id: "(served model)".into(), message: e.to_string() })
        })
        .collect()
}

/// A model's description as a worker registers it, for tests of the stores.
#[cfg(test)]
pub(crate) fn model_info(id: &str) -> ModelInfo {
    ModelInfo {
        source: id.into(),
        id: id.into(),
        device: "cpu".into(),
        dtype: "f32".into(),
        weights: "f32".into(),
        step_weight_bytes: 0,
        sample_rate: 32_000,
        audio_channels: 1,
        num_codebooks: 4,
        decoder_layers: 2,
        decoder_hidden_size: 16,
        vocab_size: 2048,
        parameters: 1000,
        step_mode: "growing".into(),
        melody: false,
    }
}
