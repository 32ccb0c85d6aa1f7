//! The NVIDIA driver and its GPUs, as NVML reports them.
//!
//! NVML (`libnvidia-ml.so.1`) ships with the driver and is opened at run time, so this works in
//! a CPU-only build and on machines with no driver at all, where it reports why it found nothing.

use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use serde::Serialize;

use super::target::Cap;

#[derive(Debug, Clone, Serialize)]
pub struct DriverInfo {
    /// Why NVML could not be used; `None` when it answered.
    pub error: Option<String>,
    /// e.g. `580.95.05`.
    pub version: Option<String>,
    /// The newest CUDA the driver supports, as major·1000 + minor·10 (13000 is 13.0).
    pub cuda_driver_api: Option<i32>,
    pub gpus: Vec<GpuInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GpuInfo {
    /// NVML's index (PCI bus order); CUDA's numbering can differ, see `cuda_ordinal`.
    pub index: u32,
    pub name: Option<String>,
    /// `GPU-xxxxxxxx-...`, the key that ties NVML's and CUDA's numbering together.
    pub uuid: Option<String>,
    pub compute_capability: Option<Cap>,
    /// `None` where the GPU shares the host's memory and NVML reports none (GB10).
    pub memory_total_bytes: Option<u64>,
    pub memory_free_bytes: Option<u64>,
    /// Set by the kernel check when CUDA sees this GPU (absent from CUDA_VISIBLE_DEVICES otherwise).
    pub cuda_ordinal: Option<usize>,
}

impl DriverInfo {
    pub fn probe() -> Self {
        match Nvml::init() {
            Ok(nvml) => Self::from_nvml(&nvml),
            Err(e) => {
                Self { error: Some(describe_init_error(&e)), version: None, cuda_driver_api: None, gpus: Vec::new() }
            }
        }
    }

    fn from_nvml(nvml: &Nvml) -> Self {
        let count = nvml.device_count();
        let mut gpus = Vec::new();
        let mut error = None;
        match count {
            Ok(n) => {
                for index in 0..n {
                    gpus.push(gpu(nvml, index));
                }
            }
            Err(e) => error = Some(format!("NVML could not count the GPUs: {e}")),
        }
        Self {
            error,
            version: nvml.sys_driver_version().ok(),
            cuda_driver_api: nvml.sys_cuda_driver_version().ok(),
            gpus,
        }
    }

    pub fn cuda_driver_api_string(&self) -> Option<String> {
        self.cuda_driver_api.map(format_cuda_version)
    }
}

/// NVML's index of the GPU with this UUID (CUDA numbers GPUs its own way).
pub fn nvml_index_of(uuid: &str) -> Option<u32> {
    let nvml = Nvml::init().ok()?;
    (0..nvml.device_count().ok()?).find(|&i| nvml.device_by_index(i).and_then(|d| d.uuid()).is_ok_and(|u| u == uuid))
}

fn gpu(nvml: &Nvml, index: u32) -> GpuInfo {
    let mut info = GpuInfo {
        index,
        name: None,
        uuid: None,
        compute_capability: None,
        memory_total_bytes: None,
        memory_free_bytes: None,
        cuda_ordinal: None,
    };
    if let Ok(device) = nvml.device_by_index(index) {
        info.name = device.name().ok();
        info.uuid = device.uuid().ok();
        info.compute_capability = device.cuda_compute_capability().ok().map(|c| (c.major * 10 + c.minor) as Cap);
        if let Ok(mem) = device.memory_info() {
            info.memory_total_bytes = Some(mem.total);
            info.memory_free_bytes = Some(mem.free);
        }
    }
    info
}

/// 13000 → `13.0`, 12080 → `12.8`.
pub fn format_cuda_version(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

fn describe_init_error(e: &NvmlError) -> String {
    match e {
        NvmlError::LibloadingError(_) => "no NVIDIA driver found: libnvidia-ml.so.1 could not be loaded".into(),
        NvmlError::DriverNotLoaded => "the NVIDIA kernel driver is not loaded".into(),
        NvmlError::NoPermission => "no permission to talk to the NVIDIA driver".into(),
        NvmlError::LibRmVersionMismatch => {
            "the driver's library and kernel module differ in version (updated without a reboot?)".into()
        }
        other => format!("NVML failed to start: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_driver_cuda_versions() {
        assert_eq!(format_cuda_version(13000), "13.0");
        assert_eq!(format_cuda_version(12080), "12.8");
        assert_eq!(format_cuda_version(13020), "13.2");
    }
}
