//! The SEANet decoder's convolutions: transformers' `EncodecConv1d` / `EncodecConvTranspose1d`
//! padding rules, weight norm folded at load time, and time-chunked execution so that a
//! long waveform never needs one giant im2col buffer.

use candle_core::{Tensor, D};
use candle_nn::VarBuilder;

use crate::error::{Error, Result};

/// How the signal is extended before a convolution (`EncodecConfig.pad_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PadMode {
    /// Mirror without repeating the edge sample (torch's `reflect`).
    Reflect,
    /// Zeros.
    Constant,
}

/// The settings every convolution of one codec shares.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConvStyle {
    pub causal: bool,
    pub pad_mode: PadMode,
    pub trim_right_ratio: f64,
}

/// Most elements one convolution call may stage in its im2col (or col2im) buffer; longer
/// signals are processed in time chunks. 8 Mi f32 = 32 MiB keeps a 30 s, 64-channel layer in
/// cache-friendly pieces while each chunk is still a large matrix product.
const CHUNK_ELEMENTS: usize = 1 << 23;

/// `(left, right)` padding transformers adds before a convolution over `length` samples:
/// `padding_total = effective_kernel - stride`, split (non-causal) with the larger half on the
/// left, plus the extra right padding that makes the last window complete
/// (`ideal_length = ceil(length / stride) * stride`, which is what `_get_extra_padding_for_conv1d`
/// computes in floating point).
pub(super) fn conv_padding(
    length: usize,
    kernel_size: usize,
    stride: usize,
    dilation: usize,
    causal: bool,
) -> (usize, usize) {
    let effective = (kernel_size - 1) * dilation + 1;
    let total = effective - stride;
    let extra = length.div_ceil(stride) * stride - length;
    if causal {
        (total, extra)
    } else {
        let right = total / 2;
        (total - right, right + extra)
    }
}

/// `(left, right)` samples trimmed from a transposed convolution's output
/// (`padding_total = kernel - stride`).
pub(super) fn transposed_trim(kernel_size: usize, stride: usize, causal: bool, trim_right_ratio: f64) -> (usize, usize) {
    let total = kernel_size - stride;
    let right = if causal { (total as f64 * trim_right_ratio).ceil() as usize } else { total / 2 };
    (total - right, right)
}

/// Pads the last axis. Reflect padding of a signal no longer than the padding first appends
/// zeros so the reflection exists, then drops them again, as transformers' `_pad1d` does; the
/// result therefore reflects those zeros.
pub(super) fn pad1d(x: &Tensor, left: usize, right: usize, mode: PadMode) -> Result<Tensor> {
    if left == 0 && right == 0 {
        return Ok(x.clone());
    }
    match mode {
        PadMode::Constant => Ok(x.pad_with_zeros(D::Minus1, left, right)?),
        PadMode::Reflect => {
            let length = x.dim(D::Minus1)?;
            let extra = (left.max(right) + 1).saturating_sub(length);
            let x = x.pad_with_zeros(D::Minus1, 0, extra)?;
            let indices = reflect_indices(length + extra, left, length + left + right);
            let indices = Tensor::from_vec(indices, length + left + right, x.device())?;
            Ok(x.index_select(&indices, D::Minus1)?)
        }
    }
}

/// Source positions of the first `keep` samples of `signal_len` samples reflect-padded by
/// `left` on the left and at least `keep - left - signal_len` on the right (both pads smaller
/// than `signal_len`).
fn reflect_indices(signal_len: usize, left: usize, keep: usize) -> Vec<u32> {
    (0..keep)
        .map(|j| {
            let source = if j < left {
                left - j
            } else if j < left + signal_len {
                j - left
            } else {
                signal_len - 2 - (j - left - signal_len)
            };
            source as u32
        })
        .collect()
}

