//! Bias-free linear layers with fast paths for the few-row products of decoding, and int8
//! weights.
//!
//! A decoder step multiplies 2 to 64 activation rows by each weight matrix: a matrix-vector
//! product whose cost is reading the weights once from memory. The libraries' matmuls (gemm on
//! the CPU, cuBLAS on a GPU) tile for reuse and reach a fraction of the bandwidth on these
//! shapes, so [`Linear`] hands them to kernels that stream every weight row once for all
//! activation rows: `crate::cpu::gemv` on the CPU (up to [`MAX_FAST_ROWS`] rows at a time), and
//! `kernels/gemv.cu` on a GPU ([`cuda_gemv`], up to [`cuda_gemv::max_rows`] rows).
//!
//! f32 weights take f32 activations. bf16 and f16 weights on the CPU take activations of any
//! float dtype: each weight is widened to f32 as it is read (the weights are read once, so
//! converting them costs no memory traffic), products accumulate in f32 and the result is
//! returned in the activations' dtype. Half-precision weights halve a step's bytes against f32,
//! and candle's half-precision CPU matmul reaches only ~2 GB/s on these shapes (this path ~20 GB/s).
//!
//! int8 weights ([`Linear::quantize`], `--weights int8`) halve the bytes again: each output
//! feature's weights become `scale · q` with `q` in −127..=127 and `scale` its largest magnitude
//! over 127 (symmetric, per output channel; weight-only: the activations keep their dtype). The
//! same streaming kernels read them, widening `q` exactly and multiplying the f32 sum by `scale`.
//! Products of more rows than the kernels take (a long prefill) dequantise the matrix for that call.
//!
//! The kernels can also finish the product: add the residual stream ([`Linear::forward_add`]) or
//! apply the FFN activation ([`Linear::forward_activated`]), which on a GPU saves a kernel and a
//! round trip through memory per projection. Every other path does the same with candle's ops
//! after the product, so CPU results are what they were without the fusion.
//!
//! Every other case (long prompts at `start`) is candle's `Linear`, in f32 when the activations'
//! dtype is not the weights'.

use candle_core::{CpuStorage, DType, Device, Module, Storage, Tensor};

use crate::cpu::gemv;

// CUDA builds compile the kernels; others a stub with the same interface that never runs.
#[cfg_attr(not(feature = "cuda"), path = "linear/cuda_gemv_stub.rs")]
pub mod cuda_gemv;
mod int8;

/// Up to this many activation rows take the CPU streaming path at once; beyond it gemm's tiling
/// reuses each weight load across enough rows to win (int8 weights stream in groups of this many).
pub const MAX_FAST_ROWS: usize = gemv::MAX_ROWS;

/// The FFN's activation, named as transformers' `ACT2FN` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: the exact erf form (what every published checkpoint uses).
    GeluErf,
    /// `gelu_new`, `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    Relu,
    Silu,
}

impl Activation {
    pub fn from_name(name: &str) -> crate::error::Result<Self> {
        match name {
            "gelu" => Ok(Self::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Self::GeluTanh),
            "relu" => Ok(Self::Relu),
            "silu" | "swish" => Ok(Self::Silu),
            other => Err(crate::error::Error::Unsupported(format!(
                "decoder activation_function {other:?} (supported: gelu, gelu_new, gelu_pytorch_tanh, relu, silu)"
            ))),
        }
    }

    pub fn apply(self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::GeluErf => xs.gelu_erf(),
            Self::GeluTanh => xs.gelu(),
            Self::Relu => xs.relu(),
            Self::Silu => candle_nn::ops::silu(xs),
        }
    }

    /// The code `kernels/gemv.cu`'s `activate` switches on.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn kernel_code(self) -> i32 {
        match self {
            Self::GeluErf => 1,
            Self::GeluTanh => 2,
            Self::Relu => 3,
            Self::Silu => 4,
        }
    }
}

