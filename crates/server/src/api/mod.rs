//! The HTTP surface: `/api/v1/...`, `/metrics`, and the web page's routes merged in.

mod jobs;
mod system;
mod uploads;

use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::routing::{get, post};
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
        description = "Text-to-music generation with MusicGen: queue jobs, follow their progress, fetch the WAV."
    ),
    paths(
        jobs::generate,
        jobs::list_jobs,
        jobs::get_job,
        jobs::delete_job,
        jobs::get_audio,
        jobs::job_events,
        uploads::create_upload,
        uploads::get_upload,
        system::health,
        system::models,
        system::metrics,
        system::openapi_json,
    ),
    tags(
        (name = "jobs", description = "Generation jobs and their audio"),
        (name = "uploads", description = "Audio to continue: uploaded files, and copies of finished tracks being extended"),
        (name = "service", description = "Health, models, metrics and this document"),
    )
)]
pub struct ApiDoc;

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
        .route("/jobs/{id}/events", get(jobs::job_events))
        .route("/health", get(system::health))
        .route("/models", get(system::models))
        .route("/metrics", get(system::metrics))
        .route("/openapi.json", get(system::openapi_json))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found);
    Router::new()
        .nest("/api/v1", api)
        // Where Prometheus looks by default, besides the documented /api/v1/metrics.
        .route("/metrics", get(system::metrics))
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
