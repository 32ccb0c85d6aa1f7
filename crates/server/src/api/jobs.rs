//! Job endpoints: submit, read, list, cancel/delete, audio, progress events.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use futures_util::Stream;
use musicgen::audio::{wav_stream_header, Format, Tags};
use musicgen::ModelInfo;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::uploads::{resolve_continuation, resolve_melody};
use crate::error::{ApiError, ErrorBody};
use crate::job::{job_path, public_model_id, Job, JobStatus, JobView};
use crate::keys::Caller;
use crate::limits::retry_secs;
use crate::request::{Generate, GenerateBody, Validated};
use crate::state::AppState;
use crate::store::Enqueued;
use crate::upload;

const DEFAULT_LIMIT: u64 = 20;
const MAX_LIMIT: u64 = 100;

/// A job id from the path, parsed as a UUID: the only form in which an id reaches the stores.
pub struct JobId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for JobId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let raw = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NotFound("no job at this path; job ids are UUIDs".into()))?
            .0;
        super::parse_path_id(&raw, "job").map(JobId)
    }
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no job with id {id}; it never existed or was deleted"))
}

/// The job, if it exists and the caller may see it: another key's job is as unknown as a missing one.
/// The refusal of a melody for `model`, a text-to-music model: which of the server's models take
/// one, or how to start a server with one.
fn no_melody(state: &AppState, model: &ModelInfo) -> ApiError {
    let melodic: Vec<String> =
        state.models().all().iter().filter(|m| m.melody).map(|m| public_model_id(&m.id)).collect();
    let remedy = if melodic.is_empty() {
        "start the server with --model facebook/musicgen-melody (or -melody-large, -stereo-melody, \
         -stereo-melody-large) besides it"
            .to_string()
    } else {
        format!("pick \"model\": {:?} for it", melodic[0])
    };
    ApiError::invalid(
        Some("melody"),
        format!(
            "melody: {} is a text-to-music model that takes no melody; {remedy}, or leave melody out",
            public_model_id(&model.id)
        ),
    )
}

async fn load(state: &AppState, caller: &Caller, id: Uuid) -> Result<Job, ApiError> {
    state.jobs.get(id).await?.filter(|job| caller.sees(job.owner)).ok_or_else(|| not_found(id))
}

