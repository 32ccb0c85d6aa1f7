//! A real computation on each GPU, checked against the CPU.
//!
//! It runs what the model runs: cuBLAS matrix products in f32 and bf16, and candle's own PTX
//! kernels (softmax, casts, element-wise maths, curand), so a binary whose kernels the card cannot
//! load fails here rather than in the middle of a generation.

use serde::Serialize;

/// Relative error allowed for the f32 product: cuBLAS in full f32 lands near 1e-7; tf32 would be ~1e-3.
pub const F32_TOLERANCE: f64 = 1e-5;
/// bf16 keeps 8 bits of mantissa: products of random data land near 3e-3.
pub const BF16_TOLERANCE: f64 = 2e-2;

#[derive(Debug, Clone, Serialize)]
pub struct KernelCheck {
    pub cuda_ordinal: usize,
    pub name: Option<String>,
    pub uuid: Option<String>,
    pub compute_capability: Option<u32>,
    /// From the CUDA driver, which also knows GPUs that share host memory.
    pub memory_total_bytes: Option<u64>,
    pub memory_free_bytes: Option<u64>,
    /// ‖gpu − cpu‖ / ‖cpu‖ of a 256×1024 · 1024×384 f32 product.
    pub f32_matmul_rel_error: Option<f64>,
    /// Largest |gpu − cpu| of a row softmax over that product.
    pub softmax_max_abs_error: Option<f64>,
    /// The same product in bf16 against the CPU's f32.
    pub bf16_matmul_rel_error: Option<f64>,
    /// A 4096³ bf16 product, median of 10 after warm-up; a sanity figure, not a benchmark.
    pub bf16_tflops: Option<f64>,
    /// The CUDA error, if any step failed.
    pub error: Option<String>,
}

impl KernelCheck {
    pub fn passed(&self) -> bool {
        self.error.is_none()
            && self.f32_matmul_rel_error.is_some_and(|e| e <= F32_TOLERANCE)
            && self.softmax_max_abs_error.is_some_and(|e| e <= F32_TOLERANCE)
            && self.bf16_matmul_rel_error.is_some_and(|e| e <= BF16_TOLERANCE)
    }
}

/// Either the per-GPU results, or why CUDA could not even count the GPUs.
pub fn run_all() -> Result<Vec<KernelCheck>, String> {
    imp::run_all()
}

/// The checks in CUDA's order up to the first that passes, without the speed figure: what
/// `--device auto` needs, in a fraction of a second per GPU.
pub fn run_until_one_passes() -> Result<Vec<KernelCheck>, String> {
    imp::run_until_one_passes()
}

/// The UUID of CUDA device `ordinal`, spelled as NVML spells it; `None` without CUDA.
pub fn cuda_uuid(ordinal: usize) -> Option<String> {
    imp::cuda_uuid(ordinal)
}

