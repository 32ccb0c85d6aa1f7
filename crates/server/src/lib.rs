//! DGX Music server: the REST API under `/api/v1`, a persistent SQLite job queue with the
//! generation history, audio storage, progress events and the web page.
//!
//! [`run`] is `dgx-music serve`: it locks the data directory (one server per directory), binds
//! the port, opens the stores, requeues jobs a crash interrupted, sweeps uploads no job uses, loads
//! the models on the worker thread, then answers; on SIGTERM/Ctrl-C it stops accepting, ends event
//! streams, lets the running step finish, requeues its jobs, gives requests in flight
//! [`SHUTDOWN_GRACE`] and exits.

mod api;
pub mod auth;
mod engines;
mod error;
mod events;
pub mod job;
pub mod keys;
mod limits;
mod live;
mod lock;
mod metrics;
mod net;
mod radio;
pub mod request;
mod state;
pub mod store;
pub mod upload;
pub mod web;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use musicgen::{DType, DeviceSpec, LoadOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use api::{router, ApiDoc};
pub use error::{ApiError, ServerError};
pub use net::{parse_allowed_host, parse_cors_origin, HttpConfig, SHUTDOWN_GRACE};
pub use state::{AppState, Models, Shared};

use crate::auth::AuthPolicy;
use crate::events::{Events, StreamLimit};
use crate::limits::Limits;
use crate::live::LiveAudio;
use crate::metrics::Metrics;
use crate::store::{AudioStore, JobStore, KeyStore, LocalAudioStore, SqliteJobStore};

/// Everything `dgx-music serve` can be told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Holds `dgx-music.db`, `audio/` (tracks), `uploads/` (audio jobs continue) and `incoming/`.
    pub data_dir: PathBuf,
    /// Hub ids, short names or checkpoint directories; never empty. The first is the default for
    /// requests that name none.
    pub models: Vec<String>,
    /// Models the worker keeps loaded at once; the least recently used is unloaded for another.
    pub max_loaded: usize,
    pub device: DeviceSpec,
    pub dtype: DType,
    /// Queued jobs beyond which `POST /generate` answers 429.
    pub max_queue: usize,
    /// Jobs of equal duration (and continuation) generated together.
    pub max_batch: usize,
    /// Largest upload accepted, in bytes of the file.
    pub max_upload_bytes: u64,
    /// Uploads no job uses are deleted once this old.
    pub unused_upload_max_age: Duration,
    /// `--insecure-no-auth`: serve a non-loopback address without keys, and check none.
    pub insecure_no_auth: bool,
    /// `/api/v1/health` answers without a key.
    pub public_health: bool,
    /// The metrics answer without a key.
    pub public_metrics: bool,
    /// `POST /generate` requests per minute and key; 0 for no limit.
    pub rate_limit_per_minute: u32,
    /// Queued jobs one key may have; 0 for no limit.
    pub max_queued_per_key: u64,
    /// Timeouts, connection and stream limits, allowed hosts and CORS origins.
    pub http: HttpConfig,
}

