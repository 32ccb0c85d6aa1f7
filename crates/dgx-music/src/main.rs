//! `dgx-music`: the command line. Each subcommand lives in its own module and only wires the
//! engine (`musicgen`) and the server (`dgx-music-server`) together.

use clap::{Parser, Subcommand};

mod bench;
mod device;
mod generate;
mod keys;
mod models;
mod play;
mod progress;
mod serve;
mod validate;
mod worker;

/// Text-to-music on your own GPU with Meta's MusicGen. No Python needed.
#[derive(Parser)]
#[command(name = "dgx-music", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate music from a text prompt and write it to a WAV file.
    Generate(generate::Args),
    /// Run the HTTP API, job queue and web page (and, unless --no-worker, the generation).
    Serve(serve::Args),
    /// Generate the jobs of a shared queue (PostgreSQL), for API nodes on this or other machines.
    Worker(worker::Args),
    /// Check the GPU, driver and CUDA build; ends in PASS or FAIL with advice.
    Validate(validate::Args),
    /// Measure generation speed on this machine.
    Bench(bench::Args),
    /// List, download or remove cached checkpoints.
    Models(models::Args),
    /// Create, list or revoke the API keys of a server's data directory or shared database.
    Keys(keys::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Worker(args) => worker::run(args),
        Command::Validate(args) => validate::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Models(args) => models::run(args),
        Command::Keys(args) => keys::run(args),
    };
    match result {
        Ok(code) => code,
        // The reader of stdout went away (`dgx-music validate --json | head`): nothing is left to
        // say to anyone, so end quietly, as ripgrep does.
        Err(err) if is_broken_pipe(&err) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|cause| cause.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
}

/// Writes `text` to stdout, returning the error `println!` would panic on (a closed pipe).
fn print_out(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}
