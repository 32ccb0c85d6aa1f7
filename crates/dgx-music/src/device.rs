//! `--device auto` (the default of `generate`, `serve` and `bench`): the first GPU that passes
//! `validate`'s kernel check, else the CPU with one line saying why; and the decoder dtype that
//! suits the device chosen (bf16 on a GPU, f32 on the CPU) unless `--dtype` says otherwise.

use std::fmt;
use std::str::FromStr;

use musicgen::{DType, DeviceSpec, Weights};

use crate::validate::kernel::{self, KernelCheck};

/// A `--device` value: `auto`, or a device the engine opens as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Exact(DeviceSpec),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        s.parse().map(Self::Exact).map_err(|e: musicgen::Error| format!("{e}, or auto"))
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Exact(spec) => spec.fmt(f),
        }
    }
}

/// A `--weights` value.
pub fn parse_weights(s: &str) -> Result<Weights, String> {
    s.parse().map_err(|e: musicgen::Error| e.to_string())
}

/// A `--dtype` value.
pub fn parse_dtype(s: &str) -> Result<DType, String> {
    s.parse().map_err(|e: musicgen::Error| e.to_string())
}

/// Where the model runs and in which precision, and for `auto` on the CPU why no GPU was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub device: DeviceSpec,
    pub dtype: DType,
    pub fallback_reason: Option<String>,
}

impl Resolved {
    /// The one line a front end prints for a fallback to the CPU.
    pub fn note(&self) -> Option<String> {
        self.fallback_reason.as_ref().map(|why| format!("--device auto: using the CPU, {why}"))
    }
}

/// Resolves `choice` on this machine: for `auto` the GPUs are checked in CUDA's order until one
/// passes (a CPU build checks none).
/// `weights` can change the default dtype (see [`default_dtype`]).
pub fn resolve(choice: DeviceChoice, dtype: Option<DType>, weights: Weights) -> Resolved {
    let (device, fallback_reason) = match choice {
        DeviceChoice::Exact(spec) => (spec, None),
        DeviceChoice::Auto => match pick(&kernel::run_until_one_passes()) {
            Ok(ordinal) => (DeviceSpec::Cuda(ordinal), None),
            Err(why) => (DeviceSpec::Cpu, Some(why)),
        },
    };
    Resolved { device, dtype: dtype.unwrap_or_else(|| default_dtype(device, weights)), fallback_reason }
}

/// bf16 on a GPU (its matrix units' format, half the bytes of f32), f32 on the CPU (exact
/// against transformers; `--dtype bf16` is faster there), except for int8 weights on the CPU:
/// bf16 there, whose half-precision cache and f32 kernels make 16 s of small in 31 s where the
/// f32 cache through candle's ops takes 53 s (docs/PERFORMANCE.md), with the projections int8
/// either way.
pub fn default_dtype(device: DeviceSpec, weights: Weights) -> DType {
    if device == DeviceSpec::Cpu && weights == Weights::Int8 {
        return DType::BF16;
    }
    match device {
        DeviceSpec::Cuda(_) => DType::BF16,
        DeviceSpec::Cpu => DType::F32,
    }
}

/// The CUDA ordinal of the first GPU whose kernel check passed, or why there is none.
fn pick(checks: &Result<Vec<KernelCheck>, String>) -> Result<usize, String> {
    let list = checks.as_ref().map_err(String::clone)?;
    if let Some(ok) = list.iter().find(|k| k.passed()) {
        return Ok(ok.cuda_ordinal);
    }
    match list.first() {
        None => Err("CUDA sees no GPU (`dgx-music validate` says why)".into()),
        Some(first) => Err(format!(
            "GPU {} failed the kernel check{} (`dgx-music validate` gives the fix)",
            first.cuda_ordinal,
            first.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(ordinal: usize, ok: bool) -> KernelCheck {
        KernelCheck {
            cuda_ordinal: ordinal,
            name: Some("NVIDIA GB10".into()),
            uuid: None,
            compute_capability: Some(121),
            memory_total_bytes: None,
            memory_free_bytes: None,
            f32_matmul_rel_error: Some(1e-7),
            softmax_max_abs_error: Some(1e-8),
            bf16_matmul_rel_error: Some(3e-3),
            bf16_tflops: None,
            error: (!ok).then(|| "CUDA_ERROR_NO_BINARY_FOR_GPU".to_string()),
        }
    }

    #[test]
    fn parses_auto_and_every_engine_device() {
        assert_eq!("auto".parse::<DeviceChoice>(), Ok(DeviceChoice::Auto));
        assert_eq!("AUTO".parse::<DeviceChoice>(), Ok(DeviceChoice::Auto));
        assert_eq!("cuda:1".parse::<DeviceChoice>(), Ok(DeviceChoice::Exact(DeviceSpec::Cuda(1))));
        assert_eq!("cpu".parse::<DeviceChoice>(), Ok(DeviceChoice::Exact(DeviceSpec::Cpu)));
        let err = "tpu".parse::<DeviceChoice>().unwrap_err();
        assert!(err.contains("cuda:N") && err.contains("auto"), "{err}");
    }

    #[test]
    fn auto_takes_the_first_gpu_that_passes() {
        assert_eq!(pick(&Ok(vec![check(0, true), check(1, true)])), Ok(0));
        assert_eq!(pick(&Ok(vec![check(0, false), check(1, true)])), Ok(1));
    }

    #[test]
    fn auto_says_why_it_falls_back_to_the_cpu() {
        let why = pick(&Ok(vec![check(0, false)])).unwrap_err();
        assert!(why.contains("GPU 0") && why.contains("NO_BINARY_FOR_GPU") && why.contains("validate"), "{why}");
        assert!(pick(&Ok(vec![])).unwrap_err().contains("no GPU"));
        let built_without = pick(&Err("this binary was built without CUDA".into())).unwrap_err();
        assert_eq!(built_without, "this binary was built without CUDA");
    }

    #[test]
    fn dtype_follows_the_device_unless_given() {
        assert_eq!(default_dtype(DeviceSpec::Cuda(0), Weights::Dtype), DType::BF16);
        assert_eq!(default_dtype(DeviceSpec::Cpu, Weights::Dtype), DType::F32);
        assert_eq!(resolve(DeviceChoice::Exact(DeviceSpec::Cpu), Some(DType::BF16), Weights::Dtype).dtype, DType::BF16);
        assert_eq!(resolve(DeviceChoice::Exact(DeviceSpec::Cuda(0)), None, Weights::Dtype).dtype, DType::BF16);
        // int8 weights on the CPU default to the bf16 cache; a given dtype still wins.
        assert_eq!(default_dtype(DeviceSpec::Cpu, Weights::Int8), DType::BF16);
        assert_eq!(default_dtype(DeviceSpec::Cuda(0), Weights::Int8), DType::BF16);
        assert_eq!(resolve(DeviceChoice::Exact(DeviceSpec::Cpu), Some(DType::F32), Weights::Int8).dtype, DType::F32);
        assert_eq!(resolve(DeviceChoice::Exact(DeviceSpec::Cpu), None, Weights::Dtype).note(), None);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_cpu_build_picks_the_cpu_and_says_so() {
        let resolved = resolve(DeviceChoice::Auto, None, Weights::Dtype);
        assert_eq!((resolved.device, resolved.dtype), (DeviceSpec::Cpu, DType::F32));
        assert_eq!(
            resolved.note().as_deref(),
            Some("--device auto: using the CPU, this binary was built without CUDA")
        );
    }
}
