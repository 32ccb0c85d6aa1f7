//! Turns the facts gathered by the probes into checks, each with the fix for its failure.

use serde::Serialize;

use super::driver::{format_cuda_version, DriverInfo};
use super::kernel::{KernelCheck, BF16_TOLERANCE, F32_TOLERANCE};
use super::system::SystemInfo;
use super::target::{format_cap, BuildTarget, Cap};

/// The oldest driver API this build's kernels and libraries need: CUDA 13.0, driver 580.
pub const MIN_CUDA_DRIVER_API: i32 = 13000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
    Skip,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    /// What to do about a failure or warning.
    pub fix: Option<String>,
}

impl Check {
    fn new(name: impl Into<String>, status: Status, detail: impl Into<String>, fix: Option<String>) -> Self {
        Self { name: name.into(), status, detail: detail.into(), fix }
    }
}

const BUILD_FIX: &str = "build the CUDA binary: `tools/build-cuda.sh` (kernels for compute 8.0 and newer, \
    the GB10 included), or `tools/build-cuda.sh 121` on a DGX Spark; by hand: \
    `CUDA_COMPUTE_CAP=80 cargo build --release --features cuda` with CUDA 13.0";
const DRIVER_FIX: &str = "install or update the NVIDIA driver to 580 or newer (CUDA 13.0); in a container, \
    start it with `--gpus all` (NVIDIA Container Toolkit); check with `nvidia-smi`";

/// The release archive for `machine` with the kernels that serve `gpu_cap` (releases carry
/// sm121 for the GB10 and compute_80 PTX for every other card of 8.0 or newer;
/// `tools/release.sh`).
fn release_archive(machine: &str, gpu_cap: Cap) -> String {
    let flavour = if gpu_cap == 121 { "cuda-sm121" } else { "cuda-sm80" };
    format!("dgx-music-{}-{machine}-{flavour}.tar.gz", env!("CARGO_PKG_VERSION"))
}

/// The advice for a card whose capability the binary's kernels cannot serve, on a `machine`
/// (`x86_64`, `aarch64`) where `tools/build-cuda.sh` builds natively.
fn rebuild_fix(gpu_cap: Cap, machine: &str) -> String {
    if gpu_cap >= 80 {
        format!(
            "rebuild for this card: `tools/build-cuda.sh {gpu_cap}` (CUDA_COMPUTE_CAP={gpu_cap}), or \
             `tools/build-cuda.sh 80` for PTX that every card of compute 8.0 or newer runs; or download {}",
            release_archive(machine, gpu_cap)
        )
    } else {
        format!("rebuild for this card: `tools/build-cuda.sh {gpu_cap}` (CUDA_COMPUTE_CAP={gpu_cap})")
    }
}

/// The advice for a binary of another architecture than the machine's (run by an emulator).
fn foreign_binary_fix(machine: &str) -> String {
    let cross =
        if machine == "aarch64" { "; from an x86_64 machine `tools/build-aarch64.sh cuda 121` (or `cpu`)" } else { "" };
    format!(
        "use the {machine} build: download {} (or the -cpu one), or build it here with \
         `tools/build-cuda.sh`{cross}",
        release_archive(machine, if machine == "aarch64" { 121 } else { 80 })
    )
}

/// Maps a CUDA error to what the user can do about it.
fn error_fix(error: &str, gpu_cap: Option<u32>, machine: &str) -> String {
    if error.contains("UNSUPPORTED_PTX_VERSION") || error.contains("INSUFFICIENT_DRIVER") {
        DRIVER_FIX.into()
    } else if ["NO_BINARY_FOR_GPU", "INVALID_PTX", "INVALID_IMAGE", "NOT_COMPILED"].iter().any(|k| error.contains(k)) {
        gpu_cap.map(|cap| rebuild_fix(cap, machine)).unwrap_or_else(|| BUILD_FIX.into())
    } else if error.contains("OUT_OF_MEMORY") {
        "free GPU memory: `nvidia-smi` lists the processes holding it".into()
    } else if error.contains("NO_DEVICE") {
        "no GPU is visible to CUDA: check `nvidia-smi`, CUDA_VISIBLE_DEVICES and the container's `--gpus`".into()
    } else {
        format!("check `nvidia-smi` and the driver's kernel log (`dmesg`); if it persists: {DRIVER_FIX}")
    }
}