/// Queue a generation.
///
/// With `continue_from` the track continues audio: an upload, or the track of a completed job, which
/// is then extended (its last 30 s prompt the model and what comes before is kept as it is, so the
/// new track is the whole old one followed by new music). `duration` is the length of the whole
/// new track. A job's track is copied when the job is submitted, so deleting that job later changes
/// nothing.
///
/// With `melody` (melody models only: `GET /api/v1/models` says `melody`) the track follows a tune:
/// an upload, or a completed job's track ("in the style of this track"), copied the same way.
#[utoipa::path(
    post, path = "/api/v1/generate", tag = "jobs",
    request_body = GenerateBody,
    responses(
        (status = 202, description = "Queued", body = JobView,
            headers(("Location" = String, description = "URL of the job"))),
        (status = 400, description = "Malformed JSON, a parameter out of range, a `continue_from` or `melody` that names no upload or completed job, or a `melody` for a model that takes none", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 401, description = "No API key, or an unknown or revoked one, where the server needs one", body = ErrorBody),
        (status = 429, description = "The queue is full (`queue_full`), or this key's request rate or queue share is used up (`rate_limited`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait, from the queue's real progress"))),
        (status = 503, description = "Shutting down", body = ErrorBody),
    )
)]
pub async fn generate(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    request: Result<Generate, ApiError>,
) -> Result<Response, ApiError> {
    if *state.shutdown.borrow() {
        return Err(ApiError::Unavailable("the server is shutting down; retry once it is back".into()));
    }
    let Generate { model, request: Validated { mut params, continue_from, melody } } = request?;
    let owner = caller.owner();
    state.limits.take(owner)?;
    if state.limits.has_share(owner) {
        state.limits.check_share(owner, &state.jobs.queue_load(owner).await?)?;
    }
    if melody.is_some() && !model.melody {
        return Err(no_melody(&state, &model));
    }
    // Snapshots of finished tracks made for this request, deleted again if it is refused.
    let mut snapshots = Vec::new();
    if let Some(id) = continue_from {
        let (upload, is_snapshot) = resolve_continuation(&state, &caller, id, params.duration_secs).await?;
        params.continue_from = Some(upload.reference());
        snapshots.extend(is_snapshot.then_some(upload.id));
    }
    if let Some(id) = melody {
        let resolved = resolve_melody(&state, &caller, id).await;
        let (upload, is_snapshot) = match resolved {
            Ok(resolved) => resolved,
            Err(err) => {
                discard(&state, &snapshots).await;
                return Err(err);
            }
        };
        params.melody = Some(upload.reference());
        snapshots.extend(is_snapshot.then_some(upload.id));
    }
    let job = Job { owner, ..Job::new(params, model.id.clone(), Utc::now()) };
    let enqueued = state.jobs.enqueue(&job, state.max_queue).await;
    if !matches!(enqueued, Ok(Enqueued::Queued)) {
        discard(&state, &snapshots).await;
    }
    match enqueued? {
        Enqueued::Queued => {}
        Enqueued::QueueFull => {
            // A place frees when the running batch ends and the next one is claimed.
            let load = state.jobs.queue_load(None).await?;
            return Err(ApiError::QueueFull {
                max_queue: state.max_queue,
                retry_after_secs: retry_secs(load.running_secs_left()),
            });
        }
        Enqueued::UploadGone(gone) => {
            let field =
                if job.params.melody.as_ref().is_some_and(|m| m.upload == gone) { "melody" } else { "continue_from" };
            return Err(ApiError::invalid(
                Some(field),
                format!("{field} {gone}: the upload was deleted while this request was handled; upload it again"),
            ));
        }
    }
    // The answer describes the job as accepted: queued, with its place in the line. The worker may
    // already have claimed it (it also polls), and a later state here would break that contract.
    let queue_position = match state.jobs.get(job.id).await? {
        Some(stored) if stored.status == JobStatus::Queued => stored.queue_position,
        _ => Some(0),
    };
    let job = Job { queue_position, ..job };
    state.workers.wake();
    state.events.changed(job.id);
    let location = job_path(job.id, "");
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(state.view(&job))).into_response())
}

/// Deletes the snapshots made for a refused request (unless another job uses them meanwhile).
async fn discard(state: &AppState, snapshots: &[Uuid]) {
    for &id in snapshots {
        if let Err(err) = upload::delete_if_unused(&*state.jobs, &*state.uploads, id).await {
            tracing::warn!("cannot delete snapshot upload {id} of a refused request: {err}");
        }
    }
}

/// Query of `GET /jobs`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only jobs in this status.
    #[param(value_type = Option<JobStatus>)]
    status: Option<String>,
    /// Page size, 1..=100 (default 20).
    #[param(value_type = Option<u64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// Jobs to skip, newest first (default 0).
    #[param(value_type = Option<u64>, minimum = 0)]
    offset: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct JobList {
    /// Newest first.
    pub jobs: Vec<JobView>,
    /// Jobs matching the filter, all pages together.
    pub total: u64,
    pub limit: u64,
    pub offset: u64,
}

fn parse_count(
    value: Option<&str>,
    field: &'static str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ApiError> {
    let Some(text) = value else { return Ok(default) };
    let shown: String = text.chars().take(40).collect();
    match text.parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(ApiError::invalid(
            Some(field),
            format!("{field} {shown:?} must be an integer within {}..={}", range.start(), range.end()),
        )),
    }
}

/// The history, newest first.
#[utoipa::path(
    get, path = "/api/v1/jobs", tag = "jobs",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of jobs", body = JobList),
        (status = 400, description = "Bad status, limit or offset", body = ErrorBody),
    )
)]
pub async fn list_jobs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(None, format!("bad query string: {}", e.body_text())))?;
    let status = match query.status.as_deref() {
        None => None,
        Some(text) => {
            Some(text.parse::<JobStatus>().map_err(|m| ApiError::invalid(Some("status"), format!("status {m}")))?)
        }
    };
    let limit = parse_count(query.limit.as_deref(), "limit", DEFAULT_LIMIT, 1..=MAX_LIMIT)?;
    let offset = parse_count(query.offset.as_deref(), "offset", 0, 0..=i64::MAX as u64)?;
    let page = state.jobs.list(status, caller.filter(), limit, offset).await?;
    Ok(Json(JobList { jobs: page.jobs.iter().map(|job| state.view(job)).collect(), total: page.total, limit, offset }))
}

