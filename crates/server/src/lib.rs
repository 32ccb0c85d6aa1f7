//! DGX Music server: the REST API under `/api/v1`, a persistent job queue with the generation
//! history (SQLite, or PostgreSQL shared by many machines), audio storage (a directory or S3),
//! progress events, the web page, and the workers that generate.
//!
//! [`run`] is `dgx-music serve`: it locks the data directory (one server per directory), binds
//! the port, opens the stores, requeues jobs a crash interrupted, sweeps uploads no job uses, loads
//! the models on a worker thread per device (none with `--no-worker`), then answers; on
//! SIGTERM/Ctrl-C it stops accepting, ends event streams, lets the running step finish, requeues its
//! jobs, gives requests in flight [`SHUTDOWN_GRACE`] and exits. [`run_worker`] is `dgx-music worker`:
//! the worker threads alone, on a shared database.

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
use uuid::Uuid;

pub use api::{router, ApiDoc};
pub use error::{ApiError, ServerError};
pub use net::{parse_allowed_host, parse_cors_origin, HttpConfig, SHUTDOWN_GRACE};
pub use state::{AppState, ModelCatalog, Models, Shared};

use crate::auth::AuthPolicy;
use crate::events::{Events, StreamLimit};
use crate::limits::Limits;
use crate::live::LiveAudio;
use crate::metrics::Metrics;
use crate::store::{Database, DatabaseUrl, JobStore, Leases, PgJobStore, Storage, StorageUrl};
use crate::worker::Workers;

/// Everything `dgx-music serve` can be told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Holds `incoming/` (uploads being received) and, by default, `dgx-music.db`, `audio/` (tracks)
    /// and `uploads/` (audio jobs continue). One server per directory.
    pub data_dir: PathBuf,
    /// `--database`; `None`: SQLite in the data directory.
    pub database: Option<DatabaseUrl>,
    /// `--storage`; `None`: the data directory.
    pub storage: Option<StorageUrl>,
    /// What the worker threads of this process run; `None` (`--no-worker`): the API and page only.
    pub worker: Option<WorkerSettings>,
    /// Claims' lease and attempts (PostgreSQL).
    pub leases: Leases,
    /// Queued jobs beyond which `POST /generate` answers 429.
    pub max_queue: usize,
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
    /// On an API node, the models to offer first (as `--model` names them) among the workers' models.
    pub preferred_models: Vec<String>,
}

/// What worker threads run: the same models on each device.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Hub ids, short names or checkpoint directories; never empty. The first is the default for
    /// requests that name none.
    pub models: Vec<String>,
    /// Models a worker keeps loaded at once; the least recently used is unloaded for another.
    pub max_loaded: usize,
    /// One worker thread per device, each with its own copy of the models.
    pub devices: Vec<DeviceSpec>,
    pub dtype: DType,
    /// How the decoders' weights are stored (`--weights`).
    pub weights: musicgen::Weights,
    /// Jobs of equal duration (and continuation) generated together.
    pub max_batch: usize,
}

/// Everything `dgx-music worker` can be told.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub database: DatabaseUrl,
    pub storage: StorageUrl,
    pub worker: WorkerSettings,
    pub leases: Leases,
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

