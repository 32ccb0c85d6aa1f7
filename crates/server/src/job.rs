//! A generation job: what was asked, where it stands, and how it is shown to clients.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use musicgen::request::DEFAULT_EXTEND_STRIDE_SECS;
use serde::{Deserialize, Serialize};
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

/// The validated parameters of one generation: the engine's item (prompt, sampling, seed), the
/// total duration, the audio it continues, the melody it follows and the stride of its windows. A
/// batch shares all but the item. The store keeps everything but the duration as one JSON object
/// ([`JobParams::to_json`]).
#[derive(Debug, Clone, PartialEq)]
pub struct JobParams {
    pub item: musicgen::GenerationItem,
    /// Seconds of the finished track, the continued audio included.
    pub duration_secs: f64,
    pub continue_from: Option<UploadRef>,
    /// The tune a melody checkpoint follows (mixed to mono when the worker reads it).
    pub melody: Option<UploadRef>,
    pub extend_stride_secs: f64,
}

/// Stored audio a job uses (what it continues, or the melody it follows) as it was when the job was
/// submitted: an upload, or the snapshot of a finished job's track (`source_job`) taken then, so that
/// deleting that job changes nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadRef {
    pub upload: Uuid,
    pub source_job: Option<Uuid>,
    pub filename: String,
    /// Length of the audio. A continued one prompts the engine with its last 30 s at most, and what
    /// comes before is kept as the head of the new track.
    pub duration_secs: f64,
}

/// The `params` column: the item's fields, then what the job continues. Fields added later are
/// optional here, so rows of older releases still load.
#[derive(Serialize, Deserialize)]
struct StoredParams {
    #[serde(flatten)]
    item: musicgen::GenerationItem,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    continue_from: Option<UploadRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    melody: Option<UploadRef>,
    #[serde(default = "default_stride")]
    extend_stride: f64,
}

fn default_stride() -> f64 {
    DEFAULT_EXTEND_STRIDE_SECS
}

impl JobParams {
    /// A generation from nothing with the default stride.
    pub fn new(item: musicgen::GenerationItem, duration_secs: f64) -> Self {
        JobParams {
            item,
            duration_secs,
            continue_from: None,
            melody: None,
            extend_stride_secs: DEFAULT_EXTEND_STRIDE_SECS,
        }
    }

