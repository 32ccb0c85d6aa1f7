//! The MusicGen decoder (transformers' `MusicgenForCausalLM`): a pre-LN transformer over summed
//! codebook embeddings that predicts one token per codebook for the next position.
//!
//! Generation feeds it one position at a time. [`Decoder::start`] computes the cross-attention
//! keys and values from the text memory once per request and preallocates the self-attention
//! cache; [`Decoder::step`] then does the per-token work only. Weights stay in the requested
//! dtype; layer norms and softmaxes accumulate in f32 inside their kernels.
//!
//! A step runs in one of three [`StepMode`]s. On the CPU the self-attention cache grows by one
//! position per step. On a GPU a step of musicgen-small is ~900 tiny kernels, so launching them
//! costs more than running them; there the cache has its full length from the start, each step
//! writes in place at a position read from device memory, and the first step's kernels are
//! recorded as a CUDA graph that every later step replays with one launch ([`graph`]).
//!
//! A bf16 or f16 decoder on the CPU keeps only its projection weights and self-attention cache
//! in that dtype and computes in f32 ([`cpu`]): the projections widen the weights as they read
//! them (`crate::linear`), and candle's CPU kernels, which convert half-precision elements one
//! by one, only ever see f32.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::kv_cache::KvCache;
use candle_nn::{Embedding, VarBuilder};

mod cpu;
#[cfg(feature = "cuda")]
mod fused;
#[cfg(feature = "cuda")]
mod graph;

use crate::config::DecoderConfig;
use crate::error::{Error, Result};
use crate::linear::Linear;

/// Added to the scores of masked positions: the dtype's minimum, as transformers' eager path.
/// Finite, so that a fully masked row (the unconditional half of guidance) softmaxes to a
/// uniform average of zero values instead of NaN; an f32 minimum would round to -inf in bf16.
fn masked_value(dtype: DType) -> f64 {
    match dtype {
        // bfloat16's and float16's lowest finite values (bit patterns 0xff7f and 0xfbff).
        DType::BF16 => -3.389_531_389_251_535_5e38,
        DType::F16 => -65_504.0,
        _ => f32::MIN as f64,
    }
}

/// Whether the cross-attention mask `attended` `(rows, len)` changes nothing, so its add can be
/// skipped: every row attends to all of `memory`, or to none of it where that row of memory is
/// all zeros (guidance's unconditional half). The projections are bias-free, so such a row's
/// keys and values are zeros and any softmax over them averages zeros: exactly what the fully
/// masked softmax gives.
fn mask_is_moot(attended: &Tensor, memory: &Tensor) -> Result<bool> {
    let len = attended.dim(1)?;
    let counts = attended.to_dtype(DType::F32)?.sum(1)?.to_vec1::<f32>()?;
    let magnitudes = memory.abs()?.to_dtype(DType::F32)?.max(D::Minus1)?.max(D::Minus1)?.to_vec1::<f32>()?;
    Ok(counts
        .iter()
        .zip(&magnitudes)
        .all(|(&count, &magnitude)| count as usize == len || (count == 0.0 && magnitude == 0.0)))
}

/// Whether the fused attention kernels can run this decoder: a CUDA build on a GPU, with a
/// head size they handle.
fn fused_kernels_fit(device: &Device, head_dim: usize, dtype: DType) -> bool {
    #[cfg(feature = "cuda")]
    return device.is_cuda() && fused::supports(head_dim, dtype);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (device, head_dim, dtype);
        false
    }
}

/// Layer norm in the activations' dtype: candle's kernels (CPU and CUDA) accumulate the
/// statistics in f32 whatever the dtype, so no cast round trip is needed.
#[derive(Debug, Clone)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    /// `torch.nn.LayerNorm` defaults: affine, eps 1e-5. Weights in `dtype`, the activations'.
    fn load(size: usize, dtype: DType, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?.to_dtype(dtype)?,
            bias: vb.get_with_hints(size, "bias", candle_nn::Init::Const(0.0))?.to_dtype(dtype)?,
            eps: 1e-5,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::layer_norm(xs, &self.weight, &self.bias, self.eps)?)
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

/// Softmax over the last dimension, accumulated in f32. candle's CUDA kernel does that for
/// every dtype; its CPU kernel sums in the input dtype, so half precision is upcast there.
fn softmax(scores: &Tensor) -> Result<Tensor> {
    let dtype = scores.dtype();
    if dtype == DType::F32 || scores.device().is_cuda() {
        return Ok(candle_nn::ops::softmax_last_dim(scores)?);
    }
    Ok(candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(dtype)?)
}

