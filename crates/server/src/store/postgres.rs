//! [`JobStore`] and [`KeyStore`] on PostgreSQL, shared by API nodes and workers on many machines;
//! migrated from `crates/server/migrations-postgres` (sqlx takes an advisory lock, so nodes starting
//! together migrate once).
//!
//! - A claim is one statement: `FOR UPDATE SKIP LOCKED` lets concurrent workers pass over the rows
//!   another is taking instead of waiting for them, so no job is claimed twice and no claim blocks.
//! - A claim is a lease: `worker` and `lease_expires` (the database's clock, so the machines' clocks
//!   do not matter), renewed by [`JobStore::heartbeat`]. Progress, finish and requeue are fenced by
//!   the worker's id: once a lease has expired and the job went to another worker, the first one's
//!   writes change nothing, so a job is never completed twice.
//! - A job whose lease expired goes back to the queue, or fails once it has lost `max_attempts`
//!   workers; every claim and API node does that sweep ([`JobStore::recover_interrupted`]).
//! - Every change of a job is announced on [`CHANGES_CHANNEL`] by a trigger ([`PgJobStore::watch`]).

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use musicgen::ModelInfo;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::Row;
use uuid::Uuid;

use super::{
    models_from_json, status_counts, Enqueued, JobPage, JobStore, KeyStore, Outcome, QueueLoad, Registration,
    RunningLoad, StoreError, StoreResult,
};
use crate::job::{Job, JobParams, JobStatus};
use crate::keys::{ApiKey, NewKey};
use crate::upload::Upload;

/// The channel the trigger of `jobs` notifies: "<job id> <status>" (`deleted` for a deletion).
pub const CHANGES_CHANNEL: &str = "dgx_music_jobs";

/// How long a claim lasts without a heartbeat, and how often a job may lose its worker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Leases {
    pub lease: Duration,
    pub max_attempts: u32,
}

impl Default for Leases {
    fn default() -> Self {
        Leases { lease: Duration::from_secs(30), max_attempts: 3 }
    }
}

/// How long a process that starts waits for the database to come up (a compose file starts them together).
const CONNECT_PATIENCE: Duration = Duration::from_secs(60);

/// Every column a [`Job`] is read from, with the queue position: the queued jobs ahead that run first,
/// those of the same model and, for a job of a model some live worker runs, those of every such model.
macro_rules! select_jobs {
    ($tail:literal) => {
        concat!(
            "SELECT seq, id, status, model, duration, params::text AS params, progress, owner, ",
            "created_at, started_at, finished_at, audio_duration, generation_time, error, ",
            "CASE WHEN status = 'queued' THEN ",
            "(SELECT COUNT(*) FROM jobs AS ahead ",
            "WHERE ahead.status = 'queued' AND ahead.seq < jobs.seq AND (ahead.model = jobs.model OR ",
            "(ahead.model IN (SELECT model FROM served_models) AND jobs.model IN (SELECT model FROM served_models)))) ",
            "END AS queue_position FROM jobs ",
            $tail
        )
    };
}

pub struct PgJobStore {
    pool: PgPool,
    leases: Leases,
}

