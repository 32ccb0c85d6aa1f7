//! Upload endpoints, and what `continue_from` and `melody` of `POST /generate` resolve to.
//!
//! An upload is received into `incoming/` (a scratch directory emptied at start), decoded there with
//! the engine's `read_audio` to the model's rate and channels (refusing what is not audio, is cut off
//! or is longer than one 30 s window), stored by the uploads [`AudioStore`](crate::store::AudioStore)
//! as a 32-bit float WAV, and only then recorded. Client file names are shown, never used as paths.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use axum::body::Body;
use axum::extract::multipart::{Field, MultipartError};
use axum::extract::{FromRequest, FromRequestParts, Multipart, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use futures_util::StreamExt;
use musicgen::audio::SampleFormat;
use musicgen::request::{validate_continuation, WINDOW_SECS};
use tokio::io::AsyncWriteExt;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::RefOr;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::{ApiError, ErrorBody};
use crate::job::JobStatus;
use crate::keys::Caller;
use crate::state::AppState;
use crate::upload::{self, upload_path, Upload, UploadView, MAX_UPLOAD_SECS};

/// Room for the multipart framing (boundaries, part headers) around the file.
const MULTIPART_OVERHEAD: u64 = 64 * 1024;

/// The most of a body `POST /uploads` reads: an oversized file up to twice the limit is read to its
/// end and thrown away before the 413 is sent, because a client still sending when the server answers
/// and closes gets a reset instead of the answer. Beyond this the connection is cut.
pub fn body_cap(max_upload_bytes: u64) -> u64 {
    max_upload_bytes.saturating_mul(2).saturating_add(MULTIPART_OVERHEAD)
}

/// Extensions passed on to the decoder as a hint (it probes the content either way).
const AUDIO_EXTENSIONS: [&str; 6] = ["wav", "wave", "flac", "mp3", "ogg", "oga"];

/// The body of `POST /api/v1/uploads` in the OpenAPI document; the handler reads the form as a stream.
pub struct UploadForm;

impl utoipa::PartialSchema for UploadForm {
    fn schema() -> RefOr<Schema> {
        let file = ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .description(Some("The audio: WAV, FLAC, MP3 or OGG/Vorbis, at most 30 s."));
        ObjectBuilder::new().property("file", file).required("file").into()
    }
}

impl ToSchema for UploadForm {}

/// An upload id from the path, parsed as a UUID: the only form in which an id reaches the stores.
pub struct UploadId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for UploadId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let raw = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NotFound("no upload at this path; upload ids are UUIDs".into()))?
            .0;
        super::parse_path_id(&raw, "upload").map(UploadId)
    }
}

fn megabytes(bytes: u64) -> String {
    let mb = bytes as f64 / 1e6;
    if mb >= 10.0 {
        format!("{mb:.0} MB")
    } else {
        format!("{mb:.1} MB")
    }
}

fn too_large(size: Option<u64>, limit: u64) -> ApiError {
    let size = match size {
        Some(bytes) => format!("is {}", megabytes(bytes)),
        None => format!("is over {}", megabytes(limit)),
    };
    ApiError::PayloadTooLarge(format!(
        "the upload {size}; this server accepts files up to {} (its --max-upload-mb); \
         30 s of audio fits in far less, so trim or compress it",
        megabytes(limit)
    ))
}

fn malformed(err: &MultipartError, limit: u64) -> ApiError {
    if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large(None, limit)
    } else {
        ApiError::invalid(
            None,
            format!(
                "the multipart form is malformed ({}); send the audio in one field named file, e.g. curl -F file=@riff.wav",
                err.body_text()
            ),
        )
    }
}

/// Reads what is left of a refused body, up to [`body_cap`], so that the client gets the answer.
async fn drain(body: Body, cap: u64) {
    let mut stream = body.into_data_stream();
    let mut read = 0u64;
    while let Some(Ok(chunk)) = stream.next().await {
        read += chunk.len() as u64;
        if read > cap {
            break;
        }
    }
}

/// The last component of what the client called the file, without control characters; shown only.
fn clean_filename(raw: Option<&str>) -> String {
    let name = raw.unwrap_or_default().rsplit(['/', '\\']).next().unwrap_or_default();
    let name: String = name.chars().filter(|c| !c.is_control()).take(200).collect();
    let name = name.trim();
    if name.is_empty() {
        "upload".into()
    } else {
        name.into()
    }
}