/// Loads a convolution weight stored weight-normed under either naming, or plain:
/// `parametrizations.weight.original0/1` (transformers >= 4.4x saves), `weight_g`/`weight_v`
/// (the published facebook checkpoints), or `weight`.
pub(super) fn load_weight(vb: &VarBuilder, shape: (usize, usize, usize)) -> Result<Tensor> {
    const NORMED: [(&str, &str); 2] =
        [("parametrizations.weight.original0", "parametrizations.weight.original1"), ("weight_g", "weight_v")];
    for (g_name, v_name) in NORMED {
        if vb.contains_tensor(g_name) && vb.contains_tensor(v_name) {
            let v = vb.get(shape, v_name)?;
            let g = vb.get_unchecked(g_name)?;
            return fold_weight_norm(&g, &v).map_err(|message| {
                Error::Unsupported(format!("{}.{g_name}: {message}", vb.prefix()))
            });
        }
    }
    if vb.contains_tensor("weight") {
        return Ok(vb.get(shape, "weight")?);
    }
    let p = vb.prefix();
    Err(Error::Unsupported(format!(
        "no convolution weight at {p}: expected {p}.weight_g + {p}.weight_v, \
         {p}.parametrizations.weight.original0/1 or {p}.weight in the checkpoint"
    )))
}

/// `weight = g * v / ||v||`, the norm taken over every axis along which `g` has size 1
/// (all but axis 0 for torch's default `dim=0`, all of them for a scalar `g`).
fn fold_weight_norm(g: &Tensor, v: &Tensor) -> std::result::Result<Tensor, String> {
    let v_dims = v.dims();
    let g = if g.rank() == 0 { g.reshape(vec![1; v.rank()]).map_err(|e| e.to_string())? } else { g.clone() };
    let g_dims = g.dims().to_vec();
    let compatible = g_dims.len() == v_dims.len() && g_dims.iter().zip(v_dims).all(|(&a, &b)| a == 1 || a == b);
    if !compatible {
        return Err(format!("weight-norm magnitude of shape {g_dims:?} does not fit a direction of shape {v_dims:?}"));
    }
    let fold = || -> candle_core::Result<Tensor> {
        let mut squares = v.sqr()?;
        for (axis, &size) in g_dims.iter().enumerate() {
            if size == 1 {
                squares = squares.sum_keepdim(axis)?;
            }
        }
        v.broadcast_mul(&g.broadcast_div(&squares.sqrt()?)?)
    };
    fold().map_err(|e| e.to_string())
}

/// transformers' `EncodecConv1d`: pad, then a plain convolution.
#[derive(Debug, Clone)]
pub(super) struct Conv1d {
    /// `(out, in, kernel)`, weight norm already applied.
    weight: Tensor,
    /// `(1, out, 1)`.
    bias: Tensor,
    stride: usize,
    dilation: usize,
    style: ConvStyle,
}

impl Conv1d {
    /// `vb` is at the wrapper (`...layers.N`); the tensors live under its `conv`.
    pub fn load(
        vb: &VarBuilder,
        channels: (usize, usize),
        kernel_size: usize,
        dilation: usize,
        style: ConvStyle,
    ) -> Result<Self> {
        let (c_in, c_out) = channels;
        let vb = vb.pp("conv");
        let weight = load_weight(&vb, (c_out, c_in, kernel_size))?;
        let bias = vb.get(c_out, "bias")?.reshape((1, c_out, 1))?;
        Ok(Self { weight, bias, stride: 1, dilation, style })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, kernel_size) = self.weight.dims3()?;
        let length = x.dim(D::Minus1)?;
        let (left, right) = conv_padding(length, kernel_size, self.stride, self.dilation, self.style.causal);
        let x = pad1d(x, left, right, self.style.pad_mode)?;
        let y = if kernel_size == 1 && self.stride == 1 {
            // A pointwise convolution is one matrix product; im2col would only copy the input.
            let (b, _, _) = x.dims3()?;
            let (c_out, c_in, _) = self.weight.dims3()?;
            self.weight.reshape((c_out, c_in))?.broadcast_left(b)?.matmul(&x.contiguous()?)?
        } else {
            conv1d_chunked(&x, &self.weight, self.stride, self.dilation)?
        };
        Ok(y.broadcast_add(&self.bias)?)
    }
}

