//! Bias-free linear layers with a CPU fast path for the few-row products of decoding.
//!
//! A decoder step multiplies 2 to 8 activation rows by each weight matrix: a matrix-vector
//! product whose cost is reading the weights once from memory. candle's CPU matmul (gemm) packs
//! and tiles for large products and reaches a fraction of the memory bandwidth on these shapes,
//! so on the CPU with at most [`MAX_FAST_ROWS`] rows [`Linear`] hands the product to
//! `crate::cpu::gemv`, which streams every weight row once for all activation rows.
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

use crate::cpu::gemv;

/// Up to this many activation rows take the streaming path; beyond it gemm's tiling reuses
/// each weight load across enough rows to win.
pub const MAX_FAST_ROWS: usize = gemv::MAX_ROWS;

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
                gemv::product_f32(&w[start..end], &xs_flat, rows, in_dim)
            }
            (Storage::Cpu(CpuStorage::BF16(w)), Some((start, end))) => {
                gemv::product_widened(&w[start..end], &xs_flat, rows, in_dim)
            }
            (Storage::Cpu(CpuStorage::F16(w)), Some((start, end))) => {
                gemv::product_widened(&w[start..end], &xs_flat, rows, in_dim)
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
}