/// A received file in `incoming/`, removed however the request ends.
struct Incoming {
    path: PathBuf,
    filename: String,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_file(&self.path) {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove the received upload {}: {err}", self.path.display());
            }
        }
    }
}

async fn receive(state: &AppState, mut field: Field<'_>, declared: Option<u64>) -> Result<Incoming, ApiError> {
    let filename = clean_filename(field.file_name());
    let extension = filename
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .filter(|ext| AUDIO_EXTENSIONS.contains(&ext.as_str()));
    let name = match extension {
        Some(ext) => format!("{}.{ext}", Uuid::new_v4()),
        None => Uuid::new_v4().to_string(),
    };
    let incoming = Incoming { path: state.incoming.join(name), filename };
    let io = |err: std::io::Error| {
        ApiError::from_io(&err, format!("receiving an upload into {}: {err}", state.incoming.display()))
    };
    let mut file = match tokio::fs::File::create(&incoming.path).await {
        Ok(file) => file,
        Err(err) => {
            discard(&mut field).await;
            return Err(io(err));
        }
    };
    let mut size = 0u64;
    while let Some(chunk) = field.chunk().await.map_err(|err| malformed(&err, state.max_upload_bytes))? {
        size += chunk.len() as u64;
        if size > state.max_upload_bytes {
            discard(&mut field).await;
            return Err(too_large(declared, state.max_upload_bytes));
        }
        if let Err(err) = file.write_all(&chunk).await {
            discard(&mut field).await;
            return Err(io(err));
        }
    }
    file.flush().await.map_err(io)?;
    Ok(incoming)
}

/// Reads the rest of a refused file field, so that the client, still sending it, gets the answer
/// (a full disk, a file over the limit) instead of a connection closed under it. Bounded by the
/// route's body limit (body_cap), where the stream ends in an error.
async fn discard(field: &mut Field<'_>) {
    while let Ok(Some(_)) = field.chunk().await {}
}

fn is_multipart_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("multipart/form-data"))
}