impl PgJobStore {
    /// Connects (waiting up to a minute for a database that is starting) and applies pending migrations.
    pub async fn connect(url: &str, leases: Leases) -> StoreResult<Self> {
        let options = PgConnectOptions::from_str(url).map_err(|err| {
            StoreError::Database(format!(
                "{err} in the database URL; the form is postgres://USER:PASSWORD@HOST:PORT/DATABASE \
                 (or postgres:///DATABASE?host=/socket/dir; add ?sslmode=verify-full&sslrootcert=CA.pem for TLS)"
            ))
        })?;
        let target = format!("{}:{}/{}", options.get_host(), options.get_port(), options.get_database().unwrap_or(""));
        let pool_options = PgPoolOptions::new()
            .max_connections(16)
            // A request during a database restart fails in seconds (503) instead of hanging.
            .acquire_timeout(Duration::from_secs(5));
        let started = std::time::Instant::now();
        let pool = loop {
            match pool_options.clone().connect_with(options.clone()).await.map_err(db) {
                Ok(pool) => break pool,
                Err(StoreError::Unavailable(why)) if started.elapsed() < CONNECT_PATIENCE => {
                    tracing::warn!("PostgreSQL at {target} is not reachable yet ({why}); retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Err(err) => return Err(err),
            }
        };
        sqlx::migrate!("./migrations-postgres").run(&pool).await.map_err(|e| StoreError::Migration(e.to_string()))?;
        Ok(PgJobStore { pool, leases })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub fn leases(&self) -> Leases {
        self.leases
    }

    /// Calls `changed(id, status)` for every change of a job, from whichever machine, forever; after
    /// a lost connection (notifications meanwhile are lost) once with the nil id: "anything may have
    /// changed".
    pub async fn watch(&self, changed: impl Fn(Uuid, &str) + Send) {
        let mut listener: Option<PgListener> = None;
        loop {
            let Some(active) = listener.as_mut() else {
                match self.listen().await {
                    Ok(new) => {
                        listener = Some(new);
                        changed(Uuid::nil(), "");
                    }
                    Err(err) => {
                        tracing::warn!("cannot listen for job changes: {err}; retrying in 2 s");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
                continue;
            };
            match active.try_recv().await {
                Ok(Some(notification)) => {
                    let mut words = notification.payload().split(' ');
                    match (words.next().map(Uuid::parse_str), words.next()) {
                        (Some(Ok(id)), Some(status)) => changed(id, status),
                        _ => tracing::warn!("an unexpected job notification: {:?}", notification.payload()),
                    }
                }
                // Reconnected: what was announced meanwhile is lost.
                Ok(None) => changed(Uuid::nil(), ""),
                Err(err) => {
                    tracing::warn!("the job notifications stopped: {err}; reconnecting in 2 s");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    listener = None;
                }
            }
        }
    }

    async fn listen(&self) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANGES_CHANNEL).await?;
        Ok(listener)
    }

    fn lease_secs(&self) -> f64 {
        self.leases.lease.as_secs_f64()
    }
}

/// A database error; connection trouble (a restart, the network) is [`StoreError::Unavailable`].
fn db(err: sqlx::Error) -> StoreError {
    let unavailable = match &err {
        // Not a refused certificate (`Tls`, or rustls's InvalidData inside `Io`): it stays refused.
        sqlx::Error::Io(e) => e.kind() != std::io::ErrorKind::InvalidData,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        // Class 08: connection exception; 57P01-57P03: the server shuts down or is starting.
        sqlx::Error::Database(e) => {
            e.code().is_some_and(|code| code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03"))
        }
        _ => false,
    };
    if unavailable {
        StoreError::Unavailable(err.to_string())
    } else {
        StoreError::Database(err.to_string())
    }
}

fn job_from_row(row: &PgRow) -> StoreResult<Job> {
    let id: Uuid = row.try_get("id").map_err(db)?;
    let corrupt = |message: String| StoreError::Corrupt { id: id.to_string(), message };
    let status = JobStatus::from_str(&row.try_get::<String, _>("status").map_err(db)?).map_err(corrupt)?;
    let params: String = row.try_get("params").map_err(db)?;
    let params = JobParams::from_json(&params, row.try_get("duration").map_err(db)?)
        .map_err(|e| corrupt(format!("params {params:?}: {e}")))?;
    Ok(Job {
        id,
        status,
        progress: row.try_get("progress").map_err(db)?,
        params,
        model: row.try_get("model").map_err(db)?,
        owner: row.try_get("owner").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
        started_at: row.try_get("started_at").map_err(db)?,
        finished_at: row.try_get("finished_at").map_err(db)?,
        queue_position: row.try_get::<Option<i64>, _>("queue_position").map_err(db)?.map(|p| p.max(0) as u64),
        audio_duration: row.try_get("audio_duration").map_err(db)?,
        generation_time: row.try_get("generation_time").map_err(db)?,
        error: row.try_get("error").map_err(db)?,
    })
}

fn upload_from_row(row: &PgRow) -> StoreResult<Upload> {
    let frames: i64 = row.try_get("frames").map_err(db)?;
    let id: Uuid = row.try_get("id").map_err(db)?;
    Ok(Upload {
        id,
        filename: row.try_get("filename").map_err(db)?,
        frames: u64::try_from(frames).map_err(|e| StoreError::Corrupt {
            id: format!("upload {id}"),
            message: format!("frames {frames}: {e}"),
        })?,
        sample_rate: row.try_get::<i32, _>("sample_rate").map_err(db)? as u32,
        channels: row.try_get::<i32, _>("channels").map_err(db)? as u16,
        source_job: row.try_get("source_job").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
        owner: row.try_get("owner").map_err(db)?,
    })
}

impl JobStore for PgJobStore {
    fn enqueue(&self, job: &Job, max_queue: usize) -> BoxFuture<'_, StoreResult<Enqueued>> {
        let job = job.clone();
        async move {
            let params = job
                .params
                .to_json()
                .map_err(|e| StoreError::Corrupt { id: job.id.to_string(), message: e.to_string() })?;
            let upload = job.params.continue_from.as_ref().map(|c| c.upload);
            let melody = job.params.melody.as_ref().map(|m| m.upload);
            // One statement, as in SQLite: the capacity and the uploads are checked where the row goes in.
            // Two inserts at once may both see room for one: the bound is soft by the few in flight.
            let result = sqlx::query(
                "INSERT INTO jobs (id, status, model, duration, params, progress, created_at, upload, melody, owner) \
                 SELECT $1, 'queued', $2, $3, $4::jsonb, 0, $5, $7, $8, $9 \
                 WHERE (SELECT COUNT(*) FROM jobs WHERE status = 'queued') < $6 \
                 AND ($7::uuid IS NULL OR EXISTS (SELECT 1 FROM uploads WHERE id = $7)) \
                 AND ($8::uuid IS NULL OR EXISTS (SELECT 1 FROM uploads WHERE id = $8))",
            )
            .bind(job.id)
            .bind(&job.model)
            .bind(job.params.duration_secs)
            .bind(params)
            .bind(job.created_at)
            .bind(max_queue as i64)
            .bind(upload)
            .bind(melody)
            .bind(job.owner)
            .execute(&self.pool)
            .await;
            let result = match result {
                // An upload deleted between the check and the insert: the foreign key refuses it.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23503") => None,
                other => Some(other.map_err(db)?),
            };
            if result.is_some_and(|r| r.rows_affected() == 1) {
                return Ok(Enqueued::Queued);
            }
            for id in job.params.uploads() {
                let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM uploads WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db)?;
                if exists.is_none() {
                    return Ok(Enqueued::UploadGone(id));
                }
            }
            Ok(Enqueued::QueueFull)
        }
        .boxed()
    }

    fn get(&self, id: Uuid) -> BoxFuture<'_, StoreResult<Option<Job>>> {
        async move {
            let row =
                sqlx::query(select_jobs!("WHERE id = $1")).bind(id).fetch_optional(&self.pool).await.map_err(db)?;
            row.as_ref().map(job_from_row).transpose()
        }
        .boxed()
    }

    fn list(
        &self,
        status: Option<JobStatus>,
        owner: Option<Uuid>,
        limit: u64,
        offset: u64,
    ) -> BoxFuture<'_, StoreResult<JobPage>> {
        async move {
            let status = status.map(|s| s.as_str());
            let rows = sqlx::query(select_jobs!(
                "WHERE ($1::text IS NULL OR status = $1) AND ($4::uuid IS NULL OR owner = $4) \
                 ORDER BY seq DESC LIMIT $2 OFFSET $3"
            ))
            .bind(status)
            .bind(limit.min(i64::MAX as u64) as i64)
            .bind(offset.min(i64::MAX as u64) as i64)
            .bind(owner)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            let total: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM jobs WHERE ($1::text IS NULL OR status = $1) AND ($2::uuid IS NULL OR owner = $2)",
            )
            .bind(status)
            .bind(owner)
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
            let jobs = rows.iter().map(job_from_row).collect::<StoreResult<Vec<_>>>()?;
            Ok(JobPage { jobs, total: total.max(0) as u64 })
        }
        .boxed()
    }

    fn queue_load(&self, owner: Option<Uuid>) -> BoxFuture<'_, StoreResult<QueueLoad>> {
        async move {
            let row = sqlx::query(
                "SELECT \
                   (SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND owner IS NOT DISTINCT FROM $1) AS own, \
                   (SELECT COALESCE(SUM(duration), 0.0) FROM jobs WHERE status = 'queued' AND $1::uuid IS NOT NULL \
                      AND seq < (SELECT MIN(seq) FROM jobs WHERE status = 'queued' AND owner = $1)) AS ahead, \
                   (SELECT SUM(generation_time) / NULLIF(SUM(audio_duration), 0) FROM \
                      (SELECT generation_time, audio_duration FROM jobs WHERE status = 'completed' \
                       AND audio_duration > 0 ORDER BY seq DESC LIMIT 20) AS recent) AS pace",
            )
            .bind(owner)
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
            let running = sqlx::query(
                "SELECT duration, progress, EXTRACT(EPOCH FROM (now() - started_at))::float8 AS elapsed \
                 FROM jobs WHERE status = 'running' ORDER BY seq LIMIT 1",
            )
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
            let running = match running {
                None => None,
                Some(row) => Some(RunningLoad {
                    duration_secs: row.try_get("duration").map_err(db)?,
                    progress: row.try_get("progress").map_err(db)?,
                    elapsed_secs: row.try_get::<Option<f64>, _>("elapsed").map_err(db)?.unwrap_or(0.0).max(0.0),
                }),
            };
            let pace: Option<f64> = row.try_get("pace").map_err(db)?;
            Ok(QueueLoad {
                own_queued: row.try_get::<i64, _>("own").map_err(db)?.max(0) as u64,
                audio_secs_ahead: row.try_get("ahead").map_err(db)?,
                running,
                secs_per_audio_sec: pace.filter(|p| p.is_finite() && *p > 0.0),
            })
        }
        .boxed()
    }

    fn claim_batch<'a>(
        &'a self,
        worker: &'a str,
        models: &'a [String],
        max_batch: usize,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, StoreResult<Vec<Job>>> {
        async move {
            self.recover_interrupted().await?;
            // The head (the oldest queued job of these models that no other claim is taking) picks the
            // batch; `IS NOT DISTINCT FROM` batches jobs without a continuation (or melody) together.
            let rows = sqlx::query(
                "WITH head AS ( \
                   SELECT model, duration, upload, melody, params -> 'extend_stride' AS stride FROM jobs \
                   WHERE status = 'queued' AND model = ANY($3) ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED), \
                 picked AS ( \
                   SELECT j.seq FROM jobs AS j, head \
                   WHERE j.status = 'queued' AND j.model = head.model AND j.duration = head.duration \
                     AND j.upload IS NOT DISTINCT FROM head.upload AND j.melody IS NOT DISTINCT FROM head.melody \
                     AND j.params -> 'extend_stride' IS NOT DISTINCT FROM head.stride \
                   ORDER BY j.seq LIMIT $2 FOR UPDATE OF j SKIP LOCKED) \
                 UPDATE jobs SET status = 'running', started_at = $1, progress = 0, worker = $4, \
                   lease_expires = now() + make_interval(secs => $5), attempts = attempts + 1 \
                 FROM picked WHERE jobs.seq = picked.seq \
                 RETURNING jobs.seq, id, status, model, duration, params::text AS params, progress, owner, \
                   created_at, started_at, finished_at, audio_duration, generation_time, error, \
                   NULL::bigint AS queue_position",
            )
            .bind(now)
            .bind(max_batch.max(1) as i64)
            .bind(models)
            .bind(worker)
            .bind(self.lease_secs())
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            let mut batch = Vec::with_capacity(rows.len());
            for row in &rows {
                let seq: i64 = row.try_get("seq").map_err(db)?;
                batch.push((seq, job_from_row(row)?));
            }
            batch.sort_by_key(|(seq, _)| *seq);
            Ok(batch.into_iter().map(|(_, job)| job).collect())
        }
        .boxed()
    }

    fn set_progress<'a>(&'a self, id: Uuid, worker: &'a str, progress: f64) -> BoxFuture<'a, StoreResult<bool>> {
        async move {
            let result =
                sqlx::query("UPDATE jobs SET progress = $3 WHERE id = $1 AND status = 'running' AND worker = $2")
                    .bind(id)
                    .bind(worker)
                    .bind(progress.clamp(0.0, 1.0))
                    .execute(&self.pool)
                    .await
                    .map_err(db)?;
            Ok(result.rows_affected() == 1)
        }
        .boxed()
    }

    fn finish<'a>(
        &'a self,
        id: Uuid,
        worker: &'a str,
        outcome: Outcome,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        async move {
            let query = match outcome {
                Outcome::Completed { audio_duration, generation_time } => sqlx::query(
                    "UPDATE jobs SET status = 'completed', progress = 1, finished_at = $3, audio_duration = $4, \
                     generation_time = $5, error = NULL, worker = NULL, lease_expires = NULL \
                     WHERE id = $1 AND status = 'running' AND worker = $2",
                )
                .bind(id)
                .bind(worker)
                .bind(now)
                .bind(audio_duration)
                .bind(generation_time),
                Outcome::Failed { error } => sqlx::query(
                    "UPDATE jobs SET status = 'failed', finished_at = $3, error = $4, worker = NULL, \
                     lease_expires = NULL WHERE id = $1 AND status = 'running' AND worker = $2",
                )
                .bind(id)
                .bind(worker)
                .bind(now)
                .bind(error),
            };
            Ok(query.execute(&self.pool).await.map_err(db)?.rows_affected() == 1)
        }
        .boxed()
    }

    fn cancel(&self, id: Uuid, now: DateTime<Utc>) -> BoxFuture<'_, StoreResult<Option<Job>>> {
        async move {
            sqlx::query(
                "UPDATE jobs SET status = 'cancelled', finished_at = $2, worker = NULL, lease_expires = NULL \
                 WHERE id = $1 AND status IN ('queued', 'running')",
            )
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(db)?;
            self.get(id).await
        }
        .boxed()
    }

    fn requeue<'a>(&'a self, id: Uuid, worker: &'a str) -> BoxFuture<'a, StoreResult<bool>> {
        async move {
            // A worker that gives a job back was not lost: the attempt does not count.
            let result = sqlx::query(
                "UPDATE jobs SET status = 'queued', progress = 0, started_at = NULL, worker = NULL, \
                 lease_expires = NULL, attempts = GREATEST(attempts - 1, 0) \
                 WHERE id = $1 AND status = 'running' AND worker = $2",
            )
            .bind(id)
            .bind(worker)
            .execute(&self.pool)
            .await
            .map_err(db)?;
            Ok(result.rows_affected() == 1)
        }
        .boxed()
    }

    fn heartbeat<'a>(&'a self, worker: &'a Registration, holding: &'a [Uuid]) -> BoxFuture<'a, StoreResult<Vec<Uuid>>> {
        async move {
            let models = serde_json::to_string(&worker.models)
                .map_err(|e| StoreError::Corrupt { id: worker.worker.clone(), message: e.to_string() })?;
            let mut tx = self.pool.begin().await.map_err(db)?;
            sqlx::query(
                "INSERT INTO workers (id, models, seen_at, expires_at) \
                 VALUES ($1, $2::jsonb, now(), now() + make_interval(secs => $3)) \
                 ON CONFLICT (id) DO UPDATE SET models = EXCLUDED.models, seen_at = EXCLUDED.seen_at, \
                   expires_at = EXCLUDED.expires_at",
            )
            .bind(&worker.worker)
            .bind(models)
            .bind(self.lease_secs())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            let held: Vec<Uuid> = sqlx::query_scalar(
                "UPDATE jobs SET lease_expires = now() + make_interval(secs => $3) \
                 WHERE id = ANY($2) AND status = 'running' AND worker = $1 RETURNING id",
            )
            .bind(&worker.worker)
            .bind(holding)
            .bind(self.lease_secs())
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
            tx.commit().await.map_err(db)?;
            Ok(held)
        }
        .boxed()
    }

    fn leave<'a>(&'a self, worker: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        async move {
            sqlx::query("DELETE FROM workers WHERE id = $1").bind(worker).execute(&self.pool).await.map_err(db)?;
            Ok(())
        }
        .boxed()
    }

    fn served_models(&self) -> BoxFuture<'_, StoreResult<Vec<ModelInfo>>> {
        async move {
            // Each model once, by id (workers' descriptions of one model differ only in their device);
            // API nodes put their own `--model`s first.
            let infos: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT ON (model ->> 'id') model::text FROM workers, jsonb_array_elements(models) AS model \
                 WHERE expires_at > now() ORDER BY model ->> 'id'",
            )
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            models_from_json(&infos)
        }
        .boxed()
    }

    fn recover_interrupted(&self) -> BoxFuture<'_, StoreResult<u64>> {
        async move {
            let result = sqlx::query(
                "UPDATE jobs SET \
                   status = CASE WHEN attempts >= $1 THEN 'failed' ELSE 'queued' END, \
                   error = CASE WHEN attempts >= $1 THEN format('its worker stopped answering %s times (last: %s); \
                     the job is not tried again', attempts, worker) END, \
                   finished_at = CASE WHEN attempts >= $1 THEN now() END, \
                   started_at = CASE WHEN attempts >= $1 THEN started_at END, \
                   progress = CASE WHEN attempts >= $1 THEN progress ELSE 0 END, \
                   worker = NULL, lease_expires = NULL \
                 WHERE status = 'running' AND lease_expires < now()",
            )
            .bind(self.leases.max_attempts.max(1) as i32)
            .execute(&self.pool)
            .await
            .map_err(db)?;
            let expired = result.rows_affected();
            if expired > 0 {
                tracing::warn!(
                    "{expired} job(s) whose worker stopped renewing its lease went back to the queue (or failed)"
                );
            }
            Ok(expired)
        }
        .boxed()
    }

    fn delete_finished(&self, id: Uuid) -> BoxFuture<'_, StoreResult<bool>> {
        async move {
            let result =
                sqlx::query("DELETE FROM jobs WHERE id = $1 AND status IN ('completed', 'failed', 'cancelled')")
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map_err(db)?;
            Ok(result.rows_affected() == 1)
        }
        .boxed()
    }

    fn count_by_status(&self) -> BoxFuture<'_, StoreResult<HashMap<JobStatus, u64>>> {
        async move {
            let rows: Vec<(String, i64)> = sqlx::query_as("SELECT status, COUNT(*) FROM jobs GROUP BY status")
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
            status_counts(rows)
        }
        .boxed()
    }

    fn insert_upload(&self, upload: &Upload) -> BoxFuture<'_, StoreResult<()>> {
        let upload = upload.clone();
        async move {
            sqlx::query(
                "INSERT INTO uploads (id, filename, frames, sample_rate, channels, source_job, created_at, owner) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(upload.id)
            .bind(upload.filename)
            .bind(upload.frames.min(i64::MAX as u64) as i64)
            .bind(upload.sample_rate as i32)
            .bind(i32::from(upload.channels))
            .bind(upload.source_job)
            .bind(upload.created_at)
            .bind(upload.owner)
            .execute(&self.pool)
            .await
            .map_err(db)?;
            Ok(())
        }
        .boxed()
    }

    fn get_upload(&self, id: Uuid) -> BoxFuture<'_, StoreResult<Option<Upload>>> {
        async move {
            let row = sqlx::query(
                "SELECT id, filename, frames, sample_rate, channels, source_job, created_at, owner FROM uploads WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
            row.as_ref().map(upload_from_row).transpose()
        }
        .boxed()
    }

    fn delete_upload_if_unused(&self, id: Uuid) -> BoxFuture<'_, StoreResult<bool>> {
        async move {
            let result = sqlx::query(
                "DELETE FROM uploads WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM jobs WHERE upload = $1 OR melody = $1)",
            )
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
            Ok(result.rows_affected() == 1)
        }
        .boxed()
    }

    fn sweep_unused_uploads(&self, created_before: DateTime<Utc>) -> BoxFuture<'_, StoreResult<Vec<Uuid>>> {
        async move {
            sqlx::query_scalar(
                "DELETE FROM uploads WHERE created_at < $1 \
                 AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.upload = uploads.id OR jobs.melody = uploads.id) \
                 RETURNING id",
            )
            .bind(created_before)
            .fetch_all(&self.pool)
            .await
            .map_err(db)
        }
        .boxed()
    }

    fn upload_ids(&self) -> BoxFuture<'_, StoreResult<Vec<Uuid>>> {
        async move { sqlx::query_scalar("SELECT id FROM uploads").fetch_all(&self.pool).await.map_err(db) }.boxed()
    }
}

