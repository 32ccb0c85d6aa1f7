//! Bias-free linear layers with a CPU fast path for the few-row products of decoding.
//!
//! A decoder step multiplies 2 to 8 activation rows by each weight matrix: a matrix-vector
//! product whose cost is reading the weights once from memory. candle's CPU matmul (gemm) packs
//! and tiles for large products and reaches a fraction of the memory bandwidth on these shapes,
//! so on the CPU with at most [`MAX_FAST_ROWS`] rows [`Linear`] streams every weight row once,
//! dotting it with all activation rows, split over rayon's threads by output blocks.
//!
//! f32 weights take f32 activations. bf16 and f16 weights take activations of any float dtype:
//! each weight is widened to f32 as it is read (the weights are read once, so converting them
//! costs no memory traffic), products accumulate in f32 and the result is returned in the
//! activations' dtype. Half-precision weights halve a step's bytes against f32, and candle's
//! half-precision CPU matmul reaches only ~2 GB/s on these shapes (this path ~20 GB/s here).
//!
//! Every other case (CUDA, long prompts at `start`) is candle's `Linear`, in f32 when the
//! activations' dtype is not the weights'.

use candle_core::{CpuStorage, DType, Module, Storage, Tensor};
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// Up to this many activation rows take the streaming path; beyond it gemm's tiling reuses
/// each weight load across enough rows to win.
pub const MAX_FAST_ROWS: usize = 8;

/// Output features per rayon task: large enough to amortise scheduling, small enough to split
/// the narrowest projection (hidden 1024) over the cores.
const OUTPUTS_PER_TASK: usize = 64;

/// Independent partial sums per dot product, so the adds vectorise and pipeline.
const LANES: usize = 16;

#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
}

impl Linear {
    /// `weight` is `(out_features, in_features)` as PyTorch stores it.
    pub fn new(weight: Tensor) -> Self {
        Self { inner: candle_nn::Linear::new(weight, None) }
    }

    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let weight = self.inner.weight();
        let (out_dim, in_dim) = weight.dims2()?;
        let rows = xs.elem_count() / in_dim.max(1);
        let half_weights = matches!(weight.dtype(), DType::BF16 | DType::F16);
        let dtypes_fit = match weight.dtype() {
            DType::F32 => xs.dtype() == DType::F32,
            DType::BF16 | DType::F16 => matches!(xs.dtype(), DType::F32 | DType::BF16 | DType::F16),
            _ => false,
        };
        let fast = xs.device().is_cpu() && dtypes_fit && xs.dims().last() == Some(&in_dim) && rows <= MAX_FAST_ROWS;
        if !fast {
            return self.fallback(xs);
        }
        let xs_flat = xs.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let (storage, layout) = weight.storage_and_layout();
        let out = match (&*storage, layout.contiguous_offsets()) {
            (Storage::Cpu(CpuStorage::F32(w)), Some((start, end))) => {
                few_rows_product(&w[start..end], &xs_flat, rows, in_dim)
            }
            (Storage::Cpu(CpuStorage::BF16(w)), Some((start, end))) => {
                few_rows_widened::<true>(w[start..end].reinterpret_cast(), &xs_flat, rows, in_dim)
            }
            (Storage::Cpu(CpuStorage::F16(w)), Some((start, end))) => {
                few_rows_widened::<false>(w[start..end].reinterpret_cast(), &xs_flat, rows, in_dim)
            }
            _ => {
                drop(storage);
                return self.fallback(xs);
            }
        };
        let mut dims = xs.dims().to_vec();
        *dims.last_mut().expect("xs has in_dim as its last dimension") = out_dim;
        let out = Tensor::from_vec(out, dims, xs.device())?;
        if half_weights {
            out.to_dtype(xs.dtype())
        } else {
            Ok(out)
        }
    }

    /// candle's `Linear`; when the activations' dtype is not the weights', in f32 as the
    /// streaming path (the CPU half-precision decoder's `start`, once per request).
    fn fallback(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let weight = self.inner.weight();
        if xs.dtype() == weight.dtype() {
            return self.inner.forward(xs);
        }
        candle_nn::Linear::new(weight.to_dtype(DType::F32)?, None)
            .forward(&xs.to_dtype(DType::F32)?)?
            .to_dtype(xs.dtype())
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        Linear::forward(self, xs)
    }
}