/// One job.
#[utoipa::path(
    get, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, format = Uuid, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 404, description = "Unknown id", body = ErrorBody),
    )
)]
pub async fn get_job(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JobId(id): JobId,
) -> Result<Json<JobView>, ApiError> {
    Ok(Json(state.view(&load(&state, &caller, id).await?)))
}

/// Cancel a queued or running job, or delete a finished one and its audio, and the uploads it used
/// (what it continued, its melody) when no other job uses them.
#[utoipa::path(
    delete, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, format = Uuid, description = "Job id")),
    responses(
        (status = 200, description = "The job was queued or running and is now cancelled", body = JobView),
        (status = 204, description = "The finished job and its audio were deleted"),
        (status = 404, description = "Unknown id", body = ErrorBody),
        (status = 500, description = "The audio file could not be removed; the job is kept", body = ErrorBody),
    )
)]
pub async fn delete_job(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JobId(id): JobId,
) -> Result<Response, ApiError> {
    let job = load(&state, &caller, id).await?;
    if !job.status.is_terminal() {
        let job = state.jobs.cancel(id, Utc::now()).await?.ok_or_else(|| not_found(id))?;
        if job.status == JobStatus::Cancelled {
            state.workers.cancelled(id);
            tracing::info!("job {id} cancelled");
        }
        state.events.changed(id);
        return Ok(Json(state.view(&job)).into_response());
    }
    // The file goes first: if it cannot be removed the job stays, listed and deletable again, rather
    // than leaving a file no record names.
    state.audio.delete(id).await?;
    if !state.jobs.delete_finished(id).await? {
        return Err(not_found(id));
    }
    state.events.changed(id);
    tracing::info!("job {id} deleted");
    for used in job.params.uploads() {
        // The job is gone whatever happens here; an upload left behind is swept later.
        if let Err(err) = upload::delete_if_unused(&*state.jobs, &*state.uploads, used).await {
            tracing::warn!("cannot delete upload {used} of deleted job {id}: {err}");
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Query of `GET /jobs/{id}/audio`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AudioQuery {
    /// The file format (default `wav16`, the stored original; `wav` is the same). Other formats are
    /// converted from it once, on the first request, and kept.
    format: Option<AudioFormat>,
}

/// A download format: 16-bit, 24-bit or 32-bit float WAV, FLAC (16-bit, lossless), MP3 (320 kbps)
/// or Ogg/Vorbis. `wav` is `wav16`.
#[derive(Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AudioFormat {
    Wav,
    Wav16,
    Wav24,
    WavF32,
    Flac,
    Mp3,
    Ogg,
}

impl From<AudioFormat> for Format {
    fn from(format: AudioFormat) -> Format {
        match format {
            AudioFormat::Wav | AudioFormat::Wav16 => Format::Wav16,
            AudioFormat::Wav24 => Format::Wav24,
            AudioFormat::WavF32 => Format::WavF32,
            AudioFormat::Flac => Format::Flac,
            AudioFormat::Mp3 => Format::Mp3,
            AudioFormat::Ogg => Format::Ogg,
        }
    }
}

/// What a downloaded file says about itself, where its format has tags: the prompt, the software
/// and how to make it again.
fn tags_of(job: &Job) -> Tags {
    Tags::for_track(&job.params.item.prompt, job.params.item.seed, &public_model_id(&job.model))
}

/// The audio of a completed job, as a WAV or converted; supports Range requests.
#[utoipa::path(
    get, path = "/api/v1/jobs/{id}/audio", tag = "jobs",
    params(("id" = String, Path, format = Uuid, description = "Job id"), AudioQuery),
    responses(
        (status = 200, description = "The audio: 16-bit PCM WAV unless `format` says otherwise; \
            Content-Disposition names the file with the format's extension",
            content(("audio/wav"), ("audio/flac"), ("audio/mpeg"), ("audio/ogg"))),
        (status = 206, description = "The requested byte range",
            content(("audio/wav"), ("audio/flac"), ("audio/mpeg"), ("audio/ogg"))),
        (status = 400, description = "Unknown format", body = ErrorBody),
        (status = 404, description = "Unknown id", body = ErrorBody),
        (status = 409, description = "The job is not completed", body = ErrorBody),
        (status = 416, description = "Range not satisfiable"),
    )
)]
pub async fn get_audio(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JobId(id): JobId,
    query: Result<Query<AudioQuery>, QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    // `format` is the only field: a query that does not deserialize has a bad one.
    let Query(query) = query.map_err(|e| {
        let reason = e.body_text();
        ApiError::invalid(Some("format"), format!("format must be one of {} ({reason})", Format::choices()))
    })?;
    let format = query.format.map_or(Format::Wav16, Format::from);
    let job = load(&state, &caller, id).await?;
    if job.status != JobStatus::Completed {
        return Err(ApiError::Conflict(format!(
            "job {id} is {}; its audio exists once the status is completed",
            job.status
        )));
    }
    let deleted = || ApiError::NotFound(format!("the audio of job {id} was deleted"));
    if format != Format::Wav16 {
        let (audio, tags) = (state.audio.clone(), tags_of(&job));
        let converted = tokio::task::spawn_blocking(move || audio.convert(id, format, &tags))
            .await
            .map_err(|err| ApiError::Internal(format!("the conversion task failed: {err}")))??;
        if !converted {
            return Err(deleted());
        }
    }
    let (parts, _) = request.into_parts();
    let request = Request::from_parts(parts, Body::empty());
    state.audio.serve(id, format, request).await?.ok_or_else(deleted)
}