impl KeyStore for PgJobStore {
    fn insert_key(&self, new: &NewKey) -> BoxFuture<'_, StoreResult<()>> {
        let (key, hash) = (new.key.clone(), new.hash.clone());
        async move {
            sqlx::query(
                "INSERT INTO api_keys (id, name, prefix, hash, admin, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(key.id)
            .bind(key.name)
            .bind(key.prefix)
            .bind(hash)
            .bind(key.admin)
            .bind(key.created_at)
            .execute(&self.pool)
            .await
            .map_err(db)?;
            Ok(())
        }
        .boxed()
    }

    fn keys(&self) -> BoxFuture<'_, StoreResult<Vec<ApiKey>>> {
        async move {
            let rows = sqlx::query(
                "SELECT id, name, prefix, admin, created_at, revoked_at FROM api_keys ORDER BY created_at, id",
            )
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            rows.iter().map(key_from_row).collect()
        }
        .boxed()
    }

    fn key_by_hash<'a>(&'a self, hash: &'a str) -> BoxFuture<'a, StoreResult<Option<ApiKey>>> {
        async move {
            let row =
                sqlx::query("SELECT id, name, prefix, admin, created_at, revoked_at FROM api_keys WHERE hash = $1")
                    .bind(hash)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db)?;
            row.as_ref().map(key_from_row).transpose()
        }
        .boxed()
    }

    fn revoke_key(&self, id: Uuid, now: DateTime<Utc>) -> BoxFuture<'_, StoreResult<bool>> {
        async move {
            let result = sqlx::query("UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                .bind(id)
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(db)?;
            Ok(result.rows_affected() == 1)
        }
        .boxed()
    }

    fn has_active_keys(&self) -> BoxFuture<'_, StoreResult<bool>> {
        async move {
            let any: Option<i32> = sqlx::query_scalar("SELECT 1 FROM api_keys WHERE revoked_at IS NULL LIMIT 1")
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
            Ok(any.is_some())
        }
        .boxed()
    }
}