/// Scales the rows of a `(out, in)` projection so that it computes `scale · (W x)` in one matmul.
/// transformers scales q after its projection; the head dims of MusicGen make `scale` a power
/// of two (1/8 for 64), where both orders give the same floats.
fn scaled(weight: Tensor, scale: f64) -> Result<Tensor> {
    Ok((weight * scale)?)
}

/// The self-attention keys and values of the positions decoded so far, one layer's.
#[derive(Debug, Clone)]
enum SelfKv {
    /// Grows by one position per step: each step attends to exactly the positions so far.
    Growing(KvCache),
    /// [`SelfKv::Growing`] for a half-precision decoder on the CPU, attended in f32 by [`cpu`].
    Bf16(cpu::Cache<half::bf16>),
    F16(cpu::Cache<half::f16>),
    /// Keys then values, `(2, rows, heads, max_steps, head_dim)`, allocated once and written
    /// in place.
    Fixed(Tensor),
}

/// What a [`StepMode::Fixed`] step reads besides the layer input, the same for every layer.
enum FixedStep {
    /// With candle's ops.
    Unfused {
        /// The current position, `(rows, heads, 1, head_dim)` u32: where `scatter_set` writes.
        write_index: Tensor,
        /// Additive `(1, 1, 1, max_steps)`: 0 up to the current position, [`masked_value`] after.
        mask: Tensor,
    },
    /// With the fused CUDA kernels, which read the position from `inputs[0]` and attend to the
    /// positions up to it only.
    #[cfg(feature = "cuda")]
    Fused { inputs: Tensor },
}

#[derive(Debug, Clone)]
struct SelfAttention {
    /// q (pre-scaled by 1/sqrt(head_dim)), k and v stacked into one `(3·hidden, hidden)`
    /// projection: one matmul per step.
    qkv: Linear,
    out: Linear,
    heads: usize,
}

impl SelfAttention {
    fn load(hidden: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        let scale = ((hidden / heads) as f64).powf(-0.5);
        let q = scaled(vb.pp("q_proj").get((hidden, hidden), "weight")?, scale)?;
        let k = vb.pp("k_proj").get((hidden, hidden), "weight")?;
        let v = vb.pp("v_proj").get((hidden, hidden), "weight")?;
        Ok(Self {
            qkv: Linear::new(Tensor::cat(&[&q, &k, &v], 0)?),
            out: linear(hidden, hidden, vb.pp("out_proj"))?,
            heads,
        })
    }

    /// One new position attending to itself and every earlier one. A growing cache holds
    /// exactly those; a fixed one is masked beyond the current position.
    fn forward(&self, xs: &Tensor, cache: &mut SelfKv, fixed: Option<&FixedStep>) -> Result<Tensor> {
        let (rows, len, hidden) = xs.dims3()?;
        let qkv = self.qkv.forward(xs)?;
        match cache {
            SelfKv::Bf16(cache) => return self.attend_on_cpu(&qkv, |qkv| cache.step(qkv)),
            SelfKv::F16(cache) => return self.attend_on_cpu(&qkv, |qkv| cache.step(qkv)),
            _ => {}
        }
        #[cfg(feature = "cuda")]
        if let (SelfKv::Fixed(cache), Some(FixedStep::Fused { inputs })) = (&*cache, fixed) {
            return Ok(self.out.forward(&fused::self_attention(&qkv, cache, inputs, self.heads)?)?);
        }
        let q = split_heads(&qkv.narrow(D::Minus1, 0, hidden)?, self.heads)?;
        let k = split_heads(&qkv.narrow(D::Minus1, hidden, hidden)?, self.heads)?;
        let v = split_heads(&qkv.narrow(D::Minus1, 2 * hidden, hidden)?, self.heads)?;
        let probs_and_values = match (cache, fixed) {
            (SelfKv::Growing(cache), _) => {
                let (k, v) = cache.append(&k, &v)?;
                (softmax(&q.matmul(&k.t()?)?)?, v)
            }
            (SelfKv::Fixed(cache), Some(FixedStep::Unfused { write_index, mask })) => {
                let (cache_k, cache_v) = (cache.get(0)?, cache.get(1)?);
                cache_k.scatter_set(write_index, &k, 2)?;
                cache_v.scatter_set(write_index, &v, 2)?;
                let scores = q.matmul(&cache_k.t()?)?.broadcast_add(mask)?;
                (softmax(&scores)?, cache_v)
            }
            _ => return Err(Error::Tensor(candle_core::Error::Msg("a fixed cache needs the step's position".into()))),
        };
        let (probs, values) = probs_and_values;
        let attended = probs.matmul(&values)?.transpose(1, 2)?.reshape((rows, len, hidden))?;
        Ok(self.out.forward(&attended)?)
    }

