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
    /// NVML's figures, or for a GPU that shares the host's memory (`unified_memory`) the host's
    /// total and available memory, since that is what it allocates from.
    pub memory_total_bytes: Option<u64>,
    pub memory_free_bytes: Option<u64>,
    /// NVML has no framebuffer to report (NOT_SUPPORTED): the GPU allocates from system memory,
    /// as the GB10 of a DGX Spark does.
    pub unified_memory: bool,
    /// The DGX Spark's GPU (GB10, compute 12.1), named so reports and fixes can say so.
    pub dgx_spark: bool,
    /// Set by the kernel check when CUDA sees this GPU (absent from CUDA_VISIBLE_DEVICES otherwise).
    pub cuda_ordinal: Option<usize>,
}

/// What NVML answered about one GPU, apart from the calls, so that tests replay recorded answers.
pub struct GpuAnswers {
    pub name: Result<String, NvmlError>,
    pub uuid: Result<String, NvmlError>,
    /// (major, minor).
    pub compute_capability: Result<(i32, i32), NvmlError>,
    /// (total, free) bytes.
    pub memory: Result<(u64, u64), NvmlError>,
}

/// The host's memory, which a unified-memory GPU reports as its own.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostMemory {
    pub total_bytes: Option<u64>,
    pub available_bytes: Option<u64>,
}

impl DriverInfo {
    pub fn probe(host: HostMemory) -> Self {
        match Nvml::init() {
            Ok(nvml) => Self::from_nvml(&nvml, host),
            Err(e) => {
                Self { error: Some(describe_init_error(&e)), version: None, cuda_driver_api: None, gpus: Vec::new() }
            }
        }
    }

    fn from_nvml(nvml: &Nvml, host: HostMemory) -> Self {
        let count = nvml.device_count();
        let mut gpus = Vec::new();
        let mut error = None;
        match count {
            Ok(n) => {
                for index in 0..n {
                    gpus.push(GpuInfo::from_answers(index, ask(nvml, index), host));
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

fn ask(nvml: &Nvml, index: u32) -> GpuAnswers {
    match nvml.device_by_index(index) {
        Ok(device) => GpuAnswers {
            name: device.name(),
            uuid: device.uuid(),
            compute_capability: device.cuda_compute_capability().map(|c| (c.major, c.minor)),
            memory: device.memory_info().map(|m| (m.total, m.free)),
        },
        Err(_) => GpuAnswers {
            name: Err(NvmlError::Unknown),
            uuid: Err(NvmlError::Unknown),
            compute_capability: Err(NvmlError::Unknown),
            memory: Err(NvmlError::Unknown),
        },
    }
}

impl GpuInfo {
    pub fn from_answers(index: u32, answers: GpuAnswers, host: HostMemory) -> Self {
        let compute_capability = answers.compute_capability.ok().map(|(major, minor)| (major * 10 + minor) as Cap);
        let name = answers.name.ok();
        let unified_memory = matches!(answers.memory, Err(NvmlError::NotSupported));
        let (memory_total_bytes, memory_free_bytes) = match answers.memory {
            Ok((total, free)) => (Some(total), Some(free)),
            Err(_) if unified_memory => (host.total_bytes, host.available_bytes),
            Err(_) => (None, None),
        };
        Self {
            index,
            dgx_spark: compute_capability == Some(121) && name.as_deref().is_some_and(|n| n.contains("GB10")),
            name,
            uuid: answers.uuid.ok(),
            compute_capability,
            memory_total_bytes,
            memory_free_bytes,
            unified_memory,
            cuda_ordinal: None,
        }
    }
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

    const HOST: HostMemory = HostMemory { total_bytes: Some(128_502_530_048), available_bytes: Some(119_000_000_000) };

    /// A DGX Spark's answers: name and capability, and NOT_SUPPORTED for the memory (its GB10 has
    /// no framebuffer; pynvml's users report the same error, NVIDIA developer forum, thread 358869).
    fn gb10() -> GpuAnswers {
        GpuAnswers {
            name: Ok("NVIDIA GB10".into()),
            uuid: Ok("GPU-5a1b2c3d-0000-1111-2222-333344445555".into()),
            compute_capability: Ok((12, 1)),
            memory: Err(NvmlError::NotSupported),
        }
    }

    #[test]
    fn gb10_reports_the_hosts_memory_as_its_own() {
        let gpu = GpuInfo::from_answers(0, gb10(), HOST);
        assert!(gpu.dgx_spark && gpu.unified_memory);
        assert_eq!(gpu.compute_capability, Some(121));
        assert_eq!((gpu.memory_total_bytes, gpu.memory_free_bytes), (HOST.total_bytes, HOST.available_bytes));
    }

    #[test]
    fn a_discrete_card_reports_nvmls_memory_and_a_failed_query_none() {
        // An H100's answers (80 GiB framebuffer).
        let h100 = GpuAnswers {
            name: Ok("NVIDIA H100 80GB HBM3".into()),
            uuid: Ok("GPU-0".into()),
            compute_capability: Ok((9, 0)),
            memory: Ok((85_520_809_984, 84_935_180_288)),
        };
        let gpu = GpuInfo::from_answers(1, h100, HOST);
        assert!(!gpu.dgx_spark && !gpu.unified_memory);
        assert_eq!(gpu.memory_total_bytes, Some(85_520_809_984));
        let failing = GpuAnswers { memory: Err(NvmlError::GpuLost), ..gb10() };
        let gpu = GpuInfo::from_answers(0, failing, HOST);
        assert!(!gpu.unified_memory && gpu.memory_total_bytes.is_none());
    }

    #[test]
    fn formats_driver_cuda_versions() {
        assert_eq!(format_cuda_version(13000), "13.0");
        assert_eq!(format_cuda_version(12080), "12.8");
        assert_eq!(format_cuda_version(13020), "13.2");
    }
}
