//! The MusicGen decoder (transformers' `MusicgenForCausalLM`): a pre-LN transformer over summed
//! codebook embeddings that predicts one token per codebook for the next position.
//!
//! Generation feeds it one position at a time. [`Decoder::start`] computes the cross-attention
//! keys and values from the text memory once per request and preallocates the self-attention
//! cache; [`Decoder::step`] then does the per-token work only. Weights stay in the requested
//! dtype; layer norms and attention softmaxes run in f32.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::kv_cache::KvCache;
use candle_nn::{Embedding, VarBuilder};

use crate::config::DecoderConfig;
use crate::error::{Error, Result};
use crate::linear::Linear;

/// Added to the scores of masked memory positions. Finite (transformers' eager path uses the
/// dtype's minimum too) so that a fully masked row, the unconditional half of guidance, softmaxes
/// to a uniform average of zero values instead of NaN.
const MASKED: f32 = f32::MIN;

/// Layer norm computed in f32 whatever the activations' dtype.
#[derive(Debug, Clone)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    /// `torch.nn.LayerNorm` defaults: affine, eps 1e-5.
    fn load(size: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints_dtype(size, "weight", candle_nn::Init::Const(1.0), DType::F32)?,
            bias: vb.get_with_hints_dtype(size, "bias", candle_nn::Init::Const(0.0), DType::F32)?,
            eps: 1e-5,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        let ys = candle_nn::ops::layer_norm(&xs.to_dtype(DType::F32)?, &self.weight, &self.bias, self.eps)?;
        Ok(ys.to_dtype(dtype)?)
    }
}

/// The FFN's activation, named as transformers' `ACT2FN` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activation {
    /// `gelu`: the exact erf form (what every published checkpoint uses).
    GeluErf,
    /// `gelu_new`, `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    Relu,
    Silu,
}

impl Activation {
    fn from_name(name: &str) -> Result<Self> {
        match name {
            "gelu" => Ok(Self::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Self::GeluTanh),
            "relu" => Ok(Self::Relu),
            "silu" | "swish" => Ok(Self::Silu),
            other => Err(Error::Unsupported(format!(
                "decoder activation_function {other:?} (supported: gelu, gelu_new, gelu_pytorch_tanh, relu, silu)"
            ))),
        }
    }

    fn apply(self, xs: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::GeluErf => xs.gelu_erf()?,
            Self::GeluTanh => xs.gelu()?,
            Self::Relu => xs.relu()?,
            Self::Silu => candle_nn::ops::silu(xs)?,
        })
    }
}

/// Bias-free projection, as every linear layer of the decoder.
fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(Linear::new(vb.get((out_dim, in_dim), "weight")?))
}

/// `(rows, len, heads·head_dim)` -> `(rows, heads, len, head_dim)`, contiguous.
fn split_heads(xs: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, len, width) = xs.dims3()?;
    Ok(xs.reshape((rows, len, heads, width / heads))?.transpose(1, 2)?.contiguous()?)
}

/// Softmax over the last dimension in f32, returned in `dtype`.
fn softmax_f32(scores: &Tensor, dtype: DType) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(dtype)?)
}

#[derive(Debug, Clone)]
struct SelfAttention {
    /// q, k and v stacked into one `(3·hidden, hidden)` projection: one matmul per step.
    qkv: Linear,
    out: Linear,
    heads: usize,
    scale: f64,
}

impl SelfAttention {
    fn load(hidden: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        let q = vb.pp("q_proj").get((hidden, hidden), "weight")?;
        let k = vb.pp("k_proj").get((hidden, hidden), "weight")?;
        let v = vb.pp("v_proj").get((hidden, hidden), "weight")?;
        Ok(Self {
            qkv: Linear::new(Tensor::cat(&[&q, &k, &v], 0)?),
            out: linear(hidden, hidden, vb.pp("out_proj"))?,
            heads,
            scale: ((hidden / heads) as f64).powf(-0.5),
        })
    }

    /// One new position attending to itself and every cached one (causality needs no mask).
    fn forward(&self, xs: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (rows, len, hidden) = xs.dims3()?;
        let qkv = self.qkv.forward(xs)?;
        let q = (split_heads(&qkv.narrow(D::Minus1, 0, hidden)?, self.heads)? * self.scale)?;
        let k = split_heads(&qkv.narrow(D::Minus1, hidden, hidden)?, self.heads)?;
        let v = split_heads(&qkv.narrow(D::Minus1, 2 * hidden, hidden)?, self.heads)?;
        let (k, v) = cache.append(&k, &v)?;
        let probs = softmax_f32(&q.matmul(&k.t()?)?, xs.dtype())?;
        let attended = probs.matmul(&v)?.transpose(1, 2)?.reshape((rows, len, hidden))?;
        Ok(self.out.forward(&attended)?)
    }
}

