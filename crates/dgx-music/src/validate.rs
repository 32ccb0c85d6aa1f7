//! `dgx-music validate`: can this binary use this machine's GPU? Ends in PASS or FAIL with a fix
//! for every failure, and exits 0 only on PASS.
//!
//! The probes only read: NVML for the driver and the cards (loaded at run time, so a CPU build and
//! a machine without a driver both work), /proc for the host, build.rs's record for the binary, and
//! one small computation per GPU compared with the CPU.

use std::process::ExitCode;

use serde::Serialize;

pub mod checks;
pub mod driver;
pub mod kernel;
pub mod render;
pub mod system;
pub mod target;

use checks::Check;
use driver::{DriverInfo, HostMemory};
use kernel::KernelCheck;
use system::SystemInfo;
use target::BuildTarget;

#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

/// Everything `validate` found, as printed by `--json`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub verdict: &'static str,
    /// UTC, RFC 3339.
    pub date: String,
    pub build: BuildTarget,
    pub system: SystemInfo,
    pub driver: DriverInfo,
    /// One per GPU that CUDA sees, or why none ran.
    pub kernel_checks: Vec<KernelCheck>,
    pub cuda_error: Option<String>,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn gather() -> Self {
        let build = BuildTarget::current();
        let system = SystemInfo::probe();
        let mut driver = DriverInfo::probe(HostMemory {
            total_bytes: system.memory_total_bytes,
            available_bytes: system.memory_available_bytes,
        });
        let kernels = kernel::run_all();
        if let Ok(list) = &kernels {
            for gpu in &mut driver.gpus {
                gpu.cuda_ordinal = list.iter().find(|k| k.uuid.is_some() && k.uuid == gpu.uuid).map(|k| k.cuda_ordinal);
            }
        }
        let checks = checks::evaluate(&build, &system, &driver, &kernels);
        let pass = checks::verdict(&checks, &kernels);
        let (kernel_checks, cuda_error) = match kernels {
            Ok(list) => (list, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        Self {
            verdict: if pass { "PASS" } else { "FAIL" },
            date: render::utc_now_rfc3339(),
            build,
            system,
            driver,
            kernel_checks,
            cuda_error,
            checks,
        }
    }

    pub fn passed(&self) -> bool {
        self.verdict == "PASS"
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let report = Report::gather();
    if args.json {
        crate::print_out(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        crate::print_out(&render::human(&report))?;
    }
    Ok(if report.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