/// A convolution without padding, run over time chunks whose im2col buffers stay under
/// [`CHUNK_ELEMENTS`]. Every output sample is the same dot product either way.
fn conv1d_chunked(x: &Tensor, weight: &Tensor, stride: usize, dilation: usize) -> Result<Tensor> {
    let (b, c_in, length) = x.dims3()?;
    let (_, _, kernel_size) = weight.dims3()?;
    let effective = (kernel_size - 1) * dilation + 1;
    let l_out = (length - effective) / stride + 1;
    let per_chunk = (CHUNK_ELEMENTS / (b * c_in * kernel_size)).max(1);
    if l_out <= per_chunk {
        return Ok(x.conv1d(weight, 0, stride, dilation, 1)?);
    }
    let mut pieces = Vec::with_capacity(l_out.div_ceil(per_chunk));
    let mut start = 0;
    while start < l_out {
        let n = per_chunk.min(l_out - start);
        let input = x.narrow(2, start * stride, (n - 1) * stride + effective)?;
        pieces.push(input.conv1d(weight, 0, stride, dilation, 1)?);
        start += n;
    }
    Ok(Tensor::cat(&pieces, 2)?)
}

/// transformers' `EncodecConvTranspose1d`: a transposed convolution, then trimming.
#[derive(Debug, Clone)]
pub(super) struct ConvTranspose1d {
    /// `(in, out, kernel)`, weight norm already applied.
    weight: Tensor,
    /// `(1, out, 1)`.
    bias: Tensor,
    stride: usize,
    style: ConvStyle,
}

impl ConvTranspose1d {
    /// `vb` is at the wrapper (`...layers.N`); the tensors live under its `conv`.
    pub fn load(
        vb: &VarBuilder,
        channels: (usize, usize),
        kernel_size: usize,
        stride: usize,
        style: ConvStyle,
    ) -> Result<Self> {
        let (c_in, c_out) = channels;
        let vb = vb.pp("conv");
        let weight = load_weight(&vb, (c_in, c_out, kernel_size))?;
        let bias = vb.get(c_out, "bias")?.reshape((1, c_out, 1))?;
        Ok(Self { weight, bias, stride, style })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, kernel_size) = self.weight.dims3()?;
        let y = conv_transpose1d_chunked(x, &self.weight, self.stride)?.broadcast_add(&self.bias)?;
        let (left, right) = transposed_trim(kernel_size, self.stride, self.style.causal, self.style.trim_right_ratio);
        let length = y.dim(D::Minus1)?;
        Ok(y.narrow(D::Minus1, left, length - left - right)?)
    }
}

