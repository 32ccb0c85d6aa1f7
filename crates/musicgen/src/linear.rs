//! Bias-free linear layers with a CPU fast path for the few-row products of decoding.
//!
//! A decoder step multiplies 2 to 8 activation rows by each weight matrix: a matrix-vector
//! product whose cost is reading the weights once from memory. candle's CPU matmul (gemm) packs
//! and tiles for large products and reaches a fraction of the memory bandwidth on these shapes,
//! so for f32 on the CPU with at most [`MAX_FAST_ROWS`] rows [`Linear`] streams every weight row
//! once, dotting it with all activation rows, split over rayon's threads by output blocks.
//! Every other case (CUDA, half precision, long prompts at `start`) is candle's `Linear`.

use candle_core::{DType, Module, Storage, Tensor};
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
        Self {
            inner: candle_nn::Linear::new(weight, None),
        }
    }

    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let weight = self.inner.weight();
        let (out_dim, in_dim) = weight.dims2()?;
        let rows = xs.elem_count() / in_dim.max(1);
        let fast = xs.device().is_cpu()
            && xs.dtype() == DType::F32
            && weight.dtype() == DType::F32
            && xs.dims().last() == Some(&in_dim)
            && rows <= MAX_FAST_ROWS;
        if !fast {
            return self.inner.forward(xs);
        }
        let xs_flat = xs.flatten_all()?.to_vec1::<f32>()?;
        let (storage, layout) = weight.storage_and_layout();
        let out = match (&*storage, layout.contiguous_offsets()) {
            (Storage::Cpu(cpu), Some((start, end))) => {
                few_rows_product(&cpu.as_slice::<f32>()?[start..end], &xs_flat, rows, in_dim)
            }
            _ => {
                drop(storage);
                return self.inner.forward(xs);
            }
        };
        let mut dims = xs.dims().to_vec();
        *dims
            .last_mut()
            .expect("xs has in_dim as its last dimension") = out_dim;
        Tensor::from_vec(out, dims, xs.device())
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
    by_feature
        .par_chunks_mut(OUTPUTS_PER_TASK * rows)
        .enumerate()
        .for_each(|(block, out)| {
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
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (ca, cb) in a_chunks.zip(b_chunks) {
        for i in 0..LANES {
            acc[i] += ca[i] * cb[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Largest difference relative to the largest reference value: summation order alone
    /// moves single outputs near zero by more than their own size.
    fn max_relative_gap(a: &Tensor, b: &Tensor) -> f32 {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        let scale = b.iter().fold(0f32, |m, y| m.max(y.abs()));
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
            / scale
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
        assert!(
            max_relative_gap(
                &ours.forward(&many).unwrap(),
                &theirs.forward(&many).unwrap()
            ) < 1e-5
        );
        let transposed = Tensor::randn(0f32, 1.0, (40, 2), &Device::Cpu)
            .unwrap()
            .t()
            .unwrap();
        assert!(
            max_relative_gap(
                &ours.forward(&transposed).unwrap(),
                &theirs.forward(&transposed).unwrap()
            ) < 1e-5
        );
    }
}
