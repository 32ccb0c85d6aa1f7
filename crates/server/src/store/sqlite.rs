//! [`JobStore`] on an embedded SQLite database (WAL mode), migrated from `crates/server/migrations`.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::Row;
use uuid::Uuid;

use musicgen::ModelInfo;

use super::{
    models_from_json, status_counts, Enqueued, JobPage, JobStore, Outcome, QueueLoad, Registration, RunningLoad,
    StoreError, StoreResult,
};
use crate::job::{timestamp, Job, JobParams, JobStatus};
use crate::upload::Upload;

/// Every column a [`Job`] is read from, with the queue position computed from `seq`: the queued jobs
/// ahead that run first, those of the same model and, for a job of a served model, those of every
/// served model (one worker takes them in order).
macro_rules! select_jobs {
    ($tail:literal) => {
        concat!(
            "SELECT seq, id, status, model, duration, params, progress, owner, ",
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

pub struct SqliteJobStore {
    pool: SqlitePool,
}

impl SqliteJobStore {
    /// Opens (creating if needed) the database file, checks it (`PRAGMA quick_check`) and applies
    /// pending migrations. An empty (0-byte) or damaged file is refused, never taken for a new database:
    /// that would show an empty history, or answer "ok" and then fail on the damaged pages.
    pub async fn open(path: &Path) -> StoreResult<Self> {
        let damaged = |problem: String| StoreError::Damaged { path: path.to_path_buf(), problem };
        if std::fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.len() == 0) {
            return Err(damaged("is empty (0 bytes), so it holds no history".into()));
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            // WAL keeps readers (API) and the writer (worker) from blocking each other; with
            // NORMAL sync a killed process loses nothing, only a power cut could lose the last commit.
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let pool =
            SqlitePoolOptions::new().max_connections(8).connect_with(options).await.map_err(|err| match err {
                sqlx::Error::Database(err) if err.message().contains("not a database") => damaged(err.message().into()),
                other => db(other),
            })?;
        let problems: Vec<String> = match sqlx::query_scalar("PRAGMA quick_check(5)").fetch_all(&pool).await {
            Ok(rows) => rows,
            Err(err) => vec![err.to_string()],
        };
        if problems.iter().any(|line| line != "ok") {
            pool.close().await;
            return Err(damaged(format!("fails SQLite's integrity check: {}", problems.join("; "))));
        }
        sqlx::migrate!("./migrations").run(&pool).await.map_err(|e| StoreError::Migration(e.to_string()))?;
        Ok(SqliteJobStore { pool })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn db(err: sqlx::Error) -> StoreError {
    StoreError::Database(err.to_string())
}

/// The `owner` column: the key that made the row, if any.
fn owner_from(row: &SqliteRow) -> Result<Option<Uuid>, String> {
    let text: Option<String> = row.try_get("owner").map_err(|e| e.to_string())?;
    text.map(|text| Uuid::parse_str(&text).map_err(|e| format!("owner {text:?}: {e}"))).transpose()
}

fn job_from_row(row: &SqliteRow) -> StoreResult<Job> {
    let id_text: String = row.try_get("id").map_err(db)?;
    let corrupt = |message: String| StoreError::Corrupt { id: id_text.clone(), message };
    let id = Uuid::parse_str(&id_text).map_err(|e| corrupt(e.to_string()))?;
    let status = JobStatus::from_str(&row.try_get::<String, _>("status").map_err(db)?).map_err(corrupt)?;
    let time = |column: &str| -> StoreResult<Option<DateTime<Utc>>> {
        row.try_get::<Option<String>, _>(column)
            .map_err(db)?
            .map(|text| {
                DateTime::parse_from_rfc3339(&text)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| corrupt(format!("{column} {text:?}: {e}")))
            })
            .transpose()
    };
    let params: String = row.try_get("params").map_err(db)?;
    let params = JobParams::from_json(&params, row.try_get("duration").map_err(db)?)
        .map_err(|e| corrupt(format!("params {params:?}: {e}")))?;
    Ok(Job {
        id,
        status,
        progress: row.try_get("progress").map_err(db)?,
        params,
        model: row.try_get("model").map_err(db)?,
        owner: owner_from(row).map_err(&corrupt)?,
        created_at: time("created_at")?.ok_or_else(|| corrupt("created_at is missing".into()))?,
        started_at: time("started_at")?,
        finished_at: time("finished_at")?,
        queue_position: row.try_get::<Option<i64>, _>("queue_position").map_err(db)?.map(|p| p.max(0) as u64),
        audio_duration: row.try_get("audio_duration").map_err(db)?,
        generation_time: row.try_get("generation_time").map_err(db)?,
        error: row.try_get("error").map_err(db)?,
    })
}

impl JobStore for SqliteJobStore {
    fn enqueue(&self, job: &Job, max_queue: usize) -> BoxFuture<'_, StoreResult<Enqueued>> {
        let job = job.clone();
        async move {
            let params = job
                .params
                .to_json()
                .map_err(|e| StoreError::Corrupt { id: job.id.to_string(), message: e.to_string() })?;
            let upload = job.params.continue_from.as_ref().map(|c| c.upload.to_string());
            let melody = job.params.melody.as_ref().map(|m| m.upload.to_string());
            // One statement, so neither the capacity check nor the uploads' existence can change
            // between the check and the insert (another request's insert, a sweep).
            let result = sqlx::query(
                "INSERT INTO jobs (id, status, model, duration, params, progress, created_at, upload, melody, owner) \
                 SELECT ?1, 'queued', ?2, ?3, ?4, 0, ?5, ?7, ?8, ?9 \
                 WHERE (SELECT COUNT(*) FROM jobs WHERE status = 'queued') < ?6 \
                 AND (?7 IS NULL OR EXISTS (SELECT 1 FROM uploads WHERE id = ?7)) \
                 AND (?8 IS NULL OR EXISTS (SELECT 1 FROM uploads WHERE id = ?8))",
            )
            .bind(job.id.to_string())
            .bind(job.model.clone())
            .bind(job.params.duration_secs)
            .bind(params)
            .bind(timestamp(job.created_at))
            .bind(max_queue as i64)
            .bind(upload)
            .bind(melody)
            .bind(job.owner.map(|id| id.to_string()))
            .execute(&self.pool)
            .await
            .map_err(db)?;
            if result.rows_affected() == 1 {
                return Ok(Enqueued::Queued);
            }
            for id in job.params.uploads() {
                let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM uploads WHERE id = ?1")
                    .bind(id.to_string())
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
            let row = sqlx::query(select_jobs!("WHERE id = ?1"))
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
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
            let owner = owner.map(|id| id.to_string());
            let rows = sqlx::query(select_jobs!(
                "WHERE (?1 IS NULL OR status = ?1) AND (?4 IS NULL OR owner = ?4) ORDER BY seq DESC LIMIT ?2 OFFSET ?3"
            ))
            .bind(status)
            .bind(limit.min(i64::MAX as u64) as i64)
            .bind(offset.min(i64::MAX as u64) as i64)
            .bind(owner.clone())
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            let total: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM jobs WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR owner = ?2)",
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
            let owner = owner.map(|id| id.to_string());
            // Audio seconds queued before the owner's oldest queued job (all of them without an owner).
            let row = sqlx::query(
                "SELECT \
                   (SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND owner IS ?1) AS own, \
                   (SELECT COALESCE(SUM(duration), 0.0) FROM jobs WHERE status = 'queued' AND (?1 IS NOT NULL) \
                      AND seq < (SELECT MIN(seq) FROM jobs WHERE status = 'queued' AND owner = ?1)) AS ahead",
            )
            .bind(owner)
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
            let running = sqlx::query(
                "SELECT duration, progress, started_at FROM jobs WHERE status = 'running' ORDER BY seq LIMIT 1",
            )
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
            // Seconds of work per second of audio over the last completed jobs (each job records its batch's time).
            let pace: Option<f64> = sqlx::query_scalar(
                "SELECT SUM(generation_time) / SUM(audio_duration) FROM \
                   (SELECT generation_time, audio_duration FROM jobs WHERE status = 'completed' \
                    AND audio_duration > 0 ORDER BY seq DESC LIMIT 20)",
            )
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
            let running = match running {
                None => None,
                Some(row) => {
                    let started: Option<String> = row.try_get("started_at").map_err(db)?;
                    let started =
                        started.and_then(|t| DateTime::parse_from_rfc3339(&t).ok()).map(|t| t.with_timezone(&Utc));
                    Some(RunningLoad {
                        duration_secs: row.try_get("duration").map_err(db)?,
                        progress: row.try_get("progress").map_err(db)?,
                        elapsed_secs: started
                            .map_or(0.0, |t| (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0),
                    })
                }
            };
            Ok(QueueLoad {
                own_queued: row.try_get::<i64, _>("own").map_err(db)?.max(0) as u64,
                audio_secs_ahead: row.try_get("ahead").map_err(db)?,
                running,
                secs_per_audio_sec: pace.filter(|p| p.is_finite() && *p > 0.0),
            })
        }
        .boxed()
    }

    // One process: the worker threads die with it, so a claim needs no lease and no owner.
    fn claim_batch<'a>(
        &'a self,
        _worker: &'a str,
        models: &'a [String],
        max_batch: usize,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, StoreResult<Vec<Job>>> {
        async move {
            let models = serde_json::Value::from(models.to_vec()).to_string();
            // `IS` compares NULLs as equal: jobs without a continuation (or melody) batch together.
            let rows = sqlx::query(
                "UPDATE jobs SET status = 'running', started_at = ?1, progress = 0 \
                 WHERE seq IN ( \
                   SELECT j.seq FROM jobs AS j, \
                     (SELECT model, duration, upload, melody, json_extract(params, '$.extend_stride') AS stride \
                      FROM jobs WHERE status = 'queued' AND model IN (SELECT value FROM json_each(?3)) \
                      ORDER BY seq LIMIT 1) AS head \
                   WHERE j.status = 'queued' AND j.model = head.model AND j.duration = head.duration \
                     AND j.upload IS head.upload AND j.melody IS head.melody \
                     AND json_extract(j.params, '$.extend_stride') IS head.stride \
                   ORDER BY j.seq LIMIT ?2) \
                 RETURNING seq, id, status, model, duration, params, progress, owner, \
                   created_at, started_at, finished_at, audio_duration, generation_time, error, \
                   NULL AS queue_position",
            )
            .bind(timestamp(now))
            .bind(max_batch.max(1) as i64)
            .bind(models)
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

    fn set_progress<'a>(&'a self, id: Uuid, _worker: &'a str, progress: f64) -> BoxFuture<'a, StoreResult<bool>> {
        async move {
            let result = sqlx::query("UPDATE jobs SET progress = ?2 WHERE id = ?1 AND status = 'running'")
                .bind(id.to_string())
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
        _worker: &'a str,
        outcome: Outcome,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        async move {
            let query = match outcome {
                Outcome::Completed { audio_duration, generation_time } => sqlx::query(
                    "UPDATE jobs SET status = 'completed', progress = 1, finished_at = ?2, \
                     audio_duration = ?3, generation_time = ?4, error = NULL \
                     WHERE id = ?1 AND status = 'running'",
                )
                .bind(id.to_string())
                .bind(timestamp(now))
                .bind(audio_duration)
                .bind(generation_time),
                Outcome::Failed { error } => sqlx::query(
                    "UPDATE jobs SET status = 'failed', finished_at = ?2, error = ?3 WHERE id = ?1 AND status = 'running'",
                )
                .bind(id.to_string())
                .bind(timestamp(now))
                .bind(error),
            };
            let result = query.execute(&self.pool).await.map_err(db)?;
            Ok(result.rows_affected() == 1)
        }
        .boxed()
    }

    fn cancel(&self, id: Uuid, now: DateTime<Utc>) -> BoxFuture<'_, StoreResult<Option<Job>>> {
        async move {
            sqlx::query(
                "UPDATE jobs SET status = 'cancelled', finished_at = ?2 WHERE id = ?1 AND status IN ('queued', 'running')",
            )
            .bind(id.to_string())
            .bind(timestamp(now))
            .execute(&self.pool)
            .await
            .map_err(db)?;
            self.get(id).await
        }
        .boxed()
    }

    fn requeue<'a>(&'a self, id: Uuid, _worker: &'a str) -> BoxFuture<'a, StoreResult<bool>> {
        async move {
            let result = sqlx::query(
                "UPDATE jobs SET status = 'queued', progress = 0, started_at = NULL WHERE id = ?1 AND status = 'running'",
            )
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(db)?;
            Ok(result.rows_affected() == 1)
        }
        .boxed()
    }

    fn heartbeat<'a>(&'a self, worker: &'a Registration, holding: &'a [Uuid]) -> BoxFuture<'a, StoreResult<Vec<Uuid>>> {
        async move {
            let mut tx = self.pool.begin().await.map_err(db)?;
            for model in &worker.models {
                let info = serde_json::to_string(model)
                    .map_err(|e| StoreError::Corrupt { id: model.id.clone(), message: e.to_string() })?;
                sqlx::query(
                    "INSERT INTO served_models (model, info) VALUES (?1, ?2) \
                     ON CONFLICT (model) DO UPDATE SET info = excluded.info",
                )
                .bind(&model.id)
                .bind(info)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            }
            let mut held = Vec::with_capacity(holding.len());
            for &id in holding {
                let running: Option<i64> =
                    sqlx::query_scalar("SELECT 1 FROM jobs WHERE id = ?1 AND status = 'running'")
                        .bind(id.to_string())
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db)?;
                if running.is_some() {
                    held.push(id);
                }
            }
            tx.commit().await.map_err(db)?;
            Ok(held)
        }
        .boxed()
    }

    // The rows stay until the next start: the models of one process's workers are the same.
    fn leave<'a>(&'a self, _worker: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        async { Ok(()) }.boxed()
    }

    fn served_models(&self) -> BoxFuture<'_, StoreResult<Vec<ModelInfo>>> {
        async move {
            let infos: Vec<String> = sqlx::query_scalar("SELECT info FROM served_models WHERE info IS NOT NULL")
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
            models_from_json(&infos)
        }
        .boxed()
    }

    fn recover_interrupted(&self) -> BoxFuture<'_, StoreResult<u64>> {
        async move {
            let mut tx = self.pool.begin().await.map_err(db)?;
            // This start's workers register their models again.
            sqlx::query("DELETE FROM served_models").execute(&mut *tx).await.map_err(db)?;
            let result = sqlx::query(
                "UPDATE jobs SET status = 'queued', progress = 0, started_at = NULL WHERE status = 'running'",
            )
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            tx.commit().await.map_err(db)?;
            Ok(result.rows_affected())
        }
        .boxed()
    }

    fn delete_finished(&self, id: Uuid) -> BoxFuture<'_, StoreResult<bool>> {
        async move {
            let result =
                sqlx::query("DELETE FROM jobs WHERE id = ?1 AND status IN ('completed', 'failed', 'cancelled')")
                    .bind(id.to_string())
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
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .bind(upload.id.to_string())
            .bind(upload.filename)
            .bind(upload.frames.min(i64::MAX as u64) as i64)
            .bind(upload.sample_rate)
            .bind(upload.channels)
            .bind(upload.source_job.map(|id| id.to_string()))
            .bind(timestamp(upload.created_at))
            .bind(upload.owner.map(|id| id.to_string()))
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
                "SELECT id, filename, frames, sample_rate, channels, source_job, created_at, owner FROM uploads WHERE id = ?1",
            )
            .bind(id.to_string())
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
                "DELETE FROM uploads WHERE id = ?1 \
                 AND NOT EXISTS (SELECT 1 FROM jobs WHERE upload = ?1 OR melody = ?1)",
            )
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(db)?;
            Ok(result.rows_affected() == 1)
        }
        .boxed()
    }

    fn sweep_unused_uploads(&self, created_before: DateTime<Utc>) -> BoxFuture<'_, StoreResult<Vec<Uuid>>> {
        async move {
            // Timestamps are RFC 3339 in UTC with milliseconds, so text order is time order.
            let ids: Vec<String> = sqlx::query_scalar(
                "DELETE FROM uploads WHERE created_at < ?1 \
                 AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.upload = uploads.id OR jobs.melody = uploads.id) \
                 RETURNING id",
            )
            .bind(timestamp(created_before))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            ids.iter().map(|id| parse_upload_id(id)).collect()
        }
        .boxed()
    }

    fn upload_ids(&self) -> BoxFuture<'_, StoreResult<Vec<Uuid>>> {
        async move {
            let ids: Vec<String> =
                sqlx::query_scalar("SELECT id FROM uploads").fetch_all(&self.pool).await.map_err(db)?;
            ids.iter().map(|id| parse_upload_id(id)).collect()
        }
        .boxed()
    }
}

