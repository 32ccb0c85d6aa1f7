//! The HTTP surface: `/api/v1/...`, `/metrics`, and the web page's routes merged in.

mod jobs;
mod radio;
mod session;
mod system;
mod uploads;

use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::middleware;
use axum::routing::{get, post, put};
use axum::Router;
use utoipa::OpenApi;

use uuid::Uuid;

use crate::error::ApiError;
use crate::request::BODY_LIMIT;
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "DGX Music API",
        description = "Text-to-music generation with MusicGen: queue jobs, follow their progress, fetch the audio (WAV, FLAC, MP3, Ogg)."
    ),
    paths(
        jobs::generate,
        jobs::list_jobs,
        jobs::get_job,
        jobs::delete_job,
        jobs::get_audio,
        jobs::stream_audio,
        jobs::job_events,
        uploads::create_upload,
        uploads::get_upload,
        radio::listen,
        radio::change,
        system::health,
        system::models,
        system::metrics,
        system::openapi_json,
        session::create_session,
        session::delete_session,
    ),
    // Named in `GET /jobs/{id}/audio`'s query parameters, which utoipa does not collect by itself.
    components(schemas(jobs::AudioFormat)),
    modifiers(&KeyAuth),
    tags(
        (name = "jobs", description = "Generation jobs and their audio"),
        (name = "radio", description = "An endless track, made while you listen, its prompt changeable between windows"),
        (name = "uploads", description = "Audio to continue: uploaded files, and copies of finished tracks being extended"),
        (name = "service", description = "Health, models, metrics, the page's session cookie and this document"),
    )
)]
pub struct ApiDoc;

/// Every operation but this document takes an API key (`Authorization: Bearer`) and may answer 401.
struct KeyAuth;

impl utoipa::Modify for KeyAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        use utoipa::openapi::{RefOr, ResponseBuilder};
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "An API key from `dgx-music keys create`. Needed once any key exists, and always on a server \
                 bound to a non-loopback address (unless it runs with --insecure-no-auth).",
            ))
            .build();
        components.add_security_scheme("api_key", SecurityScheme::Http(scheme));
        let unauthorized = ResponseBuilder::new()
            .description("No API key, or an unknown or revoked one, where the server needs one")
            .content(
                "application/json",
                utoipa::openapi::ContentBuilder::new()
                    .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("ErrorBody"))))
                    .build(),
            )
            .build();
        for (path, item) in openapi.paths.paths.iter_mut() {
            if path == "/api/v1/openapi.json" {
                continue;
            }
            for operation in [&mut item.get, &mut item.post, &mut item.put, &mut item.delete].into_iter().flatten() {
                operation.security = Some(vec![SecurityRequirement::new("api_key", Vec::<String>::new())]);
                operation.responses.responses.entry("401".into()).or_insert_with(|| unauthorized.clone().into());
            }
        }
    }
}

/// The whole application: API, metrics, the web page, and JSON errors for everything else.
pub fn router(state: AppState) -> Router {
    // The uploads route reads files up to the server's limit (counted as they stream in, for the
    // message) and an oversized one a little further (see `uploads::body_cap`); everything else keeps
    // the small JSON limit.
    let upload_limit = usize::try_from(uploads::body_cap(state.max_upload_bytes)).unwrap_or(usize::MAX);
    let api = Router::new()
        .route("/generate", post(jobs::generate))
        .route("/uploads", post(uploads::create_upload).layer(DefaultBodyLimit::max(upload_limit)))
        .route("/uploads/{id}", get(uploads::get_upload))
        .route("/jobs", get(jobs::list_jobs))
        .route("/jobs/{id}", get(jobs::get_job).delete(jobs::delete_job))
        .route("/jobs/{id}/audio", get(jobs::get_audio))
        .route("/jobs/{id}/stream", get(jobs::stream_audio))
        .route("/jobs/{id}/events", get(jobs::job_events))
        .route("/radio", get(radio::listen))
        .route("/radio/{id}", put(radio::change))
        .route("/health", get(system::health))
        .route("/models", get(system::models))
        .route("/metrics", get(system::metrics))
        .route("/openapi.json", get(system::openapi_json))
        .route("/session", post(session::create_session).delete(session::delete_session))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found);
    let authenticate = middleware::from_fn_with_state(state.clone(), crate::auth::authenticate);
    let api = api.layer(authenticate.clone());
    // Where Prometheus looks by default, besides the documented /api/v1/metrics.
    let metrics = Router::new().route("/metrics", get(system::metrics)).layer(authenticate);
    Router::new()
        .nest("/api/v1", api)
        .merge(metrics)
        .merge(crate::web::router())
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// An id from a path, as a UUID; `what` ("job", "upload") names it in the 404.
fn parse_path_id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(raw).map_err(|_| {
        let shown: String = raw.chars().take(64).collect();
        ApiError::NotFound(format!(
            "no {what} with id {shown:?}: {what} ids are UUIDs like 0b6f6c2e-8f0e-4a51-9d7c-2f1f6f0c3a10"
        ))
    })
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no endpoint {method} {}; the API is described at /api/v1/openapi.json", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{method} is not allowed on {}; the API is described at /api/v1/openapi.json",
        uri.path()
    ))
}

#[cfg(test)]
mod tests;
