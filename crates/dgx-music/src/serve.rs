//! `dgx-music serve`: settings from flags or the environment, then the server crate runs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use dgx_music_server::store::{DatabaseUrl, Leases, StorageUrl};
use dgx_music_server::{HttpConfig, WorkerSettings};
use musicgen::{DType, DeviceSpec, Weights};

use crate::device::DeviceChoice;

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on; 0.0.0.0 exposes the server to the network.
    #[arg(long, env = "DGX_MUSIC_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on; 0 picks a free one (the log says which).
    #[arg(long, env = "DGX_MUSIC_PORT", default_value_t = 8000)]
    port: u16,
    /// Directory for the job database and the audio files [default: the platform's data
    /// directory + dgx-music, e.g. ~/.local/share/dgx-music].
    #[arg(long, env = "DGX_MUSIC_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The API and page only: jobs run on `dgx-music worker` processes (on this machine or others)
    /// that share the --database (postgres://) and --storage. Without it, this process generates too.
    #[arg(long, env = "DGX_MUSIC_NO_WORKER")]
    no_worker: bool,
    #[command(flatten)]
    worker: WorkerArgs,
    #[command(flatten)]
    stores: StoreArgs,
    /// Queued jobs beyond which new requests get 429 Too Many Requests.
    #[arg(long, env = "DGX_MUSIC_MAX_QUEUE", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    max_queue: u32,
    /// Largest audio file accepted by POST /api/v1/uploads, in megabytes (10^6 bytes); larger ones
    /// get 413 Payload Too Large.
    #[arg(long, env = "DGX_MUSIC_MAX_UPLOAD_MB", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    max_upload_mb: u32,
    /// Uploads that no job uses (to continue or as its melody) are deleted once older than this many
    /// hours (checked at start-up and periodically). An upload a job uses is deleted with the last such job.
    #[arg(long, env = "DGX_MUSIC_UNUSED_UPLOAD_HOURS", default_value_t = 24.0, value_parser = positive_hours)]
    unused_upload_hours: f64,
    /// Serve a non-loopback --host without API keys, and check none even when keys exist: anyone who
    /// reaches the port can use and delete every job. Without it, such a server needs a key
    /// (`dgx-music keys create`) to start.
    #[arg(long, env = "DGX_MUSIC_INSECURE_NO_AUTH")]
    insecure_no_auth: bool,
    /// Answer GET /api/v1/health without a key (for load balancers and uptime checks).
    #[arg(long, env = "DGX_MUSIC_PUBLIC_HEALTH")]
    public_health: bool,
    /// Answer /metrics and /api/v1/metrics without a key (for a Prometheus scraper).
    #[arg(long, env = "DGX_MUSIC_PUBLIC_METRICS")]
    public_metrics: bool,
    /// POST /generate requests a key may make per minute (bursts up to as many); 0 for no limit.
    /// Past it: 429 with Retry-After.
    #[arg(long, env = "DGX_MUSIC_RATE_LIMIT", value_name = "PER_MINUTE", default_value_t = 30)]
    rate_limit: u32,
    /// Jobs one key may have waiting in the queue, so that no client fills it; 0 for no limit.
    /// Past it: 429 with Retry-After (when its next job should start).
    #[arg(long, env = "DGX_MUSIC_MAX_QUEUED_PER_KEY", default_value_t = 20)]
    max_queued_per_key: u64,
    /// A host name clients use to reach the server (repeatable; the environment variable takes a
    /// comma-separated list). Requests whose Host is none of these, localhost, a loopback address,
    /// the bound address or the address they arrived on get 421: a defence against DNS rebinding.
    #[arg(long = "allowed-host", value_name = "NAME", env = "DGX_MUSIC_ALLOWED_HOSTS", value_delimiter = ',', value_parser = dgx_music_server::parse_allowed_host)]
    allowed_hosts: Vec<String>,
    /// An origin (scheme://host[:port]) whose web pages may call the API from the browser (CORS;
    /// repeatable). None by default: only the server's own page may.
    #[arg(long = "cors-origin", value_name = "ORIGIN", env = "DGX_MUSIC_CORS_ORIGINS", value_delimiter = ',', value_parser = dgx_music_server::parse_cors_origin)]
    cors_origins: Vec<String>,
    /// Open connections one client IP address may hold; more get 429.
    #[arg(long, env = "DGX_MUSIC_MAX_CONNECTIONS_PER_CLIENT", default_value_t = HttpConfig::default().max_connections_per_client as u32, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_connections_per_client: u32,
    /// Open progress streams (GET /api/v1/jobs/{id}/events) of all clients together; more get 503.
    #[arg(long, env = "DGX_MUSIC_MAX_EVENT_STREAMS", default_value_t = HttpConfig::default().max_event_streams as u32, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_event_streams: u32,
    /// Seconds a client has to send a request's headers, and an idle connection to start its next request.
    #[arg(long, env = "DGX_MUSIC_HEADER_TIMEOUT_SECS", default_value_t = HttpConfig::default().header_timeout.as_secs() as u32, value_parser = clap::value_parser!(u32).range(1..=3600))]
    header_timeout_secs: u32,
    /// Seconds a request body (an upload) may pause between two pieces before the request fails.
    #[arg(long, env = "DGX_MUSIC_BODY_TIMEOUT_SECS", default_value_t = HttpConfig::default().body_timeout.as_secs() as u32, value_parser = clap::value_parser!(u32).range(1..=3600))]
    body_timeout_secs: u32,
    /// Log lines as text, or as one JSON object per line (for log collectors).
    #[arg(long, env = "DGX_MUSIC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// What a worker runs: shared by `serve` (its own worker threads) and `dgx-music worker`.
