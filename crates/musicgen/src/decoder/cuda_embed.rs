//! A fixed-mode step's input embedding as one kernel (`kernels/embed.cu`): the K codebook
//! embeddings of each row's tokens and the position's sinusoidal embedding, summed as candle's
//! ops sum them, read from the step's inputs buffer.

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda::{CudaDType, CudaStorage};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};

use crate::cuda_view::contiguous;

/// Threads per block, as `THREADS` in the kernel.
const THREADS: u32 = 256;

/// `tables` `(K, entries, hidden)`, `inputs` u32 (the position, then `rows`·K tokens),
/// `positions` `(max_positions, hidden)`: the step's embeddings `(rows, 1, hidden)`.
pub(super) fn step_embedding(tables: &Tensor, inputs: &Tensor, positions: &Tensor) -> candle_core::Result<Tensor> {
    tables.apply_op3_no_bwd(inputs, positions, &EmbedStep)
}

struct EmbedStep;

impl EmbedStep {
    fn run<T: CudaDType + DeviceRepr + candle_core::WithDType>(
        &self,
        tables: (&CudaStorage, &Layout),
        inputs: (&CudaStorage, &Layout),
        positions: (&CudaStorage, &Layout),
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let device = tables.0.device().clone();
        let (codebooks, entries, hidden) = tables.1.shape().dims3()?;
        let (positions_len, positions_hidden) = positions.1.shape().dims2()?;
        let tokens = inputs.1.shape().elem_count().saturating_sub(1);
        if positions_hidden != hidden || positions_len == 0 || codebooks == 0 || tokens % codebooks != 0 {
            candle_core::bail!(
                "step embedding: tables {:?}, positions {:?} and inputs {:?} do not fit",
                tables.1.shape(),
                positions.1.shape(),
                inputs.1.shape()
            );
        }
        let rows = tokens / codebooks;
        let tables = contiguous::<T>(tables.0, tables.1, "step embedding", "the tables")?;
        let inputs = contiguous::<u32>(inputs.0, inputs.1, "step embedding", "the inputs")?;
        let positions = contiguous::<T>(positions.0, positions.1, "step embedding", "the positions")?;
        // SAFETY: the kernel writes every element of `out` (one block per row, every column).
        let mut out = unsafe { device.alloc::<T>(rows * hidden)? };
        let func = device.get_or_load_custom_func(&kernel_name(T::DTYPE)?, "musicgen_embed", crate::ptx::EMBED)?;
        let (k, e, h, p) = (codebooks as i32, entries as i32, hidden as i32, positions_len as i32);
        let mut launch = func.builder();
        launch.arg(&tables).arg(&inputs).arg(&positions).arg(&mut out).arg(&k).arg(&e).arg(&h).arg(&p);
        let config = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: argument types and count match `embed_step_*`; the kernel reads rows·K tokens
        // after the position (the inputs' length, checked), clamps both kinds of index into the
        // tables' and positions' rows, and writes rows·hidden values.
        unsafe { launch.launch(config) }.map_err(|e| candle_core::Error::Cuda(Box::new(e)))?;
        Ok((CudaStorage::wrap_cuda_slice(out, device), Shape::from((rows, 1, hidden))))
    }
}

fn kernel_name(dtype: DType) -> candle_core::Result<&'static str> {
    match dtype {
        DType::F32 => Ok("embed_step_f32"),
        DType::F16 => Ok("embed_step_f16"),
        DType::BF16 => Ok("embed_step_bf16"),
        other => candle_core::bail!("step embedding: no kernel for {other:?}"),
    }
}

impl CustomOp3 for EmbedStep {
    fn name(&self) -> &'static str {
        "step-embedding"
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
        candle_core::bail!("the step embedding kernel is CUDA's; CPU steps embed with candle's ops")
    }

    fn cuda_fwd(
        &self,
        tables: &CudaStorage,
        tables_l: &Layout,
        inputs: &CudaStorage,
        inputs_l: &Layout,
        positions: &CudaStorage,
        positions_l: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        if inputs.dtype() != DType::U32 || positions.dtype() != tables.dtype() {
            candle_core::bail!("step embedding: u32 inputs and positions in the tables' dtype");
        }
        let args = ((tables, tables_l), (inputs, inputs_l), (positions, positions_l));
        match tables.dtype() {
            DType::F32 => self.run::<f32>(args.0, args.1, args.2),
            DType::F16 => self.run::<half::f16>(args.0, args.1, args.2),
            DType::BF16 => self.run::<half::bf16>(args.0, args.1, args.2),
            other => candle_core::bail!("step embedding: no kernel for {other:?}"),
        }
    }
}