/// `xs (rows, in) · weight (out, in)ᵀ` as a row-major `(rows, out)` buffer.
fn few_rows_product(weight: &[f32], xs: &[f32], rows: usize, in_dim: usize) -> Vec<f32> {
    let out_dim = weight.len() / in_dim;
    // Tasks own disjoint output blocks in feature-major order; transposed into place after.
    let mut by_feature = vec![0f32; out_dim * rows];
    by_feature.par_chunks_mut(OUTPUTS_PER_TASK * rows).enumerate().for_each(|(block, out)| {
        let first = block * OUTPUTS_PER_TASK;
        for (o, sums) in out.chunks_exact_mut(rows).enumerate() {
            let w = &weight[(first + o) * in_dim..(first + o + 1) * in_dim];
            for (r, sum) in sums.iter_mut().enumerate() {
                *sum = dot(w, &xs[r * in_dim..(r + 1) * in_dim]);
            }
        }
    });
    let mut out = vec![0f32; rows * out_dim];
    for (o, sums) in by_feature.chunks_exact(rows).enumerate() {
        for (r, &s) in sums.iter().enumerate() {
            out[r * out_dim + o] = s;
        }
    }
    out
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
    for (ca, cb) in a_chunks.zip(b_chunks) {
        for i in 0..LANES {
            acc[i] += ca[i] * cb[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// bf16 bits to f32: bf16 is the top half of an f32.
#[inline(always)]
pub(crate) fn widen_bf16(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// f16 bits to f32, exactly and without branches, so that it vectorises: exponent and mantissa
/// moved into f32's fields, the exponent bias corrected by a multiplication by 2^112 (which
/// also normalises subnormals exactly), and infinities and NaNs (exponent all ones) given
/// f32's all-ones exponent back.
#[inline(always)]
pub(crate) fn widen_f16(bits: u16) -> f32 {
    let h = bits as u32;
    let magnitude = f32::from_bits((h & 0x7fff) << 13) * f32::from_bits(0x7780_0000);
    let special = if h & 0x7c00 == 0x7c00 { 0x7f80_0000 } else { 0 };
    f32::from_bits(magnitude.to_bits() | special | ((h & 0x8000) << 16))
}

/// Half-precision bits to f32: bf16 when `BF16`, else f16.
#[inline(always)]
fn widen<const BF16: bool>(bits: u16) -> f32 {
    if BF16 {
        widen_bf16(bits)
    } else {
        widen_f16(bits)
    }
}

/// `xs (rows, in) · widen(weight) (out, in)ᵀ` as a row-major `(rows, out)` buffer, `weight`
/// being bf16 bits when `BF16`, else f16 bits: one pass over the weights for all rows, each
/// weight converted once.
fn few_rows_widened<const BF16: bool>(weight: &[u16], xs: &[f32], rows: usize, in_dim: usize) -> Vec<f32> {
    let out_dim = weight.len() / in_dim;
    let mut by_feature = vec![0f32; out_dim * rows];
    by_feature.par_chunks_mut(OUTPUTS_PER_TASK * rows).enumerate().for_each(|(block, out)| {
        let first = block * OUTPUTS_PER_TASK;
        let outputs = out.len() / rows;
        let weights = &weight[first * in_dim..(first + outputs) * in_dim];
        widened_block::<BF16>(weights, xs, rows, in_dim, out);
    });
    let mut out = vec![0f32; rows * out_dim];
    for (o, sums) in by_feature.chunks_exact(rows).enumerate() {
        for (r, &s) in sums.iter().enumerate() {
            out[r * out_dim + o] = s;
        }
    }
    out
}

/// One task's outputs, `rows` sums per weight row, feature-major. x86-64 CPUs with AVX2, FMA
/// and F16C (chosen at run time: the portable build targets plain x86-64) convert 8 weights
/// per instruction and fuse the products into the sums; others run the portable loops.
fn widened_block<const BF16: bool>(weights: &[u16], xs: &[f32], rows: usize, in_dim: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU has the features `block` is compiled for.
        unsafe { avx2::block::<BF16>(weights, xs, rows, in_dim, out) };
        return;
    }
    portable_block::<BF16>(weights, xs, rows, in_dim, out);
}

/// Dispatches on the row count so that each case's accumulators are a fixed-size array the
/// compiler keeps in registers: 16 lanes per row up to 4 rows, 8 beyond (at most 64 floats).
fn portable_block<const BF16: bool>(weights: &[u16], xs: &[f32], rows: usize, in_dim: usize, out: &mut [f32]) {
    match rows {
        1 => portable_rows::<BF16, 1, 16>(weights, xs, in_dim, out),
        2 => portable_rows::<BF16, 2, 16>(weights, xs, in_dim, out),
        3 => portable_rows::<BF16, 3, 16>(weights, xs, in_dim, out),
        4 => portable_rows::<BF16, 4, 16>(weights, xs, in_dim, out),
        5 => portable_rows::<BF16, 5, 8>(weights, xs, in_dim, out),
        6 => portable_rows::<BF16, 6, 8>(weights, xs, in_dim, out),
        7 => portable_rows::<BF16, 7, 8>(weights, xs, in_dim, out),
        8 => portable_rows::<BF16, 8, 8>(weights, xs, in_dim, out),
        _ => unreachable!("at most MAX_FAST_ROWS rows take the streaming path"),
    }
}

/// Weights widened at a time: a separate conversion loop over a fixed-size buffer is what the
/// compiler vectorises well (converting inside the product loop it does element by element).
const WIDEN_CHUNK: usize = 64;

#[inline(always)]
fn portable_rows<const BF16: bool, const ROWS: usize, const LANES_PER_ROW: usize>(
    weights: &[u16],
    xs: &[f32],
    in_dim: usize,
    out: &mut [f32],
) {
    let xs: [&[f32]; ROWS] = std::array::from_fn(|r| &xs[r * in_dim..(r + 1) * in_dim]);
    let body = in_dim - in_dim % WIDEN_CHUNK;
    let mut wide = [0f32; WIDEN_CHUNK];
    for (w, sums) in weights.chunks_exact(in_dim).zip(out.chunks_exact_mut(ROWS)) {
        let mut acc = [[0f32; LANES_PER_ROW]; ROWS];
        for (chunk, start) in w[..body].chunks_exact(WIDEN_CHUNK).zip((0..).step_by(WIDEN_CHUNK)) {
            for (wide, &bits) in wide.iter_mut().zip(chunk) {
                *wide = widen::<BF16>(bits);
            }
            for (acc, x) in acc.iter_mut().zip(&xs) {
                let x = &x[start..start + WIDEN_CHUNK];
                for (w, x) in wide.chunks_exact(LANES_PER_ROW).zip(x.chunks_exact(LANES_PER_ROW)) {
                    for i in 0..LANES_PER_ROW {
                        acc[i] += w[i] * x[i];
                    }
                }
            }
        }
        for ((sum, acc), x) in sums.iter_mut().zip(&acc).zip(&xs) {
            let tail: f32 = w[body..].iter().zip(&x[body..]).map(|(&w, x)| widen::<BF16>(w) * x).sum();
            *sum = acc.iter().sum::<f32>() + tail;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::widen;

    /// Weights (4 KiB) ahead of the loads to prefetch: the hardware prefetchers stop at page
    /// boundaries, and asking for the next page early keeps enough reads in flight to stream
    /// at ~21 GB/s on two cores here instead of ~13 (docs/PERFORMANCE.md).
    const PREFETCH_AHEAD: usize = 2048;

    pub fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
    }

    /// [`super::portable_block`] with intrinsics: two 8-float accumulators per row up to 4
    /// rows (independent chains hide the FMA latency), one beyond (16 registers in all).
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C ([`available`]).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn block<const BF16: bool>(weights: &[u16], xs: &[f32], rows: usize, in_dim: usize, out: &mut [f32]) {
        match rows {
            1 => block_rows::<BF16, 1, 2>(weights, xs, in_dim, out),
            2 => block_rows::<BF16, 2, 2>(weights, xs, in_dim, out),
            3 => block_rows::<BF16, 3, 2>(weights, xs, in_dim, out),
            4 => block_rows::<BF16, 4, 2>(weights, xs, in_dim, out),
            5 => block_rows::<BF16, 5, 1>(weights, xs, in_dim, out),
            6 => block_rows::<BF16, 6, 1>(weights, xs, in_dim, out),
            7 => block_rows::<BF16, 7, 1>(weights, xs, in_dim, out),
            8 => block_rows::<BF16, 8, 1>(weights, xs, in_dim, out),
            _ => unreachable!("at most MAX_FAST_ROWS rows take the streaming path"),
        }
    }

    /// 8 weights as f32: bf16 bits shifted into the top half of each lane, or F16C's conversion.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load_widened<const BF16: bool>(bits: *const u16) -> __m256 {
        let bits = _mm_loadu_si128(bits as *const __m128i);
        if BF16 {
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(bits)))
        } else {
            _mm256_cvtph_ps(bits)
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn block_rows<const BF16: bool, const ROWS: usize, const VECS: usize>(
        weights: &[u16],
        xs: &[f32],
        in_dim: usize,
        out: &mut [f32],
    ) {
        assert!(xs.len() >= ROWS * in_dim && out.len() * in_dim == weights.len() * ROWS);
        let step = 8 * VECS;
        let body = in_dim - in_dim % step;
        for (w, sums) in weights.chunks_exact(in_dim).zip(out.chunks_exact_mut(ROWS)) {
            let mut acc = [[_mm256_setzero_ps(); VECS]; ROWS];
            for i in (0..body).step_by(step) {
                // A hint, so an address past the weights is harmless (never dereferenced).
                _mm_prefetch::<_MM_HINT_T0>(w.as_ptr().wrapping_add(i + PREFETCH_AHEAD) as *const i8);
                for (v, lane) in (i..i + step).step_by(8).enumerate() {
                    // In bounds: lane + 8 <= body <= in_dim, the length of `w` and of each row of `xs`.
                    let wide = load_widened::<BF16>(w.as_ptr().add(lane));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let x = _mm256_loadu_ps(xs.as_ptr().add(r * in_dim + lane));
                        acc[v] = _mm256_fmadd_ps(wide, x, acc[v]);
                    }
                }
            }
            for (r, (sum, acc)) in sums.iter_mut().zip(&acc).enumerate() {
                let total = acc[1..].iter().fold(acc[0], |t, &a| _mm256_add_ps(t, a));
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), total);
                let x = &xs[r * in_dim..(r + 1) * in_dim];
                let tail: f32 = w[body..].iter().zip(&x[body..]).map(|(&w, x)| widen::<BF16>(w) * x).sum();
                *sum = lanes.iter().sum::<f32>() + tail;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Largest difference relative to the largest reference value: summation order alone
    /// moves single outputs near zero by more than their own size.
    fn max_relative_gap(a: &Tensor, b: &Tensor) -> f32 {
        let values =
            |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap() };
        let (a, b) = (values(a), values(b));
        let scale = b.iter().fold(0f32, |m, y| m.max(y.abs()));
        a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) / scale
    }

    #[test]
    fn streaming_path_matches_candle_on_ragged_shapes() {
        // 131 outputs and 37 inputs: neither a multiple of the block nor of the lanes.
        let weight = Tensor::randn(0f32, 1.0, (131, 37), &Device::Cpu).unwrap();
        let ours = Linear::new(weight.clone());
        let theirs = candle_nn::Linear::new(weight, None);
        for rows in [1, 2, 3, MAX_FAST_ROWS] {
            let xs = Tensor::randn(0f32, 1.0, (rows, 1, 37), &Device::Cpu).unwrap();
            let got = ours.forward(&xs).unwrap();
            assert_eq!(got.dims(), &[rows, 1, 131]);
            let gap = max_relative_gap(&got, &theirs.forward(&xs).unwrap());
            assert!(gap < 1e-5, "{rows} rows differ by {gap}");
        }
    }

    #[test]
    fn many_rows_and_non_contiguous_inputs_match_candle() {
        let weight = Tensor::randn(0f32, 1.0, (70, 40), &Device::Cpu).unwrap();
        let ours = Linear::new(weight.clone());
        let theirs = candle_nn::Linear::new(weight, None);
        let many = Tensor::randn(0f32, 1.0, (3, 5, 40), &Device::Cpu).unwrap();
        assert!(max_relative_gap(&ours.forward(&many).unwrap(), &theirs.forward(&many).unwrap()) < 1e-5);
        let transposed = Tensor::randn(0f32, 1.0, (40, 2), &Device::Cpu).unwrap().t().unwrap();
        assert!(max_relative_gap(&ours.forward(&transposed).unwrap(), &theirs.forward(&transposed).unwrap()) < 1e-5);
    }

    /// The reference for half-precision weights: candle's `Linear` in f32 on the same (rounded)
    /// weights and activations.
    fn widened_reference(weight: &Tensor, xs: &Tensor) -> Tensor {
        candle_nn::Linear::new(weight.to_dtype(DType::F32).unwrap(), None)
            .forward(&xs.to_dtype(DType::F32).unwrap())
            .unwrap()
    }

    #[test]
    fn half_weights_accumulate_in_f32() {
        for dtype in [DType::BF16, DType::F16] {
            // Ragged shapes: all tail (37 inputs) and whole chunks plus a tail (1000), at every
            // row count (both lane widths).
            for (out_dim, in_dim) in [(131, 37), (96, 1000)] {
                let weight =
                    Tensor::randn(0f32, 1.0, (out_dim, in_dim), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
                let ours = Linear::new(weight.clone());
                for rows in 1..=MAX_FAST_ROWS {
                    let xs = Tensor::randn(0f32, 1.0, (rows, 1, in_dim), &Device::Cpu).unwrap();
                    let expected = widened_reference(&weight, &xs);
                    // f32 activations: f32 out, equal up to summation order.
                    let got = ours.forward(&xs).unwrap();
                    assert_eq!((got.dtype(), got.dims()), (DType::F32, &[rows, 1, out_dim][..]));
                    let gap = max_relative_gap(&got, &expected);
                    assert!(gap < 1e-5, "{dtype:?} {out_dim}x{in_dim}, {rows} rows: {gap}");
                    // Half activations: the same sums, rounded once to the activations' dtype.
                    let xs = xs.to_dtype(dtype).unwrap();
                    let expected = widened_reference(&weight, &xs);
                    let got = ours.forward(&xs).unwrap();
                    assert_eq!(got.dtype(), dtype);
                    let rounded = expected.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
                    let got = got.to_dtype(DType::F32).unwrap();
                    let gap = max_relative_gap(&got, &rounded);
                    // Rounding can land one unit of the last place apart on ties of the order.
                    let unit = if dtype == DType::BF16 { 2f32.powi(-7) } else { 2f32.powi(-10) };
                    assert!(gap <= unit, "{dtype:?} {out_dim}x{in_dim}, {rows} rows: {gap}");
                    assert!(max_relative_gap(&got, &expected) <= unit);
                }
            }
        }
    }

    #[test]
    fn half_weights_beyond_the_streaming_rows_compute_in_f32() {
        let weight = Tensor::randn(0f32, 1.0, (70, 40), &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
        let ours = Linear::new(weight.clone());
        let xs = Tensor::randn(0f32, 1.0, (3, 5, 40), &Device::Cpu).unwrap();
        let got = ours.forward(&xs).unwrap();
        assert_eq!(got.dtype(), DType::F32);
        assert_eq!(max_relative_gap(&got, &widened_reference(&weight, &xs)), 0.0);
        // Same dtypes: candle's bf16 product as it is.
        let xs = xs.to_dtype(DType::BF16).unwrap();
        let theirs = candle_nn::Linear::new(weight, None).forward(&xs).unwrap();
        let got = ours.forward(&xs).unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        assert_eq!(max_relative_gap(&got, &theirs), 0.0);
    }

    #[test]
    fn widening_is_exact_for_every_half_value() {
        for bits in 0..=u16::MAX {
            let (got_b, want_b) = (widen_bf16(bits), half::bf16::from_bits(bits).to_f32());
            let (got_h, want_h) = (widen_f16(bits), half::f16::from_bits(bits).to_f32());
            if want_b.is_nan() {
                assert!(got_b.is_nan(), "bf16 {bits:#06x}");
            } else {
                assert_eq!(got_b.to_bits(), want_b.to_bits(), "bf16 {bits:#06x}");
            }
            if want_h.is_nan() {
                assert!(got_h.is_nan(), "f16 {bits:#06x}");
            } else {
                assert_eq!(got_h.to_bits(), want_h.to_bits(), "f16 {bits:#06x}");
            }
        }
    }

    #[test]
    fn portable_loops_match_the_dispatched_ones() {
        // On an AVX2 machine the dispatched loops are the intrinsics; elsewhere both are the
        // portable ones and this compares them with themselves.
        let (out_dim, in_dim) = (10, 1000);
        let weight: Vec<f32> = Tensor::randn(0f32, 1.0, out_dim * in_dim, &Device::Cpu).unwrap().to_vec1().unwrap();
        let bf16_bits: Vec<u16> = weight.iter().map(|&w| half::bf16::from_f32(w).to_bits()).collect();
        let f16_bits: Vec<u16> = weight.iter().map(|&w| half::f16::from_f32(w).to_bits()).collect();
        for rows in 1..=MAX_FAST_ROWS {
            let xs: Vec<f32> = Tensor::randn(0f32, 1.0, rows * in_dim, &Device::Cpu).unwrap().to_vec1().unwrap();
            let (mut a, mut b) = (vec![0f32; rows * out_dim], vec![0f32; rows * out_dim]);
            widened_block::<true>(&bf16_bits, &xs, rows, in_dim, &mut a);
            portable_block::<true>(&bf16_bits, &xs, rows, in_dim, &mut b);
            let (mut c, mut d) = (vec![0f32; rows * out_dim], vec![0f32; rows * out_dim]);
            widened_block::<false>(&f16_bits, &xs, rows, in_dim, &mut c);
            portable_block::<false>(&f16_bits, &xs, rows, in_dim, &mut d);
            for (x, y) in a.iter().zip(&b).chain(c.iter().zip(&d)) {
                assert!((x - y).abs() <= 1e-4 * y.abs().max(1.0), "{rows} rows: {x} vs {y}");
            }
        }
    }
}
