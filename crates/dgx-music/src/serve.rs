//! `dgx-music serve`: settings from flags or the environment, then the server crate runs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use dgx_music_server::HttpConfig;
use musicgen::DType;

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
    /// Hugging Face hub id, short name (small, medium, large, stereo-*, melody, melody-large,
    /// stereo-melody, stereo-melody-large) or local checkpoint directory. Repeat it to offer several
    /// (`--model small --model melody`; the environment variable takes a comma-separated list):
    /// requests pick one with `model`, the first is the default, and checkpoints with the same T5
    /// or EnCodec share one copy. With a melody checkpoint, POST /generate takes `melody` and the
    /// page shows a melody picker.
    #[arg(long, env = "DGX_MUSIC_MODEL", value_delimiter = ',', default_value = "facebook/musicgen-small")]
    model: Vec<String>,
    /// Models kept in memory at once [default: all of them]; when a job needs another, the least
    /// recently used is unloaded first (loading takes seconds: a budget for a small GPU).
    #[arg(long, env = "DGX_MUSIC_MAX_LOADED", value_parser = clap::value_parser!(u32).range(1..))]
    max_loaded: Option<u32>,
    /// auto, cpu, cuda or cuda:N; auto is the first GPU that passes `validate`'s kernel check,
    /// else the CPU (the log says why).
    #[arg(long, env = "DGX_MUSIC_DEVICE", default_value = "auto")]
    device: DeviceChoice,
    /// Decoder precision: f32, f16 or bf16 [default: bf16 on a GPU, f32 on the CPU].
    #[arg(long, env = "DGX_MUSIC_DTYPE", value_parser = crate::device::parse_dtype)]
    dtype: Option<DType>,
    /// Queued jobs beyond which new requests get 429 Too Many Requests.
    #[arg(long, env = "DGX_MUSIC_MAX_QUEUE", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    max_queue: u32,
    /// Queued jobs of equal duration generated together in one engine batch (jobs that continue
    /// audio only with jobs continuing the same audio with the same stride; jobs that follow a
    /// melody only with jobs following the same melody).
    #[arg(long, env = "DGX_MUSIC_MAX_BATCH", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    max_batch: u32,
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
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

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The decoder logs a client's bad upload at ERROR level, yet it is the client's problem and the
    // 400 answer says what it is; RUST_LOG=symphonia=debug shows those lines again.
    if !std::env::var("RUST_LOG").is_ok_and(|filter| filter.contains("symphonia")) {
        filter = filter.add_directive("symphonia=off".parse().expect("a valid directive"));
    }
    // Another subcommand path may already have installed a subscriber; keep it then.
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match args.log_format {
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init(),
        LogFormat::Json => logs.json().with_current_span(true).try_init(),
    };
    let resolved = crate::device::resolve(args.device, args.dtype);
    if let Some(note) = resolved.note() {
        tracing::info!("{note}");
    }
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => default_data_dir()?,
    };
    dgx_music_server::run(dgx_music_server::ServerConfig {
        host: args.host,
        port: args.port,
        data_dir,
        max_loaded: args.max_loaded.map_or(args.model.len(), |n| n as usize),
        models: args.model,
        device: resolved.device,
        dtype: resolved.dtype,
        max_queue: args.max_queue as usize,
        max_batch: args.max_batch as usize,
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
