//! Records what the CUDA kernels are compiled for, so `validate` and `bench` can say it at run time.
//!
//! candle's kernel build takes its target from `CUDA_COMPUTE_CAP`, else from the first GPU that
//! `nvidia-smi` reports on the build machine; this script asks the same two sources in the same order,
//! so the value baked in here is the one candle's kernels were built for.

use std::env;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    let cuda = env::var_os("CARGO_FEATURE_CUDA").is_some();
    let cap = if cuda { compute_cap().unwrap_or_default() } else { String::new() };
    println!("cargo:rustc-env=DGX_BUILD_COMPUTE_CAP={cap}");
    println!("cargo:rustc-env=DGX_BUILD_TARGET={}", env::var("TARGET").unwrap_or_default());
    println!("cargo:rustc-env=DGX_BUILD_PROFILE={}", env::var("PROFILE").unwrap_or_default());
}

fn compute_cap() -> Option<String> {
    if let Some(cap) = env::var("CUDA_COMPUTE_CAP").ok().filter(|c| !c.trim().is_empty()) {
        return Some(cap.trim().to_string());
    }
    let out = Command::new("nvidia-smi").args(["--query-gpu=compute_cap", "--format=csv,noheader"]).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let first = text.lines().next()?.trim().replace('.', "");
    (!first.is_empty()).then_some(first)
}