#[derive(clap::Args)]
pub struct WorkerArgs {
    /// Hugging Face hub id, short name (small, medium, large, stereo-*, melody, melody-large,
    /// stereo-melody, stereo-melody-large) or local checkpoint directory. Repeat it to offer several
    /// (`--model small --model melody`; the environment variable takes a comma-separated list):
    /// requests pick one with `model`, the first is the default, and checkpoints with the same T5
    /// or EnCodec share one copy. With a melody checkpoint, POST /generate takes `melody` and the
    /// page shows a melody picker. On an API node (--no-worker) it only orders the workers' models.
    #[arg(long, env = "DGX_MUSIC_MODEL", value_delimiter = ',', default_value = "facebook/musicgen-small")]
    model: Vec<String>,
    /// Models kept in memory at once [default: all of them]; when a job needs another, the least
    /// recently used is unloaded first (loading takes seconds: a budget for a small GPU).
    #[arg(long, env = "DGX_MUSIC_MAX_LOADED", value_parser = clap::value_parser!(u32).range(1..))]
    max_loaded: Option<u32>,
    /// auto, cpu, cuda or cuda:N; auto is the first GPU that passes `validate`'s kernel check,
    /// else the CPU (the log says why). Repeat it for a worker thread per device, each with its own
    /// copy of the models (`--device cuda:0 --device cuda:1`; the environment variable takes a
    /// comma-separated list); `cpu` may be repeated.
    #[arg(long, env = "DGX_MUSIC_DEVICE", value_delimiter = ',', default_value = "auto")]
    device: Vec<DeviceChoice>,
    /// Decoder precision: f32, f16 or bf16 [default: bf16 on a GPU, f32 on the CPU].
    #[arg(long, env = "DGX_MUSIC_DTYPE", value_parser = crate::device::parse_dtype)]
    dtype: Option<DType>,
    /// How the decoder's weights are stored: dtype (in --dtype) or int8 (per output channel,
    /// weight-only: half the bytes of bf16 per step, so faster where memory bandwidth binds, at a
    /// small cost in accuracy measured in docs/PERFORMANCE.md). On the CPU int8 makes the default
    /// --dtype bf16 (the cache; the sums are f32 either way), which is faster there.
    #[arg(long, env = "DGX_MUSIC_WEIGHTS", default_value = "dtype", value_parser = crate::device::parse_weights)]
    weights: Weights,
    /// Queued jobs of equal duration generated together in one engine batch (jobs that continue
    /// audio only with jobs continuing the same audio with the same stride; jobs that follow a
    /// melody only with jobs following the same melody).
    #[arg(long, env = "DGX_MUSIC_MAX_BATCH", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    max_batch: u32,
}

