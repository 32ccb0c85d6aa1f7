//! int8 weights with one scale per output feature (symmetric, weight-only): see `crate::linear`.

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use rayon::prelude::*;

use crate::cpu::gemv;

/// The largest code: −127..=127 keeps the range symmetric, so `-w` quantises to `-q`.
const LEVELS: f32 = 127.0;

#[derive(Debug, Clone)]
pub(super) struct Int8Weights {
    /// `(out, in)` codes, stored as u8 holding the two's-complement bytes of i8 (candle has no
    /// i8 dtype; the kernels read them as signed).
    codes: Tensor,
    /// `(out,)` f32: output feature `o`'s weights are `scales[o] · codes[o]`.
    scales: Tensor,
    out_dim: usize,
    in_dim: usize,
}

impl Int8Weights {
    /// Quantises the dense `(out, in)` `weight` (any float dtype) on its device.
    pub(super) fn quantize(weight: &Tensor) -> candle_core::Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        let values = weight.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let (codes, scales) = quantize_rows(&values, in_dim);
        let device = weight.device();
        Ok(Self {
            codes: Tensor::from_vec(codes, (out_dim, in_dim), device)?,
            scales: Tensor::from_vec(scales, out_dim, device)?,
            out_dim,
            in_dim,
        })
    }

    pub(super) fn codes(&self) -> &Tensor {
        &self.codes
    }

    pub(super) fn scales(&self) -> &Tensor {
        &self.scales
    }

    pub(super) fn bytes(&self) -> usize {
        self.out_dim * self.in_dim + self.out_dim * 4
    }

    /// The dense matrix the codes stand for, in `dtype`, on their device.
    pub(super) fn dequantize(&self, dtype: DType) -> candle_core::Result<Tensor> {
        // u8 to f32 gives 0..=255; bytes of 128 and above are the negative codes.
        let unsigned = self.codes.to_dtype(DType::F32)?;
        let negative = unsigned.ge(128f64)?.to_dtype(DType::F32)?;
        let signed = (unsigned - (negative * 256.0)?)?;
        signed.broadcast_mul(&self.scales.unsqueeze(1)?)?.to_dtype(dtype)
    }

    /// `xs (rows, in) · Wᵀ` row-major `(rows, out)` on the CPU, streaming the codes once per
    /// [`gemv::MAX_ROWS`] rows; `None` when the codes are not contiguous CPU memory.
    pub(super) fn product_cpu(&self, xs: &[f32], rows: usize) -> candle_core::Result<Option<Vec<f32>>> {
        let (codes, codes_layout) = self.codes.storage_and_layout();
        let (scales, scales_layout) = self.scales.storage_and_layout();
        let (Storage::Cpu(CpuStorage::U8(codes)), Storage::Cpu(CpuStorage::F32(scales))) = (&*codes, &*scales) else {
            return Ok(None);
        };
        let (Some((c0, c1)), Some((s0, s1))) = (codes_layout.contiguous_offsets(), scales_layout.contiguous_offsets())
        else {
            return Ok(None);
        };
        let codes = as_signed(&codes[c0..c1]);
        let scales = &scales[s0..s1];
        let mut out = Vec::with_capacity(rows * self.out_dim);
        for group in xs.chunks(gemv::MAX_ROWS * self.in_dim) {
            let sums = gemv::product_widened(codes, group, group.len() / self.in_dim, self.in_dim);
            for row in sums.chunks_exact(self.out_dim) {
                out.extend(row.iter().zip(scales).map(|(sum, scale)| sum * scale));
            }
        }
        Ok(Some(out))
    }
}

/// The bytes of a u8 buffer as the i8 codes they hold.
fn as_signed(bytes: &[u8]) -> &[i8] {
    // SAFETY: u8 and i8 have the same size and alignment, and every bit pattern is valid for both.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<i8>(), bytes.len()) }
}

/// Per row of `in_dim` values: the scale `max |w| / 127` and the codes `round(w / scale)`, as
/// two's-complement bytes. An all-zero row gets scale 0 and zero codes.
pub(crate) fn quantize_rows(values: &[f32], in_dim: usize) -> (Vec<u8>, Vec<f32>) {
    let mut codes = vec![0u8; values.len()];
    let scales = codes
        .par_chunks_mut(in_dim)
        .zip(values.par_chunks(in_dim))
        .map(|(codes, row)| {
            let largest = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = largest / LEVELS;
            if scale > 0.0 {
                for (code, &v) in codes.iter_mut().zip(row) {
                    *code = (v / scale).round().clamp(-LEVELS, LEVELS) as i8 as u8;
                }
            }
            scale
        })
        .collect();
    (codes, scales)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_to_nearest_and_keep_the_largest_exactly() {
        let row = [0.5f32, -1.27, 0.004, 1.0, 0.0, -0.006];
        let (codes, scales) = quantize_rows(&row, 6);
        assert_eq!(scales, vec![1.27 / 127.0]);
        let signed: Vec<i8> = codes.iter().map(|&c| c as i8).collect();
        assert_eq!(signed, vec![50, -127, 0, 100, 0, -1]);
        // Zero rows stay zero instead of dividing by zero.
        let (codes, scales) = quantize_rows(&[0.0; 4], 4);
        assert_eq!((codes, scales), (vec![0; 4], vec![0.0]));
    }

    #[test]
    fn dequantised_weights_are_within_half_a_step() {
        let weight = Tensor::randn(0f32, 0.05, (37, 130), &Device::Cpu).unwrap();
        let int8 = Int8Weights::quantize(&weight).unwrap();
        let back = int8.dequantize(DType::F32).unwrap().to_vec2::<f32>().unwrap();
        let scales = int8.scales().to_vec1::<f32>().unwrap();
        for ((row, original), scale) in back.iter().zip(weight.to_vec2::<f32>().unwrap()).zip(scales) {
            for (b, w) in row.iter().zip(original) {
                assert!((b - w).abs() <= 0.5 * scale * (1.0 + 1e-5), "{b} vs {w}, step {scale}");
            }
        }
    }

    #[test]
    fn cpu_products_equal_the_dequantised_matmul() {
        // More rows than one streaming group, ragged dimensions.
        let weight = Tensor::randn(0f32, 0.05, (70, 131), &Device::Cpu).unwrap();
        let int8 = Int8Weights::quantize(&weight).unwrap();
        let dense = int8.dequantize(DType::F32).unwrap();
        for rows in [1, 2, gemv::MAX_ROWS, gemv::MAX_ROWS + 3, 3 * gemv::MAX_ROWS] {
            let xs = Tensor::randn(0f32, 1.0, (rows, 131), &Device::Cpu).unwrap();
            let got = int8.product_cpu(&xs.flatten_all().unwrap().to_vec1().unwrap(), rows).unwrap().unwrap();
            let want = xs.matmul(&dense.t().unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-5 * scale, "{rows} rows: {g} vs {w}");
            }
        }
    }
}