pub fn evaluate(
    build: &BuildTarget,
    system: &SystemInfo,
    driver: &DriverInfo,
    kernels: &Result<Vec<KernelCheck>, String>,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let machine = system.machine_arch.as_deref().unwrap_or(system.arch);

    checks.push(if system.emulated {
        Check::new(
            "CPU architecture",
            Status::Fail,
            format!(
                "this is an {} binary on an {machine} machine, run by an emulator: slow, and it cannot load \
                 the NVIDIA driver's {machine} libraries",
                system.arch
            ),
            Some(foreign_binary_fix(machine)),
        )
    } else {
        Check::new("CPU architecture", Status::Pass, format!("{machine} binary on an {machine} machine"), None)
    });

    checks.push(if !build.cuda {
        Check::new(
            "CUDA build",
            Status::Fail,
            "this binary was built without CUDA: it can use the CPU only",
            Some(BUILD_FIX.into()),
        )
    } else if build.kernel_arch().is_none() {
        Check::new(
            "CUDA build",
            Status::Warn,
            build.describe(),
            Some("rebuild with CUDA_COMPUTE_CAP set (`tools/build-cuda.sh`) so the target is known".into()),
        )
    } else {
        Check::new("CUDA build", Status::Pass, build.describe(), None)
    });

    match (&driver.error, &driver.version) {
        (Some(err), _) if driver.gpus.is_empty() => {
            checks.push(Check::new("NVIDIA driver", Status::Fail, err.clone(), Some(DRIVER_FIX.into())))
        }
        (_, version) => checks.push(Check::new(
            "NVIDIA driver",
            Status::Pass,
            format!("driver {}", version.as_deref().unwrap_or("(version not reported)")),
            None,
        )),
    }

    if let Some(api) = driver.cuda_driver_api {
        checks.push(if api < MIN_CUDA_DRIVER_API {
            Check::new(
                "CUDA driver API",
                Status::Fail,
                format!(
                    "the driver supports CUDA up to {}; DGX Music's kernels need {}",
                    format_cuda_version(api),
                    format_cuda_version(MIN_CUDA_DRIVER_API)
                ),
                Some(DRIVER_FIX.into()),
            )
        } else {
            Check::new("CUDA driver API", Status::Pass, format!("CUDA {}", format_cuda_version(api)), None)
        });
    }

    if driver.error.is_none() && driver.gpus.is_empty() {
        checks.push(Check::new(
            "GPUs",
            Status::Fail,
            "the driver reports no GPU",
            Some("check `nvidia-smi`; in a container pass `--gpus all`".into()),
        ));
    }

    for gpu in &driver.gpus {
        let label = format!("GPU {} target", gpu.index);
        let Some(cap) = gpu.compute_capability else { continue };
        if let (true, Some(arch)) = (build.cuda, build.kernel_arch()) {
            checks.push(if arch.runs_on(cap) {
                Check::new(
                    label,
                    Status::Pass,
                    format!("compute {} can run kernels built for {}", format_cap(cap), arch.name()),
                    None,
                )
            } else {
                Check::new(
                    label,
                    Status::Fail,
                    format!(
                        "kernels built for {} cannot run on compute {}{}",
                        arch.name(),
                        format_cap(cap),
                        if gpu.dgx_spark { " (the DGX Spark's GB10)" } else { "" }
                    ),
                    Some(rebuild_fix(cap, machine)),
                )
            });
        }
        if cap < 80 {
            checks.push(Check::new(
                format!("GPU {} bf16", gpu.index),
                Status::Warn,
                format!("compute {} has no bf16 matrix units", format_cap(cap)),
                Some("use --dtype f16 or f32 on this card".into()),
            ));
        }
    }

    match kernels {
        Err(err) if build.cuda => {
            checks.push(Check::new("GPU kernel run", Status::Fail, err.clone(), Some(error_fix(err, None, machine))))
        }
        Err(_) => checks.push(Check::new("GPU kernel run", Status::Skip, "not possible without a CUDA build", None)),
        Ok(list) if list.is_empty() => checks.push(Check::new(
            "GPU kernel run",
            Status::Fail,
            "CUDA sees no GPU",
            Some(error_fix("NO_DEVICE", None, machine)),
        )),
        Ok(list) => {
            for k in list {
                let name = format!("CUDA device {} kernels", k.cuda_ordinal);
                checks.push(if k.passed() {
                    Check::new(name, Status::Pass, kernel_summary(k), None)
                } else if let Some(err) = &k.error {
                    Check::new(name, Status::Fail, err.clone(), Some(error_fix(err, k.compute_capability, machine)))
                } else {
                    Check::new(
                        name,
                        Status::Fail,
                        format!("results differ from the CPU beyond tolerance: {}", kernel_summary(k)),
                        Some(format!(
                            "report this with the output of `dgx-music validate --json`; meanwhile {DRIVER_FIX}"
                        )),
                    )
                });
            }
        }
    }
    checks
}