    /// `attend` maps the step's f32 `(rows, 3·hidden)` projection to `(rows, hidden)`.
    fn attend_on_cpu(&self, qkv: &Tensor, attend: impl FnOnce(&[f32]) -> Vec<f32>) -> Result<Tensor> {
        let (rows, len, width) = qkv.dims3()?;
        if len != 1 {
            return Err(Error::Tensor(candle_core::Error::Msg(format!(
                "a CPU half-precision step takes one position, not {len}"
            ))));
        }
        let attended = cpu_f32(qkv, attend)?;
        Ok(self.out.forward(&Tensor::from_vec(attended, (rows, 1, width / 3), qkv.device())?)?)
    }
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

#[derive(Debug, Clone)]
struct CrossAttention {
    /// Pre-scaled by 1/sqrt(head_dim), as the self-attention's q.
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl CrossAttention {
    fn load(hidden: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        let scale = ((hidden / heads) as f64).powf(-0.5);
        Ok(Self {
            q: Linear::new(scaled(vb.pp("q_proj").get((hidden, hidden), "weight")?, scale)?),
            k: linear(hidden, hidden, vb.pp("k_proj"))?,
            v: linear(hidden, hidden, vb.pp("v_proj"))?,
            out: linear(hidden, hidden, vb.pp("out_proj"))?,
            heads,
        })
    }

    /// Keys then values of the memory, `(2, rows, heads, memory_len, head_dim)`.
    fn memory_kv(&self, memory: &Tensor) -> Result<Tensor> {
        let k = split_heads(&self.k.forward(memory)?, self.heads)?;
        let v = split_heads(&self.v.forward(memory)?, self.heads)?;
        Ok(Tensor::stack(&[k, v], 0)?)
    }

    /// `fused`: with the fused CUDA kernel (fixed-mode steps on a GPU); `on_cpu`: in f32 by
    /// [`cpu`] (steps of a half-precision decoder on the CPU, where everything but the weights
    /// and the self-attention cache is f32).
    fn forward(&self, xs: &Tensor, kv: &Tensor, mask: Option<&Tensor>, fused: bool, on_cpu: bool) -> Result<Tensor> {
        let (rows, len, hidden) = xs.dims3()?;
        let q = self.q.forward(xs)?;
        if on_cpu {
            let (_, _, heads, memory_len, _) = kv.dims5()?;
            let q = q.flatten_all()?.to_vec1::<f32>()?;
            let mask = mask.map(|mask| mask.flatten_all()?.to_vec1::<f32>()).transpose()?;
            let attended =
                cpu_f32(kv, |kv| cpu::cross_attention(&q, kv, mask.as_deref(), rows * len, heads, memory_len))?;
            return Ok(self.out.forward(&Tensor::from_vec(attended, (rows, len, hidden), xs.device())?)?);
        }
        #[cfg(feature = "cuda")]
        if fused {
            return Ok(self.out.forward(&fused::cross_attention(&q, kv, mask, self.heads)?)?);
        }
        #[cfg(not(feature = "cuda"))]
        let _ = fused;
        let q = split_heads(&q, self.heads)?;
        let scores = q.matmul(&kv.get(0)?.t()?)?;
        let probs = softmax(&match mask {
            Some(mask) => scores.broadcast_add(mask)?,
            None => scores,
        })?;
        let attended = probs.matmul(&kv.get(1)?)?.transpose(1, 2)?.reshape((rows, len, hidden))?;
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
    /// `activations`: the dtype of the layer's inputs and outputs (see [`Decoder::activations`]).
    fn load(cfg: &DecoderConfig, activation: Activation, activations: DType, vb: VarBuilder) -> Result<Self> {
        let (hidden, heads) = (cfg.hidden_size, cfg.num_attention_heads);
        Ok(Self {
            self_attn_layer_norm: LayerNorm::load(hidden, activations, vb.pp("self_attn_layer_norm"))?,
            self_attn: SelfAttention::load(hidden, heads, vb.pp("self_attn"))?,
            encoder_attn_layer_norm: LayerNorm::load(hidden, activations, vb.pp("encoder_attn_layer_norm"))?,
            encoder_attn: CrossAttention::load(hidden, heads, vb.pp("encoder_attn"))?,
            final_layer_norm: LayerNorm::load(hidden, activations, vb.pp("final_layer_norm"))?,
            fc1: linear(hidden, cfg.ffn_dim, vb.pp("fc1"))?,
            fc2: linear(cfg.ffn_dim, hidden, vb.pp("fc2"))?,
            activation,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        cache: &mut SelfKv,
        fixed: Option<&FixedStep>,
        cross_kv: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let on_cpu = matches!(cache, SelfKv::Bf16(_) | SelfKv::F16(_));
        let h = self.self_attn.forward(&self.self_attn_layer_norm.forward(xs)?, cache, fixed)?;
        let xs = (xs + h)?;
        #[cfg(feature = "cuda")]
        let fused = matches!(fixed, Some(FixedStep::Fused { .. }));
        #[cfg(not(feature = "cuda"))]
        let fused = false;
        let h =
            self.encoder_attn.forward(&self.encoder_attn_layer_norm.forward(&xs)?, cross_kv, mask, fused, on_cpu)?;
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

/// How [`Decoder::step`] runs one position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepMode {
    /// The self-attention cache grows by one position per step and each step attends to
    /// exactly the positions so far: the least arithmetic, what the CPU runs.
    Growing,
    /// The cache has its full length from the start; a step reads its tokens and position from
    /// device memory, writes keys and values in place there and masks the later positions, so
    /// every step runs the same kernels on the same buffers.
    Fixed,
    /// [`StepMode::Fixed`], with the first step's kernels recorded as a CUDA graph that every
    /// later step replays in one launch. CUDA only; a failed capture falls back to `Fixed`.
    Graph,
}

/// Buffers of a [`StepMode::Fixed`] request that every step reads or writes in place.
#[derive(Debug)]
struct FixedBuffers {
    /// `[position, tokens (rows × K)]` u32, written from the host before each step.
    inputs: Tensor,
    /// Sinusoidal positions `(max_steps, hidden)` in the decoder dtype.
    positions: Tensor,
    /// `0..max_steps` u32, `(1, 1, 1, max_steps)`: compared with the position for the mask.
    arange: Tensor,
    /// The self-attention mask's two values, `(1, 1, 1, max_steps)` in the decoder dtype.
    open: Tensor,
    closed: Tensor,
    /// The step's logits `(rows, K, vocab)` f32.
    logits: Tensor,
}

/// Per-request state: the self-attention cache and the memory's cross-attention keys/values.
#[derive(Debug)]
pub struct DecoderState {
    self_kv: Vec<SelfKv>,
    cross_kv: Vec<Tensor>,
    /// Additive mask `(rows, 1, 1, memory_len)` in the decoder dtype: 0 where attended,
    /// [`masked_value`] elsewhere; `None` when every position of every row is attended.
    cross_mask: Option<Tensor>,
    fixed: Option<FixedBuffers>,
    /// The recorded step of a [`StepMode::Graph`] request.
    #[cfg(feature = "cuda")]
    graph: graph::StepGraph,
    rows: usize,
    position: usize,
    max_steps: usize,
}

impl DecoderState {
    /// Positions decoded so far.
    pub fn position(&self) -> usize {
        self.position
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Whether the steps are being replayed from a CUDA graph (false until the second step).
    pub fn replays_graph(&self) -> bool {
        #[cfg(feature = "cuda")]
        return self.graph.is_ready();
        #[cfg(not(feature = "cuda"))]
        false
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
    heads: usize,
    dtype: DType,
    device: Device,
    mode: StepMode,
    /// Fixed-mode steps use the fused attention kernels (CUDA builds on a GPU, a head size
    /// they handle).
    fused: bool,
    /// A bf16 or f16 decoder on the CPU: activations in f32 (see the module's description).
    cpu_half: bool,
}

impl Decoder {
    /// Loads from `vb` rooted at the checkpoint's `decoder` prefix (`model.decoder.*`,
    /// `lm_heads.*`); the builder's dtype is the decoder's compute dtype. Steps run as
    /// [`StepMode::Graph`] on a GPU and [`StepMode::Growing`] on the CPU.
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
        let device = vb.device().clone();
        let cpu_half = device.is_cpu() && matches!(vb.dtype(), DType::BF16 | DType::F16);
        let activations = if cpu_half { DType::F32 } else { vb.dtype() };
        let model = vb.pp("model").pp("decoder");
        // Tables in the activations' dtype: a step reads only one row of each.
        let embed_tokens = (0..cfg.num_codebooks)
            .map(|k| {
                let weight = model.pp("embed_tokens").pp(k).get((cfg.vocab_size + 1, hidden), "weight")?;
                Ok(Embedding::new(weight.to_dtype(activations)?, hidden))
            })
            .collect::<Result<Vec<_>>>()?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(cfg, activation, activations, model.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let heads = (0..cfg.num_codebooks)
            .map(|k| Ok(vb.pp("lm_heads").pp(k).get((cfg.vocab_size, hidden), "weight")?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed_tokens,
            layers,
            layer_norm: LayerNorm::load(hidden, activations, model.pp("layer_norm"))?,
            lm_heads: Linear::new(Tensor::cat(&heads, 0)?),
            num_codebooks: cfg.num_codebooks,
            vocab_size: cfg.vocab_size,
            hidden_size: hidden,
            heads: cfg.num_attention_heads,
            dtype: vb.dtype(),
            mode: if device.is_cuda() { StepMode::Graph } else { StepMode::Growing },
            fused: fused_kernels_fit(&device, hidden / cfg.num_attention_heads, vb.dtype()),
            cpu_half,
            device,
        })
    }

    /// The dtype of the activations between the projections: the decoder dtype, except f32
    /// for a half-precision decoder on the CPU.
    fn activations(&self) -> DType {
        if self.cpu_half {
            DType::F32
        } else {
            self.dtype
        }
    }

    /// Chooses how later requests run their steps; [`StepMode::Graph`] needs a CUDA device.
    pub fn set_step_mode(&mut self, mode: StepMode) -> Result<()> {
        if mode == StepMode::Graph && !self.device.is_cuda() {
            return Err(Error::Unsupported("CUDA graphs need a CUDA device".into()));
        }
        self.mode = mode;
        Ok(())
    }

    pub fn step_mode(&self) -> StepMode {
        self.mode
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
    /// `max_steps` sizes the self-attention cache (a fixed cache holds no more).
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
        let max_steps = max_steps.max(1);
        let dtype = self.activations();
        let memory = memory.to_device(&self.device)?.to_dtype(dtype)?;
        let cross_kv = self.layers.iter().map(|l| l.encoder_attn.memory_kv(&memory)).collect::<Result<Vec<_>>>()?;
        let attended = mask.to_device(&self.device)?.to_dtype(DType::F32)?.ne(0f32)?;
        let zeros = Tensor::zeros((rows, len), dtype, &self.device)?;
        let masked = Tensor::full(masked_value(dtype), (rows, len), &self.device)?.to_dtype(dtype)?;
        let cross_mask = if mask_is_moot(&attended, &memory)? {
            None
        } else {
            Some(attended.where_cond(&zeros, &masked)?.reshape((rows, 1, 1, len))?)
        };
        let head_dim = self.hidden_size / self.heads;
        let (self_kv, fixed) = match self.mode {
            StepMode::Growing if self.cpu_half => {
                let cache = || match self.dtype {
                    DType::BF16 => SelfKv::Bf16(cpu::Cache::new(rows, self.heads, head_dim, max_steps)),
                    _ => SelfKv::F16(cpu::Cache::new(rows, self.heads, head_dim, max_steps)),
                };
                (self.layers.iter().map(|_| cache()).collect(), None)
            }
            StepMode::Growing => {
                (self.layers.iter().map(|_| SelfKv::Growing(KvCache::new(2, max_steps))).collect(), None)
            }
            StepMode::Fixed | StepMode::Graph => {
                let shape = (2, rows, self.heads, max_steps, head_dim);
                let self_kv = self
                    .layers
                    .iter()
                    .map(|_| Ok(SelfKv::Fixed(Tensor::zeros(shape, dtype, &self.device)?)))
                    .collect::<Result<Vec<_>>>()?;
                (self_kv, Some(self.fixed_buffers(rows, max_steps)?))
            }
        };
        Ok(DecoderState {
            self_kv,
            cross_kv,
            cross_mask,
            fixed,
            #[cfg(feature = "cuda")]
            graph: graph::StepGraph::new(self.mode == StepMode::Graph),
            rows,
            position: 0,
            max_steps,
        })
    }

    fn fixed_buffers(&self, rows: usize, max_steps: usize) -> Result<FixedBuffers> {
        let table: Vec<f32> = (0..max_steps).flat_map(|p| sinusoidal_position(p, self.hidden_size)).collect();
        let mask_shape = (1, 1, 1, max_steps);
        let dtype = self.activations();
        Ok(FixedBuffers {
            inputs: Tensor::zeros(1 + rows * self.num_codebooks, DType::U32, &self.device)?,
            positions: Tensor::from_vec(table, (max_steps, self.hidden_size), &self.device)?.to_dtype(dtype)?,
            arange: Tensor::arange(0u32, max_steps as u32, &self.device)?.reshape(mask_shape)?,
            open: Tensor::zeros(mask_shape, dtype, &self.device)?,
            closed: Tensor::full(masked_value(dtype), mask_shape, &self.device)?.to_dtype(dtype)?,
            logits: Tensor::zeros((rows, self.num_codebooks, self.vocab_size), DType::F32, &self.device)?,
        })
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
        if state.position >= state.max_steps && state.fixed.is_some() {
            return Err(Error::Tensor(candle_core::Error::Msg(format!(
                "decoder step {} is beyond the {} steps this request was started with",
                state.position, state.max_steps
            ))));
        }
        let logits = if state.fixed.is_some() {
            let mut inputs = Vec::with_capacity(1 + rows * k);
            inputs.push(state.position as u32);
            inputs.extend(tokens.flatten_all()?.to_vec1::<u32>()?);
            self.fixed_step(&inputs, state)?
        } else {
            let tokens = tokens.to_device(&self.device)?;
            let position = Tensor::from_vec(
                sinusoidal_position(state.position, self.hidden_size),
                (1, 1, self.hidden_size),
                &self.device,
            )?
            .to_dtype(self.activations())?;
            self.forward(&tokens, &position, &mut state.self_kv, None, &state.cross_kv, state.cross_mask.as_ref())?
        };
        state.position += 1;
        Ok(logits)
    }

    /// Uploads `inputs` and runs the step on the fixed buffers: replayed from the CUDA graph
    /// when there is one, recorded into it after the first step when asked for.
    fn fixed_step(&self, inputs: &[u32], state: &mut DecoderState) -> Result<Tensor> {
        let DecoderState {
            self_kv,
            cross_kv,
            cross_mask,
            fixed,
            #[cfg(feature = "cuda")]
            graph,
            ..
        } = state;
        let fixed = fixed.as_ref().expect("fixed buffers of a fixed-mode state");
        write_u32(&fixed.inputs, inputs)?;
        let mut forward = || self.fixed_forward(fixed, self_kv, cross_kv, cross_mask.as_ref());
        #[cfg(feature = "cuda")]
        graph.run(&self.device, &mut forward)?;
        #[cfg(not(feature = "cuda"))]
        forward()?;
        // A copy, so the caller's tensor is not overwritten by the next step.
        Ok(fixed.logits.copy()?)
    }

    /// One fixed-mode step from device-resident inputs to `fixed.logits`, in place: no host
    /// data moves, so the same kernels can be recorded once and replayed.
    fn fixed_forward(
        &self,
        fixed: &FixedBuffers,
        self_kv: &mut [SelfKv],
        cross_kv: &[Tensor],
        cross_mask: Option<&Tensor>,
    ) -> Result<()> {
        let (rows, _, _) = fixed.logits.dims3()?;
        let position = fixed.inputs.narrow(0, 0, 1)?;
        let tokens = fixed.inputs.narrow(0, 1, rows * self.num_codebooks)?.reshape((rows, self.num_codebooks))?;
        let embedding = fixed.positions.index_select(&position, 0)?.unsqueeze(0)?;
        let step = if self.fused {
            #[cfg(feature = "cuda")]
            {
                FixedStep::Fused { inputs: fixed.inputs.clone() }
            }
            #[cfg(not(feature = "cuda"))]
            unreachable!("fused kernels exist in CUDA builds only")
        } else {
            let position = position.reshape((1, 1, 1, 1))?;
            FixedStep::Unfused {
                write_index: position
                    .broadcast_as((rows, self.heads, 1, self.hidden_size / self.heads))?
                    .contiguous()?,
                mask: fixed.arange.broadcast_le(&position)?.where_cond(&fixed.open, &fixed.closed)?,
            }
        };
        let logits = self.forward(&tokens, &embedding, self_kv, Some(&step), cross_kv, cross_mask)?;
        fixed.logits.slice_set(&logits, 0, 0)?;
        Ok(())
    }

    /// The decoder proper: embeddings of `tokens` (on the device) plus `position` `(1, 1, hidden)`,
    /// the layers, the final norm and the heads; logits `(rows, K, vocab)` f32.
    fn forward(
        &self,
        tokens: &Tensor,
        position: &Tensor,
        self_kv: &mut [SelfKv],
        fixed: Option<&FixedStep>,
        cross_kv: &[Tensor],
        cross_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let rows = tokens.dim(0)?;
        let mut xs = self.embed_tokens[0].forward(&tokens.narrow(1, 0, 1)?)?;
        for (codebook, embedding) in self.embed_tokens.iter().enumerate().skip(1) {
            xs = (xs + embedding.forward(&tokens.narrow(1, codebook, 1)?)?)?;
        }
        let mut xs = xs.broadcast_add(position)?;
        for ((layer, cache), kv) in self.layers.iter().zip(self_kv.iter_mut()).zip(cross_kv) {
            xs = layer.forward(&xs, cache, fixed, kv, cross_mask)?;
        }
        let xs = self.layer_norm.forward(&xs)?;
        let logits = self.lm_heads.forward(&xs)?;
        Ok(logits.reshape((rows, self.num_codebooks, self.vocab_size))?.to_dtype(DType::F32)?)
    }
}

/// Overwrites the contiguous u32 tensor `dst` with `values`, keeping its buffer: a CUDA graph
/// reads its inputs from fixed addresses. (candle has no public in-place upload.)
fn write_u32(dst: &Tensor, values: &[u32]) -> Result<()> {
    if dst.dtype() != DType::U32 || dst.elem_count() != values.len() || !dst.is_contiguous() {
        return Err(Error::Tensor(candle_core::Error::Msg(format!(
            "cannot write {} u32 values into a {:?} {:?} tensor",
            values.len(),
            dst.dtype(),
            dst.dims()
        ))));
    }
    match &dst.device() {
        Device::Cpu => {
            let src = Tensor::from_slice(values, dst.shape(), &Device::Cpu)?;
            dst.slice_set(&src, 0, 0)?;
            Ok(())
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => graph::upload_u32(dst, values),
        other => Err(Error::Unsupported(format!("fixed-mode decoder steps on {other:?}"))),
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
            let mut state =
                decoder.start(&memory.narrow(0, 0, rows).unwrap(), &mask.narrow(0, 0, rows).unwrap(), 2).unwrap();
            let mut last = None;
            for codes in inputs {
                let tokens =
                    Tensor::new(&codes, &Device::Cpu).unwrap().unsqueeze(0).unwrap().repeat((rows, 1)).unwrap();
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
    fn a_fixed_cache_gives_the_logits_of_a_growing_one() {
        let cfg = tiny_config();
        let growing = random_decoder(&cfg, DType::F32);
        let mut fixed = growing.clone();
        fixed.set_step_mode(StepMode::Fixed).unwrap();
        assert!(fixed.set_step_mode(StepMode::Graph).is_err(), "graphs need CUDA");
        let memory = Tensor::randn(0f32, 1.0, (3, 4, 8), &Device::Cpu).unwrap();
        // The last row is guidance's unconditional half: nothing to attend to.
        let mask = Tensor::new(&[[1u32, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]], &Device::Cpu).unwrap();
        let inputs = [[16u32, 16], [3, 16], [5, 7], [1, 2], [9, 9]];
        let mut a = growing.start(&memory, &mask, inputs.len()).unwrap();
        let mut b = fixed.start(&memory, &mask, inputs.len()).unwrap();
        for codes in inputs {
            let tokens = Tensor::new(&[codes, [codes[1], codes[0]], [2, 3]], &Device::Cpu).unwrap();
            let expected: Vec<f32> = growing.step(&tokens, &mut a).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let got: Vec<f32> = fixed.step(&tokens, &mut b).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let diff = expected.iter().zip(&got).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-5, "fixed cache differs by {diff} at position {}", a.position());
        }
        let tokens = Tensor::new(&[[1u32, 1], [1, 1], [1, 1]], &Device::Cpu).unwrap();
        let err = fixed.step(&tokens, &mut b).unwrap_err().to_string();
        assert!(err.contains("beyond the 5 steps"), "{err}");
    }

    /// Random weights rounded to `.1` whatever dtype is asked for: an f32 decoder holding
    /// exactly the weights of a half-precision one.
    struct Rounded(crate::model::random::RandomWeights, DType);

    impl candle_nn::var_builder::SimpleBackend for Rounded {
        fn get(
            &self,
            s: candle_core::Shape,
            name: &str,
            init: candle_nn::Init,
            dtype: DType,
            dev: &Device,
        ) -> candle_core::Result<Tensor> {
            self.0.get(s, name, init, self.1, dev)?.to_dtype(dtype)
        }
        fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
            self.0.get_unchecked(name, dtype, dev)
        }
        fn contains_tensor(&self, name: &str) -> bool {
            self.0.contains_tensor(name)
        }
    }

    /// Logits of `decoder` over six steps of three rows: attending to all of the memory, to part
    /// of it, and to none (guidance's unconditional half), started for fewer steps than it runs
    /// so that the cache grows.
    fn six_steps(decoder: &Decoder) -> Vec<Vec<f32>> {
        // Fixed values (both decoders must see the same memory); the unconditional row's memory
        // is zeros, as generation builds it.
        let memory: Vec<f32> = (0..96).map(|i| if i < 64 { (i as f32 * 0.7).sin() * 1.5 } else { 0.0 }).collect();
        let memory = Tensor::from_vec(memory, (3, 4, 8), &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], &Device::Cpu).unwrap();
        let mut state = decoder.start(&memory, &mask, 2).unwrap();
        [[16u32, 16], [3, 16], [5, 7], [1, 2], [9, 9], [0, 15]]
            .iter()
            .map(|codes| {
                let tokens = Tensor::new(&[*codes, [codes[1], codes[0]], *codes], &Device::Cpu).unwrap();
                let logits = decoder.step(&tokens, &mut state).unwrap();
                assert_eq!(logits.dtype(), DType::F32);
                logits.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            })
            .collect()
    }

    /// Largest difference over all steps, relative to the largest reference logit.
    fn relative_gap(got: &[Vec<f32>], reference: &[Vec<f32>]) -> f32 {
        let scale = reference.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
        got.iter().flatten().zip(reference.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale
    }

    #[test]
    fn half_precision_tracks_f32() {
        let cfg = tiny_config();
        let reference = six_steps(&random_decoder(&cfg, DType::F32));
        // Measured 3.8e-3 (bf16) and 4.3e-4 (f16); with bf16 activations, as before the CPU
        // computed in f32, 6.6e-3 and 1.3e-3.
        for (dtype, bound) in [(DType::BF16, 1e-2), (DType::F16, 1.5e-3)] {
            let gap = relative_gap(&six_steps(&random_decoder(&cfg, dtype)), &reference);
            assert!(gap < bound, "{dtype:?} logits off by {gap} of the largest");
        }
    }

    #[test]
    fn cpu_half_precision_computes_in_f32_on_half_weights() {
        // Against f32 on the same rounded weights, what remains is the rounding of the cached
        // keys and values (and summation order): the activations are f32 throughout.
        let cfg = tiny_config();
        // Measured 7.7e-4 (bf16) and 8.0e-5 (f16).
        for (dtype, bound) in [(DType::BF16, 2.5e-3), (DType::F16, 2.5e-4)] {
            let weights = || crate::model::random::RandomWeights::new(7);
            let rounded = VarBuilder::from_backend(Box::new(Rounded(weights(), dtype)), DType::F32, Device::Cpu);
            let reference = six_steps(&Decoder::load(&cfg, rounded).unwrap());
            let half = Decoder::load(&cfg, weights().var_builder(dtype, &Device::Cpu)).unwrap();
            assert!(half.cpu_half);
            let gap = relative_gap(&six_steps(&half), &reference);
            assert!(gap < bound, "{dtype:?} logits off by {gap} of the largest");
        }
    }
}