/// What a product does after the sums.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) enum Epilogue<'a> {
    #[default]
    None,
    /// `residual + W x`, `residual` shaped as the output, in the activations' dtype.
    Add(&'a Tensor),
    Activate(Activation),
}

impl Epilogue<'_> {
    /// The epilogue with candle's ops, for the paths whose kernels do not apply it.
    fn apply(self, product: Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::None => Ok(product),
            Self::Add(residual) => residual + product,
            Self::Activate(activation) => activation.apply(&product),
        }
    }
}

/// How a layer's weights are stored.
#[derive(Debug, Clone)]
enum Weights {
    /// `(out, in)` in the decoder's dtype (or f32).
    Dense(Tensor),
    Int8(int8::Int8Weights),
}

#[derive(Debug, Clone)]
pub struct Linear {
    weights: Weights,
    out_dim: usize,
    in_dim: usize,
}

impl Linear {
    /// `weight` is `(out_features, in_features)` as PyTorch stores it.
    pub fn new(weight: Tensor) -> Self {
        let (out_dim, in_dim) = weight.dims2().expect("a linear layer's weight is (out_features, in_features)");
        Self { weights: Weights::Dense(weight), out_dim, in_dim }
    }

    /// The same layer with int8 weights, per output channel (see the module's description), on
    /// the weights' device. Already int8: unchanged.
    pub fn quantize(&self) -> candle_core::Result<Self> {
        let weights = match &self.weights {
            Weights::Dense(weight) => Weights::Int8(int8::Int8Weights::quantize(weight)?),
            Weights::Int8(int8) => Weights::Int8(int8.clone()),
        };
        Ok(Self { weights, ..*self })
    }

    pub fn is_int8(&self) -> bool {
        matches!(self.weights, Weights::Int8(_))
    }

    /// The weights as the dense `(out, in)` matrix they stand for, in `dtype`: int8 ones
    /// dequantised (a copy, for products the streaming kernels do not take).
    pub fn dense_weight(&self, dtype: DType) -> candle_core::Result<Tensor> {
        match &self.weights {
            Weights::Dense(weight) => weight.to_dtype(dtype),
            Weights::Int8(int8) => int8.dequantize(dtype),
        }
    }