/// Upload audio that a generation can continue or follow as a melody.
///
/// The file is checked now: decoded (WAV, FLAC, MP3, OGG/Vorbis), mixed to the model's channels,
/// resampled to its rate, and refused when it is not audio, is cut off, or lasts more than 30 s
/// (one window of the model: what a continuation can hold). Pass the returned id as `continue_from`,
/// or to a melody model as `melody` (a melody is mixed to mono; a short one loops in long tracks).
/// An upload is deleted with the last job that uses it; one no job uses is deleted after 24 h
/// (the server's --unused-upload-hours).
#[utoipa::path(
    post, path = "/api/v1/uploads", tag = "uploads",
    request_body(content = inline(UploadForm), content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Stored", body = UploadView,
            headers(("Location" = String, description = "URL of the upload"))),
        (status = 400, description = "No `file` field, or a file that is not audio this server reads, is cut off or corrupt, or is longer than 30 s", body = ErrorBody),
        (status = 413, description = "The file is over the server's size limit (50 MB by default)", body = ErrorBody),
        (status = 415, description = "The body is not multipart/form-data", body = ErrorBody),
        (status = 503, description = "Shutting down", body = ErrorBody),
    )
)]
pub async fn create_upload(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let owner = request.extensions().get::<Caller>().and_then(Caller::owner);
    if *state.shutdown.borrow() {
        return Err(ApiError::Unavailable("the server is shutting down; retry once it is back".into()));
    }
    if !is_multipart_form(request.headers()) {
        return Err(ApiError::UnsupportedMediaType(
            "send the audio as multipart/form-data with one field named file, e.g. curl -F file=@riff.wav".into(),
        ));
    }
    let limit = state.max_upload_bytes;
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = declared.filter(|&length| length > limit + MULTIPART_OVERHEAD) {
        if length <= body_cap(limit) {
            drain(request.into_body(), body_cap(limit)).await;
        }
        return Err(too_large(Some(length), limit));
    }
    let mut form = Multipart::from_request(request, &state)
        .await
        .map_err(|rejection| ApiError::invalid(None, format!("bad multipart form: {}", rejection.body_text())))?;
    let mut received: Option<Incoming> = None;
    while let Some(field) = form.next_field().await.map_err(|err| malformed(&err, limit))? {
        match field.name() {
            Some("file") if received.is_none() => received = Some(receive(&state, field, declared).await?),
            Some("file") => return Err(ApiError::invalid(Some("file"), "file: send one file per upload")),
            other => {
                let shown: String = other.unwrap_or_default().chars().take(40).collect();
                return Err(ApiError::invalid(
                    None,
                    format!("the form has one field, file; {shown:?} is not accepted"),
                ));
            }
        }
    }
    let Some(incoming) = received else {
        return Err(ApiError::invalid(
            Some("file"),
            "file is required: send the audio in a form field named file, e.g. curl -F file=@riff.wav",
        ));
    };

    let (rate, channels) = state.models().upload_format();
    let files = state.uploads.clone();
    let id = Uuid::new_v4();
    let stored = tokio::task::spawn_blocking(move || {
        let decoded =
            catch_unwind(AssertUnwindSafe(|| musicgen::audio::read_audio(&incoming.path, rate, channels, WINDOW_SECS)));
        let audio = match decoded {
            Ok(Ok(audio)) => audio,
            // The message is about the file; the path is the server's own and stays in the server.
            Ok(Err(musicgen::Error::BadAudio { message, .. })) => {
                return Err(ApiError::invalid(Some("file"), format!("{}: {message}", incoming.filename)))
            }
            Ok(Err(other)) => {
                return Err(ApiError::Internal(format!("decoding upload {:?}: {other}", incoming.filename)))
            }
            // A decoder bug met on a malformed file: the file is what the client can change.
            Err(_) => {
                tracing::warn!("the audio decoder panicked on upload {:?}", incoming.filename);
                return Err(ApiError::invalid(
                    Some("file"),
                    format!(
                        "{}: the decoder failed on this file; re-encode it (WAV or FLAC always work)",
                        incoming.filename
                    ),
                ));
            }
        };
        files.put(id, &audio, SampleFormat::F32)?;
        Ok::<_, ApiError>((incoming.filename.clone(), audio))
    })
    .await
    .map_err(|err| ApiError::Internal(format!("the upload task failed: {err}")))?;
    let (filename, audio) = stored?;
    let upload = Upload {
        id,
        filename,
        frames: audio.len() as u64,
        sample_rate: audio.sample_rate,
        channels: audio.channels.len() as u16,
        source_job: None,
        created_at: Utc::now(),
        owner,
    };
    if let Err(err) = state.jobs.insert_upload(&upload).await {
        let _ = state.uploads.delete(id).await;
        return Err(err.into());
    }
    tracing::info!("upload {id} stored: {:?}, {:.2} s", upload.filename, upload.duration_secs());
    Ok((StatusCode::CREATED, [(header::LOCATION, upload_path(id))], Json(upload.view())).into_response())
}

/// One upload.
#[utoipa::path(
    get, path = "/api/v1/uploads/{id}", tag = "uploads",
    params(("id" = String, Path, format = Uuid, description = "Upload id")),
    responses(
        (status = 200, description = "The upload", body = UploadView),
        (status = 404, description = "Unknown id, or deleted", body = ErrorBody),
    )
)]
pub async fn get_upload(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    UploadId(id): UploadId,
) -> Result<Json<UploadView>, ApiError> {
    let upload = state.jobs.get_upload(id).await?.filter(|upload| caller.sees(upload.owner)).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no upload with id {id}; it never existed or was deleted (with the last job that continued it, \
             or unused after the server's --unused-upload-hours)"
        ))
    })?;
    Ok(Json(upload.view()))
}

/// What `continue_from` names, checked against the request: see [`resolve`].
pub async fn resolve_continuation(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    total: f64,
) -> Result<(Upload, bool), ApiError> {
    resolve(state, caller, id, Use::Continuation { total }).await
}

/// What `melody` names: see [`resolve`]. Any stored audio is a melody (the engine takes 30 s of it
/// per window and loops a short one), so nothing is checked here beyond its existence.
pub async fn resolve_melody(state: &AppState, caller: &Caller, id: Uuid) -> Result<(Upload, bool), ApiError> {
    resolve(state, caller, id, Use::Melody).await
}

