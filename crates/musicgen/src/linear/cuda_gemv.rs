//! The few-row products of `kernels/gemv.cu` as a candle op (see `crate::linear` and the kernel
//! file): dense f32/f16/bf16 weights in their own dtype, int8 weights with any float activations,
//! the residual add or the FFN activation applied before the single write.

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda::{CudaDType, CudaStorage};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Storage, Tensor};

use super::Activation;

/// Output features per block (one warp each), as `WARPS` in the kernel.
const WARPS: usize = 8;
/// Rows per block: more rows come in tiles of this many, each tile reading the weights again
/// (from L2). The kernel has instances for 1 to 8; 4 measured best past 4 rows on an H200 (8 rows
/// of small: 1.83 ms a step in tiles of 4, 2.08 in one of 8, 1.85 in tiles of 2; docs/PERFORMANCE.md).
/// `DGX_GEMV_TILE` overrides it, for measuring.
const TILE: usize = 4;

/// Up to how many rows the kernel beats cuBLAS for dense weights (an H200, musicgen-small: 2 rows
/// 1.25 against 1.66 ms a step, 4 rows 1.53 against 1.79; 8 rows 1.83 against 1.78), and the most
/// it takes for int8 weights, whose alternative, dequantising the matrix for every product, is
/// slower still at every row count (32 rows 19.4 against 7.8 ms). docs/PERFORMANCE.md has the
/// figures; `DGX_GEMV_MAX_ROWS` overrides both, 0 turning the kernels off, for comparisons.
const DENSE_MAX_ROWS: usize = 4;
const INT8_MAX_ROWS: usize = 128;

/// A row count from the environment variable `name`, if set to one within `range`.
fn rows_from_env(name: &str, range: std::ops::RangeInclusive<usize>) -> Option<usize> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse() {
        Ok(rows) if range.contains(&rows) => Some(rows),
        _ => {
            tracing::warn!("{name}={value:?} is not a row count in {range:?}; using the measured default");
            None
        }
    }
}

/// The largest row count the kernel takes for dense (`int8` false) or int8 weights.
pub fn max_rows(int8: bool) -> usize {
    static OVERRIDE: OnceLock<Option<usize>> = OnceLock::new();
    let override_rows = *OVERRIDE.get_or_init(|| rows_from_env("DGX_GEMV_MAX_ROWS", 0..=usize::MAX));
    override_rows.unwrap_or(if int8 { INT8_MAX_ROWS } else { DENSE_MAX_ROWS })
}

/// Rows per block (see [`TILE`]).
fn tile() -> usize {
    static OVERRIDE: OnceLock<Option<usize>> = OnceLock::new();
    OVERRIDE.get_or_init(|| rows_from_env("DGX_GEMV_TILE", 1..=8)).unwrap_or(TILE)
}

/// Whether the kernel takes a product of `rows` rows of `in_dim` activations of dtype `xs`
/// with `weight`-dtype weights (u8 codes when `int8`).
pub(crate) fn takes(weight: DType, xs: DType, rows: usize, in_dim: usize, int8: bool) -> bool {
    let floats = matches!(xs, DType::F32 | DType::F16 | DType::BF16);
    let dtypes = if int8 { weight == DType::U8 && floats } else { weight == xs && floats };
    // Every row splits into whole 16-byte loads of weights (and so of activations).
    dtypes && rows >= 1 && rows <= max_rows(int8) && in_dim > 0 && in_dim % (16 / weight.size_in_bytes()) == 0
}

/// `xs (rows, in) · weightᵀ` (times `scales` for int8 codes), then the epilogue: `(rows, out)`
/// in the activations' dtype. `None` when a buffer is not laid out as the kernel needs.
pub(crate) fn product(
    xs: &Tensor,
    weight: &Tensor,
    scales: Option<&Tensor>,
    residual: Option<&Tensor>,
    activation: Option<Activation>,
    rows: usize,
) -> candle_core::Result<Option<Tensor>> {
    let aligned = |t: &Tensor| {
        t.layout().contiguous_offsets().is_some_and(|(start, _)| (start * t.dtype().size_in_bytes()) % 16 == 0)
    };
    if !aligned(weight) || scales.is_some_and(|s| !s.is_contiguous()) {
        return Ok(None);
    }
    // A view starting mid-buffer (a narrowed prefill) is copied to a fresh, aligned one.
    let xs = if aligned(xs) { xs.clone() } else { xs.copy()? };
    let residual = residual.map(Tensor::contiguous).transpose()?;
    let op = Gemv { scales: scales.cloned(), residual, activation, rows };
    Ok(Some(xs.apply_op2_no_bwd(weight, &op)?))
}

struct Gemv {
    scales: Option<Tensor>,
    residual: Option<Tensor>,
    activation: Option<Activation>,
    rows: usize,
}

/// The kernel's name for these weights and activations: `gemv_{weights}_{activations}_r{tile}`.
fn kernel_name(weight: DType, xs: DType, tile: usize) -> candle_core::Result<String> {
    let name = |dtype: DType| match dtype {
        DType::F32 => Ok("f32"),
        DType::F16 => Ok("f16"),
        DType::BF16 => Ok("bf16"),
        DType::U8 => Ok("i8"),
        other => Err(candle_core::Error::Msg(format!("gemv: no kernel for {other:?}"))),
    };
    Ok(format!("gemv_{}_{}_r{tile}", name(weight)?, name(xs)?))
}