    /// Bytes the weights take: what one pass over them reads.
    pub fn weight_bytes(&self) -> usize {
        match &self.weights {
            Weights::Dense(weight) => weight.elem_count() * weight.dtype().size_in_bytes(),
            Weights::Int8(int8) => int8.bytes(),
        }
    }

    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_then(xs, Epilogue::None)
    }

    /// `residual + self(xs)`: the residual stream's update, fused into the product on a GPU.
    pub fn forward_add(&self, xs: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_then(xs, Epilogue::Add(residual))
    }

    /// `activation(self(xs))`, fused into the product on a GPU.
    pub fn forward_activated(&self, xs: &Tensor, activation: Activation) -> candle_core::Result<Tensor> {
        self.forward_then(xs, Epilogue::Activate(activation))
    }

    fn forward_then(&self, xs: &Tensor, epilogue: Epilogue) -> candle_core::Result<Tensor> {
        if xs.dims().last() != Some(&self.in_dim) {
            candle_core::bail!("linear layer of {} inputs applied to {:?}", self.in_dim, xs.dims());
        }
        let rows = xs.elem_count() / self.in_dim.max(1);
        if let Device::Cuda(_) = xs.device() {
            if let Some(out) = self.on_gpu(xs, rows, epilogue)? {
                return Ok(out);
            }
        } else if xs.device().is_cpu() {
            if let Some(out) = self.on_cpu(xs, rows)? {
                return epilogue.apply(out);
            }
        }
        epilogue.apply(self.fallback(xs)?)
    }

    /// `kernels/gemv.cu`, when it takes these rows, dtypes and shapes.
    fn on_gpu(&self, xs: &Tensor, rows: usize, epilogue: Epilogue) -> candle_core::Result<Option<Tensor>> {
        let (weight, scales) = match &self.weights {
            Weights::Dense(weight) => (weight, None),
            Weights::Int8(int8) => (int8.codes(), Some(int8.scales())),
        };
        if !cuda_gemv::takes(weight.dtype(), xs.dtype(), rows, self.in_dim, scales.is_some()) {
            return Ok(None);
        }
        let mut dims = xs.dims().to_vec();
        *dims.last_mut().expect("xs has in_dim as its last dimension") = self.out_dim;
        let (residual, activation) = match epilogue {
            Epilogue::None => (None, None),
            Epilogue::Add(residual) => {
                if residual.dims() != dims.as_slice() || residual.dtype() != xs.dtype() {
                    return Ok(None);
                }
                (Some(residual), None)
            }
            Epilogue::Activate(activation) => (None, Some(activation)),
        };
        match cuda_gemv::product(&xs.contiguous()?, weight, scales, residual, activation, rows)? {
            Some(out) => Ok(Some(out.reshape(dims)?)),
            None => Ok(None),
        }
    }

    /// The CPU streaming path, when it takes these rows and dtypes.
    fn on_cpu(&self, xs: &Tensor, rows: usize) -> candle_core::Result<Option<Tensor>> {
        let (out_dim, in_dim) = (self.out_dim, self.in_dim);
        let activations_fit = matches!(xs.dtype(), DType::F32 | DType::BF16 | DType::F16);
        let out = match &self.weights {
            Weights::Dense(weight) => {
                let dtypes_fit = match weight.dtype() {
                    DType::F32 => xs.dtype() == DType::F32,
                    DType::BF16 | DType::F16 => activations_fit,
                    _ => false,
                };
                if !dtypes_fit || rows > MAX_FAST_ROWS {
                    return Ok(None);
                }
                let xs_flat = xs.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                let (storage, layout) = weight.storage_and_layout();
                match (&*storage, layout.contiguous_offsets()) {
                    (Storage::Cpu(CpuStorage::F32(w)), Some((start, end))) => {
                        gemv::product_f32(&w[start..end], &xs_flat, rows, in_dim)
                    }
                    (Storage::Cpu(CpuStorage::BF16(w)), Some((start, end))) => {
                        gemv::product_widened(&w[start..end], &xs_flat, rows, in_dim)
                    }
                    (Storage::Cpu(CpuStorage::F16(w)), Some((start, end))) => {
                        gemv::product_widened(&w[start..end], &xs_flat, rows, in_dim)
                    }
                    _ => return Ok(None),
                }
            }
            // Any number of rows: dequantising the matrix would cost more than re-reading it.
            Weights::Int8(int8) if activations_fit => {
                let xs_flat = xs.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                match int8.product_cpu(&xs_flat, rows)? {
                    Some(out) => out,
                    None => return Ok(None),
                }
            }
            Weights::Int8(_) => return Ok(None),
        };
        let mut dims = xs.dims().to_vec();
        *dims.last_mut().expect("xs has in_dim as its last dimension") = out_dim;
        let out = Tensor::from_vec(out, dims, xs.device())?;
        let half_weights = matches!(&self.weights, Weights::Dense(w) if matches!(w.dtype(), DType::BF16 | DType::F16));
        Ok(Some(if half_weights || self.is_int8() { out.to_dtype(xs.dtype())? } else { out }))
    }

    /// candle's `Linear`; when the activations' dtype is not the weights', in f32 as the
    /// streaming path (the CPU half-precision decoder's `start`, once per request). int8
    /// weights are dequantised into the activations' dtype for the call.
    fn fallback(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match &self.weights {
            Weights::Dense(weight) if xs.dtype() == weight.dtype() => {
                candle_nn::Linear::new(weight.clone(), None).forward(xs)
            }
            Weights::Dense(weight) => candle_nn::Linear::new(weight.to_dtype(DType::F32)?, None)
                .forward(&xs.to_dtype(DType::F32)?)?
                .to_dtype(xs.dtype()),
            Weights::Int8(int8) => candle_nn::Linear::new(int8.dequantize(xs.dtype())?, None).forward(xs),
        }
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
