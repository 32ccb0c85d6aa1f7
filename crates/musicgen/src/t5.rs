//! The T5 text encoder (transformers' `T5EncoderModel`), in f32.
//!
//! The module tree follows the checkpoint's names under `text_encoder.`:
//! `encoder.block.N.layer.0` is self-attention, `encoder.block.N.layer.1` the feed-forward block,
//! `encoder.final_layer_norm` closes the stack. What differs from a textbook transformer:
//! layer norms are RMS norms without bias or mean subtraction; attention scores are not scaled
//! by 1/sqrt(d_kv) (T5 folds that into its initialisation); positions enter only as a learned
//! bias per (relative-distance bucket, head), computed by the first block and reused by all.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};

use crate::config::{T5Activation, T5Config, T5FeedForward};

/// transformers' `T5LayerNorm`: `weight * x / sqrt(mean(x^2) + eps)`.
#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn load(vb: VarBuilder, cfg: &T5Config) -> Result<Self> {
        Ok(Self { weight: vb.get(cfg.d_model, "weight")?, eps: cfg.layer_norm_epsilon as f32 })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(xs, &self.weight, self.eps)
    }
}

/// Bucket of each relative distance `key - query`, as transformers'
/// `T5Attention._relative_position_bucket(bidirectional=True)`: half the buckets for keys
/// after the query; within a half, exact buckets for distances below `num_buckets / 4` and
/// logarithmically wider ones up to `max_distance`. The logarithm is taken in f32 like
/// PyTorch, so buckets at the borders land where transformers puts them.
pub fn relative_position_buckets(
    query_len: usize,
    key_len: usize,
    num_buckets: usize,
    max_distance: usize,
) -> Vec<u32> {
    let half = num_buckets / 2;
    let max_exact = half / 2;
    let log_span = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
    let mut buckets = Vec::with_capacity(query_len * key_len);
    for q in 0..query_len {
        for k in 0..key_len {
            let relative = k as i64 - q as i64;
            let base = if relative > 0 { half } else { 0 };
            let n = relative.unsigned_abs() as usize;
            let offset = if n < max_exact {
                n
            } else {
                let scaled = (n as f32 / max_exact as f32).ln() / log_span * (half - max_exact) as f32;
                (max_exact + scaled as usize).min(half - 1)
            };
            buckets.push((base + offset) as u32);
        }
    }
    buckets
}

#[derive(Debug, Clone)]
struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    /// Only the first block has one; the others reuse its bias.
    relative_attention_bias: Option<Embedding>,
    num_heads: usize,
    d_kv: usize,
    num_buckets: usize,
    max_distance: usize,
}

impl SelfAttention {
    fn load(vb: VarBuilder, cfg: &T5Config, has_relative_bias: bool) -> Result<Self> {
        let inner = cfg.num_heads * cfg.d_kv;
        let relative_attention_bias = if has_relative_bias {
            Some(candle_nn::embedding(
                cfg.relative_attention_num_buckets,
                cfg.num_heads,
                vb.pp("relative_attention_bias"),
            )?)
        } else {
            None
        };
        Ok(Self {
            q: candle_nn::linear_no_bias(cfg.d_model, inner, vb.pp("q"))?,
            k: candle_nn::linear_no_bias(cfg.d_model, inner, vb.pp("k"))?,
            v: candle_nn::linear_no_bias(cfg.d_model, inner, vb.pp("v"))?,
            o: candle_nn::linear_no_bias(inner, cfg.d_model, vb.pp("o"))?,
            relative_attention_bias,
            num_heads: cfg.num_heads,
            d_kv: cfg.d_kv,
            num_buckets: cfg.relative_attention_num_buckets,
            max_distance: cfg.relative_attention_max_distance,
        })
    }

    /// `(1, heads, L, L)` learned position bias.
    fn position_bias(&self, len: usize, device: &Device) -> Result<Option<Tensor>> {
        let Some(table) = &self.relative_attention_bias else { return Ok(None) };
        let buckets = relative_position_buckets(len, len, self.num_buckets, self.max_distance);
        let buckets = Tensor::from_vec(buckets, (len, len), device)?;
        let bias = table.forward(&buckets)?; // (L, L, heads)
        Ok(Some(bias.permute((2, 0, 1))?.unsqueeze(0)?.contiguous()?))
    }

    fn forward(&self, xs: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (batch, len, _) = xs.dims3()?;
        let heads = |t: Tensor| -> Result<Tensor> {
            t.reshape((batch, len, self.num_heads, self.d_kv))?.transpose(1, 2)?.contiguous()
        };
        let q = heads(self.q.forward(xs)?)?;
        let k = heads(self.k.forward(xs)?)?;
        let v = heads(self.v.forward(xs)?)?;
        let scores = q.matmul(&k.t()?)?.broadcast_add(bias)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let context = weights.matmul(&v)?.transpose(1, 2)?.reshape((batch, len, self.num_heads * self.d_kv))?;
        self.o.forward(&context)
    }
}

#[derive(Debug, Clone)]
enum FeedForward {
    Plain { wi: Linear, wo: Linear, activation: T5Activation },
    Gated { wi_0: Linear, wi_1: Linear, wo: Linear, activation: T5Activation },
}

fn activate(xs: &Tensor, activation: T5Activation) -> Result<Tensor> {
    match activation {
        T5Activation::Relu => xs.relu(),
        T5Activation::Gelu => xs.gelu_erf(),
        T5Activation::GeluTanh => xs.gelu(),
        T5Activation::Silu => xs.silu(),
    }
}

