//! `dgx-music models`: the checkpoints in the Hugging Face cache.

use std::process::ExitCode;

use anyhow::Context;
use musicgen::hub;

const AFTER_HELP: &str = "\
Checkpoints live in the standard Hugging Face cache, shared with Python's transformers:
$HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub. HF_TOKEN is sent when set;
HF_HUB_OFFLINE=1 forbids downloads.

Models: small, medium, large, stereo-small, stereo-medium, stereo-large (facebook/musicgen-*),
or any owner/name hub id of a MusicGen checkpoint in the transformers layout.

Examples:
  dgx-music models download small
  dgx-music models list
  dgx-music models remove facebook/musicgen-small";

/// List, download or remove MusicGen checkpoints in the Hugging Face cache.
#[derive(clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// List the MusicGen checkpoints in the cache, with their size and directory.
    List,
    /// Download a checkpoint into the cache (only the files MusicGen needs) and print its directory.
    Download {
        /// Hub id (facebook/musicgen-small) or short name (small, medium, large, stereo-small, ...).
        id: String,
    },
    /// Delete a checkpoint (every cached revision) from the cache.
    Remove {
        /// Hub id (facebook/musicgen-small) or short name (small, ...).
        id: String,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::List => list(),
        Command::Download { id } => download(&id),
        Command::Remove { id } => remove(&id),
    }
}

fn list() -> anyhow::Result<ExitCode> {
    let settings = hub::HubSettings::from_env();
    let models = hub::cached_models(&settings)?;
    let mut text = format!("Hugging Face cache: {}\n", settings.cache_dir.display());
    if models.is_empty() {
        text.push_str("No MusicGen checkpoint is cached. Get one with `dgx-music models download small`.\n");
        crate::print_out(&text)?;
        return Ok(ExitCode::SUCCESS);
    }
    let width = models.iter().map(|m| m.id.len()).max().unwrap_or(0).max(2);
    text.push_str(&format!("{:<width$}  {:>9}  {:<11}  DIRECTORY\n", "ID", "SIZE", "SUPPORTED"));
    for model in &models {
        let supported = if model.supported { "yes" } else { "no" };
        text.push_str(&format!(
            "{:<width$}  {:>9}  {:<11}  {}\n",
            model.id,
            human_bytes(model.size_bytes),
            supported,
            model.path.display()
        ));
    }
    crate::print_out(&text)?;
    Ok(ExitCode::SUCCESS)
}

fn download(id: &str) -> anyhow::Result<ExitCode> {
    let hub_id = hub::hub_id(id).with_context(|| {
        format!("{id:?} is not a hub id; use owner/name or small, medium, large, stereo-small, ...")
    })?;
    let settings = hub::HubSettings::from_env();
    let dir = hub::download(&hub_id, &settings, Some(&crate::progress::download_bars()))?;
    // Check what arrived, so a broken download is reported now rather than at the first generate.
    musicgen::Checkpoint::open(&dir)
        .with_context(|| format!("{hub_id} was downloaded to {} but cannot be loaded", dir.display()))?;
    crate::print_out(&format!("{hub_id} is ready: {}\n", dir.display()))?;
    Ok(ExitCode::SUCCESS)
}

fn remove(id: &str) -> anyhow::Result<ExitCode> {
    let freed = hub::remove_cached(id, &hub::HubSettings::from_env())?;
    crate::print_out(&format!("removed {id}, {} freed\n", human_bytes(freed)))?;
    Ok(ExitCode::SUCCESS)
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn sizes_read_like_the_hub_shows_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(2_364_000_000), "2.4 GB");
    }
}
