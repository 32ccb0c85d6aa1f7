//! The decoder's attentions behind one interface: [`self_attention`] over a layer's [`KvCache`]
//! and [`cross_attention`] over a memory's keys and values, each run by the [`Backend`] that
//! the cache and the [`Pass`] call for:
//! - candle's ops (here), any device and dtype: growing caches, unfused fixed steps, prefills;
//! - `crate::cpu::attention`, in f32: a half-precision decoder on the CPU;
//! - the fused CUDA kernels (`fused.rs`; a stub that refuses in builds without `cuda`):
//!   fixed-mode steps on a GPU, one query per row.
//!
//! A new backend is a [`Backend`] variant, its module here, and its arm in the two functions.

use candle_core::{DType, Device, Tensor, D};

use super::kv_cache::KvCache;
use crate::cpu;
use crate::error::{Error, Result};

// CUDA builds compile the kernels; others a stub with the same interface.
#[cfg_attr(not(feature = "cuda"), path = "attention/fused_stub.rs")]
mod fused;

/// Who computes an attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Backend {
    Candle,
    Cpu,
    Fused,
}

impl Backend {
    /// What a decoder's steps run on: f32 kernels for half-precision weights on the CPU, the
    /// fused kernels on a GPU where they handle the head size, else candle.
    pub(super) fn for_steps(device: &Device, dtype: DType, head_dim: usize) -> Self {
        if device.is_cpu() && matches!(dtype, DType::BF16 | DType::F16) {
            Self::Cpu
        } else if fused::supports(device, head_dim, dtype) {
            Self::Fused
        } else {
            Self::Candle
        }
    }

    /// Who runs `pass` over `cache`: the fused kernels only take one query whose position is
    /// on the device; a CPU cache is read by the CPU kernels.
    fn of(cache: &KvCache, pass: &Pass) -> Self {
        match (cache, pass) {
            (_, Pass::Device(DeviceStep::Fused { .. })) => Self::Fused,
            (KvCache::Bf16(_) | KvCache::F16(_), _) => Self::Cpu,
            _ => Self::Candle,
        }
    }
}

/// Added to the scores of masked positions: the dtype's minimum, as transformers' eager path.
/// Finite, so that a fully masked row (the unconditional half of guidance) softmaxes to a
/// uniform average of zero values instead of NaN; an f32 minimum would round to -inf in bf16.
pub(super) fn masked_value(dtype: DType) -> f64 {
    match dtype {
        // bfloat16's and float16's lowest finite values (bit patterns 0xff7f and 0xfbff).
        DType::BF16 => -3.389_531_389_251_535_5e38,
        DType::F16 => -65_504.0,
        _ => f32::MIN as f64,
    }
}

/// Where the new positions of one forward pass go, the same for every layer.
#[derive(Debug)]
pub(super) enum Pass {
    /// Positions from `start` (as many as the pass's inputs), known on the host: a prefill, or a step of a growing
    /// cache. Each position attends to those before it and to itself.
    Host {
        start: usize,
        /// Additive `(1, 1, len, start + len)`: the causal mask within the new positions;
        /// `None` for one position, which sees everything so far.
        causal: Option<Tensor>,
    },
    /// One position whose index lives in device memory: a fixed-mode step, the same kernels
    /// on the same buffers at every position (what a CUDA graph replays).
    Device(DeviceStep),
}

impl Pass {
    /// A [`Pass::Host`] with its causal mask in `dtype` on `device`.
    pub(super) fn host(start: usize, len: usize, dtype: DType, device: &Device) -> Result<Self> {
        let causal = if len > 1 {
            let masked = masked_value(dtype) as f32;
            let total = start + len;
            let values: Vec<f32> =
                (0..len * total).map(|at| if at % total <= start + at / total { 0.0 } else { masked }).collect();
            Some(Tensor::from_vec(values, (1, 1, len, total), device)?.to_dtype(dtype)?)
        } else {
            None
        };
        Ok(Self::Host { start, causal })
    }
}

/// How a [`Pass::Device`] step finds its position.
#[derive(Debug)]
pub(super) enum DeviceStep {
    /// With candle's ops.
    Unfused {
        /// The position, `(rows, heads, 1, head_dim)` u32: where `scatter_set` writes.
        write_index: Tensor,
        /// Additive `(1, 1, 1, positions)`: 0 up to the position, [`masked_value`] after.
        mask: Tensor,
    },
    /// With the fused kernels, which read the position from `inputs[0]` and attend to the
    /// positions up to it only.
    Fused { inputs: Tensor },
}

