//! `dgx-music worker`: generation only, on the job queue and storage that API nodes share.

use std::process::ExitCode;

use anyhow::bail;
use dgx_music_server::store::{DatabaseUrl, StorageUrl};

use crate::serve::{init_logs, LogFormat, StoreArgs, WorkerArgs};

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
    dgx-music worker --database postgres://dgx:secret@db.lan/dgx_music --storage s3://music/dgx \\\n    \
    --model small --device cuda:0 --device cuda:1\n\n\
    Runs the jobs that `dgx-music serve --no-worker` nodes take, on every device given. SIGTERM or\n\
    Ctrl-C: the running step finishes and its jobs go back to the queue. README: \"Many GPUs, many\n\
    machines\".")]
pub struct Args {
    #[command(flatten)]
    worker: WorkerArgs,
    #[command(flatten)]
    stores: StoreArgs,
    /// Log lines as text, or as one JSON object per line (for log collectors).
    #[arg(long, env = "DGX_MUSIC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    init_logs(args.log_format);
    let Some(database @ DatabaseUrl::Postgres(_)) = args.stores.database.clone() else {
        bail!(
            "a worker shares the job queue with the API nodes: give --database \
             postgres://USER:PASSWORD@HOST:PORT/DATABASE (SQLite is for `dgx-music serve` alone, which runs its own worker)"
        );
    };
    let Some(storage) = args.stores.storage.clone() else {
        bail!(
            "a worker stores the tracks where the API nodes serve them from: give --storage s3://BUCKET/PREFIX \
             (or a directory every node mounts)"
        );
    };
    if let StorageUrl::Dir(dir) = &storage {
        tracing::info!("--storage {}: every API node must see this directory (a shared mount)", dir.display());
    }
    dgx_music_server::run_worker(dgx_music_server::WorkerConfig {
        database,
        storage,
        worker: args.worker.settings()?,
        leases: args.stores.leases(),
    })?;
    Ok(ExitCode::SUCCESS)
}
