//! A generation job: what was asked, where it stands, and how it is shown to clients.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// Where a job is in its life. Terminal statuses never change again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] =
        [JobStatus::Queued, JobStatus::Running, JobStatus::Completed, JobStatus::Failed, JobStatus::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        JobStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a status; use queued, running, completed, failed or cancelled"))
    }
}

/// The validated parameters of one generation: the engine's item (prompt, sampling, seed) and
/// the duration a batch shares. The store keeps `item` as its JSON form.
#[derive(Debug, Clone, PartialEq)]
pub struct JobParams {
    pub item: musicgen::GenerationItem,
    pub duration_secs: f64,
}

/// A job as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: Uuid,
    pub status: JobStatus,
    pub progress: f64,
    pub params: JobParams,
    /// The canonical id of the model it runs on ([`musicgen::ModelInfo::id`]).
    pub model: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Queued jobs ahead of this one (0 runs next); `None` unless queued.
    pub queue_position: Option<u64>,
    pub audio_duration: Option<f64>,
    pub generation_time: Option<f64>,
    pub error: Option<String>,
}

impl Job {
    pub fn new(params: JobParams, model: String, now: DateTime<Utc>) -> Self {
        Job {
            id: Uuid::new_v4(),
            status: JobStatus::Queued,
            progress: 0.0,
            params,
            model,
            created_at: now,
            started_at: None,
            finished_at: None,
            queue_position: None,
            audio_duration: None,
            generation_time: None,
            error: None,
        }
    }

    /// The job JSON, as told by a server whose worker runs the model `served` (a canonical id).
    pub fn view(&self, served: &str) -> JobView {
        let item = &self.params.item;
        let sampling = &item.sampling;
        let waiting_reason = (self.status == JobStatus::Queued && self.model != served).then(|| {
            format!(
                "queued for model {}, but this server runs {served}; it waits for a server started with \
                 --model {} on this data directory (or cancel it)",
                self.model, self.model
            )
        });
        JobView {
            id: self.id.to_string(),
            status: self.status,
            progress: self.progress,
            prompt: item.prompt.clone(),
            duration: self.params.duration_secs,
            top_k: sampling.top_k as u64,
            top_p: sampling.top_p,
            temperature: sampling.temperature,
            cfg_coef: sampling.cfg_coef,
            seed: item.seed,
            model: self.model.clone(),
            waiting_reason,
            created_at: timestamp(self.created_at),
            started_at: self.started_at.map(timestamp),
            finished_at: self.finished_at.map(timestamp),
            queue_position: self.queue_position,
            audio_duration: self.audio_duration,
            generation_time: self.generation_time,
            real_time_factor: match (self.audio_duration, self.generation_time) {
                (Some(audio), Some(took)) if took > 0.0 => Some(audio / took),
                _ => None,
            },
            error: self.error.clone(),
            audio_url: (self.status == JobStatus::Completed).then(|| job_path(self.id, "/audio")),
        }
    }
}

/// `/api/v1/jobs/<id><suffix>`: the one place job URLs are spelled.
pub fn job_path(id: Uuid, suffix: &str) -> String {
    format!("/api/v1/jobs/{id}{suffix}")
}

/// RFC 3339 in UTC with milliseconds, the format of every timestamp in the API and the database.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The job JSON every job-returning endpoint and every SSE event carries.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct JobView {
    #[schema(format = Uuid, example = "0b6f6c2e-8f0e-4a51-9d7c-2f1f6f0c3a10")]
    pub id: String,
    pub status: JobStatus,
    /// Fraction of decoder steps done, 0..=1.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub progress: f64,
    pub prompt: String,
    /// Seconds of audio asked for.
    pub duration: f64,
    pub top_k: u64,
    pub top_p: f64,
    pub temperature: f64,
    pub cfg_coef: f64,
    pub seed: u64,
    /// The model the job runs on: its hub id (`facebook/musicgen-small`), or the canonical path
    /// of a local checkpoint directory. A server only runs jobs of the model it loaded.
    pub model: String,
    /// Why a queued job does not move: it is for a model this server does not run. Null otherwise.
    pub waiting_reason: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    /// Queued jobs ahead of this one (0 runs next); null unless queued.
    pub queue_position: Option<u64>,
    /// Seconds of audio produced.
    pub audio_duration: Option<f64>,
    /// Wall-clock seconds the generation took.
    pub generation_time: Option<f64>,
    /// audio_duration / generation_time; above 1 is faster than real time.
    pub real_time_factor: Option<f64>,
    pub error: Option<String>,
    /// Where the WAV is, once completed.
    pub audio_url: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> JobParams {
        let item = musicgen::GenerationItem {
            prompt: "ambient piano".into(),
            sampling: musicgen::SamplingParams::default(),
            seed: 7,
        };
        JobParams { item, duration_secs: 8.0 }
    }

    #[test]
    fn statuses_round_trip_and_reject_unknown_names() {
        for status in JobStatus::ALL {
            assert_eq!(status.as_str().parse::<JobStatus>().unwrap(), status);
        }
        let err = "done".parse::<JobStatus>().unwrap_err();
        assert!(err.contains("\"done\"") && err.contains("completed"), "{err}");
    }

    #[test]
    fn view_derives_url_and_real_time_factor_from_state() {
        let mut job = Job::new(params(), "tiny".into(), Utc::now());
        let queued = job.view("tiny");
        assert_eq!(queued.audio_url, None);
        assert_eq!(queued.real_time_factor, None);
        assert_eq!(queued.waiting_reason, None);
        let elsewhere = job.view("facebook/musicgen-small").waiting_reason.unwrap();
        assert!(
            elsewhere.contains("--model tiny") && elsewhere.contains("runs facebook/musicgen-small"),
            "{elsewhere}"
        );
        job.status = JobStatus::Completed;
        job.audio_duration = Some(8.0);
        job.generation_time = Some(2.0);
        let done = job.view("other");
        assert_eq!(done.waiting_reason, None, "only queued jobs wait");
        assert_eq!(done.audio_url, Some(format!("/api/v1/jobs/{}/audio", job.id)));
        assert_eq!(done.real_time_factor, Some(4.0));
        let json = serde_json::to_value(&done).unwrap();
        assert_eq!(json["status"], "completed");
        assert!(json["created_at"].as_str().unwrap().ends_with('Z'));
    }
}