/// The new positions' stacked projections `qkv` `(rows, len, 3·hidden)` (q pre-scaled, k, v)
/// written into `cache` where `pass` says, and their queries' attention over the positions up
/// to each, `(rows, len, hidden)`.
pub(super) fn self_attention(qkv: &Tensor, cache: &mut KvCache, pass: &Pass, heads: usize) -> Result<Tensor> {
    let (rows, len, width) = qkv.dims3()?;
    let hidden = width / 3;
    if let (Pass::Host { start, .. }, Some(held)) = (pass, cache.len()) {
        if held != *start {
            return Err(Error::Tensor(candle_core::Error::Msg(format!(
                "a pass from position {start} on a cache holding {held} positions"
            ))));
        }
    }
    match (cache, pass) {
        (KvCache::Bf16(cache), Pass::Host { .. }) => on_cpu(qkv, |qkv| cache.append_and_attend(qkv, len)),
        (KvCache::F16(cache), Pass::Host { .. }) => on_cpu(qkv, |qkv| cache.append_and_attend(qkv, len)),
        (KvCache::Fixed(cache), Pass::Device(DeviceStep::Fused { inputs })) => {
            Ok(fused::self_attention(qkv, cache, inputs, heads)?)
        }
        (cache, pass) => {
            let q = split_heads(&qkv.narrow(D::Minus1, 0, hidden)?, heads)?;
            let k = split_heads(&qkv.narrow(D::Minus1, hidden, hidden)?, heads)?;
            let v = split_heads(&qkv.narrow(D::Minus1, 2 * hidden, hidden)?, heads)?;
            let (keys, values, mask) = match (cache, pass) {
                (KvCache::Growing(cache), Pass::Host { causal, .. }) => {
                    let (k, v) = cache.append(&k, &v)?;
                    (k, v, causal.as_ref())
                }
                (KvCache::Fixed(cache), Pass::Host { start, causal, .. }) => {
                    let (cache_k, cache_v) = (cache.get(0)?, cache.get(1)?);
                    cache_k.slice_set(&k, 2, *start)?;
                    cache_v.slice_set(&v, 2, *start)?;
                    (cache_k.narrow(2, 0, start + len)?, cache_v.narrow(2, 0, start + len)?, causal.as_ref())
                }
                (KvCache::Fixed(cache), Pass::Device(DeviceStep::Unfused { write_index, mask })) => {
                    let (cache_k, cache_v) = (cache.get(0)?, cache.get(1)?);
                    cache_k.scatter_set(write_index, &k, 2)?;
                    cache_v.scatter_set(write_index, &v, 2)?;
                    (cache_k, cache_v, Some(mask))
                }
                (cache, pass) => {
                    return Err(Error::Tensor(candle_core::Error::Msg(format!(
                        "a {} self-attention cache cannot take a {pass:?} pass",
                        match cache {
                            KvCache::Growing(_) => "growing",
                            KvCache::Bf16(_) | KvCache::F16(_) => "CPU half-precision",
                            KvCache::Fixed(_) => "fixed",
                        }
                    ))))
                }
            };
            let scores = q.matmul(&keys.t()?)?;
            let scores = match mask {
                Some(mask) => scores.broadcast_add(mask)?,
                None => scores,
            };
            let attended = softmax(&scores)?.matmul(&values)?;
            Ok(attended.transpose(1, 2)?.reshape((rows, len, hidden))?)
        }
    }
}

/// The queries `q` `(rows, len, hidden)` (pre-scaled) attending to a memory's keys then values
/// `kv` `(2, rows, heads, memory_len, head_dim)`, with the additive `mask`
/// `(rows, 1, 1, memory_len)` where given; `(rows, len, hidden)`. `cache` and `pass` are the
/// layer's self-attention's, which choose the [`Backend`].
pub(super) fn cross_attention(
    q: &Tensor,
    kv: &Tensor,
    mask: Option<&Tensor>,
    heads: usize,
    cache: &KvCache,
    pass: &Pass,
) -> Result<Tensor> {
    let (rows, len, hidden) = q.dims3()?;
    match Backend::of(cache, pass) {
        Backend::Cpu => {
            let memory_len = kv.dim(3)?;
            let q = q.flatten_all()?.to_vec1::<f32>()?;
            let mask = mask.map(|mask| mask.flatten_all()?.to_vec1::<f32>()).transpose()?;
            let attended = cpu_f32(kv, |kv| {
                cpu::attention::cross_attention(&q, kv, mask.as_deref(), rows, len, heads, memory_len)
            })?;
            Ok(Tensor::from_vec(attended, (rows, len, hidden), kv.device())?)
        }
        Backend::Fused => Ok(fused::cross_attention(q, kv, mask, heads)?),
        Backend::Candle => {
            let q = split_heads(q, heads)?;
            let scores = q.matmul(&kv.get(0)?.t()?)?;
            let probs = softmax(&match mask {
                Some(mask) => scores.broadcast_add(mask)?,
                None => scores,
            })?;
            Ok(probs.matmul(&kv.get(1)?)?.transpose(1, 2)?.reshape((rows, len, hidden))?)
        }
    }
}

/// `(rows, len, heads·head_dim)` -> `(rows, heads, len, head_dim)`, contiguous.
pub(super) fn split_heads(xs: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, len, width) = xs.dims3()?;
    Ok(xs.reshape((rows, len, heads, width / heads))?.transpose(1, 2)?.contiguous()?)
}

/// Softmax over the last dimension, accumulated in f32. candle's CUDA kernel does that for
/// every dtype; its CPU kernel sums in the input dtype, so half precision is upcast there.
fn softmax(scores: &Tensor) -> Result<Tensor> {
    let dtype = scores.dtype();
    if dtype == DType::F32 || scores.device().is_cuda() {
        return Ok(candle_nn::ops::softmax_last_dim(scores)?);
    }
    Ok(candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(dtype)?)
}

/// A CPU self-attention: `attend` maps the f32 `(rows, len, 3·hidden)` projection to
/// `(rows, len, hidden)`.
fn on_cpu(qkv: &Tensor, attend: impl FnOnce(&[f32]) -> Vec<f32>) -> Result<Tensor> {
    let (rows, len, width) = qkv.dims3()?;
    let attended = cpu_f32(qkv, attend)?;
    Ok(Tensor::from_vec(attended, (rows, len, width / 3), qkv.device())?)
}

/// `f` on the elements of `xs`, an f32 tensor on the CPU, without copying it when contiguous.
fn cpu_f32<T>(xs: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    {
        let (storage, layout) = xs.storage_and_layout();
        if let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)), Some((start, end))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(f(&data[start..end]));
        }
    }
    Ok(f(&xs.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?))
}
