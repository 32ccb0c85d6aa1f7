//! Peak memory: the host's from the kernel's high-water mark, the GPU's by sampling NVML.
//!
//! candle allocates straight from the CUDA driver and keeps no statistics, so the GPU peak is the
//! largest use NVML reported while the benchmark ran, sampled every few milliseconds: a spike
//! shorter than the interval can be missed, which makes the figure a lower bound.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;

use crate::validate::system::meminfo_kib;

const SAMPLE_EVERY: Duration = Duration::from_millis(5);

/// This process's peak resident memory so far (VmHWM), in bytes.
pub fn host_peak_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    meminfo_kib(&status, "VmHWM").map(|k| k * 1024)
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct GpuPeak {
    /// Largest memory NVML attributed to this process; absent where the driver hides processes
    /// (containers with their own PID namespace).
    pub process_bytes: Option<u64>,
    /// Largest rise of the whole device's used memory over what was used when sampling began.
    pub device_rise_bytes: Option<u64>,
}

impl GpuPeak {
    /// The best figure available: the process's own, else the device's rise.
    pub fn best(&self) -> Option<u64> {
        self.process_bytes.or(self.device_rise_bytes)
    }
}

/// Samples one GPU's memory in a background thread until stopped.
pub struct GpuSampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<GpuPeak>,
}

impl GpuSampler {
    /// `nvml_index` is NVML's numbering of the GPU; returns `None` where NVML cannot be used.
    pub fn start(nvml_index: u32) -> Option<Self> {
        // Checked here so that a GPU NVML cannot see yields None instead of an empty peak; the
        // thread opens its own handle (NVML counts its initialisations).
        Nvml::init().ok()?.device_by_index(nvml_index).ok()?.memory_info().ok()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || match Nvml::init() {
            Ok(nvml) => sample(&nvml, nvml_index, &flag),
            Err(_) => GpuPeak::default(),
        });
        Some(Self { stop, handle })
    }

    pub fn finish(self) -> GpuPeak {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap_or_default()
    }
}

fn sample(nvml: &Nvml, index: u32, stop: &AtomicBool) -> GpuPeak {
    let Ok(device) = nvml.device_by_index(index) else { return GpuPeak::default() };
    let pid = std::process::id();
    let baseline = device.memory_info().map(|m| m.used).unwrap_or(0);
    let mut peak = GpuPeak::default();
    loop {
        if let Ok(m) = device.memory_info() {
            let rise = m.used.saturating_sub(baseline);
            peak.device_rise_bytes = Some(peak.device_rise_bytes.map_or(rise, |p| p.max(rise)));
        }
        if let Ok(procs) = device.running_compute_processes() {
            if let Some(UsedGpuMemory::Used(bytes)) = procs.iter().find(|p| p.pid == pid).map(|p| &p.used_gpu_memory) {
                let bytes = *bytes;
                peak.process_bytes = Some(peak.process_bytes.map_or(bytes, |p| p.max(bytes)));
            }
        }
        if stop.load(Ordering::SeqCst) {
            return peak;
        }
        std::thread::sleep(SAMPLE_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_peak_is_read_on_linux() {
        let peak = host_peak_bytes().expect("VmHWM in /proc/self/status");
        assert!(peak > 1 << 20, "{peak}");
    }

    #[test]
    fn best_prefers_the_process_figure() {
        let p = GpuPeak { process_bytes: Some(5), device_rise_bytes: Some(9) };
        assert_eq!(p.best(), Some(5));
        assert_eq!(GpuPeak { process_bytes: None, device_rise_bytes: Some(9) }.best(), Some(9));
    }
}
