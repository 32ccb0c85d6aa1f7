//! `dgx-music serve`: settings from flags or the environment, then the server crate runs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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
    /// Hugging Face hub id or local checkpoint directory.
    #[arg(long, env = "DGX_MUSIC_MODEL", default_value = "facebook/musicgen-small")]
    model: String,
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
    /// audio only with jobs continuing the same audio with the same stride).
    #[arg(long, env = "DGX_MUSIC_MAX_BATCH", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    max_batch: u32,
    /// Largest audio file accepted by POST /api/v1/uploads, in megabytes (10^6 bytes); larger ones
    /// get 413 Payload Too Large.
    #[arg(long, env = "DGX_MUSIC_MAX_UPLOAD_MB", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    max_upload_mb: u32,
    /// Uploads that no job continues are deleted once older than this many hours (checked at start-up
    /// and periodically). An upload a job continues is deleted with the last such job.
    #[arg(long, env = "DGX_MUSIC_UNUSED_UPLOAD_HOURS", default_value_t = 24.0, value_parser = positive_hours)]
    unused_upload_hours: f64,
}

fn positive_hours(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(hours) if hours > 0.0 && hours <= 1e6 => Ok(hours),
        _ => Err(format!("{text:?} is not a number of hours above 0 (and at most 1000000)")),
    }
}

fn default_data_dir() -> anyhow::Result<PathBuf> {
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
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
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
        model: args.model,
        device: resolved.device,
        dtype: resolved.dtype,
        max_queue: args.max_queue as usize,
        max_batch: args.max_batch as usize,
        max_upload_bytes: u64::from(args.max_upload_mb) * 1_000_000,
        unused_upload_max_age: Duration::from_secs_f64(args.unused_upload_hours * 3600.0),
    })?;
    Ok(ExitCode::SUCCESS)
}
