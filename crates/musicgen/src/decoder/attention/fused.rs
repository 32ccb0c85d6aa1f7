//! The fused single-position attention kernels of `kernels/attention.cu`, as candle ops.
//!
//! Used by fixed-mode steps on a GPU (`super::Backend::Fused`): one kernel per attention instead of ~9, which matters
//! because a step of small kernels costs what its kernels' count costs (see the kernel file).
//! The self-attention op also appends the position's key and value to the cache it is given:
//! an in-place write candle does not know about, which is why the cache is only ever touched
//! by this op and by nothing that could run concurrently with it (one stream per device).

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda::{CudaDType, CudaStorage};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Tensor};

/// Threads per block, as `THREADS` in the kernel.
const THREADS: usize = 256;

/// Whether the kernels can run attentions of this head size and dtype on `device`: a GPU, and a
/// head's row must split into 16-byte loads over a power of two of at most 32 threads.
pub(super) fn supports(device: &Device, head_dim: usize, dtype: DType) -> bool {
    device.is_cuda() && fits(head_dim, dtype)
}

fn fits(head_dim: usize, dtype: DType) -> bool {
    let per_load = 16 / dtype.size_in_bytes();
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
        && head_dim % per_load == 0
        && (head_dim / per_load).is_power_of_two()
        && head_dim / per_load <= 32
}

/// `qkv` `(rows, 1, 3·hidden)`, `cache` `(2, rows, heads, max_len, head_dim)` (keys, values),
/// `inputs` u32 whose first value is the position: writes the position's key and value into
/// the cache and returns the attended values `(rows, 1, hidden)`.
pub(super) fn self_attention(
    qkv: &Tensor,
    cache: &Tensor,
    inputs: &Tensor,
    heads: usize,
) -> candle_core::Result<Tensor> {
    qkv.apply_op3_no_bwd(cache, inputs, &SelfAttentionStep { heads })
}

/// `q` `(rows, 1, hidden)` (pre-scaled), `kv` `(2, rows, heads, len, head_dim)`, `mask` additive
/// `(rows, 1, 1, len)` or none: the attended memory `(rows, 1, hidden)`.
pub(super) fn cross_attention(
    q: &Tensor,
    kv: &Tensor,
    mask: Option<&Tensor>,
    heads: usize,
) -> candle_core::Result<Tensor> {
    match mask {
        Some(mask) => q.apply_op3_no_bwd(kv, mask, &CrossAttentionStep { heads }),
        None => q.apply_op2_no_bwd(kv, &CrossAttentionStep { heads }),
    }
}

struct SelfAttentionStep {
    heads: usize,
}

struct CrossAttentionStep {
    heads: usize,
}

fn cpu_refused(name: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("{name} is a CUDA kernel; CPU steps use the unfused path"))
}

/// `crate::cuda_view::contiguous`, refusing a start the kernels' 16-byte loads cannot take.
fn contiguous<'a, T: CudaDType>(
    storage: &'a CudaStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<candle_core::cuda::cudarc::driver::CudaView<'a, T>> {
    // The kernels load 16 bytes at a time from row starts; buffers themselves are aligned.
    let start = layout.start_offset();
    if (start * std::mem::size_of::<T>()) % 16 != 0 {
        candle_core::bail!("fused attention: {what} starts at an unaligned offset {start}")
    }
    crate::cuda_view::contiguous(storage, layout, "fused attention", what)
}

fn kernel_name(base: &str, dtype: DType) -> candle_core::Result<String> {
    let suffix = match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        other => candle_core::bail!("fused attention: no kernel for {other:?}"),
    };
    Ok(format!("{base}_{suffix}"))
}

fn launch_config(heads: usize, rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (heads as u32, rows as u32, 1), block_dim: (THREADS as u32, 1, 1), shared_mem_bytes: 0 }
}

impl SelfAttentionStep {
    fn run<T: CudaDType + DeviceRepr + candle_core::WithDType>(
        &self,
        qkv: (&CudaStorage, &Layout),
        cache: (&CudaStorage, &Layout),
        inputs: (&CudaStorage, &Layout),
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let device = qkv.0.device().clone();
        let (two, rows, heads, max_len, head_dim) = cache.1.shape().dims5()?;
        let hidden = heads * head_dim;
        if two != 2
            || heads != self.heads
            || qkv.1.shape().elem_count() != rows * 3 * hidden
            || !fits(head_dim, T::DTYPE)
        {
            candle_core::bail!(
                "fused self-attention: qkv {:?} does not fit cache {:?}",
                qkv.1.shape(),
                cache.1.shape()
            );
        }
        let qkv = contiguous::<T>(qkv.0, qkv.1, "qkv")?;
        let cache = contiguous::<T>(cache.0, cache.1, "the cache")?;
        let inputs = contiguous::<u32>(inputs.0, inputs.1, "the inputs")?;
        // SAFETY: the kernel writes every element of `out`.
        let mut out = unsafe { device.alloc::<T>(rows * hidden)? };
        let func = device.get_or_load_custom_func(
            &kernel_name("self_attention_step", T::DTYPE)?,
            "musicgen_attention",
            crate::ptx::ATTENTION,
        )?;
        let mut launch = func.builder();
        let (rows_i, heads_i, head_dim_i, max_len_i) = (rows as i32, heads as i32, head_dim as i32, max_len as i32);
        launch
            .arg(&qkv)
            .arg(&cache)
            .arg(&inputs)
            .arg(&mut out)
            .arg(&rows_i)
            .arg(&heads_i)
            .arg(&head_dim_i)
            .arg(&max_len_i);
        // SAFETY: argument types and count match `self_attention_step_*`; every index the kernel
        // forms is bounded by the shapes checked above (the position by the caller, who
        // refuses steps beyond max_len).
        unsafe { launch.launch(launch_config(heads, rows)) }.map_err(|e| candle_core::Error::Cuda(Box::new(e)))?;
        Ok((CudaStorage::wrap_cuda_slice(out, device), Shape::from((rows, 1, hidden))))
    }
}