/// Runs `dgx-music worker` until SIGTERM or Ctrl-C: generation only, on a shared database.
pub fn run_worker(config: WorkerConfig) -> Result<(), ServerError> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(work(config));
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
    let database_url = config.database.clone().unwrap_or_else(|| DatabaseUrl::Sqlite(data_dir.join("dgx-music.db")));
    if config.worker.is_none() && !matches!(database_url, DatabaseUrl::Postgres(_)) {
        return Err(ServerError::NeedsSharedDatabase { role: "serve --no-worker" });
    }
    let database = Database::open(&database_url, config.leases).await?;
    tracing::info!("jobs in {}", database_url.describe());
    let jobs = database.jobs();
    let keys = database.keys();
    // SQLite: this process holds the lock, so whatever is running was interrupted. PostgreSQL: only
    // the jobs whose worker stopped renewing its lease.
    let requeued = jobs.recover_interrupted().await?;
    if requeued > 0 {
        tracing::info!("{requeued} job(s) interrupted by a shutdown or crash are queued again");
    }
    let network = !is_loopback(&config.host);
    if network && !config.insecure_no_auth && !keys.has_active_keys().await? {
        return Err(ServerError::NoKeys { host: config.host.clone(), data_dir: data_dir.clone() });
    }
    if config.insecure_no_auth {
        tracing::warn!("--insecure-no-auth: anyone who reaches {} can use and delete every job", config.host);
    }
    let storage_url = config.storage.clone().unwrap_or_else(|| StorageUrl::Dir(data_dir.clone()));
    let Storage { audio, uploads } = Storage::open(&storage_url).await?;
    tracing::info!("audio in {}", storage_url.describe());
    let incoming = empty_dir(&data_dir.join("incoming"))?;
    // Only where this process is the store's one user: elsewhere another node may be between
    // storing an upload's file and recording it.
    if !database.is_shared() {
        upload::remove_orphan_files(&*jobs, &*uploads).await?;
    }
    upload::sweep(&*jobs, &*uploads, config.unused_upload_max_age).await?;
    let events = Events::default();
    let metrics = Arc::new(Metrics::default());
    let live = LiveAudio::default();

    let context = WorkerShared {
        jobs: jobs.clone(),
        audio: audio.clone(),
        uploads: uploads.clone(),
        events: events.clone(),
        live: live.clone(),
        metrics: metrics.clone(),
    };
    let (workers, threads, models) = match &config.worker {
        Some(settings) => {
            let (workers, threads, infos) = start_workers(settings, config.leases, context).await?;
            let mut infos = infos.into_iter();
            let default = infos.next().ok_or(ServerError::NoModels)?;
            (workers, threads, Models::new(default, infos.collect()))
        }
        None => {
            tracing::info!("no worker in this process (--no-worker): jobs run on `dgx-music worker` processes");
            (Workers::default(), Vec::new(), Models::from_list(Vec::new()))
        }
    };
    let catalog = Arc::new(match workers.is_empty() {
        true => ModelCatalog::following(config.preferred_models.clone()),
        false => ModelCatalog::new(models),
    });
    if let Database::Postgres(pg) = &database {
        tokio::spawn(forward_changes(pg.clone(), events.clone(), workers.clone()));
        tokio::spawn(sweep_leases(jobs.clone(), config.leases));
        if workers.is_empty() {
            catalog.refresh(&*jobs).await;
            tokio::spawn(follow_workers(jobs.clone(), catalog.clone()));
        }
    }

    tracing::info!("data in {}", data_dir.display());
    tracing::info!("listening on http://{local} (API at http://{local}/api/v1)");

    upload::spawn_sweeper(jobs.clone(), uploads.clone(), config.unused_upload_max_age);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
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
        models: catalog,
        max_queue: config.max_queue,
        events,
        event_streams: StreamLimit::new(config.http.max_event_streams),
        live,
        metrics,
        workers: workers.clone(),
        shutdown: shutdown_rx,
    });
    let app = net::layers(router(state), &config.http, local.ip());
    let stopping = workers.clone();
    net::serve(listener, app, &config.http, async move {
        shutdown_signal().await;
        tracing::info!("shutting down: no new jobs; the running step finishes and its jobs are requeued");
        stopping.stop();
        let _ = shutdown_tx.send(true);
    })
    .await?;

    workers.stop();
    join_workers(threads).await;
    database.close().await;
    tracing::info!("stopped");
    Ok(())
}