/// A transposed convolution over input chunks whose col2im buffers stay under
/// [`CHUNK_ELEMENTS`]. Input frame `i` writes outputs `i*stride .. i*stride + kernel`, so two
/// neighbouring chunks overlap on `kernel - stride` outputs, which are summed; with
/// `kernel <= 2 * stride` (EnCodec uses exactly 2x) each output has at most two contributions
/// and the sum is the same float either way round.
fn conv_transpose1d_chunked(x: &Tensor, weight: &Tensor, stride: usize) -> Result<Tensor> {
    let (b, _, l_in) = x.dims3()?;
    let (_, c_out, kernel_size) = weight.dims3()?;
    let per_chunk = (CHUNK_ELEMENTS / (b * c_out * kernel_size)).max(1);
    if l_in <= per_chunk || kernel_size > 2 * stride {
        return Ok(x.conv_transpose1d(weight, 0, 0, stride, 1, 1)?);
    }
    let overlap = kernel_size - stride;
    let mut pieces = Vec::with_capacity(l_in.div_ceil(per_chunk) + 1);
    let mut carry: Option<Tensor> = None;
    let mut start = 0;
    while start < l_in {
        let n = per_chunk.min(l_in - start);
        let y = x.narrow(2, start, n)?.conv_transpose1d(weight, 0, 0, stride, 1, 1)?;
        let own = n * stride;
        let mut head = y.narrow(2, 0, own)?;
        if let Some(previous) = carry.take() {
            let summed = (head.narrow(2, 0, overlap)? + previous)?;
            head = Tensor::cat(&[&summed, &head.narrow(2, overlap, own - overlap)?], 2)?;
        }
        pieces.push(head);
        carry = Some(y.narrow(2, own, overlap)?);
        start += n;
    }
    pieces.extend(carry);
    Ok(Tensor::cat(&pieces, 2)?)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn row(values: &[f32]) -> Tensor {
        Tensor::from_slice(values, (1, 1, values.len()), &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn stride_one_padding_keeps_length_with_larger_half_left() {
        assert_eq!(conv_padding(10, 7, 1, 1, false), (3, 3));
        assert_eq!(conv_padding(1, 3, 1, 2, false), (2, 2));
        assert_eq!(conv_padding(5, 4, 1, 1, false), (2, 1));
        assert_eq!(conv_padding(5, 1, 1, 1, false), (0, 0));
        assert_eq!(conv_padding(5, 7, 1, 1, true), (6, 0));
    }

    #[test]
    fn strided_padding_completes_the_last_window() {
        // kernel 4, stride 2: total 2 split 1/1; 7 samples need one more to fill 4 windows.
        assert_eq!(conv_padding(7, 4, 2, 1, false), (1, 2));
        assert_eq!(conv_padding(8, 4, 2, 1, false), (1, 1));
        assert_eq!(conv_padding(7, 4, 2, 1, true), (2, 1));
    }

    #[test]
    fn transposed_trim_matches_transformers() {
        assert_eq!(transposed_trim(16, 8, false, 1.0), (4, 4));
        assert_eq!(transposed_trim(10, 5, false, 1.0), (3, 2));
        assert_eq!(transposed_trim(10, 5, true, 1.0), (0, 5));
        assert_eq!(transposed_trim(10, 5, true, 0.5), (2, 3));
    }

    #[test]
    fn reflect_pads_like_torch() {
        let padded = pad1d(&row(&[1., 2., 3., 4.]), 2, 3, PadMode::Reflect).unwrap();
        assert_eq!(values(&padded), [3., 2., 1., 2., 3., 4., 3., 2., 1.]);
    }

    #[test]
    fn reflect_of_short_input_reflects_appended_zeros() {
        // transformers' _pad1d: [5] -> [5, 0, 0, 0] -> reflect (3, 3) -> drop the 3 zeros added.
        let padded = pad1d(&row(&[5.]), 3, 3, PadMode::Reflect).unwrap();
        assert_eq!(values(&padded), [0., 0., 0., 5., 0., 0., 0.]);
        // [1, 2] padded (3, 1): [1, 2, 0, 0] -> [0, 0, 2, 1, 2, 0, 0, 0] minus 2 at the end.
        let padded = pad1d(&row(&[1., 2.]), 3, 1, PadMode::Reflect).unwrap();
        assert_eq!(values(&padded), [0., 0., 2., 1., 2., 0.]);
        // Exactly as long as the padding still takes the workaround (torch needs pad < length).
        let padded = pad1d(&row(&[1., 2., 3.]), 3, 0, PadMode::Reflect).unwrap();
        assert_eq!(values(&padded), [0., 3., 2., 1., 2., 3.]);
    }

    #[test]
    fn constant_pads_with_zeros() {
        let padded = pad1d(&row(&[1., 2.]), 2, 1, PadMode::Constant).unwrap();
        assert_eq!(values(&padded), [0., 0., 1., 2., 0.]);
    }

    #[test]
    fn weight_norm_normalises_all_but_the_first_axis() {
        let dev = Device::Cpu;
        let v = Tensor::from_slice(&[3f32, 4., 0., 0., 0., 2.], (2, 1, 3), &dev).unwrap();
        let g = Tensor::from_slice(&[10f32, 1.], (2, 1, 1), &dev).unwrap();
        let w = fold_weight_norm(&g, &v).unwrap();
        assert_eq!(values(&w), [6., 8., 0., 0., 0., 1.]);
        let bad = Tensor::from_slice(&[1f32, 1., 1.], (3, 1, 1), &dev).unwrap();
        assert!(fold_weight_norm(&bad, &v).is_err());
    }

    #[test]
    fn chunked_convolutions_equal_whole_ones() {
        let dev = Device::Cpu;
        // Long enough for several chunks of CHUNK_ELEMENTS at 64 channels.
        let x = Tensor::randn(0f32, 1., (1, 64, 70_000), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.1, (8, 64, 3), &dev).unwrap();
        let chunked = conv1d_chunked(&x, &w, 1, 2).unwrap();
        let whole = x.conv1d(&w, 0, 1, 2, 1).unwrap();
        let diff = (chunked - whole).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "{diff}");

        let x = Tensor::randn(0f32, 1., (1, 16, 20_000), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.1, (16, 64, 8), &dev).unwrap();
        let chunked = conv_transpose1d_chunked(&x, &w, 4).unwrap();
        let whole = x.conv_transpose1d(&w, 0, 0, 4, 1, 1).unwrap();
        assert_eq!(chunked.dims(), whole.dims());
        let diff = (chunked - whole).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "{diff}");
    }
}