/// The CUDA buffer behind a contiguous tensor, from its first element.
fn view_of<'a, T: CudaDType>(
    storage: &'a Storage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<candle_core::cuda::cudarc::driver::CudaView<'a, T>> {
    match storage {
        Storage::Cuda(cuda) => crate::cuda_view::contiguous(cuda, layout, "gemv", what),
        _ => candle_core::bail!("gemv: {what} must be a CUDA tensor"),
    }
}

impl Gemv {
    fn run<W: CudaDType + DeviceRepr + candle_core::WithDType, X: CudaDType + DeviceRepr + candle_core::WithDType>(
        &self,
        xs: (&CudaStorage, &Layout),
        weight: (&CudaStorage, &Layout),
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let device = xs.0.device().clone();
        let (out_dim, in_dim) = weight.1.shape().dims2()?;
        let rows = self.rows;
        if xs.1.shape().elem_count() != rows * in_dim {
            candle_core::bail!("gemv: activations {:?} are not {rows} rows of {in_dim}", xs.1.shape());
        }
        let (Some((x0, x1)), Some((w0, w1))) = (xs.1.contiguous_offsets(), weight.1.contiguous_offsets()) else {
            candle_core::bail!("gemv: activations and weights must be contiguous");
        };
        let x = xs.0.as_cuda_slice::<X>()?.slice(x0..x1);
        let w = weight.0.as_cuda_slice::<W>()?.slice(w0..w1);
        let scales = self.scales.as_ref().map(|s| s.storage_and_layout());
        let scales = match &scales {
            Some((storage, layout)) => {
                if layout.shape().elem_count() != out_dim {
                    candle_core::bail!("gemv: {} scales for {out_dim} outputs", layout.shape().elem_count());
                }
                Some(view_of::<f32>(storage, layout, "the scales")?)
            }
            None => None,
        };
        let residual = self.residual.as_ref().map(|r| r.storage_and_layout());
        let residual = match &residual {
            Some((storage, layout)) => {
                if layout.shape().elem_count() != rows * out_dim {
                    candle_core::bail!("gemv: residual {:?} for ({rows}, {out_dim}) outputs", layout.shape());
                }
                Some(view_of::<X>(storage, layout, "the residual")?)
            }
            None => None,
        };
        let tile = rows.min(tile());
        let func = device.get_or_load_custom_func(
            &kernel_name(W::DTYPE, X::DTYPE, tile)?,
            "musicgen_gemv",
            crate::ptx::GEMV,
        )?;
        // SAFETY: the kernel writes every element of `out` (each (row, output) once).
        let mut out = unsafe { device.alloc::<X>(rows * out_dim)? };
        let null: u64 = 0;
        let (rows_i, out_i, in_i) = (rows as i32, out_dim as i32, in_dim as i32);
        let activation = self.activation.map_or(0, Activation::kernel_code);
        let mut launch = func.builder();
        launch.arg(&w);
        match &scales {
            Some(scales) => launch.arg(scales),
            None => launch.arg(&null),
        };
        launch.arg(&x);
        match &residual {
            Some(residual) => launch.arg(residual),
            None => launch.arg(&null),
        };
        launch.arg(&mut out).arg(&rows_i).arg(&out_i).arg(&in_i).arg(&activation);
        let config = LaunchConfig {
            grid_dim: (rows.div_ceil(tile) as u32, out_dim.div_ceil(WARPS) as u32, 1),
            block_dim: ((WARPS * 32) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: argument types and count match `gemv_*`; the kernel reads rows·in activations,
        // out·in weights, out scales and rows·out residuals, the sizes checked above, and
        // `takes` checked that every weight row splits into whole 16-byte loads.
        unsafe { launch.launch(config) }.map_err(|e| candle_core::Error::Cuda(Box::new(e)))?;
        Ok((CudaStorage::wrap_cuda_slice(out, device), Shape::from((rows, out_dim))))
    }
}

impl CustomOp2 for Gemv {
    fn name(&self) -> &'static str {
        "few-row-gemv"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("the GEMV kernel is CUDA's; CPU products take crate::cpu::gemv")
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xs_l: &Layout,
        weight: &CudaStorage,
        weight_l: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (x, w) = ((xs, xs_l), (weight, weight_l));
        match (weight.dtype(), xs.dtype()) {
            (DType::F32, DType::F32) => self.run::<f32, f32>(x, w),
            (DType::F16, DType::F16) => self.run::<half::f16, half::f16>(x, w),
            (DType::BF16, DType::BF16) => self.run::<half::bf16, half::bf16>(x, w),
            (DType::U8, DType::F32) => self.run::<u8, f32>(x, w),
            (DType::U8, DType::F16) => self.run::<u8, half::f16>(x, w),
            (DType::U8, DType::BF16) => self.run::<u8, half::bf16>(x, w),
            (wd, xd) => candle_core::bail!("gemv: no kernel for {wd:?} weights with {xd:?} activations"),
        }
    }
}
