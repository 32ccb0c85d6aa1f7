//! EnCodec's LSTM cell step on a GPU as one kernel (`kernels/lstm.cu`): the gates' sum, their
//! activations and the new states, which candle's ops take ~9 kernels for.

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda::CudaStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};

use crate::cuda_view::contiguous;

/// Threads per block.
const THREADS: u32 = 256;

/// The new hidden and cell states `(B, dim)` from the input projection `x_gates` (biases
/// included) and the hidden state's `h_gates`, both `(B, 4·dim)`, and the cell `(B, dim)`;
/// `None` where the kernel does not apply (not an f32 CUDA tensor), for candle's ops to run.
pub(super) fn cell(x_gates: &Tensor, h_gates: &Tensor, cell: &Tensor) -> candle_core::Result<Option<(Tensor, Tensor)>> {
    if !cell.device().is_cuda() || [x_gates, h_gates, cell].iter().any(|t| t.dtype() != DType::F32) {
        return Ok(None);
    }
    let states = x_gates.apply_op3_no_bwd(h_gates, cell, &LstmCell)?;
    Ok(Some((states.get(0)?, states.get(1)?)))
}

struct LstmCell;

impl CustomOp3 for LstmCell {
    fn name(&self) -> &'static str {
        "lstm-cell"
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
        candle_core::bail!("the LSTM cell kernel is CUDA's; CPU steps use candle's ops")
    }

    fn cuda_fwd(
        &self,
        x_gates: &CudaStorage,
        x_layout: &Layout,
        h_gates: &CudaStorage,
        h_layout: &Layout,
        cell: &CudaStorage,
        cell_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (rows, dim) = cell_layout.shape().dims2()?;
        if x_layout.shape().dims2()? != (rows, 4 * dim) || h_layout.shape().dims2()? != (rows, 4 * dim) {
            candle_core::bail!(
                "LSTM cell: gates {:?} and {:?} for a cell {:?}",
                x_layout.shape(),
                h_layout.shape(),
                cell_layout.shape()
            );
        }
        let device = cell.device().clone();
        let x = contiguous::<f32>(x_gates, x_layout, "LSTM cell", "the input gates")?;
        let h = contiguous::<f32>(h_gates, h_layout, "LSTM cell", "the hidden gates")?;
        let c = contiguous::<f32>(cell, cell_layout, "LSTM cell", "the cell")?;
        // SAFETY: the kernel writes every element of `out` (both states of every (row, j)).
        let mut out = unsafe { device.alloc::<f32>(2 * rows * dim)? };
        let func = device.get_or_load_custom_func("lstm_cell_f32", "musicgen_lstm", crate::ptx::LSTM)?;
        let (rows_i, dim_i) = (rows as i32, dim as i32);
        let mut launch = func.builder();
        launch.arg(&x).arg(&h).arg(&c).arg(&mut out).arg(&rows_i).arg(&dim_i);
        let blocks = (rows * dim).div_ceil(THREADS as usize) as u32;
        let config = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: argument types and count match `lstm_cell_f32`; it reads rows·4·dim gates of
        // each kind and rows·dim cells (the shapes checked above) and writes 2·rows·dim values.
        unsafe { launch.launch(config) }.map_err(|e| candle_core::Error::Cuda(Box::new(e)))?;
        Ok((CudaStorage::wrap_cuda_slice(out, device), Shape::from((2, rows, dim))))
    }
}