    /// The uploads the job references, each once.
    pub fn uploads(&self) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = self.continue_from.iter().chain(&self.melody).map(|used| used.upload).collect();
        ids.dedup();
        ids
    }

    /// The JSON the store keeps:
    /// `{"prompt", "sampling": {..}, "seed", "continue_from"?, "melody"?, "extend_stride"}`.
    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string(&StoredParams {
            item: self.item.clone(),
            continue_from: self.continue_from.clone(),
            melody: self.melody.clone(),
            extend_stride: self.extend_stride_secs,
        })
    }

    /// Reads what [`JobParams::to_json`] wrote, or what an older release wrote (the item alone).
    pub fn from_json(json: &str, duration_secs: f64) -> serde_json::Result<Self> {
        let stored: StoredParams = serde_json::from_str(json)?;
        Ok(JobParams {
            item: stored.item,
            duration_secs,
            continue_from: stored.continue_from,
            melody: stored.melody,
            extend_stride_secs: stored.extend_stride,
        })
    }
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
    /// The API key that made it; `None` on a server without keys.
    pub owner: Option<Uuid>,
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
            owner: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            queue_position: None,
            audio_duration: None,
            generation_time: None,
            error: None,
        }
    }

    /// The job JSON, as told by a server whose worker runs the models `served` (canonical ids), with
    /// `streamed_secs` of its audio made so far (its live track's; read only while it runs).
    pub fn view(&self, served: &[String], streamed_secs: f64) -> JobView {
        let item = &self.params.item;
        let sampling = &item.sampling;
        let waiting_reason = (self.status == JobStatus::Queued && !served.contains(&self.model)).then(|| {
            let wanted = public_model_id(&self.model);
            let flag = if wanted == self.model {
                format!("--model {wanted}")
            } else {
                format!("--model set to that checkpoint directory (the one ending in {})", &wanted["local/".len()..])
            };
            let runs: Vec<String> = served.iter().map(|id| public_model_id(id)).collect();
            format!(
                "queued for model {wanted}, but this server runs {}; it waits for a server started with {flag} \
                 on this data directory (or cancel it)",
                runs.join(", ")
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
            continue_from: self.params.continue_from.as_ref().map(UploadRef::view),
            melody: self.params.melody.as_ref().map(UploadRef::view),
            extend_stride: self.params.extend_stride_secs,
            model: public_model_id(&self.model),
            waiting_reason,
            created_at: timestamp(self.created_at),
            started_at: self.started_at.map(timestamp),
            finished_at: self.finished_at.map(timestamp),
            queue_position: self.queue_position,
            audio_duration: self.audio_duration,
            audio_seconds_ready: match self.status {
                JobStatus::Running => streamed_secs,
                JobStatus::Completed => self.audio_duration.unwrap_or(0.0),
                // A failed or cancelled job's audio is gone once it ends; a queued one has none yet.
                JobStatus::Queued | JobStatus::Failed | JobStatus::Cancelled => 0.0,
            },
            generation_time: self.generation_time,
            real_time_factor: match (self.audio_duration, self.generation_time) {
                (Some(audio), Some(took)) if took > 0.0 => Some(audio / took),
                _ => None,
            },
            error: self.error.as_deref().map(without_paths),
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
    /// The audio the track continues (its first seconds are that audio); null when it starts from nothing.
    pub continue_from: Option<UploadRefView>,
    /// The tune the track follows (melody checkpoints); null when it follows the text alone.
    pub melody: Option<UploadRefView>,
    /// Seconds each 30 s window of a long track moves on from the last.
    pub extend_stride: f64,
    /// The model the job runs on: its hub id (`facebook/musicgen-small`), or `local/<parent>/<directory>`
    /// for a local checkpoint directory. A server only runs jobs of the model it loaded.
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
    /// Seconds of audio `GET /api/v1/jobs/{id}/stream` has now: growing while the job runs (an
    /// extended track's head counts from the start), the duration once completed, 0 otherwise.
    #[schema(minimum = 0.0)]
    pub audio_seconds_ready: f64,
    /// Wall-clock seconds the generation took.
    pub generation_time: Option<f64>,
    /// audio_duration / generation_time; above 1 is faster than real time.
    pub real_time_factor: Option<f64>,
    pub error: Option<String>,
    /// Where the WAV is, once completed.
    pub audio_url: Option<String>,
}

impl UploadRef {
    fn view(&self) -> UploadRefView {
        UploadRefView {
            upload: self.upload.to_string(),
            source_job: self.source_job.map(|id| id.to_string()),
            filename: self.filename.clone(),
            duration_secs: self.duration_secs,
        }
    }
}

/// Stored audio a job uses (what it continues, or the melody it follows), in the job JSON.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct UploadRefView {
    /// The stored audio (`GET /api/v1/uploads/{id}`).
    #[schema(format = Uuid)]
    pub upload: String,
    /// The finished job whose track this is a copy of, when the request named a job (it may have been
    /// deleted since: the upload is a copy of its track).
    #[schema(format = Uuid)]
    pub source_job: Option<String>,
    /// The uploaded file's name, or the track's download name.
    pub filename: String,
    /// Seconds of audio. A continued track starts with them.
    pub duration_secs: f64,
}

/// A stored error message with every absolute path cut to its file name: release 0.1 wrote paths
/// into job errors, and no server path reaches a client.
fn without_paths(message: &str) -> String {
    message
        .split(' ')
        .map(|word| match word.strip_prefix('/') {
            Some(rest) if rest.contains('/') => rest.rsplit('/').next().unwrap_or_default(),
            _ => word,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How clients see a model's canonical id: a hub id as it is; a local checkpoint directory (whose
/// canonical id is its absolute path, kept in the store so that jobs match their model exactly) as
/// `local/<parent>/<directory>`, since no server path reaches a client.
pub fn public_model_id(id: &str) -> String {
    let path = std::path::Path::new(id);
    if !path.is_absolute() {
        return id.to_string();
    }
    let names: Vec<String> = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    format!("local/{}", names[names.len().saturating_sub(2)..].join("/"))
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
        JobParams::new(item, 8.0)
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
    fn stored_errors_lose_their_paths_but_keep_the_file_name() {
        let stored = "cannot create /tmp/x.1/audio/b7ca.wav.tmp: Not a directory (os error 20)";
        assert_eq!(without_paths(stored), "cannot create b7ca.wav.tmp: Not a directory (os error 20)");
        assert_eq!(without_paths("top_k 1/2 is not /a number"), "top_k 1/2 is not /a number");
    }

    #[test]
    fn a_local_directory_is_shown_by_its_last_two_names_and_a_hub_id_as_it_is() {
        assert_eq!(public_model_id("facebook/musicgen-small"), "facebook/musicgen-small");
        assert_eq!(public_model_id("/srv/models/tiny-mono/checkpoint"), "local/tiny-mono/checkpoint");
        assert_eq!(public_model_id("/checkpoint"), "local/checkpoint");
        let job = Job::new(params(), "/srv/models/tiny-mono".into(), Utc::now());
        let view = job.view(&["/home/me/melody".to_string()], 0.0);
        assert_eq!(view.model, "local/models/tiny-mono");
        let reason = view.waiting_reason.unwrap();
        assert!(reason.contains("local/models/tiny-mono") && reason.contains("runs local/me/melody"), "{reason}");
        assert!(!reason.contains("/srv") && !reason.contains("/home"), "no server path: {reason}");
    }

    #[test]
    fn view_derives_url_and_real_time_factor_from_state() {
        let mut job = Job::new(params(), "tiny".into(), Utc::now());
        let queued = job.view(&["tiny".to_string()], 0.0);
        assert_eq!(queued.audio_url, None);
        assert_eq!(queued.real_time_factor, None);
        assert_eq!(queued.waiting_reason, None);
        assert_eq!(job.view(&["other".to_string(), "tiny".to_string()], 0.0).waiting_reason, None, "one of its models");
        let elsewhere = job.view(&["facebook/musicgen-small".to_string()], 0.0).waiting_reason.unwrap();
        assert!(
            elsewhere.contains("--model tiny") && elsewhere.contains("runs facebook/musicgen-small"),
            "{elsewhere}"
        );
        job.status = JobStatus::Completed;
        job.audio_duration = Some(8.0);
        job.generation_time = Some(2.0);
        let done = job.view(&["other".to_string()], 3.0);
        assert_eq!(done.waiting_reason, None, "only queued jobs wait");
        assert_eq!(done.audio_url, Some(format!("/api/v1/jobs/{}/audio", job.id)));
        assert_eq!(done.real_time_factor, Some(4.0));
        assert_eq!(done.audio_seconds_ready, 8.0, "a completed job streams its whole track");
        job.status = JobStatus::Running;
        assert_eq!(job.view(&["tiny".to_string()], 3.0).audio_seconds_ready, 3.0);
        job.status = JobStatus::Cancelled;
        assert_eq!(job.view(&["tiny".to_string()], 3.0).audio_seconds_ready, 0.0);
        let json = serde_json::to_value(&done).unwrap();
        assert_eq!(json["status"], "completed");
        assert!(json["created_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!((&json["continue_from"], json["extend_stride"].as_f64()), (&serde_json::Value::Null, Some(18.0)));
    }

    #[test]
    fn stored_params_round_trip_and_older_rows_get_the_defaults() {
        let mut params = params();
        assert_eq!(JobParams::from_json(&params.to_json().unwrap(), 8.0).unwrap(), params);
        params.continue_from = Some(UploadRef {
            upload: Uuid::new_v4(),
            source_job: Some(Uuid::new_v4()),
            filename: "riff.flac".into(),
            duration_secs: 4.5,
        });
        params.extend_stride_secs = 10.0;
        let json = params.to_json().unwrap();
        assert_eq!(JobParams::from_json(&json, 8.0).unwrap(), params);
        let view = Job::new(params.clone(), "tiny".into(), Utc::now()).view(&["tiny".to_string()], 0.0);
        let shown = view.continue_from.unwrap();
        assert_eq!(shown.upload, params.continue_from.as_ref().unwrap().upload.to_string());
        assert_eq!((shown.filename.as_str(), shown.duration_secs, view.extend_stride), ("riff.flac", 4.5, 10.0));
        // A row written before migration 0003: the item alone.
        let old = r#"{"prompt": "p", "sampling": {"top_k": 5, "top_p": 0.0, "temperature": 1.0, "cfg_coef": 3.0}, "seed": 1}"#;
        let loaded = JobParams::from_json(old, 3.0).unwrap();
        assert_eq!((loaded.continue_from, loaded.extend_stride_secs), (None, DEFAULT_EXTEND_STRIDE_SECS));
        assert_eq!((loaded.item.prompt.as_str(), loaded.item.sampling.top_k), ("p", 5));
    }
}
