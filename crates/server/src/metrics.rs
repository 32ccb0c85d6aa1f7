//! Prometheus metrics through the `prometheus` crate: one [`Registry`] per server (no global state,
//! so tests can run several servers in one process). Job counts come from the store at each scrape
//! (so they survive restarts); timings are observed by this process since it started. On Linux the
//! registry also carries the process collector (`process_resident_memory_bytes`, CPU seconds, open
//! files). On a GPU the worker also sets the device's memory after loading and after each batch.

use std::collections::HashMap;

use prometheus::core::Collector;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntGauge, IntGaugeVec, Opts, Registry};

use crate::job::{public_model_id, JobStatus};

pub struct Metrics {
    registry: Registry,
    jobs: IntGaugeVec,
    queue_depth: IntGauge,
    generation_seconds: HistogramVec,
    queue_wait_seconds: HistogramVec,
    audio_seconds: prometheus::Counter,
    jobs_completed: IntCounter,
    device_memory_used: IntGaugeVec,
    device_memory_total: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new().expect("metric names and labels are valid and registered once")
    }
}

impl Metrics {
    fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let jobs = IntGaugeVec::new(Opts::new("dgx_music_jobs", "Jobs in the store by status."), &["status"])?;
        let queue_depth = IntGauge::new("dgx_music_queue_depth", "Jobs waiting to run.")?;
        let generation_seconds = HistogramVec::new(
            HistogramOpts::new("dgx_music_generation_seconds", "Wall-clock seconds of engine batches.")
                .buckets(vec![0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0]),
            &["model", "device"],
        )?;
        let queue_wait_seconds = HistogramVec::new(
            HistogramOpts::new("dgx_music_queue_wait_seconds", "Seconds from submission to the start of generation.")
                .buckets(vec![0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0]),
            &["model"],
        )?;
        let audio_seconds =
            prometheus::Counter::new("dgx_music_generated_audio_seconds_total", "Seconds of audio delivered.")?;
        let jobs_completed = IntCounter::new("dgx_music_jobs_completed_total", "Jobs completed by this process.")?;
        let device_memory_used = IntGaugeVec::new(
            Opts::new(
                "dgx_music_device_memory_used_bytes",
                "GPU memory in use (all processes), as the driver reports it.",
            ),
            &["device"],
        )?;
        let device_memory_total =
            IntGaugeVec::new(Opts::new("dgx_music_device_memory_total_bytes", "GPU memory in all."), &["device"])?;
        registry.register(Box::new(jobs.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(generation_seconds.clone()))?;
        registry.register(Box::new(queue_wait_seconds.clone()))?;
        registry.register(Box::new(audio_seconds.clone()))?;
        registry.register(Box::new(jobs_completed.clone()))?;
        registry.register(Box::new(device_memory_used.clone()))?;
        registry.register(Box::new(device_memory_total.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        Ok(Metrics {
            registry,
            jobs,
            queue_depth,
            generation_seconds,
            queue_wait_seconds,
            audio_seconds,
            jobs_completed,
            device_memory_used,
            device_memory_total,
        })
    }

    /// Records one engine batch of `model` (a canonical id) on `device`: its wall-clock time and the
    /// audio it produced for live jobs.
    pub fn record_batch(&self, model: &str, device: &str, seconds: f64, completed_jobs: u64, audio_seconds: f64) {
        self.generation_seconds.with_label_values(&[public_model_id(model).as_str(), device]).observe(seconds);
        self.jobs_completed.inc_by(completed_jobs);
        self.audio_seconds.inc_by(audio_seconds);
    }

    /// Records how long a job waited in the queue before its batch started.
    pub fn record_queue_wait(&self, model: &str, seconds: f64) {
        self.queue_wait_seconds.with_label_values(&[public_model_id(model).as_str()]).observe(seconds.max(0.0));
    }

    /// Records the memory of the GPU `device` (a model's device description).
    pub fn record_device_memory(&self, device: &str, memory: musicgen::DeviceMemory) {
        self.device_memory_used.with_label_values(&[device]).set(memory.used_bytes as i64);
        self.device_memory_total.with_label_values(&[device]).set(memory.total_bytes as i64);
    }

    /// Seconds a full queue should take to free a slot: the mean batch time, 1..=300.
    pub fn retry_after_secs(&self) -> u64 {
        let (mut sum, mut count) = (0.0, 0);
        for family in self.generation_seconds.collect() {
            for metric in family.get_metric() {
                sum += metric.get_histogram().get_sample_sum();
                count += metric.get_histogram().get_sample_count();
            }
        }
        if count == 0 {
            return 5;
        }
        (sum / count as f64).ceil().clamp(1.0, 300.0) as u64
    }

    /// The text exposition format, job counts set from `counts` first.
    pub fn render(&self, counts: &HashMap<JobStatus, u64>) -> String {
        let count = |s: JobStatus| counts.get(&s).copied().unwrap_or(0);
        for status in JobStatus::ALL {
            self.jobs.with_label_values(&[status.as_str()]).set(count(status) as i64);
        }
        self.queue_depth.set(count(JobStatus::Queued) as i64);
        let mut out = String::new();
        if let Err(err) = prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::error!("cannot encode the metrics: {err}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_timings_and_waits() {
        let metrics = Metrics::default();
        assert_eq!(metrics.retry_after_secs(), 5);
        metrics.record_batch("/srv/models/tiny-mono", "cpu", 2.5, 2, 16.0);
        metrics.record_batch("/srv/models/tiny-mono", "cpu", 1.5, 1, 8.0);
        metrics.record_queue_wait("/srv/models/tiny-mono", 0.3);
        let memory = musicgen::DeviceMemory { used_bytes: 3 << 30, total_bytes: 128 << 30 };
        metrics.record_device_memory("cuda:0 (NVIDIA GB10)", memory);
        assert_eq!(metrics.retry_after_secs(), 2);
        let counts = HashMap::from([(JobStatus::Queued, 3), (JobStatus::Completed, 7)]);
        let text = metrics.render(&counts);
        let labels = "device=\"cpu\",model=\"local/models/tiny-mono\"";
        for line in [
            "dgx_music_jobs{status=\"queued\"} 3".to_string(),
            "dgx_music_jobs{status=\"failed\"} 0".to_string(),
            "dgx_music_queue_depth 3".to_string(),
            format!("dgx_music_generation_seconds_sum{{{labels}}} 4"),
            format!("dgx_music_generation_seconds_count{{{labels}}} 2"),
            format!("dgx_music_generation_seconds_bucket{{{labels},le=\"2\"}} 1"),
            "dgx_music_queue_wait_seconds_bucket{model=\"local/models/tiny-mono\",le=\"0.5\"} 1".to_string(),
            "dgx_music_generated_audio_seconds_total 24".to_string(),
            "dgx_music_jobs_completed_total 3".to_string(),
            "dgx_music_device_memory_used_bytes{device=\"cuda:0 (NVIDIA GB10)\"} 3221225472".to_string(),
            "dgx_music_device_memory_total_bytes{device=\"cuda:0 (NVIDIA GB10)\"} 137438953472".to_string(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("/srv"), "no server path in the labels:\n{text}");
        #[cfg(target_os = "linux")]
        assert!(text.lines().any(|l| l.starts_with("process_resident_memory_bytes ")), "{text}");
    }
}
