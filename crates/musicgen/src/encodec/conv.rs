//! SEANet's convolutions: transformers' `EncodecConv1d` (strided in the encoder) /
//! `EncodecConvTranspose1d` padding rules and weight norm (folded at load time), computed on
//! time-major signals `(B, T, C)` as large matrix products over time chunks, so a long waveform
//! needs neither an im2col buffer nor a transpose between layers.

use candle_core::Tensor;
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

/// Most elements of tap responses one convolution computes at once; longer signals are
/// processed in time chunks. 8 Mi f32 = 32 MiB bounds memory at any duration while each
/// chunk is still a large matrix product.
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
pub(super) fn transposed_trim(
    kernel_size: usize,
    stride: usize,
    causal: bool,
    trim_right_ratio: f64,
) -> (usize, usize) {
    let total = kernel_size - stride;
    let right = if causal { (total as f64 * trim_right_ratio).ceil() as usize } else { total / 2 };
    (total - right, right)
}

/// Pads `axis`. Reflect padding of a signal no longer than the padding first appends
/// zeros so the reflection exists, then drops them again, as transformers' `_pad1d` does; the
/// result therefore reflects those zeros.
pub(super) fn pad1d(x: &Tensor, left: usize, right: usize, mode: PadMode, axis: usize) -> Result<Tensor> {
    if left == 0 && right == 0 {
        return Ok(x.clone());
    }
    match mode {
        PadMode::Constant => Ok(x.pad_with_zeros(axis, left, right)?),
        PadMode::Reflect => {
            let length = x.dim(axis)?;
            let extra = (left.max(right) + 1).saturating_sub(length);
            let x = x.pad_with_zeros(axis, 0, extra)?;
            let indices = reflect_indices(length + extra, left, length + left + right);
            let indices = Tensor::from_vec(indices, length + left + right, x.device())?;
            Ok(x.index_select(&indices, axis)?)
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
            return fold_weight_norm(&g, &v)
                .map_err(|message| Error::Unsupported(format!("{}.{g_name}: {message}", vb.prefix())));
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

/// transformers' `EncodecConv1d` on time-major signals `(B, T, C)`: pad, then convolve.
#[derive(Debug, Clone)]
pub(super) struct Conv1d {
    /// `(stride * in, phases * out)`: the kernel zero-padded to `phases * stride` taps, as a
    /// stride-1 kernel of `phases` taps over frames of `stride` samples side by side: row
    /// `p * in + c`, column block `h` holds tap `h * stride + p` from `c`. Weight norm already
    /// applied. With stride 1 this is the plain `(in, kernel * out)` tap matrix.
    taps: Tensor,
    /// `(out)`.
    bias: Tensor,
    kernel_size: usize,
    stride: usize,
    dilation: usize,
    style: ConvStyle,
}

impl Conv1d {
    /// `vb` is at the wrapper (`...layers.N`); the tensors live under its `conv`. A strided
    /// convolution (the encoder's downsampling) has dilation 1, as in every EnCodec.
    pub fn load(
        vb: &VarBuilder,
        channels: (usize, usize),
        kernel_size: usize,
        (stride, dilation): (usize, usize),
        style: ConvStyle,
    ) -> Result<Self> {
        let (c_in, c_out) = channels;
        if stride > 1 && dilation > 1 {
            return Err(Error::Unsupported(format!(
                "EnCodec convolution {} with stride {stride} and dilation {dilation}",
                vb.prefix()
            )));
        }
        let vb = vb.pp("conv");
        let weight = load_weight(&vb, (c_out, c_in, kernel_size))?;
        let taps = frame_stacked(&weight, stride)?;
        let bias = vb.get(c_out, "bias")?;
        Ok(Self { taps, bias, kernel_size, stride, dilation, style })
    }

    /// `(B, T, in)` -> `(B, ceil(T / stride), out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_edges(x, (true, true))
    }

    /// Input samples on each side that one output sample reads, `(left, right)`, for a
    /// stride-1 convolution: the padding it adds.
    pub fn context(&self) -> (usize, usize) {
        conv_padding(1, self.kernel_size, 1, self.dilation, self.style.causal)
    }

    /// A stride-1 convolution over a piece of a longer signal: the padding is added only on the
    /// sides in `(left, right)` that are the signal's true ends; on the others `x` carries
    /// [`Self::context`] samples of real signal instead, and the output is shorter by them.
    pub fn forward_piece(&self, x: &Tensor, ends: (bool, bool)) -> Result<Tensor> {
        debug_assert_eq!(self.stride, 1, "pieces are cut only for stride-1 convolutions");
        self.forward_edges(x, ends)
    }

    fn forward_edges(&self, x: &Tensor, (pad_left, pad_right): (bool, bool)) -> Result<Tensor> {
        let (b, length, c_in) = x.dims3()?;
        let (left, right) = conv_padding(length, self.kernel_size, self.stride, self.dilation, self.style.causal);
        let x = pad1d(x, if pad_left { left } else { 0 }, if pad_right { right } else { 0 }, self.style.pad_mode, 1)?;
        if self.stride == 1 {
            let y = conv1d_time_major(&x, &self.taps, self.kernel_size, self.dilation, CHUNK_ELEMENTS)?;
            return Ok(y.broadcast_add(&self.bias)?);
        }
        // Frames of `stride` samples side by side make the strided convolution a stride-1 one of
        // `phases` taps; zeros complete the last frame and only reach outputs dropped below.
        let s = self.stride;
        let padded = x.dim(1)?;
        let outputs = (padded - self.kernel_size) / s + 1;
        let x = x.pad_with_zeros(1, 0, padded.div_ceil(s) * s - padded)?;
        let frames = x.reshape((b, padded.div_ceil(s), s * c_in))?;
        let phases = self.kernel_size.div_ceil(s);
        let y = conv1d_time_major(&frames, &self.taps, phases, 1, CHUNK_ELEMENTS)?;
        Ok(y.narrow(1, 0, outputs)?.broadcast_add(&self.bias)?)
    }
}

/// `(out, in, kernel)` -> `(stride * in, phases * out)`, as `Conv1d::taps` holds it.
fn frame_stacked(weight: &Tensor, stride: usize) -> Result<Tensor> {
    let (c_out, c_in, kernel_size) = weight.dims3()?;
    let phases = kernel_size.div_ceil(stride);
    Ok(weight
        .pad_with_zeros(2, 0, phases * stride - kernel_size)?
        .reshape((c_out, c_in, phases, stride))?
        .permute((3, 1, 2, 0))?
        .contiguous()?
        .reshape((stride * c_in, phases * c_out))?)
}

/// An unpadded stride-1 convolution of `x (B, T, in)` with `taps (in, kernel * out)`:
/// one matrix product gives every tap's response at every input sample, and output `t`
/// sums tap `j`'s response at `t + j * dilation`. Output rows are produced in chunks whose
/// products stay under `budget` elements.
fn conv1d_time_major(x: &Tensor, taps: &Tensor, kernel_size: usize, dilation: usize, budget: usize) -> Result<Tensor> {
    let (b, length, c_in) = x.dims3()?;
    let c_out = taps.dim(1)? / kernel_size;
    let span = (kernel_size - 1) * dilation;
    let l_out = length - span;
    let per_chunk = (budget / (b * kernel_size * c_out)).saturating_sub(span).max(1);
    let mut pieces = Vec::with_capacity(l_out.div_ceil(per_chunk));
    let mut start = 0;
    while start < l_out {
        let n = per_chunk.min(l_out - start);
        let rows = x.narrow(1, start, n + span)?.contiguous()?;
        let responses =
            rows.reshape((b * (n + span), c_in))?.matmul(taps)?.reshape((b, n + span, kernel_size * c_out))?;
        let mut sum: Option<Tensor> = None;
        for j in 0..kernel_size {
            let tap = responses.narrow(1, j * dilation, n)?.narrow(2, j * c_out, c_out)?.contiguous()?;
            sum = Some(match sum {
                None => tap,
                Some(acc) => (acc + tap)?,
            });
        }
        pieces.extend(sum);
        start += n;
    }
    Ok(Tensor::cat(&pieces, 1)?)
}

/// transformers' `EncodecConvTranspose1d` on time-major signals: a transposed convolution,
/// then trimming.
#[derive(Debug, Clone)]
pub(super) struct ConvTranspose1d {
    /// `(phases * in, stride * out)`: the kernel zero-padded to `phases * stride` taps; row
    /// `h * in + c`, column `p * out + o` holds tap `h * stride + p` from `c` to `o`.
    /// Weight norm already applied.
    taps: Tensor,
    /// `(out)`.
    bias: Tensor,
    kernel_size: usize,
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
        let taps = phase_stacked(&weight, stride)?;
        let bias = vb.get(c_out, "bias")?;
        Ok(Self { taps, bias, kernel_size, stride, style })
    }

    /// Input frames each side that the outputs of a run of frames read, given the samples
    /// `(left, right)` of this layer's output that the layers after it read: the left context
    /// reaches the frames whose taps overlap the run's first sample, the right one those at the
    /// first trimmed sample past its end.
    pub fn input_context(&self, (left, right): (usize, usize)) -> (usize, usize) {
        let (trim, _) = transposed_trim(self.kernel_size, self.stride, self.style.causal, self.style.trim_right_ratio);
        ((left + self.kernel_size - 1).saturating_sub(trim) / self.stride, (right + trim).div_ceil(self.stride))
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = conv_transpose1d_time_major(x, &self.taps, self.kernel_size, self.stride, CHUNK_ELEMENTS)?;
        let (left, right) =
            transposed_trim(self.kernel_size, self.stride, self.style.causal, self.style.trim_right_ratio);
        let length = y.dim(1)?;
        Ok(y.narrow(1, left, length - left - right)?.broadcast_add(&self.bias)?)
    }
}

/// `(in, out, kernel)` -> `(phases * in, stride * out)`, as `ConvTranspose1d::taps` holds it.
fn phase_stacked(weight: &Tensor, stride: usize) -> Result<Tensor> {
    let (c_in, c_out, kernel_size) = weight.dims3()?;
    let phases = kernel_size.div_ceil(stride);
    Ok(weight
        .pad_with_zeros(2, 0, phases * stride - kernel_size)?
        .reshape((c_in, c_out, phases, stride))?
        .permute((2, 0, 3, 1))?
        .contiguous()?
        .reshape((phases * c_in, stride * c_out))?)
}

/// A transposed convolution of `x (B, L, in)` with `stride`, untrimmed:
/// `(B, (L - 1) * stride + kernel, out)`. Input frame `i` writes tap `q` to output
/// `i * stride + q`; with the kernel padded to `phases * stride` taps, the `stride` outputs of
/// group `g` are frames `g, g - 1, .., g - phases + 1` (zero outside the signal) times taps
/// `0.., stride.., ..`: one matrix product of those frames side by side with the phase-stacked
/// kernel, whose rows come out already in output order. Groups are produced in chunks whose
/// stacked inputs stay under `budget` elements.
fn conv_transpose1d_time_major(
    x: &Tensor,
    taps: &Tensor,
    kernel_size: usize,
    stride: usize,
    budget: usize,
) -> Result<Tensor> {
    let (b, length, c_in) = x.dims3()?;
    let phases = kernel_size.div_ceil(stride);
    let c_out = taps.dim(1)? / stride;
    let groups = length + phases - 1;
    let per_chunk = (budget / (b * phases * c_in)).max(1);
    let mut pieces = Vec::with_capacity(groups.div_ceil(per_chunk));
    let mut first = 0;
    while first < groups {
        let end = (first + per_chunk).min(groups);
        let n = end - first;
        let shifted = (0..phases)
            .map(|h| {
                // Frames g - h for g in [first, end), zero where outside [0, length).
                let from = first.max(h);
                let to = end.min(length + h);
                if from >= to {
                    return Ok(Tensor::zeros((b, n, c_in), x.dtype(), x.device())?);
                }
                Ok(x.narrow(1, from - h, to - from)?.pad_with_zeros(1, from - first, end - to)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let stacked = Tensor::cat(&shifted, 2)?;
        let y = stacked.reshape((b * n, phases * c_in))?.matmul(taps)?.reshape((b, n * stride, c_out))?;
        pieces.push(y);
        first = end;
    }
    let full = Tensor::cat(&pieces, 1)?;
    Ok(full.narrow(1, 0, (length - 1) * stride + kernel_size)?)
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
        let padded = pad1d(&row(&[1., 2., 3., 4.]), 2, 3, PadMode::Reflect, 2).unwrap();
        assert_eq!(values(&padded), [3., 2., 1., 2., 3., 4., 3., 2., 1.]);
    }

    #[test]
    fn reflect_of_short_input_reflects_appended_zeros() {
        // transformers' _pad1d: [5] -> [5, 0, 0, 0] -> reflect (3, 3) -> drop the 3 zeros added.
        let padded = pad1d(&row(&[5.]), 3, 3, PadMode::Reflect, 2).unwrap();
        assert_eq!(values(&padded), [0., 0., 0., 5., 0., 0., 0.]);
        // [1, 2] padded (3, 1): [1, 2, 0, 0] -> [0, 0, 2, 1, 2, 0, 0, 0] minus 2 at the end.
        let padded = pad1d(&row(&[1., 2.]), 3, 1, PadMode::Reflect, 2).unwrap();
        assert_eq!(values(&padded), [0., 0., 2., 1., 2., 0.]);
        // Exactly as long as the padding still takes the workaround (torch needs pad < length).
        let padded = pad1d(&row(&[1., 2., 3.]), 3, 0, PadMode::Reflect, 2).unwrap();
        assert_eq!(values(&padded), [0., 3., 2., 1., 2., 3.]);
    }

    #[test]
    fn constant_pads_with_zeros() {
        let padded = pad1d(&row(&[1., 2.]), 2, 1, PadMode::Constant, 2).unwrap();
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

    /// Candle's channel-major convolutions are the reference for the time-major ones.
    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn time_major_convolution_matches_candle_in_any_chunking() {
        let dev = Device::Cpu;
        for (c_in, c_out, kernel, dilation) in [(6, 5, 3, 2), (4, 1, 7, 1), (3, 8, 1, 1)] {
            let x = Tensor::randn(0f32, 1., (2, c_in, 40), &dev).unwrap();
            let w = Tensor::randn(0f32, 1., (c_out, c_in, kernel), &dev).unwrap();
            let expected = x.conv1d(&w, 0, 1, dilation, 1).unwrap();
            let taps = w.permute((1, 2, 0)).unwrap().contiguous().unwrap().reshape((c_in, kernel * c_out)).unwrap();
            let x_tm = x.transpose(1, 2).unwrap().contiguous().unwrap();
            for budget in [1, 200, 1 << 20] {
                let y = conv1d_time_major(&x_tm, &taps, kernel, dilation, budget).unwrap();
                let diff = max_diff(&y.transpose(1, 2).unwrap(), &expected);
                assert!(diff < 1e-5, "k {kernel} budget {budget}: {diff}");
            }
        }
    }

    #[test]
    fn strided_convolution_matches_candle_on_transformers_padding() {
        let dev = Device::Cpu;
        let style = ConvStyle { causal: false, pad_mode: PadMode::Constant, trim_right_ratio: 1.0 };
        // EnCodec's kernel = 2 * stride, and kernels that do not fill whole frames.
        for (kernel, stride, length) in [(8, 4, 37), (10, 5, 40), (16, 8, 3), (7, 3, 20), (3, 2, 1)] {
            let (c_in, c_out) = (3, 4);
            let x = Tensor::randn(0f32, 1., (2, c_in, length), &dev).unwrap();
            let w = Tensor::randn(0f32, 1., (c_out, c_in, kernel), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1., c_out, &dev).unwrap();
            let (left, right) = conv_padding(length, kernel, stride, 1, false);
            let expected = x
                .pad_with_zeros(2, left, right)
                .unwrap()
                .conv1d(&w, 0, stride, 1, 1)
                .unwrap()
                .broadcast_add(&bias.reshape((1, c_out, 1)).unwrap())
                .unwrap();
            assert_eq!(expected.dim(2).unwrap(), length.div_ceil(stride), "transformers' output length");
            let conv = Conv1d {
                taps: frame_stacked(&w, stride).unwrap(),
                bias,
                kernel_size: kernel,
                stride,
                dilation: 1,
                style,
            };
            let y = conv.forward(&x.transpose(1, 2).unwrap().contiguous().unwrap()).unwrap();
            let diff = max_diff(&y.transpose(1, 2).unwrap(), &expected);
            assert!(diff < 1e-5, "k {kernel} s {stride} length {length}: {diff}");
        }
    }

    #[test]
    fn time_major_transposed_convolution_matches_candle_in_any_chunking() {
        let dev = Device::Cpu;
        // EnCodec's kernel = 2 * stride, an odd ratio, and kernels needing 1 and 3 phases.
        for (kernel, stride) in [(8, 4), (10, 5), (3, 3), (7, 3), (1, 1)] {
            let (c_in, c_out, length) = (5, 3, 13);
            let x = Tensor::randn(0f32, 1., (2, c_in, length), &dev).unwrap();
            let w = Tensor::randn(0f32, 1., (c_in, c_out, kernel), &dev).unwrap();
            // One item at a time: candle 0.11.1's CPU conv_transpose1d mixes up batch items.
            let items: Vec<Tensor> =
                (0..2).map(|i| x.narrow(0, i, 1).unwrap().conv_transpose1d(&w, 0, 0, stride, 1, 1).unwrap()).collect();
            let expected = Tensor::cat(&items, 0).unwrap();
            let taps = phase_stacked(&w, stride).unwrap();
            let x_tm = x.transpose(1, 2).unwrap().contiguous().unwrap();
            for budget in [1, 100, 1 << 20] {
                let y = conv_transpose1d_time_major(&x_tm, &taps, kernel, stride, budget).unwrap();
                let diff = max_diff(&y.transpose(1, 2).unwrap(), &expected);
                assert!(diff < 1e-5, "k {kernel} s {stride} budget {budget}: {diff}");
            }
        }
    }
}
