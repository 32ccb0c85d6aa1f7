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
    /// The id of the server's default model, the first of `models`; null on an API node (`serve
    /// --no-worker`) while no worker runs.
    pub model: Option<String>,
    /// The ids of every model this server runs, or on an API node every model a live worker runs
    /// (jobs for other models stay queued).
    pub models: Vec<String>,
    /// The default model's device, e.g. "cpu" or "cuda:0 (NVIDIA H100 80GB HBM3)".
    pub device: Option<String>,
    pub dtype: Option<String>,
    /// How the default model's decoder weights are stored: its dtype's name, or "int8" (`--weights`).
    pub weights: Option<String>,
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
    let models = state.models();
    let default = models.default_model();
    Ok(Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        model: default.map(|model| public_model_id(&model.id)),
        models: models.ids().iter().map(|id| public_model_id(id)).collect(),
        device: default.map(|model| model.device.clone()),
        dtype: default.map(|model| model.dtype.clone()),
        weights: default.map(|model| model.weights.clone()),
        queue_depth: counts.get(&JobStatus::Queued).copied().unwrap_or(0),
        running: counts.get(&JobStatus::Running).copied().unwrap_or(0),
    }))
}

#[derive(Serialize, ToSchema)]
pub struct ModelEntry {
    /// The model's id: the hub id, or `local/<parent>/<directory>` for a local checkpoint directory;
    /// `POST /generate` takes it as `model`, and jobs name it.
    pub id: String,
    /// The model of requests that name none (the server's first `--model`).
    pub default: bool,
    /// In memory now; one the worker unloaded to make room (`--max-loaded`) is loaded again for its
    /// next job.
    pub loaded: bool,
    pub sample_rate: u32,
    pub audio_channels: u64,
    /// Two channels: its tracks are stereo.
    pub stereo: bool,
    /// A melody checkpoint: `POST /generate` takes `melody`, the tune it follows.
    pub melody: bool,
    /// It can continue audio (`continue_from`), and so make tracks longer than 30 s; true for every
    /// MusicGen checkpoint.
    pub continuation: bool,
    pub num_codebooks: u64,
    /// Upper bound of `top_k`.
    pub vocab_size: u64,
    pub parameters: u64,
    pub device: String,
    pub dtype: String,
    /// How the decoder's weights are stored: the dtype's name, or "int8" (`--weights int8`).
    pub weights: String,
}

#[derive(Serialize, ToSchema)]
pub struct Models {
    /// In the order the server was started with; the first is the default.
    pub models: Vec<ModelEntry>,
}

/// The models this server can generate with, and what each supports.
#[utoipa::path(get, path = "/api/v1/models", tag = "service", responses((status = 200, description = "The models", body = Models)))]
pub async fn models(State(state): State<AppState>) -> Json<Models> {
    let models = state.models();
    let entries = models.all().iter().enumerate().map(|(i, m)| ModelEntry {
        id: public_model_id(&m.id),
        default: i == 0,
        loaded: state.workers.is_loaded(&m.id),
        sample_rate: m.sample_rate,
        audio_channels: m.audio_channels as u64,
        stereo: m.audio_channels == 2,
        melody: m.melody,
        continuation: true,
        num_codebooks: m.num_codebooks as u64,
        vocab_size: m.vocab_size as u64,
        parameters: m.parameters as u64,
        device: m.device.clone(),
        dtype: m.dtype.clone(),
        weights: m.weights.clone(),
    });
    Json(Models { models: entries.collect() })
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

/// This document, with `model` on `POST /generate` listing this server's models.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "service", responses((status = 200, description = "OpenAPI document")))]
pub async fn openapi_json(State(state): State<AppState>) -> Json<serde_json::Value> {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    // The models are known only at run time; the short names also accepted are left out.
    if let Some(model) = doc.pointer_mut("/components/schemas/GenerateBody/properties/model") {
        let ids: Vec<serde_json::Value> =
            state.models().ids().iter().map(|id| public_model_id(id).into()).chain([serde_json::Value::Null]).collect();
        model["enum"] = serde_json::Value::Array(ids);
    }
    Json(doc)
}
