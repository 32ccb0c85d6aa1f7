//! Prometheus metrics in the text exposition format. Job counts come from the store (so they
//! survive restarts); generation timings are counted by this process since it started.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Mutex;

use crate::job::JobStatus;

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Totals>,
}

#[derive(Default, Clone, Copy)]
struct Totals {
    batches: u64,
    batch_seconds: f64,
    jobs_completed: u64,
    audio_seconds: f64,
}

impl Metrics {
    /// Records one engine batch: its wall-clock time and the audio it produced for live jobs.
    pub fn record_batch(&self, seconds: f64, completed_jobs: u64, audio_seconds: f64) {
        let mut t = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        t.batches += 1;
        t.batch_seconds += seconds;
        t.jobs_completed += completed_jobs;
        t.audio_seconds += audio_seconds;
    }

    /// Seconds a full queue should take to free a slot: the mean batch time, 1..=300.
    pub fn retry_after_secs(&self) -> u64 {
        let t = *self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if t.batches == 0 {
            return 5;
        }
        (t.batch_seconds / t.batches as f64).ceil().clamp(1.0, 300.0) as u64
    }

    pub fn render(&self, counts: &HashMap<JobStatus, u64>) -> String {
        let t = *self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut out = String::new();
        let count = |s: JobStatus| counts.get(&s).copied().unwrap_or(0);
        out.push_str("# HELP dgx_music_jobs Jobs in the store by status.\n# TYPE dgx_music_jobs gauge\n");
        for status in JobStatus::ALL {
            let _ = writeln!(out, "dgx_music_jobs{{status=\"{status}\"}} {}", count(status));
        }
        let _ = writeln!(
            out,
            "# HELP dgx_music_queue_depth Jobs waiting to run.\n# TYPE dgx_music_queue_depth gauge\ndgx_music_queue_depth {}",
            count(JobStatus::Queued)
        );
        let _ = writeln!(
            out,
            "# HELP dgx_music_generation_seconds Wall-clock seconds of engine batches.\n\
             # TYPE dgx_music_generation_seconds summary\n\
             dgx_music_generation_seconds_sum {}\ndgx_music_generation_seconds_count {}",
            t.batch_seconds, t.batches
        );
        let _ = writeln!(
            out,
            "# HELP dgx_music_generated_audio_seconds_total Seconds of audio delivered.\n\
             # TYPE dgx_music_generated_audio_seconds_total counter\ndgx_music_generated_audio_seconds_total {}",
            t.audio_seconds
        );
        let _ = writeln!(
            out,
            "# HELP dgx_music_jobs_completed_total Jobs completed by this process.\n\
             # TYPE dgx_music_jobs_completed_total counter\ndgx_music_jobs_completed_total {}",
            t.jobs_completed
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_timings() {
        let metrics = Metrics::default();
        assert_eq!(metrics.retry_after_secs(), 5);
        metrics.record_batch(2.5, 2, 16.0);
        metrics.record_batch(1.5, 1, 8.0);
        assert_eq!(metrics.retry_after_secs(), 2);
        let counts = HashMap::from([(JobStatus::Queued, 3), (JobStatus::Completed, 7)]);
        let text = metrics.render(&counts);
        for line in [
            "dgx_music_jobs{status=\"queued\"} 3",
            "dgx_music_jobs{status=\"failed\"} 0",
            "dgx_music_queue_depth 3",
            "dgx_music_generation_seconds_sum 4",
            "dgx_music_generation_seconds_count 2",
            "dgx_music_generated_audio_seconds_total 24",
            "dgx_music_jobs_completed_total 3",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