fn kernel_summary(k: &KernelCheck) -> String {
    let e = |v: Option<f64>| v.map(|x| format!("{x:.1e}")).unwrap_or_else(|| "-".into());
    let mut s = format!(
        "matmul f32 rel err {} (<= {F32_TOLERANCE:.0e}), softmax max err {}, matmul bf16 rel err {} (<= {BF16_TOLERANCE:.0e})",
        e(k.f32_matmul_rel_error),
        e(k.softmax_max_abs_error),
        e(k.bf16_matmul_rel_error)
    );
    if let Some(t) = k.bf16_tflops {
        s.push_str(&format!("; bf16 4096^3 matmul {t:.0} TFLOP/s"));
    }
    s
}

/// PASS needs no failed check and at least one GPU that ran the kernels correctly.
pub fn verdict(checks: &[Check], kernels: &Result<Vec<KernelCheck>, String>) -> bool {
    let any_gpu_ok = kernels.as_ref().is_ok_and(|list| list.iter().any(KernelCheck::passed));
    any_gpu_ok && checks.iter().all(|c| c.status != Status::Fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::driver::GpuInfo;

    fn gpu(cap: u32) -> GpuInfo {
        GpuInfo {
            index: 0,
            name: Some(if cap == 121 { "NVIDIA GB10" } else { "NVIDIA H100 80GB HBM3" }.into()),
            uuid: None,
            compute_capability: Some(cap),
            memory_total_bytes: None,
            memory_free_bytes: None,
            unified_memory: cap == 121,
            dgx_spark: cap == 121,
            cuda_ordinal: None,
        }
    }

    /// A machine of `machine` architecture running a binary built for `binary`.
    fn system(binary: &'static str, machine: &str) -> SystemInfo {
        SystemInfo {
            arch: binary,
            machine_arch: Some(machine.into()),
            emulated: binary != machine,
            cpu_model: None,
            cpus: 20,
            os: "Ubuntu 24.04.3 LTS".into(),
            kernel: None,
            memory_total_bytes: Some(128 << 30),
            memory_available_bytes: Some(120 << 30),
        }
    }

    fn spark() -> SystemInfo {
        system("aarch64", "aarch64")
    }

    fn driver(api: i32, gpus: Vec<GpuInfo>) -> DriverInfo {
        DriverInfo { error: None, version: Some("580.95.05".into()), cuda_driver_api: Some(api), gpus }
    }

    fn cuda_build(cap: &'static str) -> BuildTarget {
        BuildTarget { cuda: true, compute_cap: Some(cap), ..BuildTarget::current() }
    }

    #[test]
    fn cpu_build_without_driver_fails_with_advice() {
        let build = BuildTarget { cuda: false, compute_cap: None, ..BuildTarget::current() };
        let none = DriverInfo {
            error: Some("no NVIDIA driver found".into()),
            version: None,
            cuda_driver_api: None,
            gpus: vec![],
        };
        let kernels = Err("this binary was built without CUDA".to_string());
        let checks = evaluate(&build, &system("x86_64", "x86_64"), &none, &kernels);
        assert!(!verdict(&checks, &kernels));
        let build_check = checks.iter().find(|c| c.name == "CUDA build").unwrap();
        assert_eq!(build_check.status, Status::Fail);
        assert!(build_check.fix.as_deref().unwrap().contains("build-cuda.sh"));
        assert!(checks.iter().any(|c| c.name == "NVIDIA driver" && c.status == Status::Fail));
    }

    #[test]
    fn hopper_only_build_on_gb10_says_rebuild_for_121_or_80() {
        let checks = evaluate(&cuda_build("90"), &spark(), &driver(13000, vec![gpu(121)]), &Ok(vec![]));
        let target = checks.iter().find(|c| c.name == "GPU 0 target").unwrap();
        assert_eq!(target.status, Status::Fail);
        assert!(target.detail.contains("sm_90a") && target.detail.contains("12.1"), "{}", target.detail);
        assert!(target.detail.contains("DGX Spark"), "{}", target.detail);
        let fix = target.fix.as_deref().unwrap();
        assert!(fix.contains("CUDA_COMPUTE_CAP=121") && fix.contains("build-cuda.sh 80"), "{fix}");
        assert!(fix.contains("-aarch64-cuda-sm121.tar.gz"), "{fix}");
        assert_eq!(checks.iter().find(|c| c.name == "CPU architecture").unwrap().status, Status::Pass);
    }

    #[test]
    fn portable_build_on_gb10_passes_the_target_check() {
        let checks = evaluate(&cuda_build("80"), &spark(), &driver(13000, vec![gpu(121)]), &Ok(vec![]));
        assert_eq!(checks.iter().find(|c| c.name == "GPU 0 target").unwrap().status, Status::Pass);
    }

    #[test]
    fn an_x86_binary_on_the_spark_says_get_the_aarch64_build() {
        // Under an emulator NVML cannot load either: the driver check fails too, but the first
        // failure names the cause.
        let none = DriverInfo {
            error: Some("no NVIDIA driver found: libnvidia-ml.so.1 could not be loaded".into()),
            version: None,
            cuda_driver_api: None,
            gpus: vec![],
        };
        let checks = evaluate(&cuda_build("80"), &system("x86_64", "aarch64"), &none, &Err("no driver".into()));
        let arch = &checks[0];
        assert_eq!((arch.name.as_str(), arch.status), ("CPU architecture", Status::Fail));
        assert!(arch.detail.contains("x86_64 binary on an aarch64 machine"), "{}", arch.detail);
        let fix = arch.fix.as_deref().unwrap();
        assert!(fix.contains("-aarch64-cuda-sm121.tar.gz") && fix.contains("build-aarch64.sh cuda 121"), "{fix}");
        // And the other way round (an aarch64 build under qemu on x86_64, as CI runs the tests).
        let checks = evaluate(&cuda_build("121"), &system("aarch64", "x86_64"), &none, &Err("no driver".into()));
        let fix = checks[0].fix.as_deref().unwrap();
        assert!(fix.contains("-x86_64-cuda-sm80.tar.gz") && !fix.contains("build-aarch64"), "{fix}");
    }

    #[test]
    fn old_driver_fails_with_update_advice() {
        let checks =
            evaluate(&cuda_build("80"), &system("x86_64", "x86_64"), &driver(12080, vec![gpu(90)]), &Ok(vec![]));
        let api = checks.iter().find(|c| c.name == "CUDA driver API").unwrap();
        assert_eq!(api.status, Status::Fail);
        assert!(api.detail.contains("12.8") && api.fix.as_deref().unwrap().contains("580"));
    }

    #[test]
    fn kernel_errors_map_to_fixes() {
        assert!(error_fix("CUDA_ERROR_UNSUPPORTED_PTX_VERSION", Some(121), "aarch64").contains("580"));
        let no_image = "DriverError(CUDA_ERROR_NO_BINARY_FOR_GPU, \"no kernel image\")";
        assert!(error_fix(no_image, Some(121), "aarch64").contains("aarch64-cuda-sm121"));
        assert!(error_fix("CUDA_ERROR_OUT_OF_MEMORY", None, "x86_64").contains("nvidia-smi"));
    }
}
