//! The two error types of the server: [`ApiError`], what an HTTP client sees, and
//! [`ServerError`], why the server could not start or run.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::StoreError;

/// Every failure an API call can end in; each becomes `{"error": {"code", "message", "field"}}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    InvalidRequest { field: Option<String>, message: String },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the queue is full ({max_queue} jobs waiting); retry in {retry_after_secs} s")]
    QueueFull { max_queue: usize, retry_after_secs: u64 },
    /// A key's request rate or queue share is used up.
    #[error("{message}")]
    RateLimited { message: String, retry_after_secs: u64 },
    /// No key, an unknown one or a revoked one, where the server needs a key.
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Unavailable(String),
    /// Details go to the log, not to the client.
    #[error("internal error: {0}")]
    Internal(String),
    /// A `Host` this server does not answer to (DNS rebinding defence); the message names it and the flag.
    #[error("{0}")]
    MisdirectedHost(String),
    /// A state-changing request from a web page of another origin that `--cors-origin` does not list.
    #[error("{0}")]
    ForbiddenOrigin(String),
    /// One client holds `--max-connections-per-client` connections already.
    #[error("{0}")]
    TooManyConnections(String),
    /// The disk holding the data directory is full.
    #[error("{0}")]
    InsufficientStorage(String),
    /// A file system failure: `public` (no path) to the client, `detail` to the log.
    #[error("{public}")]
    Storage { public: String, detail: String },
}

impl ApiError {
    pub fn invalid(field: Option<&str>, message: impl Into<String>) -> Self {
        ApiError::InvalidRequest { field: field.map(str::to_string), message: message.into() }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::QueueFull { .. } | ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::MisdirectedHost(_) => StatusCode::MISDIRECTED_REQUEST,
            ApiError::ForbiddenOrigin(_) => StatusCode::FORBIDDEN,
            ApiError::TooManyConnections(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Storage { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest { .. } => "invalid_request",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::QueueFull { .. } => "queue_full",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
            ApiError::MisdirectedHost(_) => "unknown_host",
            ApiError::ForbiddenOrigin(_) => "forbidden_origin",
            ApiError::TooManyConnections(_) => "too_many_connections",
            ApiError::InsufficientStorage(_) => "insufficient_storage",
            ApiError::Storage { .. } => "storage_error",
        }
    }
}

/// The engine's validators are the request rules: their messages start with the value, so the
/// field's name in front of them reads as a sentence ("top_p 1.5 is outside [0, 1] ...").
impl From<musicgen::Error> for ApiError {
    fn from(err: musicgen::Error) -> Self {
        match err {
            musicgen::Error::InvalidRequest { field, message } => {
                ApiError::InvalidRequest { field: Some(field.to_string()), message: format!("{field} {message}") }
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match &err {
            StoreError::AudioIo { source, .. } => ApiError::from_io(source, err.to_string()),
            // A database restart or a network cut: nothing was done, so the same request can be retried.
            StoreError::Unavailable(_) => {
                tracing::warn!("{err}");
                ApiError::Unavailable("the job database cannot be reached right now; retry in a few seconds".into())
            }
            _ => ApiError::Internal(err.to_string()),
        }
    }
}

impl ApiError {
    /// A failed file operation: 507 when the disk is full, else a 500 naming the OS error but no
    /// path; `detail` (paths included) goes to the log.
    pub fn from_io(source: &std::io::Error, detail: String) -> Self {
        if source.kind() == std::io::ErrorKind::StorageFull {
            ApiError::InsufficientStorage(
                "the server's disk is full, so nothing could be stored; free space in its data directory and retry"
                    .into(),
            )
        } else {
            ApiError::Storage {
                public: format!("the server could not read or write its files ({source}); the details are in its log"),
                detail,
            }
        }
    }
}

/// The error JSON body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// invalid_request, unsupported_media_type, payload_too_large, not_found, method_not_allowed,
    /// conflict, queue_full, rate_limited, unauthorized, unavailable, internal, unknown_host,
    /// forbidden_origin, too_many_connections, insufficient_storage or storage_error.
    pub code: String,
    /// What was wrong and how to fix it.
    pub message: String,
    /// The request field at fault, if one is.
    pub field: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = match &self {
            ApiError::Internal(details) => {
                tracing::error!("internal error: {details}");
                "the server failed to handle this request; the details are in its log".to_string()
            }
            ApiError::Storage { public, detail } => {
                tracing::error!("storage: {detail}");
                public.clone()
            }
            ApiError::InsufficientStorage(message) => {
                tracing::error!("{message}");
                message.clone()
            }
            other => other.to_string(),
        };
        let field = match &self {
            ApiError::InvalidRequest { field, .. } => field.clone(),
            _ => None,
        };
        let body = ErrorBody { error: ErrorDetail { code: self.code().to_string(), message, field } };
        let mut response = (self.status(), Json(body)).into_response();
        match self {
            ApiError::QueueFull { retry_after_secs, .. } | ApiError::RateLimited { retry_after_secs, .. } => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            ApiError::Unavailable(_) => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(2));
            }
            ApiError::Unauthorized(_) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"dgx-music\""));
            }
            // The rest of an oversized body is never read, and a refused connection is not kept, so the
            // server drops the connection after this answer; saying so stops a client from sending its
            // next request down a closing socket.
            ApiError::PayloadTooLarge(_) | ApiError::TooManyConnections(_) => {
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

/// Why `serve` stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("data directory {path}: {source}; pass a writable directory with --data-dir")]
    DataDir { path: std::path::PathBuf, source: std::io::Error },
    #[error(
        "data directory {} is in use by another dgx-music serve ({}); stop that server first, or give this \
         one another --data-dir",
        .dir.display(),
        .pid.map_or_else(|| "its pid is not recorded yet".to_string(), |pid| format!("pid {pid}"))
    )]
    DataDirInUse { dir: std::path::PathBuf, pid: Option<u32> },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot load model {model}: {source}")]
    Model { model: String, source: musicgen::Error },
    #[error("no model to serve: give at least one --model")]
    NoModels,
    #[error("--model {first} and --model {second} are the same checkpoint ({id}); give each model once")]
    ModelTwice { first: String, second: String, id: String },
    #[error("cannot listen on {addr}: {source}; pick another --port or stop the program using it")]
    Bind { addr: String, source: std::io::Error },
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    #[error("the generation worker stopped unexpectedly")]
    WorkerDied,
    #[error(
        "{role} shares the job queue with other processes, and SQLite belongs to one process: give \
         --database postgres://USER:PASSWORD@HOST:PORT/DATABASE (README: \"Many GPUs, many machines\"), or run \
         `dgx-music serve` alone, which generates too"
    )]
    NeedsSharedDatabase { role: &'static str },
    #[error(
        "--host {host} lets other machines in, and this server has no API key yet: create one with \
         `dgx-music keys create --name NAME --data-dir {}` (with this server's --database, if it has one; \
         clients send it as Authorization: Bearer), \
         or serve only this machine with --host 127.0.0.1; --insecure-no-auth serves the network without keys",
        data_dir.display()
    )]
    NoKeys { host: String, data_dir: std::path::PathBuf },
}