impl FeedForward {
    fn load(vb: VarBuilder, cfg: &T5Config, kind: T5FeedForward) -> Result<Self> {
        let wo = candle_nn::linear_no_bias(cfg.d_ff, cfg.d_model, vb.pp("wo"))?;
        Ok(if kind.gated {
            Self::Gated {
                wi_0: candle_nn::linear_no_bias(cfg.d_model, cfg.d_ff, vb.pp("wi_0"))?,
                wi_1: candle_nn::linear_no_bias(cfg.d_model, cfg.d_ff, vb.pp("wi_1"))?,
                wo,
                activation: kind.activation,
            }
        } else {
            Self::Plain {
                wi: candle_nn::linear_no_bias(cfg.d_model, cfg.d_ff, vb.pp("wi"))?,
                wo,
                activation: kind.activation,
            }
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::Plain { wi, wo, activation } => wo.forward(&activate(&wi.forward(xs)?, *activation)?),
            Self::Gated { wi_0, wi_1, wo, activation } => {
                let gate = activate(&wi_0.forward(xs)?, *activation)?;
                wo.forward(&(gate * wi_1.forward(xs)?)?)
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Block {
    attention_norm: RmsNorm,
    attention: SelfAttention,
    ff_norm: RmsNorm,
    ff: FeedForward,
}

impl Block {
    fn load(vb: VarBuilder, cfg: &T5Config, ff: T5FeedForward, first: bool) -> Result<Self> {
        let attn = vb.pp("layer.0");
        let ffn = vb.pp("layer.1");
        Ok(Self {
            attention_norm: RmsNorm::load(attn.pp("layer_norm"), cfg)?,
            attention: SelfAttention::load(attn.pp("SelfAttention"), cfg, first)?,
            ff_norm: RmsNorm::load(ffn.pp("layer_norm"), cfg)?,
            ff: FeedForward::load(ffn.pp("DenseReluDense"), cfg, ff)?,
        })
    }

    fn forward(&self, xs: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let xs = (xs + self.attention.forward(&self.attention_norm.forward(xs)?, bias)?)?;
        &xs + self.ff.forward(&self.ff_norm.forward(&xs)?)?
    }
}

/// T5's encoder stack with its token embedding.
#[derive(Debug, Clone)]
pub struct T5Encoder {
    embed: Embedding,
    blocks: Vec<Block>,
    final_norm: RmsNorm,
}

impl T5Encoder {
    /// Whether `other` is a clone of this encoder (the same memory), not an equal copy.
    pub(crate) fn same_tensors(&self, other: &Self) -> bool {
        self.embed.embeddings().id() == other.embed.embeddings().id()
    }

    /// Builds the encoder from `vb` rooted at the text encoder (`text_encoder.` in a MusicGen
    /// checkpoint). The token embedding is tied: checkpoints store it as `shared.weight`, as
    /// `encoder.embed_tokens.weight`, or both.
    pub fn load(vb: VarBuilder, cfg: &T5Config) -> Result<Self> {
        let ff = cfg.feed_forward().map_err(candle_core::Error::wrap)?;
        let embed_name = if vb.contains_tensor("shared.weight") { "shared" } else { "encoder.embed_tokens" };
        let embed = candle_nn::embedding(cfg.vocab_size, cfg.d_model, vb.pp(embed_name))?;
        let encoder = vb.pp("encoder");
        let blocks = (0..cfg.num_layers)
            .map(|i| Block::load(encoder.pp("block").pp(i), cfg, ff, i == 0))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = RmsNorm::load(encoder.pp("final_layer_norm"), cfg)?;
        Ok(Self { embed, blocks, final_norm })
    }

    /// `input_ids` `(B, L)` u32 and `attention_mask` `(B, L)` (1 = token, 0 = padding, any
    /// dtype) to the last hidden state `(B, L, d_model)` f32.
    ///
    /// Padding keys get a large negative but finite bias (f32::MIN, as transformers), so a row
    /// whose keys are all masked gives uniform weights, never NaN.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let (batch, len) = input_ids.dims2()?;
        if attention_mask.dims2()? != (batch, len) {
            candle_core::bail!(
                "attention_mask {:?} does not match input_ids {:?}",
                attention_mask.shape(),
                input_ids.shape()
            );
        }
        let device = input_ids.device();
        let mut xs = self.embed.forward(input_ids)?.to_dtype(DType::F32)?;
        let keep = attention_mask.to_dtype(DType::F32)?;
        let mask = ((1.0 - keep)? * f32::MIN as f64)?.reshape((batch, 1, 1, len))?;
        let position = match self.blocks.first() {
            Some(block) => block.attention.position_bias(len, device)?,
            None => None,
        };
        let bias = match position {
            Some(position) => position.broadcast_add(&mask)?,
            None => mask,
        };
        for block in &self.blocks {
            xs = block.forward(&xs, &bias)?;
        }
        self.final_norm.forward(&xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_transformers_for_t5_defaults() {
        // Query 0 against keys 0..=130 and key 0 against queries 0..=130, worked out by hand from
        // transformers' `_relative_position_bucket(bidirectional=True, 32, 128)`: distances 0..7
        // exact, then log buckets 8..15; keys after the query are offset by 16.
        let row = relative_position_buckets(1, 131, 32, 128);
        assert_eq!(&row[..9], &[0, 17, 18, 19, 20, 21, 22, 23, 24]);
        assert_eq!(row[12], 16 + 9); // 8 + int(ln(12/8) / ln(16) * 8) = 8 + int(1.17)
        assert_eq!(row[16], 16 + 10);
        assert_eq!(row[32], 16 + 12);
        assert_eq!(row[127], 16 + 15);
        assert_eq!(row[130], 16 + 15);
        let col = relative_position_buckets(131, 1, 32, 128);
        assert_eq!(&col[..9], &[0, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(col[16], 10);
        assert_eq!(col[130], 15);
    }
}