/// Whether `host` (as given to `--host`) only reaches this machine.
pub fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost") || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Runs the server until SIGTERM or Ctrl-C.
pub fn run(config: ServerConfig) -> Result<(), ServerError> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(serve(config));
    // Connections still open past the grace period are dropped here, not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn serve(config: ServerConfig) -> Result<(), ServerError> {
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|source| ServerError::DataDir { path: data_dir.clone(), source })?;
    // Before anything in the directory is read: a second server would requeue this one's jobs.
    let _lock = lock::lock(&data_dir)?;
    // Before the model loads, so that a port in use fails at once.
    let addr = format!("{}:{}", config.host, config.port);
    let listener = TcpListener::bind(&addr).await.map_err(|source| ServerError::Bind { addr: addr.clone(), source })?;
    let local = listener.local_addr()?;
    let sqlite = Arc::new(SqliteJobStore::open(&data_dir.join("dgx-music.db")).await?);
    let requeued = sqlite.requeue_all_running().await?;
    if requeued > 0 {
        tracing::info!("{requeued} job(s) interrupted by the last shutdown or crash are queued again");
    }
    let network = !is_loopback(&config.host);
    if network && !config.insecure_no_auth && !sqlite.has_active_keys().await? {
        return Err(ServerError::NoKeys { host: config.host.clone(), data_dir: data_dir.clone() });
    }
    if config.insecure_no_auth {
        tracing::warn!("--insecure-no-auth: anyone who reaches {} can use and delete every job", config.host);
    }
    let jobs: Arc<dyn JobStore> = sqlite.clone();
    let keys: Arc<dyn KeyStore> = sqlite.clone();
    let audio: Arc<dyn AudioStore> = Arc::new(LocalAudioStore::open(data_dir.join("audio"))?);
    let uploads: Arc<dyn AudioStore> = Arc::new(LocalAudioStore::open(data_dir.join("uploads"))?);
    let incoming = empty_dir(&data_dir.join("incoming"))?;
    upload::remove_orphan_files(&*jobs, &*uploads).await?;
    upload::sweep(&*jobs, &*uploads, config.unused_upload_max_age).await?;
    let events = Events::default();
    let metrics = Arc::new(Metrics::default());
    let live = LiveAudio::default();

    let spawned = worker::spawn(
        config.models.clone(),
        config.max_loaded,
        LoadOptions {
            device: config.device,
            dtype: config.dtype,
            on_download: Some(log_downloads()),
            ..LoadOptions::default()
        },
        worker::WorkerContext {
            jobs: jobs.clone(),
            audio: audio.clone(),
            uploads: uploads.clone(),
            events: events.clone(),
            live: live.clone(),
            metrics: metrics.clone(),
            max_batch: config.max_batch.max(1),
            runtime: tokio::runtime::Handle::current(),
        },
    )?;
    let mut models = spawned.loaded.await.map_err(|_| ServerError::WorkerDied)??.into_iter();
    let default = models.next().ok_or(ServerError::NoModels)?;
    let models = Models::new(default, models.collect());
    jobs.set_served_models(models.ids()).await?;

    tracing::info!("data in {}", data_dir.display());
    tracing::info!("listening on http://{local} (API at http://{local}/api/v1)");

    upload::spawn_sweeper(jobs.clone(), uploads.clone(), config.unused_upload_max_age);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let worker = spawned.handle.clone();
    let state = AppState::new(Shared {
        jobs,
        keys,
        auth: AuthPolicy {
            disabled: config.insecure_no_auth,
            network,
            public_health: config.public_health,
            public_metrics: config.public_metrics,
        },
        limits: Limits::new(config.rate_limit_per_minute, config.max_queued_per_key),
        audio,
        uploads,
        incoming,
        max_upload_bytes: config.max_upload_bytes,
        models,
        max_queue: config.max_queue,
        events,
        event_streams: StreamLimit::new(config.http.max_event_streams),
        live,
        metrics,
        worker: worker.clone(),
        shutdown: shutdown_rx,
    });
    let app = net::layers(router(state), &config.http, local.ip());
    net::serve(listener, app, &config.http, async move {
        shutdown_signal().await;
        tracing::info!("shutting down: no new jobs; the running step finishes and its jobs are requeued");
        worker.stop();
        let _ = shutdown_tx.send(true);
    })
    .await?;

    spawned.handle.stop();
    let thread = spawned.thread;
    if tokio::task::spawn_blocking(move || thread.join()).await.map_or(true, |joined| joined.is_err()) {
        tracing::error!("the worker thread panicked while stopping");
    }
    sqlite.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Creates `dir` if needed and removes what an interrupted run left in it.
fn empty_dir(dir: &Path) -> Result<PathBuf, ServerError> {
    let io_err = |source| ServerError::DataDir { path: dir.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(io_err)?;
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let path = entry.map_err(io_err)?.path();
        tracing::info!("removing {}, an upload an interrupted run was receiving", path.display());
        std::fs::remove_file(&path).map_err(|source| ServerError::DataDir { path: path.clone(), source })?;
    }
    Ok(dir.to_path_buf())
}

async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot listen for Ctrl-C: {err}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!("cannot listen for SIGTERM: {err}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
}

/// A server has no terminal to draw on: a hub download is logged when each file starts and ends.
fn log_downloads() -> musicgen::hub::OnDownload {
    musicgen::hub::OnDownload::new(|event| match event {
        musicgen::hub::DownloadEvent::Started { file, total_bytes } => {
            tracing::info!("downloading {file} ({:.1} MB)", *total_bytes as f64 / 1e6)
        }
        musicgen::hub::DownloadEvent::Finished { file } => tracing::info!("downloaded {file}"),
        musicgen::hub::DownloadEvent::Progress { .. } => {}
    })
}