#[derive(Debug, Clone)]
struct CrossAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    scale: f64,
}

impl CrossAttention {
    fn load(hidden: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            q: linear(hidden, hidden, vb.pp("q_proj"))?,
            k: linear(hidden, hidden, vb.pp("k_proj"))?,
            v: linear(hidden, hidden, vb.pp("v_proj"))?,
            out: linear(hidden, hidden, vb.pp("out_proj"))?,
            heads,
            scale: ((hidden / heads) as f64).powf(-0.5),
        })
    }

    /// Keys and values of the memory, `(rows, heads, memory_len, head_dim)` each.
    fn memory_kv(&self, memory: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((split_heads(&self.k.forward(memory)?, self.heads)?, split_heads(&self.v.forward(memory)?, self.heads)?))
    }

    fn forward(&self, xs: &Tensor, kv: &(Tensor, Tensor), mask: &Tensor) -> Result<Tensor> {
        let (rows, len, hidden) = xs.dims3()?;
        let q = (split_heads(&self.q.forward(xs)?, self.heads)? * self.scale)?;
        let scores = q.matmul(&kv.0.t()?)?.to_dtype(DType::F32)?.broadcast_add(mask)?;
        let probs = softmax_f32(&scores, xs.dtype())?;
        let attended = probs.matmul(&kv.1)?.transpose(1, 2)?.reshape((rows, len, hidden))?;
        Ok(self.out.forward(&attended)?)
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    self_attn_layer_norm: LayerNorm,
    self_attn: SelfAttention,
    encoder_attn_layer_norm: LayerNorm,
    encoder_attn: CrossAttention,
    final_layer_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    activation: Activation,
}

impl DecoderLayer {
    fn load(cfg: &DecoderConfig, activation: Activation, vb: VarBuilder) -> Result<Self> {
        let (hidden, heads) = (cfg.hidden_size, cfg.num_attention_heads);
        Ok(Self {
            self_attn_layer_norm: LayerNorm::load(hidden, vb.pp("self_attn_layer_norm"))?,
            self_attn: SelfAttention::load(hidden, heads, vb.pp("self_attn"))?,
            encoder_attn_layer_norm: LayerNorm::load(hidden, vb.pp("encoder_attn_layer_norm"))?,
            encoder_attn: CrossAttention::load(hidden, heads, vb.pp("encoder_attn"))?,
            final_layer_norm: LayerNorm::load(hidden, vb.pp("final_layer_norm"))?,
            fc1: linear(hidden, cfg.ffn_dim, vb.pp("fc1"))?,
            fc2: linear(cfg.ffn_dim, hidden, vb.pp("fc2"))?,
            activation,
        })
    }

    fn forward(&self, xs: &Tensor, cache: &mut KvCache, cross_kv: &(Tensor, Tensor), mask: &Tensor) -> Result<Tensor> {
        let h = self.self_attn.forward(&self.self_attn_layer_norm.forward(xs)?, cache)?;
        let xs = (xs + h)?;
        let h = self.encoder_attn.forward(&self.encoder_attn_layer_norm.forward(&xs)?, cross_kv, mask)?;
        let xs = (xs + h)?;
        let h = self.activation.apply(&self.fc1.forward(&self.final_layer_norm.forward(&xs)?)?)?;
        Ok((xs + self.fc2.forward(&h)?)?)
    }
}

/// Sinusoidal position `position` as transformers' `MusicgenSinusoidalPositionalEmbedding`:
/// cosines in the first half, sines in the second, frequencies `10000^(-i/(half-1))`, all in f32.
pub fn sinusoidal_position(position: usize, dim: usize) -> Vec<f32> {
    let half = dim / 2;
    let step = (10000f64.ln() / (half as f64 - 1.0)) as f32;
    let mut out = vec![0f32; dim];
    for i in 0..half {
        let angle = position as f32 * (i as f32 * -step).exp();
        out[i] = angle.cos();
        out[half + i] = angle.sin();
    }
    out
}

/// Per-request state: the self-attention cache and the memory's cross-attention keys/values.
#[derive(Debug, Clone)]
pub struct DecoderState {
    self_kv: Vec<KvCache>,
    cross_kv: Vec<(Tensor, Tensor)>,
    /// Additive f32 mask `(rows, 1, 1, memory_len)`: 0 where attended, [`MASKED`] elsewhere.
    cross_mask: Tensor,
    rows: usize,
    position: usize,
}