async fn work(config: WorkerConfig) -> Result<(), ServerError> {
    if !matches!(config.database, DatabaseUrl::Postgres(_)) {
        return Err(ServerError::NeedsSharedDatabase { role: "worker" });
    }
    let database = Database::open(&config.database, config.leases).await?;
    tracing::info!("jobs in {}", config.database.describe());
    let jobs = database.jobs();
    let Storage { audio, uploads } = Storage::open(&config.storage).await?;
    tracing::info!("audio in {}", config.storage.describe());
    let events = Events::default();
    // Nobody here reads a live track or the metrics: API nodes serve the stored file.
    let context = WorkerShared {
        jobs: jobs.clone(),
        audio,
        uploads,
        events: events.clone(),
        live: LiveAudio::default(),
        metrics: Arc::new(Metrics::default()),
    };
    let (workers, threads, _) = start_workers(&config.worker, config.leases, context).await?;
    if let Database::Postgres(pg) = &database {
        tokio::spawn(forward_changes(pg.clone(), events, workers.clone()));
    }
    tracing::info!("worker ready: {} thread(s) take jobs", threads.len());
    shutdown_signal().await;
    tracing::info!("shutting down: the running step finishes and its jobs go back to the queue");
    workers.stop();
    join_workers(threads).await;
    database.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// What a process's worker threads share: its stores and where they announce their work.
struct WorkerShared {
    jobs: Arc<dyn JobStore>,
    audio: Arc<dyn crate::store::AudioStore>,
    uploads: Arc<dyn crate::store::AudioStore>,
    events: Events,
    live: LiveAudio,
    metrics: Arc<Metrics>,
}

/// A worker thread per device, each loading every model; returns once all have loaded, with the
/// models' descriptions (the first device's) in the order given.
async fn start_workers(
    settings: &WorkerSettings,
    leases: Leases,
    shared: WorkerShared,
) -> Result<(Workers, Vec<std::thread::JoinHandle<()>>, Vec<musicgen::ModelInfo>), ServerError> {
    let mut handles = Vec::new();
    let mut threads = Vec::new();
    let mut infos = Vec::new();
    let tag = &Uuid::new_v4().simple().to_string()[..6];
    for (index, device) in settings.devices.iter().enumerate() {
        let id = format!("{}-{}-{}-{tag}", host_name(), std::process::id(), device_label(device, index));
        let spawned = worker::spawn(
            settings.models.clone(),
            settings.max_loaded,
            LoadOptions {
                device: *device,
                dtype: settings.dtype,
                weights: settings.weights,
                on_download: Some(log_downloads()),
                ..LoadOptions::default()
            },
            worker::WorkerContext {
                id: id.clone(),
                heartbeat: leases.lease / 3,
                patience: leases.lease,
                jobs: shared.jobs.clone(),
                audio: shared.audio.clone(),
                uploads: shared.uploads.clone(),
                events: shared.events.clone(),
                live: shared.live.clone(),
                metrics: shared.metrics.clone(),
                max_batch: settings.max_batch.max(1),
                runtime: tokio::runtime::Handle::current(),
            },
        )?;
        let loaded = spawned.loaded.await.map_err(|_| ServerError::WorkerDied)??;
        tracing::info!(
            "worker {id} runs {} model(s) on {}",
            loaded.len(),
            loaded.first().map_or("?", |m| m.device.as_str())
        );
        if infos.is_empty() {
            infos = loaded;
        }
        handles.push(spawned.handle);
        threads.push(spawned.thread);
    }
    Ok((Workers::new(handles), threads, infos))
}

async fn join_workers(threads: Vec<std::thread::JoinHandle<()>>) {
    for thread in threads {
        if tokio::task::spawn_blocking(move || thread.join()).await.map_or(true, |joined| joined.is_err()) {
            tracing::error!("a worker thread panicked while stopping");
        }
    }
}

/// Every change of a job, whichever machine made it, reaches this node's event streams; one that
/// leaves `running` reaches the worker that runs it (a cancellation from another API node).
async fn forward_changes(store: Arc<PgJobStore>, events: Events, workers: Workers) {
    store
        .watch(move |id, status| {
            if id.is_nil() {
                events.everything();
                return;
            }
            events.changed(id);
            if status != "running" {
                workers.cancelled(id);
            }
        })
        .await
}

/// Jobs whose worker died are requeued even while no worker claims (which sweeps too).
async fn sweep_leases(jobs: Arc<dyn JobStore>, leases: Leases) {
    loop {
        tokio::time::sleep(leases.lease / 3).await;
        if let Err(err) = jobs.recover_interrupted().await {
            tracing::debug!("cannot sweep expired leases: {err}");
        }
    }
}

/// An API node offers what live workers run: checked every few seconds (and by a request that
/// finds no model it can use).
async fn follow_workers(jobs: Arc<dyn JobStore>, catalog: Arc<ModelCatalog>) {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        catalog.refresh(&*jobs).await;
    }
}

/// This machine's name, for worker ids that say where a worker runs.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "host".into())
}

fn device_label(device: &DeviceSpec, index: usize) -> String {
    let label: String = device.to_string().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("{label}{index}")
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
