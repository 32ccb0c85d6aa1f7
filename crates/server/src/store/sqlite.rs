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

use super::{JobPage, JobStore, Outcome, StoreError, StoreResult};
use crate::job::{timestamp, Job, JobParams, JobStatus};

/// Every column a [`Job`] is read from, with the queue position computed from `seq`.
macro_rules! select_jobs {
    ($tail:literal) => {
        concat!(
            "SELECT seq, id, status, model, duration, params, progress, ",
            "created_at, started_at, finished_at, audio_duration, generation_time, error, ",
            "CASE WHEN status = 'queued' THEN ",
            "(SELECT COUNT(*) FROM jobs AS ahead ",
            "WHERE ahead.status = 'queued' AND ahead.model = jobs.model AND ahead.seq < jobs.seq) ",
            "END AS queue_position FROM jobs ",
            $tail
        )
    };
}

pub struct SqliteJobStore {
    pool: SqlitePool,
}

impl SqliteJobStore {
    /// Opens (creating if needed) the database file and applies pending migrations.
    pub async fn open(path: &Path) -> StoreResult<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            // WAL keeps readers (API) and the writer (worker) from blocking each other; with
            // NORMAL sync a killed process loses nothing, only a power cut could lose the last commit.
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(8).connect_with(options).await.map_err(db)?;
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
    let item = serde_json::from_str(&params).map_err(|e| corrupt(format!("params {params:?}: {e}")))?;
    Ok(Job {
        id,
        status,
        progress: row.try_get("progress").map_err(db)?,
        params: JobParams { item, duration_secs: row.try_get("duration").map_err(db)? },
        model: row.try_get("model").map_err(db)?,
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
    fn enqueue(&self, job: &Job, max_queue: usize) -> BoxFuture<'_, StoreResult<bool>> {
        let job = job.clone();
        async move {
            let params = serde_json::to_string(&job.params.item)
                .map_err(|e| StoreError::Corrupt { id: job.id.to_string(), message: e.to_string() })?;
            // One statement, so the capacity check and the insert cannot interleave with another request's.
            let result = sqlx::query(
                "INSERT INTO jobs (id, status, model, duration, params, progress, created_at) \
                 SELECT ?1, 'queued', ?2, ?3, ?4, 0, ?5 \
                 WHERE (SELECT COUNT(*) FROM jobs WHERE status = 'queued') < ?6",
            )
            .bind(job.id.to_string())
            .bind(job.model.clone())
            .bind(job.params.duration_secs)
            .bind(params)
            .bind(timestamp(job.created_at))
            .bind(max_queue as i64)
            .execute(&self.pool)
            .await
            .map_err(db)?;
            Ok(result.rows_affected() == 1)
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

    fn list(&self, status: Option<JobStatus>, limit: u64, offset: u64) -> BoxFuture<'_, StoreResult<JobPage>> {
        async move {
            let status = status.map(|s| s.as_str());
            let rows =
                sqlx::query(select_jobs!("WHERE (?1 IS NULL OR status = ?1) ORDER BY seq DESC LIMIT ?2 OFFSET ?3"))
                    .bind(status)
                    .bind(limit.min(i64::MAX as u64) as i64)
                    .bind(offset.min(i64::MAX as u64) as i64)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db)?;
            let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE (?1 IS NULL OR status = ?1)")
                .bind(status)
                .fetch_one(&self.pool)
                .await
                .map_err(db)?;
            let jobs = rows.iter().map(job_from_row).collect::<StoreResult<Vec<_>>>()?;
            Ok(JobPage { jobs, total: total.max(0) as u64 })
        }
        .boxed()
    }

    fn claim_batch<'a>(
        &'a self,
        model: &'a str,
        max_batch: usize,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, StoreResult<Vec<Job>>> {
        async move {
            let rows = sqlx::query(
                "UPDATE jobs SET status = 'running', started_at = ?1, progress = 0 \
                 WHERE seq IN ( \
                   SELECT j.seq FROM jobs AS j, \
                     (SELECT duration FROM jobs WHERE status = 'queued' AND model = ?3 ORDER BY seq LIMIT 1) AS head \
                   WHERE j.status = 'queued' AND j.model = ?3 AND j.duration = head.duration \
                   ORDER BY j.seq LIMIT ?2) \
                 RETURNING seq, id, status, model, duration, params, progress, \
                   created_at, started_at, finished_at, audio_duration, generation_time, error, \
                   NULL AS queue_position",
            )
            .bind(timestamp(now))
            .bind(max_batch.max(1) as i64)
            .bind(model)
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

    fn set_progress(&self, id: Uuid, progress: f64) -> BoxFuture<'_, StoreResult<()>> {
        async move {
            sqlx::query("UPDATE jobs SET progress = ?2 WHERE id = ?1 AND status = 'running'")
                .bind(id.to_string())
                .bind(progress.clamp(0.0, 1.0))
                .execute(&self.pool)
                .await
                .map_err(db)?;
            Ok(())
        }
        .boxed()
    }

    fn finish(&self, id: Uuid, outcome: Outcome, now: DateTime<Utc>) -> BoxFuture<'_, StoreResult<bool>> {
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

    fn requeue(&self, id: Uuid) -> BoxFuture<'_, StoreResult<bool>> {
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

    fn requeue_all_running(&self) -> BoxFuture<'_, StoreResult<u64>> {
        async move {
            let result = sqlx::query(
                "UPDATE jobs SET status = 'queued', progress = 0, started_at = NULL WHERE status = 'running'",
            )
            .execute(&self.pool)
            .await
            .map_err(db)?;
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
            let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
            let mut counts: HashMap<JobStatus, u64> = JobStatus::ALL.into_iter().map(|s| (s, 0)).collect();
            for row in &rows {
                let status: String = row.try_get("status").map_err(db)?;
                let n: i64 = row.try_get("n").map_err(db)?;
                let status = JobStatus::from_str(&status)
                    .map_err(|message| StoreError::Corrupt { id: "(count)".into(), message })?;
                counts.insert(status, n.max(0) as u64);
            }
            Ok(counts)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(prompt: &str, duration: f64) -> JobParams {
        let sampling = musicgen::SamplingParams { top_k: 250, top_p: 0.25, temperature: 0.7, cfg_coef: 3.5 };
        let item = musicgen::GenerationItem { prompt: prompt.into(), sampling, seed: (1 << 53) - 1 };
        JobParams { item, duration_secs: duration }
    }

    async fn store(dir: &tempfile::TempDir) -> SqliteJobStore {
        SqliteJobStore::open(&dir.path().join("jobs.db")).await.unwrap()
    }

    async fn add(store: &SqliteJobStore, prompt: &str, duration: f64) -> Job {
        let job = Job::new(params(prompt, duration), "tiny".into(), Utc::now());
        assert!(store.enqueue(&job, 100).await.unwrap());
        job
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
            assert!(store.enqueue(&job, 2).await.unwrap());
        }
        let third = Job::new(params("c", 5.0), "tiny".into(), Utc::now());
        assert!(!store.enqueue(&third, 2).await.unwrap());
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
        let batch = store.claim_batch("tiny", 2, Utc::now()).await.unwrap();
        assert_eq!(batch.iter().map(|j| j.id).collect::<Vec<_>>(), vec![a.id, c.id]);
        assert!(batch.iter().all(|j| j.status == JobStatus::Running && j.started_at.is_some()));
        let next = store.claim_batch("tiny", 4, Utc::now()).await.unwrap();
        assert_eq!(next.iter().map(|j| j.id).collect::<Vec<_>>(), vec![b.id]);
        let last = store.claim_batch("tiny", 4, Utc::now()).await.unwrap();
        assert_eq!(last.iter().map(|j| j.id).collect::<Vec<_>>(), vec![d.id]);
        assert!(store.claim_batch("tiny", 4, Utc::now()).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_worker_claims_only_jobs_of_its_model() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let other = Job::new(params("other", 5.0), "facebook/musicgen-small".into(), Utc::now());
        assert!(store.enqueue(&other, 100).await.unwrap());
        let a = add(&store, "a", 5.0).await;
        let b = add(&store, "b", 5.0).await;
        assert_eq!(store.get(other.id).await.unwrap().unwrap().queue_position, Some(0));
        assert_eq!(
            store.get(a.id).await.unwrap().unwrap().queue_position,
            Some(0),
            "positions count jobs of one model"
        );
        assert_eq!(store.get(b.id).await.unwrap().unwrap().queue_position, Some(1));
        let batch = store.claim_batch("tiny", 4, Utc::now()).await.unwrap();
        assert_eq!(batch.iter().map(|j| j.id).collect::<Vec<_>>(), vec![a.id, b.id]);
        assert!(store.claim_batch("tiny", 4, Utc::now()).await.unwrap().is_empty());
        assert_eq!(store.get(other.id).await.unwrap().unwrap().status, JobStatus::Queued);
        let theirs = store.claim_batch("facebook/musicgen-small", 4, Utc::now()).await.unwrap();
        assert_eq!(theirs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![other.id]);
        assert_eq!(theirs[0].params, other.params);
    }

    #[tokio::test]
    async fn a_cancelled_job_stays_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let job = add(&store, "a", 5.0).await;
        store.claim_batch("tiny", 1, Utc::now()).await.unwrap();
        let cancelled = store.cancel(job.id, Utc::now()).await.unwrap().unwrap();
        assert_eq!(cancelled.status, JobStatus::Cancelled);
        let outcome = Outcome::Completed { audio_duration: 5.0, generation_time: 1.0 };
        assert!(!store.finish(job.id, outcome, Utc::now()).await.unwrap());
        store.set_progress(job.id, 0.5).await.unwrap();
        assert!(!store.requeue(job.id).await.unwrap());
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
            store.claim_batch("tiny", 1, Utc::now()).await.unwrap();
            store.set_progress(job.id, 0.4).await.unwrap();
            store.close().await;
            job
        };
        let store = store(&dir).await;
        assert_eq!(store.requeue_all_running().await.unwrap(), 1);
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
        let done = store.claim_batch("tiny", 1, Utc::now()).await.unwrap()[0].id;
        let outcome = Outcome::Completed { audio_duration: 5.0, generation_time: 2.5 };
        assert!(store.finish(done, outcome, Utc::now()).await.unwrap());

        let page = store.list(None, 2, 1).await.unwrap();
        assert_eq!(page.total, 5);
        assert_eq!(page.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![ids[3], ids[2]]);
        let completed = store.list(Some(JobStatus::Completed), 10, 0).await.unwrap();
        assert_eq!(completed.total, 1);
        assert_eq!(completed.jobs[0].generation_time, Some(2.5));
        let counts = store.count_by_status().await.unwrap();
        assert_eq!((counts[&JobStatus::Queued], counts[&JobStatus::Completed], counts[&JobStatus::Failed]), (4, 1, 0));
    }
}