/// The two ways a job uses stored audio.
#[derive(Clone, Copy)]
enum Use {
    /// Continued, into a track of `total` seconds.
    Continuation {
        total: f64,
    },
    Melody,
}

impl Use {
    fn field(self) -> &'static str {
        match self {
            Use::Continuation { .. } => "continue_from",
            Use::Melody => "melody",
        }
    }

    fn check(self, upload: &Upload) -> Result<(), ApiError> {
        match self {
            Use::Continuation { total } => check(upload, total),
            Use::Melody => Ok(()),
        }
    }
}

/// An upload as it is, or a completed job's track, copied now into a new upload (a snapshot, so that
/// deleting the job later changes nothing), checked for its use. The bool says whether the upload is
/// such a new snapshot. What another key made is as unknown as what does not exist.
async fn resolve(state: &AppState, caller: &Caller, id: Uuid, usage: Use) -> Result<(Upload, bool), ApiError> {
    let field = usage.field();
    if let Some(upload) = state.jobs.get_upload(id).await?.filter(|upload| caller.sees(upload.owner)) {
        usage.check(&upload)?;
        return Ok((upload, false));
    }
    let unknown = || {
        ApiError::invalid(
            Some(field),
            format!(
                "{field} {id}: no upload or job has this id; it never existed or was deleted \
                 (an upload goes with the last job that used it, or unused after a while)"
            ),
        )
    };
    let Some(job) = state.jobs.get(id).await?.filter(|job| caller.sees(job.owner)) else { return Err(unknown()) };
    let owner = caller.owner();
    if job.status != JobStatus::Completed {
        let done_with = match usage {
            Use::Continuation { .. } => "extended",
            Use::Melody => "followed as a melody",
        };
        return Err(ApiError::invalid(
            Some(field),
            format!("{field} {id}: that job is {}; only a completed job's track can be {done_with}", job.status),
        ));
    }
    let (rate, channels) = state.models().upload_format();
    let (tracks, uploads) = (state.audio.clone(), state.uploads.clone());
    let snapshot_id = Uuid::new_v4();
    let stored = tokio::task::spawn_blocking(move || {
        let Some(audio) = tracks.read(job.id, rate, channels, MAX_UPLOAD_SECS)? else {
            return Ok(None);
        };
        let upload = Upload {
            id: snapshot_id,
            filename: format!("dgx-music-{}.wav", job.id),
            frames: audio.len() as u64,
            sample_rate: audio.sample_rate,
            channels: audio.channels.len() as u16,
            source_job: Some(job.id),
            created_at: Utc::now(),
            owner,
        };
        usage.check(&upload)?;
        // The track is 16-bit PCM already: stored as such, the copy is exact.
        uploads.put(snapshot_id, &audio, SampleFormat::Pcm16)?;
        Ok::<_, ApiError>(Some(upload))
    })
    .await
    .map_err(|err| ApiError::Internal(format!("the snapshot task failed: {err}")))?;
    let Some(upload) = stored? else { return Err(unknown()) };
    if let Err(err) = state.jobs.insert_upload(&upload).await {
        let _ = state.uploads.delete(upload.id).await;
        return Err(err.into());
    }
    tracing::info!("track of job {id} copied to upload {} for {field}", upload.id);
    Ok((upload, true))
}

/// The engine's rule for a continuation, applied to what the worker will ask of it (the prompt is
/// the audio's last 30 s at most, the rest its head); messages speak of the whole track.
fn check(upload: &Upload, duration_secs: f64) -> Result<(), ApiError> {
    let plan = upload::Plan::new(duration_secs, upload.frames as usize, upload.sample_rate);
    validate_continuation(plan.prompt_frames, upload.sample_rate, plan.engine_duration_secs).map_err(|err| match err {
        musicgen::Error::InvalidRequest { field: "duration", .. } => {
            let secs = upload.duration_secs();
            ApiError::invalid(
                Some("duration"),
                format!(
                    "duration {} s is the whole track, the continued audio included, and {} is already {secs:.2} s: \
                     ask for more than {secs:.2} s",
                    duration_secs, upload.filename
                ),
            )
        }
        musicgen::Error::InvalidRequest { message, .. } => {
            ApiError::invalid(Some("continue_from"), format!("continue_from {}: {message}", upload.id))
        }
        other => other.into(),
    })
}