fn parse_upload_id(text: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(text).map_err(|e| StoreError::Corrupt { id: format!("upload {text}"), message: e.to_string() })
}

fn upload_from_row(row: &SqliteRow) -> StoreResult<Upload> {
    let id_text: String = row.try_get("id").map_err(db)?;
    let corrupt = |message: String| StoreError::Corrupt { id: format!("upload {id_text}"), message };
    let created_at: String = row.try_get("created_at").map_err(db)?;
    let source_job: Option<String> = row.try_get("source_job").map_err(db)?;
    let frames: i64 = row.try_get("frames").map_err(db)?;
    Ok(Upload {
        id: parse_upload_id(&id_text)?,
        filename: row.try_get("filename").map_err(db)?,
        frames: u64::try_from(frames).map_err(|e| corrupt(format!("frames {frames}: {e}")))?,
        sample_rate: row.try_get("sample_rate").map_err(db)?,
        channels: row.try_get("channels").map_err(db)?,
        source_job: source_job
            .map(|text| Uuid::parse_str(&text).map_err(|e| corrupt(format!("source_job {text:?}: {e}"))))
            .transpose()?,
        created_at: DateTime::parse_from_rfc3339(&created_at)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| corrupt(format!("created_at {created_at:?}: {e}")))?,
        owner: owner_from(row).map_err(corrupt)?,
    })
}