impl DecoderState {
    /// Positions decoded so far.
    pub fn position(&self) -> usize {
        self.position
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// MusicGen's decoder with its K language-model heads.
#[derive(Debug, Clone)]
pub struct Decoder {
    embed_tokens: Vec<Embedding>,
    layers: Vec<DecoderLayer>,
    layer_norm: LayerNorm,
    /// The K heads stacked into one `(K·vocab, hidden)` projection.
    lm_heads: Linear,
    num_codebooks: usize,
    vocab_size: usize,
    hidden_size: usize,
    dtype: DType,
    device: Device,
}

impl Decoder {
    /// Loads from `vb` rooted at the checkpoint's `decoder` prefix (`model.decoder.*`,
    /// `lm_heads.*`); the builder's dtype is the decoder's compute dtype.
    ///
    /// transformers computes `embed_scale` from `scale_embedding` but never applies it, and
    /// neither does audiocraft, so it is ignored here too.
    pub fn load(cfg: &DecoderConfig, vb: VarBuilder) -> Result<Self> {
        let activation = Activation::from_name(&cfg.activation_function)?;
        let hidden = cfg.hidden_size;
        if hidden < 4 || hidden % 2 != 0 {
            return Err(Error::Unsupported(format!(
                "decoder hidden_size {hidden}: the sinusoidal positions need an even size of at least 4"
            )));
        }
        let model = vb.pp("model").pp("decoder");
        let embed_tokens = (0..cfg.num_codebooks)
            .map(|k| {
                let weight = model.pp("embed_tokens").pp(k).get((cfg.vocab_size + 1, hidden), "weight")?;
                Ok(Embedding::new(weight, hidden))
            })
            .collect::<Result<Vec<_>>>()?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(cfg, activation, model.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let heads = (0..cfg.num_codebooks)
            .map(|k| Ok(vb.pp("lm_heads").pp(k).get((cfg.vocab_size, hidden), "weight")?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed_tokens,
            layers,
            layer_norm: LayerNorm::load(hidden, model.pp("layer_norm"))?,
            lm_heads: Linear::new(Tensor::cat(&heads, 0)?),
            num_codebooks: cfg.num_codebooks,
            vocab_size: cfg.vocab_size,
            hidden_size: hidden,
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    pub fn num_codebooks(&self) -> usize {
        self.num_codebooks
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Prepares a request: `memory` `(rows, len, hidden)` is the projected, masked text memory
    /// (any float dtype), `mask` `(rows, len)` is 1 where a text token is attended, 0 elsewhere;
    /// `max_steps` sizes the self-attention cache.
    pub fn start(&self, memory: &Tensor, mask: &Tensor, max_steps: usize) -> Result<DecoderState> {
        let (rows, len, hidden) = memory.dims3()?;
        if hidden != self.hidden_size || mask.dims2()? != (rows, len) {
            return Err(Error::Tensor(candle_core::Error::Msg(format!(
                "decoder memory {:?} with mask {:?} does not fit hidden size {}",
                memory.dims(),
                mask.dims(),
                self.hidden_size
            ))));
        }
        let memory = memory.to_device(&self.device)?.to_dtype(self.dtype)?;
        let cross_kv = self.layers.iter().map(|l| l.encoder_attn.memory_kv(&memory)).collect::<Result<Vec<_>>>()?;
        let attended = mask.to_device(&self.device)?.to_dtype(DType::F32)?.ne(0f32)?;
        let zeros = Tensor::zeros((rows, len), DType::F32, &self.device)?;
        let masked = Tensor::full(MASKED, (rows, len), &self.device)?;
        let cross_mask = attended.where_cond(&zeros, &masked)?.reshape((rows, 1, 1, len))?;
        let self_kv = self.layers.iter().map(|_| KvCache::new(2, max_steps.max(1))).collect();
        Ok(DecoderState { self_kv, cross_kv, cross_mask, rows, position: 0 })
    }

    /// Decodes one position: `tokens` `(rows, num_codebooks)` u32 are the (delay-patterned)
    /// tokens at the current position. Returns the next-position logits `(rows, K, vocab)` in f32.
    pub fn step(&self, tokens: &Tensor, state: &mut DecoderState) -> Result<Tensor> {
        let (rows, k) = tokens.dims2()?;
        if rows != state.rows || k != self.num_codebooks {
            return Err(Error::Tensor(candle_core::Error::Msg(format!(
                "decoder step got tokens {:?}, expected ({}, {})",
                tokens.dims(),
                state.rows,
                self.num_codebooks
            ))));
        }
        let tokens = tokens.to_device(&self.device)?;
        let mut xs = self.embed_tokens[0].forward(&tokens.narrow(1, 0, 1)?)?;
        for (codebook, embedding) in self.embed_tokens.iter().enumerate().skip(1) {
            xs = (xs + embedding.forward(&tokens.narrow(1, codebook, 1)?)?)?;
        }
        let position = Tensor::from_vec(
            sinusoidal_position(state.position, self.hidden_size),
            (1, 1, self.hidden_size),
            &self.device,
        )?
        .to_dtype(self.dtype)?;
        let mut xs = xs.broadcast_add(&position)?;
        for ((layer, cache), cross_kv) in self.layers.iter().zip(&mut state.self_kv).zip(&state.cross_kv) {
            xs = layer.forward(&xs, cache, cross_kv, &state.cross_mask)?;
        }
        let xs = self.layer_norm.forward(&xs)?;
        let logits = self.lm_heads.forward(&xs)?;
        state.position += 1;
        Ok(logits.reshape((rows, self.num_codebooks, self.vocab_size))?.to_dtype(DType::F32)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_put_cosines_first_then_sines() {
        let p0 = sinusoidal_position(0, 8);
        assert_eq!(p0, vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        let p3 = sinusoidal_position(3, 8);
        // Frequency i is 10000^(-i/3) for half = 4.
        for i in 0..4 {
            let angle = 3.0 * 10000f64.powf(-(i as f64) / 3.0);
            assert!((p3[i] as f64 - angle.cos()).abs() < 1e-6, "cos {i}");
            assert!((p3[4 + i] as f64 - angle.sin()).abs() < 1e-6, "sin {i}");
        }
    }

    fn tiny_config() -> DecoderConfig {
        DecoderConfig {
            vocab_size: 16,
            num_hidden_layers: 2,
            ffn_dim: 24,
            num_attention_heads: 2,
            hidden_size: 8,
            num_codebooks: 2,
            pad_token_id: 16,
            bos_token_id: 16,
            ..DecoderConfig::default()
        }
    }

    fn random_decoder(cfg: &DecoderConfig, dtype: DType) -> Decoder {
        let vb = crate::model::random::RandomWeights::new(7).var_builder(dtype, &Device::Cpu);
        Decoder::load(cfg, vb).unwrap()
    }

    #[test]
    fn fully_masked_memory_gives_finite_logits() {
        let cfg = tiny_config();
        let decoder = random_decoder(&cfg, DType::F32);
        let memory = Tensor::zeros((2, 3, 8), DType::F32, &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 0], [0, 0, 0]], &Device::Cpu).unwrap();
        let mut state = decoder.start(&memory, &mask, 4).unwrap();
        let tokens = Tensor::new(&[[16u32, 16], [16, 16]], &Device::Cpu).unwrap();
        for _ in 0..3 {
            let logits = decoder.step(&tokens, &mut state).unwrap();
            assert_eq!(logits.dims(), &[2, 2, 16]);
            let values: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
            assert!(values.iter().all(|v| v.is_finite()));
        }
        assert_eq!(state.position(), 3);
    }

    #[test]
    fn cache_grows_past_its_preallocation_and_rows_stay_independent() {
        let cfg = tiny_config();
        let decoder = random_decoder(&cfg, DType::F32);
        let memory = Tensor::randn(0f32, 1.0, (2, 3, 8), &Device::Cpu).unwrap();
        let mask = Tensor::ones((2, 3), DType::U32, &Device::Cpu).unwrap();
        let inputs = [[16u32, 16], [3, 16], [5, 7], [1, 2], [9, 9]];
        let run = |rows: usize| {
            let mut state = decoder.start(&memory.narrow(0, 0, rows).unwrap(), &mask.narrow(0, 0, rows).unwrap(), 2).unwrap();
            let mut last = None;
            for codes in inputs {
                let tokens = Tensor::new(&codes, &Device::Cpu).unwrap().unsqueeze(0).unwrap().repeat((rows, 1)).unwrap();
                last = Some(decoder.step(&tokens, &mut state).unwrap().get(0).unwrap());
            }
            last.unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let alone = run(1);
        let batched = run(2);
        let diff = alone.iter().zip(&batched).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-5, "row 0 changed by {diff} when batched");
    }

    #[test]
    fn half_precision_tracks_f32() {
        let cfg = tiny_config();
        let decoder = random_decoder(&cfg, DType::F32);
        let memory = Tensor::randn(0f32, 1.0, (1, 3, 8), &Device::Cpu).unwrap();
        let mask = Tensor::ones((1, 3), DType::U32, &Device::Cpu).unwrap();
        let tokens = Tensor::new(&[[4u32, 16]], &Device::Cpu).unwrap();
        let reference = {
            let mut state = decoder.start(&memory, &mask, 1).unwrap();
            decoder.step(&tokens, &mut state).unwrap()
        };
        let half = random_decoder(&cfg, DType::BF16);
        let mut state = half.start(&memory, &mask, 1).unwrap();
        let logits = half.step(&tokens, &mut state).unwrap();
        assert_eq!(logits.dtype(), DType::F32);
        let diff = (logits - reference).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 0.25, "bf16 logits off by {diff}");
    }
}
