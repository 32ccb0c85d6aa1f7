//! Service endpoints: health, models, metrics, the OpenAPI document.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::ApiDoc;
use crate::error::{ApiError, ErrorBody};
use crate::job::{public_model_id, JobStatus};
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always "ok" when the server answers.
    pub status: String,
    pub version: String,
    /// The canonical id of the model this server runs (jobs for other models stay queued).
    pub model: String,
    /// e.g. "cpu" or "cuda:0 (NVIDIA H100 80GB HBM3)".
    pub device: String,
    pub dtype: String,
    /// Jobs waiting to run.
    pub queue_depth: u64,
    /// Jobs being generated now.
    pub running: u64,
}

/// Liveness and what the server runs.
#[utoipa::path(
    get, path = "/api/v1/health", tag = "service",
    responses((status = 200, description = "The server is up", body = Health), (status = 500, body = ErrorBody))
)]
pub async fn health(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    let counts = state.jobs.count_by_status().await?;
    Ok(Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        model: public_model_id(&state.model.id),
        device: state.model.device.clone(),
        dtype: state.model.dtype.clone(),
        queue_depth: counts.get(&JobStatus::Queued).copied().unwrap_or(0),
        running: counts.get(&JobStatus::Running).copied().unwrap_or(0),
    }))
}

#[derive(Serialize, ToSchema)]
pub struct ModelEntry {
    /// The model's id: the hub id, or `local/<parent>/<directory>` for a local checkpoint directory; jobs name it.
    pub id: String,
    pub loaded: bool,
    pub sample_rate: u32,
    pub audio_channels: u64,
    pub num_codebooks: u64,
    /// Upper bound of `top_k`.
    pub vocab_size: u64,
    pub parameters: u64,
    pub device: String,
    pub dtype: String,
    /// A melody checkpoint: `POST /generate` takes `melody`, the tune it follows.
    pub melody: bool,
}

#[derive(Serialize, ToSchema)]
pub struct Models {
    pub models: Vec<ModelEntry>,
}

/// The models this server can generate with.
#[utoipa::path(get, path = "/api/v1/models", tag = "service", responses((status = 200, description = "Loaded models", body = Models)))]
pub async fn models(State(state): State<AppState>) -> Json<Models> {
    let m = &state.model;
    Json(Models {
        models: vec![ModelEntry {
            id: public_model_id(&m.id),
            loaded: true,
            sample_rate: m.sample_rate,
            audio_channels: m.audio_channels as u64,
            num_codebooks: m.num_codebooks as u64,
            vocab_size: m.vocab_size as u64,
            parameters: m.parameters as u64,
            device: m.device.clone(),
            dtype: m.dtype.clone(),
            melody: m.melody,
        }],
    })
}

/// Prometheus metrics: jobs by status, queue depth, generation seconds.
#[utoipa::path(
    get, path = "/api/v1/metrics", tag = "service",
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain; version=0.0.4"),
        (status = 500, body = ErrorBody),
    )
)]
pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let counts = state.jobs.count_by_status().await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render(&counts)))
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "service", responses((status = 200, description = "OpenAPI document")))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
