//! One layer's self-attention keys and values of the positions so far, in the layout its step
//! mode and backend need (see [`super::attention`], their only reader and writer).

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};

use crate::cpu::attention::Cache;
use crate::error::Result;

#[derive(Debug, Clone)]
pub(super) enum KvCache {
    /// candle's cache, growing with the positions: each pass attends to exactly the positions
    /// so far.
    Growing(candle_nn::kv_cache::KvCache),
    /// The same for a half-precision decoder on the CPU: keys and values rounded to bf16 or f16,
    /// attended in f32 by `crate::cpu::attention`.
    Bf16(Cache<bf16>),
    F16(Cache<f16>),
    /// Keys then values `(2, rows, heads, positions, head_dim)`, allocated once at full length
    /// and written in place: a step's kernels and buffers are those of every other step.
    Fixed(Tensor),
}

impl KvCache {
    pub(super) fn growing(capacity: usize) -> Self {
        Self::Growing(candle_nn::kv_cache::KvCache::new(2, capacity))
    }

    /// A [`KvCache::Bf16`] (`dtype` bf16) or [`KvCache::F16`] cache.
    pub(super) fn on_cpu(dtype: DType, rows: usize, heads: usize, head_dim: usize, capacity: usize) -> Self {
        match dtype {
            DType::BF16 => Self::Bf16(Cache::new(rows, heads, head_dim, capacity)),
            _ => Self::F16(Cache::new(rows, heads, head_dim, capacity)),
        }
    }

    pub(super) fn fixed(
        rows: usize,
        heads: usize,
        positions: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Ok(Self::Fixed(Tensor::zeros((2, rows, heads, positions, head_dim), dtype, device)?))
    }

    /// Device bytes of a fixed cache (the others are not kept between requests).
    pub(super) fn bytes(&self) -> usize {
        match self {
            Self::Fixed(t) => super::tensor_bytes(t),
            _ => 0,
        }
    }

    /// Positions held, where the host knows it (a fixed cache's steps write where a device
    /// buffer says).
    pub(super) fn len(&self) -> Option<usize> {
        match self {
            Self::Growing(cache) => Some(cache.current_seq_len()),
            Self::Bf16(cache) => Some(cache.len()),
            Self::F16(cache) => Some(cache.len()),
            Self::Fixed(_) => None,
        }
    }
}