/// Where the jobs and the audio are: shared by `serve`, `worker` and `keys`.
#[derive(clap::Args)]
pub struct StoreArgs {
    /// The job queue and history: sqlite://PATH (one process; default: dgx-music.db in the data
    /// directory) or postgres://USER:PASSWORD@HOST:PORT/DATABASE, which API nodes and workers on many
    /// machines share.
    #[arg(long, env = "DGX_MUSIC_DATABASE", value_name = "URL")]
    pub database: Option<DatabaseUrl>,
    /// The tracks and uploads: a directory (default: the data directory) or s3://BUCKET/PREFIX, with
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and, for MinIO and other S3 servers,
    /// AWS_ENDPOINT_URL from the environment. Every node of one service names the same storage.
    #[arg(long, env = "DGX_MUSIC_STORAGE", value_name = "URL")]
    pub storage: Option<StorageUrl>,
    /// Seconds a claimed job stays a worker's without a heartbeat (it renews it every third): a
    /// worker killed, cut off or powered down loses its jobs to the queue after this (PostgreSQL).
    #[arg(long, env = "DGX_MUSIC_LEASE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(3..=3600))]
    lease_secs: u32,
    /// Times a job may lose its worker before it fails, saying so, instead of going back to the queue.
    #[arg(long, env = "DGX_MUSIC_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    max_attempts: u32,
}

impl StoreArgs {
    pub fn leases(&self) -> Leases {
        Leases { lease: Duration::from_secs(self.lease_secs.into()), max_attempts: self.max_attempts }
    }
}

impl WorkerArgs {
    /// The devices resolved (`auto` once, the log saying why it fell back), each device once.
    pub fn settings(&self) -> anyhow::Result<WorkerSettings> {
        let mut devices = Vec::new();
        let mut dtype = None;
        for &choice in &self.device {
            let resolved = crate::device::resolve(choice, self.dtype, self.weights);
            if let Some(note) = resolved.note() {
                tracing::info!("{note}");
            }
            // The CPU may take several threads (each its own models); a GPU twice is a mistake.
            if resolved.device != DeviceSpec::Cpu && devices.contains(&resolved.device) {
                anyhow::bail!(
                    "--device {choice} names device {} twice; give each device once (one worker thread each)",
                    resolved.device
                );
            }
            dtype.get_or_insert(resolved.dtype);
            devices.push(resolved.device);
        }
        Ok(WorkerSettings {
            max_loaded: self.max_loaded.map_or(self.model.len(), |n| n as usize),
            models: self.model.clone(),
            devices,
            dtype: dtype.unwrap_or_default(),
            weights: self.weights,
            max_batch: self.max_batch as usize,
        })
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn positive_hours(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(hours) if hours > 0.0 && hours <= 1e6 => Ok(hours),
        _ => Err(format!("{text:?} is not a number of hours above 0 (and at most 1000000)")),
    }
}

pub fn default_data_dir() -> anyhow::Result<PathBuf> {
    dirs::data_dir()
        .map(|dir| dir.join("dgx-music"))
        .ok_or_else(|| anyhow::anyhow!("this system has no data directory for the current user; pass --data-dir DIR"))
}

/// Log lines to stderr, as text or JSON; `RUST_LOG` filters.
pub fn init_logs(format: LogFormat) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The decoder logs a client's bad upload at ERROR level, yet it is the client's problem and the
    // 400 answer says what it is; RUST_LOG=symphonia=debug shows those lines again.
    if !std::env::var("RUST_LOG").is_ok_and(|filter| filter.contains("symphonia")) {
        filter = filter.add_directive("symphonia=off".parse().expect("a valid directive"));
    }
    // Another subcommand path may already have installed a subscriber; keep it then.
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init(),
        LogFormat::Json => logs.json().with_current_span(true).try_init(),
    };
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    init_logs(args.log_format);
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => default_data_dir()?,
    };
    dgx_music_server::run(dgx_music_server::ServerConfig {
        host: args.host,
        port: args.port,
        data_dir,
        database: args.stores.database.clone(),
        storage: args.stores.storage.clone(),
        worker: if args.no_worker { None } else { Some(args.worker.settings()?) },
        leases: args.stores.leases(),
        preferred_models: args.worker.model.clone(),
        max_queue: args.max_queue as usize,
        max_upload_bytes: u64::from(args.max_upload_mb) * 1_000_000,
        unused_upload_max_age: Duration::from_secs_f64(args.unused_upload_hours * 3600.0),
        insecure_no_auth: args.insecure_no_auth,
        public_health: args.public_health,
        public_metrics: args.public_metrics,
        rate_limit_per_minute: args.rate_limit,
        max_queued_per_key: args.max_queued_per_key,
        http: HttpConfig {
            allowed_hosts: args.allowed_hosts,
            cors_origins: args.cors_origins,
            max_connections_per_client: args.max_connections_per_client as usize,
            max_event_streams: args.max_event_streams as usize,
            header_timeout: Duration::from_secs(args.header_timeout_secs.into()),
            body_timeout: Duration::from_secs(args.body_timeout_secs.into()),
        },
    })?;
    Ok(ExitCode::SUCCESS)
}