fn key_from_row(row: &PgRow) -> StoreResult<ApiKey> {
    Ok(ApiKey {
        id: row.try_get("id").map_err(db)?,
        name: row.try_get("name").map_err(db)?,
        prefix: row.try_get("prefix").map_err(db)?,
        admin: row.try_get("admin").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
        revoked_at: row.try_get("revoked_at").map_err(db)?,
    })
}

/// Against a real PostgreSQL: `tools/cluster-test.sh` starts one and sets `DGX_TEST_POSTGRES_URL`.
#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use super::*;
    use crate::store::model_info;

    /// A store on a database of its own, so that tests never see each other's jobs.
    pub(crate) async fn fresh_store(leases: Leases) -> PgJobStore {
        let url = std::env::var("DGX_TEST_POSTGRES_URL")
            .expect("DGX_TEST_POSTGRES_URL is not set: run these tests with tools/cluster-test.sh");
        let admin = PgPool::connect(&url).await.expect("connect to the test PostgreSQL");
        let name = format!("dgx_test_{}", Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await.unwrap();
        admin.close().await;
        let options = PgConnectOptions::from_str(&url).unwrap().database(&name);
        let url = format!("postgres://{}@{}:{}/{name}", options.get_username(), options.get_host(), options.get_port());
        PgJobStore::connect(&url, leases).await.unwrap()
    }

    fn params(prompt: &str, duration: f64) -> JobParams {
        let sampling = musicgen::SamplingParams { top_k: 250, top_p: 0.0, temperature: 1.0, cfg_coef: 3.0 };
        JobParams::new(musicgen::GenerationItem { prompt: prompt.into(), sampling, seed: 7 }, duration)
    }

    async fn add(store: &PgJobStore, prompt: &str, duration: f64) -> Job {
        let job = Job::new(params(prompt, duration), "tiny".into(), Utc::now());
        assert_eq!(store.enqueue(&job, 10_000).await.unwrap(), Enqueued::Queued);
        job
    }

    fn tiny() -> Vec<String> {
        vec!["tiny".to_string()]
    }

    async fn attempts(store: &PgJobStore, id: Uuid) -> i32 {
        sqlx::query_scalar("SELECT attempts FROM jobs WHERE id = $1").bind(id).fetch_one(&store.pool).await.unwrap()
    }

    #[tokio::test]
    #[ignore = "needs PostgreSQL: tools/cluster-test.sh starts one"]
    async fn tls_checks_the_servers_certificate() {
        let url = std::env::var("DGX_TEST_POSTGRES_URL").expect("DGX_TEST_POSTGRES_URL: run tools/cluster-test.sh");
        let ca = std::env::var("DGX_TEST_PG_CA").expect("DGX_TEST_PG_CA: run tools/cluster-test.sh");
        let verified = format!("{url}?sslmode=verify-full&sslrootcert={ca}");
        let store = PgJobStore::connect(&verified, Leases::default()).await.unwrap();
        let encrypted: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert!(encrypted);
        store.close().await;
        // A self-signed certificate nobody vouches for is refused at once, not retried for a minute.
        let started = std::time::Instant::now();
        let err = PgJobStore::connect(&format!("{url}?sslmode=verify-full"), Leases::default()).await.err().unwrap();
        assert!(matches!(err, StoreError::Database(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    #[ignore = "needs PostgreSQL: tools/cluster-test.sh starts one"]
    async fn a_job_round_trips_and_batches_group_the_oldest_of_equal_duration() {
        let store = fresh_store(Leases::default()).await;
        let a = add(&store, "a", 5.0).await;
        let b = add(&store, "b", 10.0).await;
        let c = add(&store, "c", 5.0).await;
        let mut got = store.get(c.id).await.unwrap().unwrap();
        assert_eq!(got.queue_position, Some(2));
        got.queue_position = None;
        got.created_at = c.created_at;
        assert_eq!(got, c);
        let batch = store.claim_batch("w", &tiny(), 4, Utc::now()).await.unwrap();
        assert_eq!(batch.iter().map(|j| j.id).collect::<Vec<_>>(), [a.id, c.id]);
        assert!(batch.iter().all(|j| j.status == JobStatus::Running));
        assert_eq!(store.claim_batch("w", &tiny(), 4, Utc::now()).await.unwrap()[0].id, b.id);
        assert!(store.claim_batch("w", &["other".into()], 4, Utc::now()).await.unwrap().is_empty());
        let outcome = Outcome::Completed { audio_duration: 5.0, generation_time: 1.0 };
        assert!(!store.finish(a.id, "someone else", outcome.clone(), Utc::now()).await.unwrap(), "fenced");
        assert!(store.finish(a.id, "w", outcome, Utc::now()).await.unwrap());
        let page = store.list(Some(JobStatus::Completed), None, 10, 0).await.unwrap();
        assert_eq!((page.total, page.jobs[0].id), (1, a.id));
        let counts = store.count_by_status().await.unwrap();
        assert_eq!((counts[&JobStatus::Running], counts[&JobStatus::Completed]), (2, 1));
        assert!(store.delete_finished(a.id).await.unwrap());
        assert_eq!(store.get(a.id).await.unwrap(), None);
    }

    #[tokio::test]
    #[ignore = "needs PostgreSQL: tools/cluster-test.sh starts one"]
    async fn concurrent_claims_never_take_a_job_twice() {
        let store = Arc::new(fresh_store(Leases::default()).await);
        let mut all = HashSet::new();
        for i in 0..150 {
            // Three durations, so that batches interleave.
            all.insert(add(&store, &i.to_string(), [1.0, 2.0, 3.0][i % 3]).await.id);
        }
        let claimers = (0..8).map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let worker = format!("w{n}");
                let mut mine = Vec::new();
                loop {
                    let batch = store.claim_batch(&worker, &tiny(), 3, Utc::now()).await.unwrap();
                    if batch.is_empty() {
                        return mine;
                    }
                    assert!(batch.windows(2).all(|p| p[0].params.duration_secs == p[1].params.duration_secs));
                    mine.extend(batch.into_iter().map(|job| job.id));
                }
            })
        });
        let mut claimed = Vec::new();
        for claimer in claimers {
            claimed.extend(claimer.await.unwrap());
        }
        let unique: HashSet<Uuid> = claimed.iter().copied().collect();
        assert_eq!(unique.len(), claimed.len(), "a job was claimed twice");
        assert_eq!(unique, all, "every job was claimed");
    }

    #[tokio::test]
    #[ignore = "needs PostgreSQL: tools/cluster-test.sh starts one"]
    async fn a_lost_lease_returns_the_job_and_past_the_attempts_fails_it() {
        let leases = Leases { lease: Duration::from_secs(1), max_attempts: 2 };
        let store = fresh_store(leases).await;
        let job = add(&store, "a", 5.0).await;
        store.claim_batch("a", &tiny(), 1, Utc::now()).await.unwrap();
        assert_eq!(store.recover_interrupted().await.unwrap(), 0, "a live lease is never taken back");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(store.recover_interrupted().await.unwrap(), 1);
        let back = store.get(job.id).await.unwrap().unwrap();
        assert_eq!((back.status, back.progress, back.started_at), (JobStatus::Queued, 0.0, None));
        // The first worker wakes up: nothing it writes counts any more.
        assert!(!store.set_progress(job.id, "a", 0.9).await.unwrap());
        let outcome = Outcome::Completed { audio_duration: 5.0, generation_time: 1.0 };
        assert!(!store.finish(job.id, "a", outcome.clone(), Utc::now()).await.unwrap());

        assert_eq!(store.claim_batch("b", &tiny(), 1, Utc::now()).await.unwrap()[0].id, job.id);
        assert_eq!(attempts(&store, job.id).await, 2);
        let b = Registration { worker: "b".into(), models: vec![model_info("tiny")] };
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(600)).await;
            assert_eq!(store.heartbeat(&b, &[job.id]).await.unwrap(), [job.id], "renewed");
            assert_eq!(store.recover_interrupted().await.unwrap(), 0);
        }
        assert!(store.heartbeat(&b, &[Uuid::new_v4()]).await.unwrap().is_empty(), "not b's job");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(store.recover_interrupted().await.unwrap(), 1);
        let failed = store.get(job.id).await.unwrap().unwrap();
        assert_eq!(failed.status, JobStatus::Failed);
        let error = failed.error.unwrap();
        assert!(error.contains("2 times") && error.contains("(last: b)"), "{error}");
        assert!(!store.finish(job.id, "b", outcome, Utc::now()).await.unwrap(), "a failed job stays failed");
    }

    #[tokio::test]
    #[ignore = "needs PostgreSQL: tools/cluster-test.sh starts one"]
    async fn a_job_given_back_is_not_an_attempt_and_a_cancelled_one_stays_cancelled() {
        let store = fresh_store(Leases::default()).await;
        let job = add(&store, "a", 5.0).await;
        store.claim_batch("a", &tiny(), 1, Utc::now()).await.unwrap();
        assert!(!store.requeue(job.id, "b").await.unwrap(), "not b's to give back");
        assert!(store.requeue(job.id, "a").await.unwrap());
        assert_eq!(attempts(&store, job.id).await, 0);
        store.claim_batch("b", &tiny(), 1, Utc::now()).await.unwrap();
        assert!(store.set_progress(job.id, "b", 0.5).await.unwrap());
        let cancelled = store.cancel(job.id, Utc::now()).await.unwrap().unwrap();
        assert_eq!(cancelled.status, JobStatus::Cancelled);
        assert!(!store.set_progress(job.id, "b", 0.6).await.unwrap(), "the worker learns it at its next step");
        assert!(!store.requeue(job.id, "b").await.unwrap());
    }

    #[tokio::test]
    #[ignore = "needs PostgreSQL: tools/cluster-test.sh starts one"]
    async fn every_change_of_a_job_is_announced() {
        let store = Arc::new(fresh_store(Leases::default()).await);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let watcher = store.clone();
        tokio::spawn(async move { watcher.watch(move |id, status| tx.send((id, status.to_string())).unwrap()).await });
        assert_eq!(rx.recv().await.unwrap(), (Uuid::nil(), String::new()), "listening: re-read everything");
        let job = add(&store, "a", 5.0).await;
        assert_eq!(rx.recv().await.unwrap(), (job.id, "queued".into()));
        store.claim_batch("w", &tiny(), 1, Utc::now()).await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), (job.id, "running".into()));
        store.set_progress(job.id, "w", 0.5).await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), (job.id, "running".into()));
        store.cancel(job.id, Utc::now()).await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), (job.id, "cancelled".into()));
        store.delete_finished(job.id).await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), (job.id, "deleted".into()));
    }

    #[tokio::test]
    #[ignore = "needs PostgreSQL: tools/cluster-test.sh starts one"]
    async fn the_models_offered_are_those_of_live_workers() {
        let store = fresh_store(Leases { lease: Duration::from_secs(1), max_attempts: 3 }).await;
        let ids = |models: Vec<ModelInfo>| models.into_iter().map(|m| m.id).collect::<Vec<_>>();
        let one = Registration { worker: "one".into(), models: vec![model_info("small"), model_info("melody")] };
        let two = Registration { worker: "two".into(), models: vec![model_info("small")] };
        store.heartbeat(&one, &[]).await.unwrap();
        store.heartbeat(&two, &[]).await.unwrap();
        assert_eq!(ids(store.served_models().await.unwrap()), ["melody", "small"]);
        store.leave("one").await.unwrap();
        assert_eq!(ids(store.served_models().await.unwrap()), ["small"]);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(store.served_models().await.unwrap().is_empty(), "a worker that stopped answering is gone");
        // Queue positions count across the models live workers run.
        store.heartbeat(&two, &[]).await.unwrap();
        let first = Job::new(params("a", 5.0), "small".into(), Utc::now());
        store.enqueue(&first, 100).await.unwrap();
        let tiny_job = add(&store, "b", 5.0).await;
        assert_eq!(store.get(tiny_job.id).await.unwrap().unwrap().queue_position, Some(0), "tiny: nobody runs it");
    }

    #[tokio::test]
    #[ignore = "needs PostgreSQL: tools/cluster-test.sh starts one"]
    async fn uploads_live_while_a_job_uses_them_and_keys_round_trip() {
        let store = fresh_store(Leases::default()).await;
        let upload = Upload {
            id: Uuid::new_v4(),
            filename: "riff.wav".into(),
            frames: 64000,
            sample_rate: 32000,
            channels: 1,
            source_job: None,
            created_at: Utc::now() - chrono::Duration::days(2),
            owner: None,
        };
        store.insert_upload(&upload).await.unwrap();
        let mut got = store.get_upload(upload.id).await.unwrap().unwrap();
        got.created_at = upload.created_at;
        assert_eq!(got, upload);
        let job = Job::new(
            JobParams { continue_from: Some(upload.reference()), ..params("x", 5.0) },
            "tiny".into(),
            Utc::now(),
        );
        assert_eq!(store.enqueue(&job, 100).await.unwrap(), Enqueued::Queued);
        assert!(store.sweep_unused_uploads(Utc::now()).await.unwrap().is_empty());
        assert!(!store.delete_upload_if_unused(upload.id).await.unwrap());
        store.cancel(job.id, Utc::now()).await.unwrap();
        store.delete_finished(job.id).await.unwrap();
        assert_eq!(store.sweep_unused_uploads(Utc::now()).await.unwrap(), [upload.id]);
        assert_eq!(
            store.enqueue(&Job { id: Uuid::new_v4(), ..job }, 100).await.unwrap(),
            Enqueued::UploadGone(upload.id)
        );

        let key = NewKey::generate("laptop", false).unwrap();
        store.insert_key(&key).await.unwrap();
        assert!(store.has_active_keys().await.unwrap());
        assert_eq!(store.key_by_hash(&key.hash).await.unwrap().unwrap().id, key.key.id);
        assert!(store.revoke_key(key.key.id, Utc::now()).await.unwrap());
        assert!(!store.has_active_keys().await.unwrap());
        assert_eq!(store.keys().await.unwrap().len(), 1);
    }
}