mod keys;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::model_info;

    fn params(prompt: &str, duration: f64) -> JobParams {
        let sampling = musicgen::SamplingParams { top_k: 250, top_p: 0.25, temperature: 0.7, cfg_coef: 3.5 };
        let item = musicgen::GenerationItem { prompt: prompt.into(), sampling, seed: (1 << 53) - 1 };
        JobParams::new(item, duration)
    }

    fn upload(created_at: DateTime<Utc>) -> Upload {
        Upload {
            id: Uuid::new_v4(),
            filename: "riff.wav".into(),
            frames: 64000,
            sample_rate: 32000,
            channels: 1,
            source_job: None,
            created_at,
            owner: None,
        }
    }

    async fn add_continuing(store: &SqliteJobStore, prompt: &str, upload: &Upload, stride: f64) -> Job {
        let mut params = params(prompt, 5.0);
        params.continue_from = Some(upload.reference());
        params.extend_stride_secs = stride;
        let job = Job::new(params, "tiny".into(), Utc::now());
        assert_eq!(store.enqueue(&job, 100).await.unwrap(), Enqueued::Queued);
        job
    }

    async fn store(dir: &tempfile::TempDir) -> SqliteJobStore {
        SqliteJobStore::open(&dir.path().join("jobs.db")).await.unwrap()
    }

    async fn add(store: &SqliteJobStore, prompt: &str, duration: f64) -> Job {
        let job = Job::new(params(prompt, duration), "tiny".into(), Utc::now());
        assert_eq!(store.enqueue(&job, 100).await.unwrap(), Enqueued::Queued);
        job
    }

    #[tokio::test]
    async fn an_empty_unreadable_or_damaged_database_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        let refused = |err: StoreError, what: &str, needle: &str| {
            let message = err.to_string();
            assert!(matches!(err, StoreError::Damaged { .. }), "{what}: {message}");
            assert!(message.contains(&path.display().to_string()) && message.contains("move it away"), "{message}");
            assert!(message.contains(needle), "{what}: {needle:?} not in {message}");
        };
        std::fs::write(&path, b"").unwrap();
        refused(SqliteJobStore::open(&path).await.err().unwrap(), "empty", "0 bytes");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "the empty file is left as it was");
        std::fs::write(&path, b"no SQLite here. ".repeat(512)).unwrap();
        refused(SqliteJobStore::open(&path).await.err().unwrap(), "garbage", "not a database");

        // A real history with one page overwritten: it opens and answers "ok" unless checked.
        std::fs::remove_file(&path).unwrap();
        let store = SqliteJobStore::open(&path).await.unwrap();
        for i in 0..300 {
            let job = Job::new(
                params(&format!("prompt number {i} with some words to fill pages"), 4.0),
                "tiny".into(),
                Utc::now(),
            );
            assert_eq!(store.enqueue(&job, 1000).await.unwrap(), Enqueued::Queued);
        }
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&store.pool).await.unwrap();
        store.close().await;
        let mut bytes = std::fs::read(&path).unwrap();
        let page = 4096;
        assert!(bytes.len() > 8 * page, "{} bytes", bytes.len());
        let last_page = bytes.len() / page - 1;
        bytes[last_page * page..last_page * page + 64].fill(0xA5);
        std::fs::write(&path, &bytes).unwrap();
        refused(SqliteJobStore::open(&path).await.err().unwrap(), "damaged page", "integrity check");
    }

    #[tokio::test]
    async fn a_job_round_trips_with_its_queue_position() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let first = add(&store, "a", 5.0).await;
        let second = add(&store, "b", 5.0).await;
        let mut got = store.get(second.id).await.unwrap().unwrap();
        assert_eq!(got.queue_position, Some(1));
        got.queue_position = None;
        // Timestamps are stored with millisecond precision.
        got.created_at = second.created_at;
        assert_eq!(got, second);
        assert_eq!(store.get(first.id).await.unwrap().unwrap().queue_position, Some(0));
        assert_eq!(store.get(Uuid::new_v4()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn enqueue_refuses_beyond_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        for i in 0..2 {
            let job = Job::new(params(&i.to_string(), 5.0), "tiny".into(), Utc::now());
            assert_eq!(store.enqueue(&job, 2).await.unwrap(), Enqueued::Queued);
        }
        let third = Job::new(params("c", 5.0), "tiny".into(), Utc::now());
        assert_eq!(store.enqueue(&third, 2).await.unwrap(), Enqueued::QueueFull);
        assert_eq!(store.get(third.id).await.unwrap(), None);
    }

    #[tokio::test]
    async fn batches_group_the_oldest_jobs_of_equal_duration() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let a = add(&store, "a", 5.0).await;
        let b = add(&store, "b", 10.0).await;
        let c = add(&store, "c", 5.0).await;
        let d = add(&store, "d", 5.0).await;
        let batch = store.claim_batch("w", &["tiny".to_string()], 2, Utc::now()).await.unwrap();
        assert_eq!(batch.iter().map(|j| j.id).collect::<Vec<_>>(), vec![a.id, c.id]);
        assert!(batch.iter().all(|j| j.status == JobStatus::Running && j.started_at.is_some()));
        let next = store.claim_batch("w", &["tiny".to_string()], 4, Utc::now()).await.unwrap();
        assert_eq!(next.iter().map(|j| j.id).collect::<Vec<_>>(), vec![b.id]);
        let last = store.claim_batch("w", &["tiny".to_string()], 4, Utc::now()).await.unwrap();
        assert_eq!(last.iter().map(|j| j.id).collect::<Vec<_>>(), vec![d.id]);
        assert!(store.claim_batch("w", &["tiny".to_string()], 4, Utc::now()).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn only_jobs_continuing_the_same_audio_with_the_same_stride_share_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let (u, v) = (upload(Utc::now()), upload(Utc::now()));
        store.insert_upload(&u).await.unwrap();
        store.insert_upload(&v).await.unwrap();
        let a = add_continuing(&store, "a", &u, 18.0).await;
        let plain = add(&store, "plain", 5.0).await;
        let b = add_continuing(&store, "b", &v, 18.0).await;
        let c = add_continuing(&store, "c", &u, 10.0).await;
        let d = add_continuing(&store, "d", &u, 18.0).await;
        let plain2 = add(&store, "plain 2", 5.0).await;
        let mut strided = params("strided", 5.0);
        strided.extend_stride_secs = 10.0;
        let strided = Job::new(strided, "tiny".into(), Utc::now());
        assert_eq!(store.enqueue(&strided, 100).await.unwrap(), Enqueued::Queued);
        let mut batches = Vec::new();
        loop {
            let batch = store.claim_batch("w", &["tiny".to_string()], 8, Utc::now()).await.unwrap();
            if batch.is_empty() {
                break;
            }
            batches.push(batch.iter().map(|j| j.id).collect::<Vec<_>>());
        }
        assert_eq!(
            batches,
            vec![vec![a.id, d.id], vec![plain.id, plain2.id], vec![b.id], vec![c.id], vec![strided.id]]
        );
        let claimed = store.get(a.id).await.unwrap().unwrap();
        assert_eq!(claimed.params.continue_from, Some(u.reference()), "the claim reads what the job continues");
    }

    #[tokio::test]
    async fn an_upload_lives_while_a_job_references_it_and_unused_ones_are_swept_when_old() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let now = Utc::now();
        let (used, old, fresh) =
            (upload(now - chrono::Duration::days(3)), upload(now - chrono::Duration::days(2)), upload(now));
        for u in [&used, &old, &fresh] {
            store.insert_upload(u).await.unwrap();
        }
        let mut got = store.get_upload(used.id).await.unwrap().unwrap();
        got.created_at = used.created_at;
        assert_eq!(got, used);
        assert_eq!(store.get_upload(Uuid::new_v4()).await.unwrap(), None);
        let first = add_continuing(&store, "first", &used, 18.0).await;
        let second = add_continuing(&store, "second", &used, 18.0).await;

        let swept = store.sweep_unused_uploads(now - chrono::Duration::hours(24)).await.unwrap();
        assert_eq!(swept, vec![old.id], "only the old upload no job uses");
        let mut left = store.upload_ids().await.unwrap();
        left.sort();
        let mut expected = vec![used.id, fresh.id];
        expected.sort();
        assert_eq!(left, expected);

        assert!(!store.delete_upload_if_unused(used.id).await.unwrap(), "two jobs use it");
        for job in [&first, &second] {
            store.cancel(job.id, Utc::now()).await.unwrap();
            assert!(store.delete_finished(job.id).await.unwrap());
        }
        assert!(store.delete_upload_if_unused(used.id).await.unwrap(), "its last job is gone");
        assert_eq!(store.get_upload(used.id).await.unwrap(), None);

        let orphan = Job::new(
            JobParams { continue_from: Some(used.reference()), ..params("gone", 5.0) },
            "tiny".into(),
            Utc::now(),
        );
        assert_eq!(store.enqueue(&orphan, 100).await.unwrap(), Enqueued::UploadGone(used.id));
        assert_eq!(store.get(orphan.id).await.unwrap(), None);
    }

    async fn add_following(store: &SqliteJobStore, prompt: &str, melody: &Upload) -> Job {
        let params = JobParams { melody: Some(melody.reference()), ..params(prompt, 5.0) };
        let job = Job::new(params, "tiny".into(), Utc::now());
        assert_eq!(store.enqueue(&job, 100).await.unwrap(), Enqueued::Queued);
        job
    }

    #[tokio::test]
    async fn a_melody_keeps_its_upload_and_only_jobs_of_the_same_melody_share_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let old = Utc::now() - chrono::Duration::days(2);
        let (m, n) = (upload(old), upload(old));
        store.insert_upload(&m).await.unwrap();
        store.insert_upload(&n).await.unwrap();
        let a = add_following(&store, "a", &m).await;
        let plain = add(&store, "plain", 5.0).await;
        let b = add_following(&store, "b", &n).await;
        let c = add_following(&store, "c", &m).await;
        let both = Job::new(
            JobParams { continue_from: Some(n.reference()), melody: Some(m.reference()), ..params("both", 5.0) },
            "tiny".into(),
            Utc::now(),
        );
        assert_eq!(store.enqueue(&both, 100).await.unwrap(), Enqueued::Queued);
        assert_eq!(store.sweep_unused_uploads(Utc::now()).await.unwrap(), Vec::<Uuid>::new(), "jobs follow both");
        assert!(!store.delete_upload_if_unused(m.id).await.unwrap(), "a melody in use stays");

        let mut batches = Vec::new();
        loop {
            let batch = store.claim_batch("w", &["tiny".to_string()], 8, Utc::now()).await.unwrap();
            if batch.is_empty() {
                break;
            }
            batches.push(batch.iter().map(|j| j.id).collect::<Vec<_>>());
        }
        assert_eq!(batches, vec![vec![a.id, c.id], vec![plain.id], vec![b.id], vec![both.id]]);
        let claimed = store.get(both.id).await.unwrap().unwrap();
        assert_eq!((claimed.params.melody, claimed.params.continue_from), (Some(m.reference()), Some(n.reference())));

        for job in [&a, &b, &c, &plain] {
            store.finish(job.id, "w", Outcome::Failed { error: "x".into() }, Utc::now()).await.unwrap();
            assert!(store.delete_finished(job.id).await.unwrap());
        }
        assert!(!store.delete_upload_if_unused(m.id).await.unwrap(), "`both` follows it");
        assert!(!store.delete_upload_if_unused(n.id).await.unwrap(), "`both` continues it");
        store.finish(both.id, "w", Outcome::Failed { error: "x".into() }, Utc::now()).await.unwrap();
        assert!(store.delete_finished(both.id).await.unwrap());
        let mut swept = store.sweep_unused_uploads(Utc::now()).await.unwrap();
        swept.sort();
        let mut expected = vec![m.id, n.id];
        expected.sort();
        assert_eq!(swept, expected);

        let orphan =
            Job::new(JobParams { melody: Some(m.reference()), ..params("gone", 5.0) }, "tiny".into(), Utc::now());
        assert_eq!(store.enqueue(&orphan, 100).await.unwrap(), Enqueued::UploadGone(m.id));
    }

    #[tokio::test]
    async fn a_worker_claims_jobs_of_its_models_oldest_first_one_model_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let queue = |model: &'static str| {
            let store = &store;
            async move {
                let job = Job::new(params(model, 5.0), model.into(), Utc::now());
                assert_eq!(store.enqueue(&job, 100).await.unwrap(), Enqueued::Queued);
                job
            }
        };
        let small = queue("facebook/musicgen-small").await;
        let a = queue("tiny").await;
        let other = queue("local/x/unserved").await;
        let b = queue("tiny").await;
        let small_2 = queue("facebook/musicgen-small").await;
        let positions = || {
            futures_util::future::join_all(
                [&small, &a, &other, &b].map(|job| async { store.get(job.id).await.unwrap().unwrap().queue_position }),
            )
        };
        assert_eq!(positions().await, [Some(0), Some(0), Some(0), Some(1)], "no served set: each model its own line");
        let served = ["tiny".to_string(), "facebook/musicgen-small".to_string()];
        let registration =
            Registration { worker: "w".into(), models: served.iter().map(|id| model_info(id)).collect() };
        assert!(store.heartbeat(&registration, &[]).await.unwrap().is_empty());
        let mut offered: Vec<String> = store.served_models().await.unwrap().into_iter().map(|m| m.id).collect();
        offered.sort();
        assert_eq!(offered, ["facebook/musicgen-small", "tiny"]);
        // The served models share one line; the unserved one waits behind its own model's jobs only.
        assert_eq!(positions().await, [Some(0), Some(1), Some(0), Some(2)]);

        let ids = |batch: Vec<Job>| batch.into_iter().map(|job| job.id).collect::<Vec<_>>();
        // The oldest job picks the model; the batch takes only that model's jobs.
        assert_eq!(ids(store.claim_batch("w", &served, 4, Utc::now()).await.unwrap()), [small.id, small_2.id]);
        assert_eq!(ids(store.claim_batch("w", &served, 4, Utc::now()).await.unwrap()), [a.id, b.id]);
        assert!(store.claim_batch("w", &served, 4, Utc::now()).await.unwrap().is_empty());
        assert_eq!(store.get(other.id).await.unwrap().unwrap().status, JobStatus::Queued, "not served here");
        let theirs = store.claim_batch("w", &["local/x/unserved".to_string()], 4, Utc::now()).await.unwrap();
        assert_eq!(theirs[0].params, other.params);
    }

    #[tokio::test]
    async fn a_cancelled_job_stays_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let job = add(&store, "a", 5.0).await;
        store.claim_batch("w", &["tiny".to_string()], 1, Utc::now()).await.unwrap();
        let cancelled = store.cancel(job.id, Utc::now()).await.unwrap().unwrap();
        assert_eq!(cancelled.status, JobStatus::Cancelled);
        let outcome = Outcome::Completed { audio_duration: 5.0, generation_time: 1.0 };
        assert!(!store.finish(job.id, "w", outcome, Utc::now()).await.unwrap());
        assert!(!store.set_progress(job.id, "w", 0.5).await.unwrap());
        assert!(!store.requeue(job.id, "w").await.unwrap());
        let after = store.get(job.id).await.unwrap().unwrap();
        assert_eq!((after.status, after.progress), (JobStatus::Cancelled, 0.0));
        assert!(store.delete_finished(job.id).await.unwrap());
        assert_eq!(store.get(job.id).await.unwrap(), None);
    }

    #[tokio::test]
    async fn running_jobs_are_requeued_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let job = {
            let store = store(&dir).await;
            let job = add(&store, "a", 5.0).await;
            store.claim_batch("w", &["tiny".to_string()], 1, Utc::now()).await.unwrap();
            assert!(store.set_progress(job.id, "w", 0.4).await.unwrap());
            store.close().await;
            job
        };
        let store = store(&dir).await;
        assert_eq!(store.recover_interrupted().await.unwrap(), 1);
        let back = store.get(job.id).await.unwrap().unwrap();
        assert_eq!((back.status, back.progress, back.started_at), (JobStatus::Queued, 0.0, None));
        assert!(!store.delete_finished(job.id).await.unwrap(), "a queued job is not deleted");
    }

    #[tokio::test]
    async fn history_is_newest_first_filtered_and_paginated() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(add(&store, &i.to_string(), 5.0).await.id);
        }
        let done = store.claim_batch("w", &["tiny".to_string()], 1, Utc::now()).await.unwrap()[0].id;
        let outcome = Outcome::Completed { audio_duration: 5.0, generation_time: 2.5 };
        assert!(store.finish(done, "w", outcome, Utc::now()).await.unwrap());

        let page = store.list(None, None, 2, 1).await.unwrap();
        assert_eq!(page.total, 5);
        assert_eq!(page.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![ids[3], ids[2]]);
        let completed = store.list(Some(JobStatus::Completed), None, 10, 0).await.unwrap();
        assert_eq!(completed.total, 1);
        assert_eq!(completed.jobs[0].generation_time, Some(2.5));
        let counts = store.count_by_status().await.unwrap();
        assert_eq!((counts[&JobStatus::Queued], counts[&JobStatus::Completed], counts[&JobStatus::Failed]), (4, 1, 0));
    }
}