/// How long a stream of a job that is not running yet waits before reading it again without a
/// wake-up (the worker announces each start; a missed announcement only costs this).
const STREAM_POLL: Duration = Duration::from_secs(1);

/// The audio of a job while it is made: a 16-bit PCM WAV sent in chunks as the job runs.
///
/// A running job's stream is an exact WAV header (its length is known from the duration), the audio
/// made so far (a stream joined mid-job starts with what exists), then each piece as it is made,
/// about every 0.5 s of music, ending with the job. A queued job's response starts once it runs. A
/// completed job's stream is its stored WAV, byte for byte as `GET /jobs/{id}/audio`. A failed or
/// cancelled job answers 409 (its audio is gone); a stream open while it fails or is cancelled ends
/// where its audio ended, short of the length in the header.
///
/// Chunked WAV and not Ogg/Opus: every browser, ffplay and aplay read it, no encoder adds latency,
/// and the samples are the stored file's. A stream's level is fixed on its first audible piece, the
/// file's on the whole track, so the two differ by one gain before the soft clip: stream
/// `tanh(g_stream·x)`, file `tanh(g_file·x)`; an extended track's head is identical in both.
#[utoipa::path(
    get, path = "/api/v1/jobs/{id}/stream", tag = "jobs",
    params(("id" = String, Path, format = Uuid, description = "Job id")),
    responses(
        (status = 200, description = "16-bit PCM WAV, chunked: the audio so far, then each piece as it is made", content_type = "audio/wav"),
        (status = 404, description = "Unknown id", body = ErrorBody),
        (status = 409, description = "The job failed or was cancelled: it has no audio", body = ErrorBody),
        (status = 503, description = "Shutting down", body = ErrorBody),
    )
)]
pub async fn stream_audio(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JobId(id): JobId,
) -> Result<Response, ApiError> {
    // Subscribe before the first read, so that the start of the job is not missed.
    let mut receiver = state.events.subscribe();
    let mut shutdown = state.shutdown.clone();
    let mut job = load(&state, &caller, id).await?;
    let track = loop {
        if let Some(track) = state.live.get(id) {
            break track;
        }
        match job.status {
            JobStatus::Completed => {
                // No Range or validators passed on: the stream is always the whole file.
                let file = state.audio.serve(id, Format::Wav16, Request::new(Body::empty())).await?;
                return file.ok_or_else(|| ApiError::NotFound(format!("the audio of job {id} was deleted")));
            }
            JobStatus::Failed | JobStatus::Cancelled => {
                return Err(ApiError::Conflict(format!(
                    "job {id} is {}; it has no audio to stream (a stream open while it ran ended with its audio)",
                    job.status
                )))
            }
            JobStatus::Queued | JobStatus::Running => {}
        }
        tokio::select! {
            _ = receiver.recv() => {}
            _ = tokio::time::sleep(STREAM_POLL) => {}
            _ = shutdown.wait_for(|stopping| *stopping) => {
                return Err(ApiError::Unavailable("the server is shutting down; retry once it is back".into()));
            }
        }
        job = load(&state, &caller, id).await?;
    };
    let header = wav_stream_header(track.sample_rate, track.channels, Some(track.total_samples));
    let watcher = track.watch();
    let body = futures_util::stream::unfold(
        (Some(header), 0usize, track, watcher, false),
        |(mut header, mut sent, track, mut watcher, done)| async move {
            if done {
                return None;
            }
            loop {
                let (pcm, ended) = track.read_from(sent, &mut watcher);
                sent += pcm.len();
                let chunk = match header.take() {
                    Some(header) => Bytes::from([&header[..], &pcm].concat()),
                    None => pcm,
                };
                if !chunk.is_empty() {
                    return Some((Ok::<_, Infallible>(chunk), (None, sent, track, watcher, ended)));
                }
                // The track lives as long as this reader holds it, so its sender cannot go first.
                if ended || watcher.changed().await.is_err() {
                    return None;
                }
            }
        },
    );
    let disposition = format!("inline; filename=\"dgx-music-{id}.wav\"");
    Ok((
        [
            (header::CONTENT_TYPE, "audio/wav".to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

enum EventsState {
    Start(Box<Job>),
    Watching { last: String, status: JobStatus },
    Done,
}

/// Server-Sent Events: `event: job` with the job JSON on every change (progress at most
/// ~10 per second), ending after a terminal status.
#[utoipa::path(
    get, path = "/api/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = String, Path, format = Uuid, description = "Job id")),
    responses(
        (status = 200, description = "text/event-stream of `job` events, each carrying the job JSON", content_type = "text/event-stream"),
        (status = 404, description = "Unknown id", body = ErrorBody),
        (status = 503, description = "`--max-event-streams` streams are open", body = ErrorBody),
    )
)]
pub async fn job_events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JobId(id): JobId,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // Held by the stream: the slot is free again when the stream ends or its client goes.
    let slot = state.event_streams.open()?;
    // Subscribe before the first read, so that no change between the two is missed.
    let receiver = state.events.subscribe();
    let job = load(&state, &caller, id).await?;
    let stream = futures_util::stream::unfold(
        (EventsState::Start(Box::new(job)), receiver, state.shutdown.clone(), state, slot),
        move |(phase, mut receiver, mut shutdown, state, slot)| async move {
            let job = match phase {
                EventsState::Done => return None,
                EventsState::Start(job) => *job,
                EventsState::Watching { last, status } => loop {
                    let reread = tokio::select! {
                        received = receiver.recv() => match received {
                            // Queue positions move when any job starts or leaves the queue.
                            Ok(changed) => changed == id || changed.is_nil() || status == JobStatus::Queued,
                            Err(RecvError::Lagged(_)) => true,
                            Err(RecvError::Closed) => return None,
                        },
                        _ = shutdown.wait_for(|stopping| *stopping) => return None,
                    };
                    if !reread {
                        continue;
                    }
                    match state.jobs.get(id).await {
                        Ok(Some(job)) if serde_json::to_string(&state.view(&job)).ok().as_ref() != Some(&last) => {
                            break job
                        }
                        Ok(Some(_)) => continue,
                        Ok(None) => return None,
                        Err(err) => {
                            tracing::warn!("event stream of job {id} ends: {err}");
                            return None;
                        }
                    }
                },
            };
            let json = serde_json::to_string(&state.view(&job)).unwrap_or_default();
            let event = Event::default().event("job").data(json.clone());
            let next = if job.status.is_terminal() {
                EventsState::Done
            } else {
                EventsState::Watching { last: json, status: job.status }
            };
            Some((Ok(event), (next, receiver, shutdown, state, slot)))
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