/// Waits until every stream of CUDA device `ordinal`'s primary context (the one candle uses) is idle.
pub fn synchronize(ordinal: usize) -> Result<(), String> {
    imp::synchronize(ordinal)
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use super::KernelCheck;

    pub fn run_all() -> Result<Vec<KernelCheck>, String> {
        Err("this binary was built without CUDA".into())
    }

    pub fn run_until_one_passes() -> Result<Vec<KernelCheck>, String> {
        run_all()
    }

    pub fn cuda_uuid(_ordinal: usize) -> Option<String> {
        None
    }

    pub fn synchronize(_ordinal: usize) -> Result<(), String> {
        Err("this binary was built without CUDA".into())
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::time::Instant;

    use candle_core::cuda_backend::cudarc::driver::CudaContext;
    use candle_core::{DType, Device, Tensor};

    use super::KernelCheck;

    pub fn run_all() -> Result<Vec<KernelCheck>, String> {
        Ok((0..device_count()?).map(|ordinal| check_one(ordinal, true)).collect())
    }

    pub fn run_until_one_passes() -> Result<Vec<KernelCheck>, String> {
        let mut checks = Vec::new();
        for ordinal in 0..device_count()? {
            let check = check_one(ordinal, false);
            let passed = check.passed();
            checks.push(check);
            if passed {
                break;
            }
        }
        Ok(checks)
    }

    fn device_count() -> Result<usize, String> {
        let count = CudaContext::device_count().map_err(|e| format!("CUDA could not start: {e}"))?;
        Ok(count.max(0) as usize)
    }

    pub fn cuda_uuid(ordinal: usize) -> Option<String> {
        let ctx = CudaContext::new(ordinal).ok()?;
        ctx.uuid().ok().map(|u| super::format_uuid(&u.bytes.map(|b| b as u8)))
    }

    pub fn synchronize(ordinal: usize) -> Result<(), String> {
        let ctx = CudaContext::new(ordinal).map_err(|e| e.to_string())?;
        ctx.synchronize().map_err(|e| e.to_string())
    }

    /// `measure`: also time a large bf16 product (`bf16_tflops`).
    fn check_one(ordinal: usize, measure: bool) -> KernelCheck {
        let mut check = KernelCheck {
            cuda_ordinal: ordinal,
            name: None,
            uuid: None,
            compute_capability: None,
            memory_total_bytes: None,
            memory_free_bytes: None,
            f32_matmul_rel_error: None,
            softmax_max_abs_error: None,
            bf16_matmul_rel_error: None,
            bf16_tflops: None,
            error: None,
        };
        match CudaContext::new(ordinal) {
            Ok(ctx) => {
                check.name = ctx.name().ok();
                check.uuid = ctx.uuid().ok().map(|u| super::format_uuid(&u.bytes.map(|b| b as u8)));
                check.compute_capability =
                    ctx.compute_capability().ok().map(|(major, minor)| (major * 10 + minor) as u32);
                if let Ok((free, total)) = ctx.mem_get_info() {
                    check.memory_free_bytes = Some(free as u64);
                    check.memory_total_bytes = Some(total as u64);
                }
            }
            Err(e) => {
                check.error = Some(format!("cannot open CUDA device {ordinal}: {e}"));
                return check;
            }
        }
        // A driver or kernel-image failure deep in a backend may panic instead of returning an
        // error; validate must still report it, so the check runs behind a silent panic guard.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let outcome = catch_unwind(AssertUnwindSafe(|| compute(ordinal, measure, &mut check)));
        std::panic::set_hook(hook);
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => check.error = Some(e.to_string()),
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                check.error = Some(format!("the GPU computation aborted: {msg}"));
            }
        }
        check
    }

    fn compute(ordinal: usize, measure: bool, check: &mut KernelCheck) -> candle_core::Result<()> {
        let gpu = Device::new_cuda(ordinal)?;
        let cpu = Device::Cpu;
        let a = Tensor::randn(0f32, 1.0, (256, 1024), &cpu)?;
        let b = Tensor::randn(0f32, 1.0, (1024, 384), &cpu)?;
        let want = a.matmul(&b)?;
        let (ga, gb) = (a.to_device(&gpu)?, b.to_device(&gpu)?);
        let got = ga.matmul(&gb)?;
        check.f32_matmul_rel_error = Some(rel_error(&got.to_device(&cpu)?, &want)?);

        // Scaled like attention scores so the softmax is not one-hot.
        let scale = 1.0 / (1024f64).sqrt();
        let want_sm = candle_nn::ops::softmax_last_dim(&(&want * scale)?)?;
        let got_sm = candle_nn::ops::softmax_last_dim(&(&got * scale)?)?.to_device(&cpu)?;
        check.softmax_max_abs_error = Some((got_sm - want_sm)?.abs()?.max_all()?.to_scalar::<f32>()? as f64);

        let got_bf16 = ga.to_dtype(DType::BF16)?.matmul(&gb.to_dtype(DType::BF16)?)?.to_dtype(DType::F32)?;
        check.bf16_matmul_rel_error = Some(rel_error(&got_bf16.to_device(&cpu)?, &want)?);
        if !measure {
            return Ok(());
        }

        let n = 4096usize;
        let x = Tensor::randn(0f32, 1.0, (n, n), &gpu)?.to_dtype(DType::BF16)?;
        let y = Tensor::randn(0f32, 1.0, (n, n), &gpu)?.to_dtype(DType::BF16)?;
        for _ in 0..3 {
            x.matmul(&y)?;
        }
        gpu.synchronize()?;
        let mut times = Vec::with_capacity(10);
        for _ in 0..10 {
            let t = Instant::now();
            let z = x.matmul(&y)?;
            gpu.synchronize()?;
            times.push(t.elapsed().as_secs_f64());
            drop(z);
        }
        times.sort_by(f64::total_cmp);
        check.bf16_tflops = Some(2.0 * (n as f64).powi(3) / times[times.len() / 2] / 1e12);
        Ok(())
    }

    fn rel_error(got: &Tensor, want: &Tensor) -> candle_core::Result<f64> {
        let diff = (got - want)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        let norm = want.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        // A NaN here fails every tolerance comparison, as it must.
        Ok((diff / norm).sqrt())
    }
}

/// NVML's spelling of a GPU UUID: `GPU-` and 16 bytes in 8-4-4-4-12 hex groups.
/// Only CUDA builds have CUDA devices to name.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub fn format_uuid(bytes: &[u8; 16]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("GPU-{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_matches_nvml_spelling() {
        let bytes = [0x1f, 0x2e, 0x3d, 0x4c, 0x5b, 0x6a, 0x79, 0x88, 0x97, 0xa6, 0xb5, 0xc4, 0xd3, 0xe2, 0xf1, 0x00];
        assert_eq!(format_uuid(&bytes), "GPU-1f2e3d4c-5b6a-7988-97a6-b5c4d3e2f100");
    }

    #[test]
    fn a_check_without_numbers_fails() {
        let check = KernelCheck {
            cuda_ordinal: 0,
            name: None,
            uuid: None,
            compute_capability: None,
            memory_total_bytes: None,
            memory_free_bytes: None,
            f32_matmul_rel_error: Some(f64::NAN),
            softmax_max_abs_error: Some(0.0),
            bf16_matmul_rel_error: Some(0.0),
            bf16_tflops: None,
            error: None,
        };
        assert!(!check.passed());
    }
}
