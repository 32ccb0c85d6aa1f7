//! The radio endpoints: an endless track for as long as one listens, its prompt changeable.

use axum::body::{Body, Bytes};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use musicgen::audio::wav_stream_header;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::{ApiError, ErrorBody};
use crate::job::public_model_id;
use crate::keys::Caller;
use crate::radio::{Listening, Station};
use crate::request::unknown_model;
use crate::state::AppState;

/// Query of `GET /radio`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RadioQuery {
    /// What the music is, as for a job (at most 2000 characters).
    prompt: Option<String>,
    /// One of the server's models (`GET /api/v1/models`); the default one when absent.
    model: Option<String>,
}

/// A new prompt for the station.
#[derive(Deserialize, ToSchema)]
pub struct RadioChange {
    /// Followed from the next 30 s window on (each window continues the last one's end).
    pub prompt: String,
}

/// A station as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct RadioView {
    #[schema(format = Uuid)]
    pub id: String,
    /// The prompt asked for last: what plays from the next window on, if not already.
    pub prompt: String,
    pub model: String,
    pub seed: u64,
}

impl RadioView {
    fn of(station: &Station) -> Self {
        RadioView {
            id: station.id.to_string(),
            prompt: station.prompt(),
            model: public_model_id(&station.model),
            seed: station.seed,
        }
    }
}

/// A station id from the path.
pub struct StationId(Uuid);

impl<S: Send + Sync> FromRequestParts<S> for StationId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let raw = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NotFound("no station at this path; station ids are UUIDs".into()))?
            .0;
        super::parse_path_id(&raw, "radio station").map(StationId)
    }
}

/// Listen to an endless track made while you listen.
///
/// A 16-bit PCM WAV whose header gives no length (its sizes are 0xFFFFFFFF, which browsers, ffplay,
/// aplay and sox read as "until the stream ends"), chunked: window after window of `prompt`, for as
/// long as the connection is open. The server makes one station at a time, on the worker that runs
/// jobs: while it plays, queued jobs wait (their `waiting_reason` says so) and start within a step of
/// the listener leaving. `X-Radio-Id` names the station for `PUT /api/v1/radio/{id}`. A station asked
/// for while a batch of jobs runs starts once that batch ends.
#[utoipa::path(
    get, path = "/api/v1/radio", tag = "radio",
    params(RadioQuery),
    responses(
        (status = 200, description = "An endless 16-bit PCM WAV, chunked", content_type = "audio/wav",
            headers(("X-Radio-Id" = String, description = "The station's id, for PUT /api/v1/radio/{id}"))),
        (status = 400, description = "No prompt, a prompt over 2000 characters, or a model this server does not run", body = ErrorBody),
        (status = 409, description = "A station is playing: one at a time", body = ErrorBody),
        (status = 503, description = "Shutting down, or an API node without a worker of its own", body = ErrorBody),
    )
)]
pub async fn listen(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<RadioQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(None, format!("bad query string: {}", e.body_text())))?;
    if *state.shutdown.borrow() {
        return Err(ApiError::Unavailable("the server is shutting down; retry once it is back".into()));
    }
    let prompt = query.prompt.ok_or_else(|| {
        ApiError::invalid(Some("prompt"), "prompt is required: describe the music, e.g. ?prompt=ambient%20piano")
    })?;
    musicgen::request::validate_prompt(&prompt)?;
    // The radio's audio goes from the worker thread to this connection without the store in between.
    let radio = state.workers.radio().ok_or_else(|| {
        ApiError::Unavailable(
            "the radio plays on a worker of the node that serves it, and this one has none (serve --no-worker); \
             listen on a `dgx-music serve` node that runs its own worker"
                .into(),
        )
    })?;
    let models = state.models();
    let model = match query.model.as_deref() {
        None => models.default_model().ok_or_else(crate::request::no_models)?,
        Some(name) => models.find(name).ok_or_else(|| unknown_model(name, &state))?,
    };
    // A fresh v4 UUID is 122 bits from the OS generator, as for a job's seed.
    let seed = Uuid::new_v4().as_u64_pair().0 & crate::request::MAX_SEED;
    let opened = radio.open(caller.owner(), model.id.clone(), prompt, seed);
    let (station, listening, audio) = opened.map_err(|playing| {
        ApiError::Conflict(format!(
            "the radio is playing (station {}, model {}); this server plays one station at a time: try again \
             once its listener leaves",
            playing.id,
            public_model_id(&playing.model)
        ))
    })?;
    state.workers.wake();
    let channels = u16::try_from(model.audio_channels).unwrap_or(u16::MAX);
    let header = Bytes::copy_from_slice(&wav_stream_header(model.sample_rate, channels, None));
    let body = futures_util::stream::unfold(
        (Some(header), audio, state.shutdown.clone(), listening),
        |(header, mut audio, mut shutdown, listening): (_, _, _, Listening)| async move {
            if let Some(header) = header {
                return Some((Ok::<_, std::convert::Infallible>(header), (None, audio, shutdown, listening)));
            }
            let piece = tokio::select! {
                piece = audio.recv() => piece?,
                _ = shutdown.wait_for(|stopping| *stopping) => return None,
            };
            Some((Ok(piece), (None, audio, shutdown, listening)))
        },
    );
    Ok((
        [
            (header::CONTENT_TYPE, "audio/wav".to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
            (header::HeaderName::from_static("x-radio-id"), station.id.to_string()),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// Change the station's prompt: the next 30 s window follows it.
///
/// Each window continues the end of the one before, so the music moves to the new prompt rather
/// than cutting to it. Only the key that started the station may change it.
#[utoipa::path(
    put, path = "/api/v1/radio/{id}", tag = "radio",
    params(("id" = String, Path, format = Uuid, description = "Station id (X-Radio-Id)")),
    request_body = RadioChange,
    responses(
        (status = 200, description = "The station, with its new prompt", body = RadioView),
        (status = 400, description = "Malformed JSON, or an empty or too long prompt", body = ErrorBody),
        (status = 404, description = "No station with this id is playing", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
    )
)]
pub async fn change(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    StationId(id): StationId,
    body: Result<Json<RadioChange>, JsonRejection>,
) -> Result<Json<RadioView>, ApiError> {
    let station = state
        .workers
        .radio()
        .and_then(|radio| radio.get(id))
        .filter(|station| station.is_listened() && caller.sees(station.owner))
        .ok_or_else(|| {
            ApiError::NotFound(format!("no radio station {id} is playing; start one with GET /api/v1/radio"))
        })?;
    let Json(change) = body.map_err(|rejection| match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
            "send the body as JSON with the header Content-Type: application/json".into(),
        ),
        other => ApiError::invalid(None, format!("{}; send {{\"prompt\": \"...\"}}", other.body_text())),
    })?;
    musicgen::request::validate_prompt(&change.prompt)?;
    station.change_prompt(change.prompt);
    Ok(Json(RadioView::of(&station)))
}