impl CustomOp3 for SelfAttentionStep {
    fn name(&self) -> &'static str {
        "fused-self-attention-step"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(cpu_refused(self.name()))
    }

    fn cuda_fwd(
        &self,
        qkv: &CudaStorage,
        qkv_l: &Layout,
        cache: &CudaStorage,
        cache_l: &Layout,
        inputs: &CudaStorage,
        inputs_l: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let args = ((qkv, qkv_l), (cache, cache_l), (inputs, inputs_l));
        match qkv.dtype() {
            DType::F32 => self.run::<f32>(args.0, args.1, args.2),
            DType::F16 => self.run::<half::f16>(args.0, args.1, args.2),
            DType::BF16 => self.run::<half::bf16>(args.0, args.1, args.2),
            other => candle_core::bail!("fused self-attention: no kernel for {other:?}"),
        }
    }
}

impl CrossAttentionStep {
    fn run<T: CudaDType + DeviceRepr + candle_core::WithDType>(
        &self,
        q: (&CudaStorage, &Layout),
        kv: (&CudaStorage, &Layout),
        mask: Option<(&CudaStorage, &Layout)>,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let device = q.0.device().clone();
        let (two, rows, heads, len, head_dim) = kv.1.shape().dims5()?;
        let hidden = heads * head_dim;
        if two != 2 || heads != self.heads || q.1.shape().elem_count() != rows * hidden || !fits(head_dim, T::DTYPE) {
            candle_core::bail!("fused cross-attention: q {:?} does not fit memory {:?}", q.1.shape(), kv.1.shape());
        }
        if let Some((_, layout)) = mask {
            if layout.shape().elem_count() != rows * len {
                candle_core::bail!("fused cross-attention: mask {:?} for memory {:?}", layout.shape(), kv.1.shape());
            }
        }
        let q = contiguous::<T>(q.0, q.1, "q")?;
        let kv = contiguous::<T>(kv.0, kv.1, "the memory")?;
        let mask = mask.map(|(s, l)| contiguous::<T>(s, l, "the mask")).transpose()?;
        // SAFETY: the kernel writes every element of `out`.
        let mut out = unsafe { device.alloc::<T>(rows * hidden)? };
        let func = device.get_or_load_custom_func(
            &kernel_name("cross_attention_step", T::DTYPE)?,
            "musicgen_attention",
            crate::ptx::ATTENTION,
        )?;
        let mut launch = func.builder();
        let null: u64 = 0;
        let (rows_i, heads_i, head_dim_i, len_i) = (rows as i32, heads as i32, head_dim as i32, len as i32);
        launch.arg(&q).arg(&kv);
        match &mask {
            Some(mask) => launch.arg(mask),
            None => launch.arg(&null),
        };
        launch.arg(&mut out).arg(&rows_i).arg(&heads_i).arg(&head_dim_i).arg(&len_i);
        // SAFETY: argument types and count match `cross_attention_step_*` (a null mask pointer
        // means no mask); indices are bounded by the shapes checked above.
        unsafe { launch.launch(launch_config(heads, rows)) }.map_err(|e| candle_core::Error::Cuda(Box::new(e)))?;
        Ok((CudaStorage::wrap_cuda_slice(out, device), Shape::from((rows, 1, hidden))))
    }

    fn dispatch(
        &self,
        q: (&CudaStorage, &Layout),
        kv: (&CudaStorage, &Layout),
        mask: Option<(&CudaStorage, &Layout)>,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        match q.0.dtype() {
            DType::F32 => self.run::<f32>(q, kv, mask),
            DType::F16 => self.run::<half::f16>(q, kv, mask),
            DType::BF16 => self.run::<half::bf16>(q, kv, mask),
            other => candle_core::bail!("fused cross-attention: no kernel for {other:?}"),
        }
    }
}

impl CustomOp2 for CrossAttentionStep {
    fn name(&self) -> &'static str {
        "fused-cross-attention-step"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(cpu_refused(CustomOp2::name(self)))
    }

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        q_l: &Layout,
        kv: &CudaStorage,
        kv_l: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        self.dispatch((q, q_l), (kv, kv_l), None)
    }
}

impl CustomOp3 for CrossAttentionStep {
    fn name(&self) -> &'static str {
        "fused-cross-attention-step"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(cpu_refused(CustomOp3::name(self)))
    }

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        q_l: &Layout,
        kv: &CudaStorage,
        kv_l: &Layout,
        mask: &CudaStorage,
        mask_l: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        self.dispatch((q, q_l), (kv, kv_l), Some((mask, mask_l)))
    }
}
