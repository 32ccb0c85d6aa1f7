//! Progress bars on stderr: the engine reports, the binary draws.

use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use musicgen::hub::{DownloadEvent, OnDownload};

/// One bar per file a hub download transfers; files already in the cache draw nothing.
pub fn download_bars() -> OnDownload {
    let current: Mutex<Option<ProgressBar>> = Mutex::new(None);
    OnDownload::new(move |event| {
        let Ok(mut current) = current.lock() else { return };
        match event {
            DownloadEvent::Started { file, total_bytes } => {
                let bar = ProgressBar::with_draw_target(Some(*total_bytes), ProgressDrawTarget::stderr());
                let style = ProgressStyle::with_template(
                    "{msg:>28} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .map(|s| s.progress_chars("=> "))
                .unwrap_or_else(|_| ProgressStyle::default_bar());
                bar.set_style(style);
                bar.set_message(file.clone());
                *current = Some(bar);
            }
            DownloadEvent::Progress { bytes, total_bytes, .. } => {
                if let Some(bar) = current.as_ref() {
                    bar.set_length(*total_bytes);
                    bar.set_position(*bytes);
                }
            }
            DownloadEvent::Finished { .. } => {
                if let Some(bar) = current.take() {
                    bar.finish();
                }
            }
        }
    })
}

/// The generation bar of `generate`: decoder steps done out of all.
pub fn generation_bar(quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{spinner} generating [{bar:40}] {pos}/{len} steps  {per_sec}  ETA {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar
}
