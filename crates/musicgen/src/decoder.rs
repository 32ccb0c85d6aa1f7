//! The MusicGen decoder (transformers' `MusicgenForCausalLM`): a pre-LN transformer over summed
//! codebook embeddings that predicts one token per codebook for the next position.
//!
//! [`Decoder::start`] prepares a request from its [`Conditioning`]: MusicGen's text memory,
//! whose cross-attention keys and values every layer computes once, or musicgen-melody's prefix
//! of hidden states, run through the layers into the self-attention cache. [`Decoder::prefill`]
//! then takes any number of positions in one pass and [`Decoder::step`] one, doing the
//! per-token work only. Weights stay in the requested dtype; layer norms and softmaxes
//! accumulate in f32 inside their kernels.
//!
//! A step runs in one of three [`StepMode`]s. On the CPU the self-attention cache grows by one
//! position per step. On a GPU a step of musicgen-small is ~900 tiny kernels, so launching them
//! costs more than running them; there the cache has its full length from the start, each step
//! writes in place at a position read from device memory, and the first step's kernels are
//! recorded as a CUDA graph that every later step replays with one launch ([`graph`]); a finished
//! request's graph and buffers serve the next request of the same shape ([`reuse`]). Prefills
//! run eagerly in every mode. The caches are [`kv_cache`]'s; who attends is [`attention`]'s.
//!
//! A bf16 or f16 decoder on the CPU keeps only its projection weights and self-attention cache
//! in that dtype and computes in f32 (`crate::cpu`): the projections widen the weights as they
//! read them (`crate::linear`), and candle's CPU kernels, which convert half-precision elements
//! one by one, only ever see f32.

use candle_core::{DType, Device, IndexOp, Module, Tensor, D};
use candle_nn::{Embedding, VarBuilder};

mod attention;
#[cfg_attr(not(feature = "cuda"), path = "decoder/cuda_embed_stub.rs")]
mod cuda_embed;
// CUDA builds record graphs; others compile a stub with the same interface that runs eagerly.
#[cfg_attr(not(feature = "cuda"), path = "decoder/graph_stub.rs")]
mod graph;
mod kv_cache;
mod reuse;

use self::attention::{masked_value, split_heads, Backend, DeviceStep, Pass};
use self::kv_cache::KvCache;
use crate::config::DecoderConfig;
use crate::error::{Error, Result};
use crate::linear::{Activation, Linear};

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

/// Bias-free projection, as every linear layer of the decoder.
fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(Linear::new(vb.get((out_dim, in_dim), "weight")?))
}

/// Scales the rows of a `(out, in)` projection so that it computes `scale · (W x)` in one matmul.
/// transformers scales q after its projection; the head dims of MusicGen make `scale` a power
/// of two (1/8 for 64), where both orders give the same floats.
fn scaled(weight: Tensor, scale: f64) -> Result<Tensor> {
    Ok((weight * scale)?)
}

#[derive(Debug, Clone)]
struct SelfAttention {
    /// q (pre-scaled by 1/sqrt(head_dim)), k and v stacked into one `(3·hidden, hidden)`
    /// projection: one matmul per pass.
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

    /// `residual` plus the pass's new positions `xs` (normalised) attending to themselves and
    /// every earlier one.
    fn forward(&self, xs: &Tensor, residual: &Tensor, cache: &mut KvCache, pass: &Pass) -> Result<Tensor> {
        let attended = attention::self_attention(&self.qkv.forward(xs)?, cache, pass, self.heads)?;
        Ok(self.out.forward_add(&attended, residual)?)
    }
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

    /// `residual` plus `xs` (normalised) attending to the memory; `cache` and `pass` are the
    /// layer's self-attention's: they choose who attends.
    fn forward(
        &self,
        xs: &Tensor,
        residual: &Tensor,
        memory: &Memory,
        layer: usize,
        cache: &KvCache,
        pass: &Pass,
    ) -> Result<Tensor> {
        let q = self.q.forward(xs)?;
        let attended =
            attention::cross_attention(&q, &memory.kv[layer], memory.mask.as_ref(), self.heads, cache, pass)?;
        Ok(self.out.forward_add(&attended, residual)?)
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    self_attn_layer_norm: LayerNorm,
    self_attn: SelfAttention,
    /// MusicGen's attention to the text memory with its layer norm; musicgen-melody's layers
    /// have none (its conditioning is a prefix of the sequence).
    encoder_attn: Option<(LayerNorm, CrossAttention)>,
    final_layer_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    activation: Activation,
}

impl DecoderLayer {
    /// `activations`: the dtype of the layer's inputs and outputs (see [`Decoder::activations`]).
    fn load(
        cfg: &DecoderConfig,
        activation: Activation,
        activations: DType,
        cross_attention: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (hidden, heads) = (cfg.hidden_size, cfg.num_attention_heads);
        let encoder_attn = if cross_attention {
            Some((
                LayerNorm::load(hidden, activations, vb.pp("encoder_attn_layer_norm"))?,
                CrossAttention::load(hidden, heads, vb.pp("encoder_attn"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            self_attn_layer_norm: LayerNorm::load(hidden, activations, vb.pp("self_attn_layer_norm"))?,
            self_attn: SelfAttention::load(hidden, heads, vb.pp("self_attn"))?,
            encoder_attn,
            final_layer_norm: LayerNorm::load(hidden, activations, vb.pp("final_layer_norm"))?,
            fc1: linear(hidden, cfg.ffn_dim, vb.pp("fc1"))?,
            fc2: linear(cfg.ffn_dim, hidden, vb.pp("fc2"))?,
            activation,
        })
    }

    /// Every projection with int8 weights.
    fn quantize(&mut self) -> Result<()> {
        let attention = &mut self.self_attn;
        (attention.qkv, attention.out) = (attention.qkv.quantize()?, attention.out.quantize()?);
        if let Some((_, cross)) = &mut self.encoder_attn {
            (cross.q, cross.k, cross.v, cross.out) =
                (cross.q.quantize()?, cross.k.quantize()?, cross.v.quantize()?, cross.out.quantize()?);
        }
        (self.fc1, self.fc2) = (self.fc1.quantize()?, self.fc2.quantize()?);
        Ok(())
    }

    /// Bytes of the weights a step reads: every projection but the cross-attention's keys and
    /// values, which [`Decoder::start`] applies once per request.
    fn step_weight_bytes(&self) -> usize {
        let cross = self.encoder_attn.as_ref().map_or(0, |(_, c)| c.q.weight_bytes() + c.out.weight_bytes());
        self.self_attn.qkv.weight_bytes()
            + self.self_attn.out.weight_bytes()
            + cross
            + self.fc1.weight_bytes()
            + self.fc2.weight_bytes()
    }

    /// Layer `layer` of the decoder; `memory` is the request's when its layers cross-attend.
    fn forward(
        &self,
        xs: &Tensor,
        layer: usize,
        cache: &mut KvCache,
        pass: &Pass,
        memory: Option<&Memory>,
    ) -> Result<Tensor> {
        let mut xs = self.self_attn.forward(&self.self_attn_layer_norm.forward(xs)?, xs, cache, pass)?;
        if let Some((layer_norm, encoder_attn)) = &self.encoder_attn {
            let memory = memory.ok_or_else(|| Error::Unsupported("cross-attention without a memory".into()))?;
            xs = encoder_attn.forward(&layer_norm.forward(&xs)?, &xs, memory, layer, cache, pass)?;
        }
        let h = self.fc1.forward_activated(&self.final_layer_norm.forward(&xs)?, self.activation)?;
        Ok(self.fc2.forward_add(&h, &xs)?)
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

/// What a request's decoder is conditioned on, given to [`Decoder::start`].
#[derive(Debug, Clone, Copy)]
pub enum Conditioning<'a> {
    /// MusicGen: the projected, masked text memory `(rows, len, hidden)` (any float dtype) that
    /// every layer cross-attends to, with its `mask` `(rows, len)`, 1 where a text token is
    /// attended and 0 elsewhere.
    CrossAttention { memory: &'a Tensor, mask: &'a Tensor },
    /// musicgen-melody, whose layers have no cross-attention: hidden states `(rows, len, hidden)`
    /// (any float dtype) put before the tokens, as transformers concatenates them. They take
    /// positions `0..len` (sinusoidal positions added, attended causally, every one of them:
    /// padding is zeros, as transformers leaves it); the tokens' positions follow.
    Prefix(&'a Tensor),
}

/// The cross-attention keys and values of a request's memory.
#[derive(Debug)]
struct Memory {
    /// Per layer, `(2, rows, heads, memory_len, head_dim)`.
    kv: Vec<Tensor>,
    /// Additive mask `(rows, 1, 1, memory_len)` in the activations' dtype: 0 where attended,
    /// [`masked_value`] elsewhere; `None` when every position of every row is attended.
    mask: Option<Tensor>,
}

impl Memory {
    fn bytes(&self) -> usize {
        self.kv.iter().chain(&self.mask).map(tensor_bytes).sum()
    }
}

fn tensor_bytes(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

/// Buffers of a [`StepMode::Fixed`] request that every step reads or writes in place.
#[derive(Debug)]
struct FixedBuffers {
    /// `[position, tokens (rows × K)]` u32, written from the host before each step.
    inputs: Tensor,
    /// Sinusoidal positions `(positions, hidden)` in the activations' dtype.
    positions: Tensor,
    /// `0..positions` u32, `(1, 1, 1, positions)`: compared with the position for the mask.
    arange: Tensor,
    /// The self-attention mask's two values, `(1, 1, 1, positions)` in the activations' dtype.
    open: Tensor,
    closed: Tensor,
    /// The step's logits `(rows, K, vocab)` f32.
    logits: Tensor,
}

impl FixedBuffers {
    fn bytes(&self) -> usize {
        [&self.inputs, &self.positions, &self.arange, &self.open, &self.closed, &self.logits]
            .into_iter()
            .map(tensor_bytes)
            .sum()
    }
}

/// Per-request state: the self-attention caches and the memory's cross-attention keys/values.
#[derive(Debug)]
pub struct DecoderState {
    self_kv: Vec<KvCache>,
    /// `None` for a [`Conditioning::Prefix`] request.
    memory: Option<Memory>,
    fixed: Option<FixedBuffers>,
    /// The recorded step of a [`StepMode::Graph`] request.
    graph: graph::StepGraph,
    rows: usize,
    position: usize,
    /// Positions a fixed cache holds: the prefix's and the `max_steps` of [`Decoder::start`].
    max_positions: usize,
    /// A [`StepMode::Graph`] state's shape, under which its recorded step is parked for the
    /// next request when it ends.
    shape: Option<reuse::Shape>,
    /// Whether the graph came recorded from an earlier request.
    reused: bool,
}

impl Drop for DecoderState {
    fn drop(&mut self) {
        self.release();
    }
}

impl DecoderState {
    /// Positions decoded so far (a [`Conditioning::Prefix`] included).
    pub fn position(&self) -> usize {
        self.position
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Whether the steps are being replayed from a CUDA graph (false until the second step).
    pub fn replays_graph(&self) -> bool {
        self.graph.is_ready()
    }

    /// Kernels in the recorded step's CUDA graph: what one replayed step launches.
    pub fn graph_kernels(&self) -> Option<usize> {
        self.graph.kernels()
    }

    /// Whether the steps replay a graph an earlier request of the same shape recorded.
    pub fn reuses_graph(&self) -> bool {
        self.reused
    }

    /// Ends the request now rather than when dropped: a recorded step and its buffers are
    /// parked for the next request of the same shape (the next window of a long track, say,
    /// which is opened before this one is dropped). No more steps can run.
    pub fn release(&mut self) {
        let Some(shape) = self.shape.take() else { return };
        if !self.graph.is_ready() {
            return;
        }
        let Some(fixed) = self.fixed.take() else { return };
        let self_kv = std::mem::take(&mut self.self_kv);
        let bytes = self_kv.iter().map(KvCache::bytes).sum::<usize>()
            + self.memory.as_ref().map_or(0, Memory::bytes)
            + fixed.bytes();
        reuse::park(reuse::Parked {
            shape,
            bytes,
            self_kv,
            memory: self.memory.take(),
            fixed,
            graph: std::mem::replace(&mut self.graph, graph::StepGraph::new(false)),
        });
    }
}

/// MusicGen's decoder with its K language-model heads.
#[derive(Debug, Clone)]
pub struct Decoder {
    embed_tokens: Vec<Embedding>,
    /// The same tables stacked, `(K, vocab + 1, hidden)`: `embed_tokens` are views of it, and a
    /// fused step's embedding kernel reads it whole.
    embedding_tables: Tensor,
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
    /// Who runs the steps' attentions; [`Backend::Cpu`] also means f32 activations (see the
    /// module's description).
    backend: Backend,
    /// The weights' identity, under which recorded steps are parked ([`reuse`]).
    id: u64,
}

impl Decoder {
    /// Loads from `vb` rooted at the checkpoint's `decoder` prefix (`model.decoder.*`,
    /// `lm_heads.*`); the builder's dtype is the decoder's compute dtype. Steps run as
    /// [`StepMode::Graph`] on a GPU and [`StepMode::Growing`] on the CPU. The layers have
    /// cross-attention except in a musicgen-melody decoder (`model_type`
    /// `musicgen_melody_decoder`).
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
        let backend = Backend::for_steps(&device, vb.dtype(), hidden / cfg.num_attention_heads);
        let activations = if backend == Backend::Cpu { DType::F32 } else { vb.dtype() };
        let cross_attention = cfg.model_type.as_deref() != Some("musicgen_melody_decoder");
        let model = vb.pp("model").pp("decoder");
        // Tables in the activations' dtype: a step reads only one row of each.
        let tables = (0..cfg.num_codebooks)
            .map(|k| Ok(model.pp("embed_tokens").pp(k).get((cfg.vocab_size + 1, hidden), "weight")?))
            .collect::<Result<Vec<_>>>()?;
        let embedding_tables = Tensor::stack(&tables, 0)?.to_dtype(activations)?;
        let embed_tokens = (0..cfg.num_codebooks)
            .map(|k| Ok(Embedding::new(embedding_tables.get(k)?, hidden)))
            .collect::<Result<Vec<_>>>()?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(cfg, activation, activations, cross_attention, model.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let heads = (0..cfg.num_codebooks)
            .map(|k| Ok(vb.pp("lm_heads").pp(k).get((cfg.vocab_size, hidden), "weight")?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed_tokens,
            embedding_tables,
            layers,
            layer_norm: LayerNorm::load(hidden, activations, model.pp("layer_norm"))?,
            lm_heads: Linear::new(Tensor::cat(&heads, 0)?),
            num_codebooks: cfg.num_codebooks,
            vocab_size: cfg.vocab_size,
            hidden_size: hidden,
            heads: cfg.num_attention_heads,
            dtype: vb.dtype(),
            mode: if device.is_cuda() { StepMode::Graph } else { StepMode::Growing },
            backend,
            device,
            id: reuse::next_decoder_id(),
        })
    }

    /// The dtype of the activations between the projections: the decoder dtype, except f32
    /// for a half-precision decoder on the CPU.
    fn activations(&self) -> DType {
        if self.backend == Backend::Cpu {
            DType::F32
        } else {
            self.dtype
        }
    }

    /// Stores every projection's weights as int8, per output channel (`crate::linear`), in
    /// place: `--weights int8`. Embeddings, layer norms, caches and activations keep their dtype.
    pub fn quantize_int8(&mut self) -> Result<()> {
        for layer in &mut self.layers {
            layer.quantize()?;
        }
        self.lm_heads = self.lm_heads.quantize()?;
        // Graphs recorded on the dense weights read memory that is gone now.
        reuse::forget(self.id);
        self.id = reuse::next_decoder_id();
        Ok(())
    }

    /// Whether the projections hold int8 weights ([`Decoder::quantize_int8`]).
    pub fn is_int8(&self) -> bool {
        self.lm_heads.is_int8()
    }

    /// Bytes of weights one step reads (projections and heads; the embeddings' rows are noise):
    /// what a step's time is bound by.
    pub fn step_weight_bytes(&self) -> usize {
        self.layers.iter().map(DecoderLayer::step_weight_bytes).sum::<usize>() + self.lm_heads.weight_bytes()
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

    /// Whether the layers cross-attend to a memory ([`Conditioning::CrossAttention`]) rather
    /// than take a prefix ([`Conditioning::Prefix`]).
    pub fn has_cross_attention(&self) -> bool {
        self.layers.iter().any(|layer| layer.encoder_attn.is_some())
    }

    /// Prepares a request of `conditioning`'s rows; `max_steps` sizes the self-attention cache
    /// for the positions after a prefix (a fixed cache holds no more).
    pub fn start(&self, conditioning: Conditioning, max_steps: usize) -> Result<DecoderState> {
        let dtype = self.activations();
        let (rows, memory, prefix) = match conditioning {
            Conditioning::CrossAttention { memory, mask } => {
                let (rows, len, hidden) = memory.dims3()?;
                if hidden != self.hidden_size || mask.dims2()? != (rows, len) {
                    return Err(Error::Tensor(candle_core::Error::Msg(format!(
                        "decoder memory {:?} with mask {:?} does not fit hidden size {}",
                        memory.dims(),
                        mask.dims(),
                        self.hidden_size
                    ))));
                }
                if !self.has_cross_attention() {
                    return Err(Error::Unsupported(
                        "this decoder's layers have no cross-attention: condition it with a prefix".into(),
                    ));
                }
                (rows, Some(self.memory(memory, mask)?), None)
            }
            Conditioning::Prefix(states) => {
                let (rows, _, hidden) = states.dims3()?;
                if hidden != self.hidden_size {
                    return Err(Error::Tensor(candle_core::Error::Msg(format!(
                        "decoder prefix {:?} does not fit hidden size {}",
                        states.dims(),
                        self.hidden_size
                    ))));
                }
                if self.has_cross_attention() {
                    return Err(Error::Unsupported(
                        "this decoder's layers cross-attend: condition it with a memory, not a prefix".into(),
                    ));
                }
                (rows, None, Some(states.to_device(&self.device)?.to_dtype(dtype)?))
            }
        };
        let prefix_len = prefix.as_ref().map_or(Ok(0), |p| p.dim(1))?;
        let max_positions = prefix_len + max_steps.max(1);
        let head_dim = self.hidden_size / self.heads;
        let shape = (self.mode == StepMode::Graph && self.device.is_cuda()).then(|| reuse::Shape {
            decoder: self.id,
            rows,
            max_positions,
            memory_len: memory.as_ref().and_then(|m| m.kv.first()).map_or(0, |kv| kv.dim(3).unwrap_or(0)),
            masked: memory.as_ref().is_some_and(|m| m.mask.is_some()),
            prefix_len,
        });
        if let Some(parked) = shape.as_ref().and_then(reuse::take) {
            let memory = match (memory, parked.memory) {
                (Some(new), Some(kept)) => {
                    // The graph reads the parked buffers: this request's memory goes into them.
                    for (kept, new) in kept.kv.iter().zip(&new.kv) {
                        kept.slice_set(new, 0, 0)?;
                    }
                    if let (Some(kept), Some(new)) = (&kept.mask, &new.mask) {
                        kept.slice_set(new, 0, 0)?;
                    }
                    Some(kept)
                }
                _ => None,
            };
            let mut state = DecoderState {
                self_kv: parked.self_kv,
                memory,
                fixed: Some(parked.fixed),
                graph: parked.graph,
                rows,
                position: 0,
                max_positions,
                shape,
                reused: true,
            };
            self.run_prefix(prefix, &mut state)?;
            return Ok(state);
        }
        let (self_kv, fixed) = match self.mode {
            StepMode::Growing if self.backend == Backend::Cpu => (
                self.layers
                    .iter()
                    .map(|_| KvCache::on_cpu(self.dtype, rows, self.heads, head_dim, max_positions))
                    .collect(),
                None,
            ),
            StepMode::Growing => (self.layers.iter().map(|_| KvCache::growing(max_positions)).collect(), None),
            StepMode::Fixed | StepMode::Graph => {
                let self_kv = self
                    .layers
                    .iter()
                    .map(|_| KvCache::fixed(rows, self.heads, max_positions, head_dim, dtype, &self.device))
                    .collect::<Result<Vec<_>>>()?;
                (self_kv, Some(self.fixed_buffers(rows, max_positions)?))
            }
        };
        let mut state = DecoderState {
            self_kv,
            memory,
            fixed,
            graph: graph::StepGraph::new(self.mode == StepMode::Graph),
            rows,
            position: 0,
            max_positions,
            shape,
            reused: false,
        };
        self.run_prefix(prefix, &mut state)?;
        Ok(state)
    }

    /// musicgen-melody: runs the prefix through the layers into the fresh `state`'s cache.
    fn run_prefix(&self, prefix: Option<Tensor>, state: &mut DecoderState) -> Result<()> {
        let Some(prefix) = prefix else { return Ok(()) };
        let prefix_len = prefix.dim(1)?;
        if prefix_len > 0 {
            let xs = prefix.broadcast_add(&self.positions(0, prefix_len)?)?;
            self.host_pass(xs, state)?;
            state.position = prefix_len;
        }
        Ok(())
    }

    /// The cross-attention keys and values of `memory` with its additive mask (see [`Memory`]).
    fn memory(&self, memory: &Tensor, mask: &Tensor) -> Result<Memory> {
        let (rows, len, _) = memory.dims3()?;
        let dtype = self.activations();
        let memory = memory.to_device(&self.device)?.to_dtype(dtype)?;
        let kv = self
            .layers
            .iter()
            .filter_map(|layer| layer.encoder_attn.as_ref())
            .map(|(_, attention)| attention.memory_kv(&memory))
            .collect::<Result<Vec<_>>>()?;
        let attended = mask.to_device(&self.device)?.to_dtype(DType::F32)?.ne(0f32)?;
        let zeros = Tensor::zeros((rows, len), dtype, &self.device)?;
        let masked = Tensor::full(masked_value(dtype), (rows, len), &self.device)?.to_dtype(dtype)?;
        let mask = if mask_is_moot(&attended, &memory)? {
            None
        } else {
            Some(attended.where_cond(&zeros, &masked)?.reshape((rows, 1, 1, len))?)
        };
        Ok(Memory { kv, mask })
    }

    fn fixed_buffers(&self, rows: usize, positions: usize) -> Result<FixedBuffers> {
        let table: Vec<f32> = (0..positions).flat_map(|p| sinusoidal_position(p, self.hidden_size)).collect();
        let mask_shape = (1, 1, 1, positions);
        let dtype = self.activations();
        Ok(FixedBuffers {
            inputs: Tensor::zeros(1 + rows * self.num_codebooks, DType::U32, &self.device)?,
            positions: Tensor::from_vec(table, (positions, self.hidden_size), &self.device)?.to_dtype(dtype)?,
            arange: Tensor::arange(0u32, positions as u32, &self.device)?.reshape(mask_shape)?,
            open: Tensor::zeros(mask_shape, dtype, &self.device)?,
            closed: Tensor::full(masked_value(dtype), mask_shape, &self.device)?.to_dtype(dtype)?,
            logits: Tensor::zeros((rows, self.num_codebooks, self.vocab_size), DType::F32, &self.device)?,
        })
    }

    /// Decodes one position: `tokens` `(rows, num_codebooks)` u32 are the (delay-patterned)
    /// tokens at the current position. Returns the next-position logits `(rows, K, vocab)` in f32.
    pub fn step(&self, tokens: &Tensor, state: &mut DecoderState) -> Result<Tensor> {
        let fixed = state.fixed.is_some();
        let logits = self.step_logits(tokens, state)?;
        // A fixed-mode step's logits live in the state's buffer, which the next step overwrites.
        Ok(if fixed { logits.copy()? } else { logits })
    }

    /// [`Decoder::step`], handing the logits to `use_logits` before anything can overwrite
    /// them: a fixed-mode step's are its state's own buffer, read where they are, not copied.
    pub fn step_then<R>(
        &self,
        tokens: &Tensor,
        state: &mut DecoderState,
        use_logits: impl FnOnce(&Tensor) -> Result<R>,
    ) -> Result<R> {
        use_logits(&self.step_logits(tokens, state)?)
    }

    /// A step's logits; in fixed mode a view of the state's buffer, valid until the next step.
    fn step_logits(&self, tokens: &Tensor, state: &mut DecoderState) -> Result<Tensor> {
        let (rows, k) = tokens.dims2()?;
        if rows != state.rows || k != self.num_codebooks {
            return Err(Error::Tensor(candle_core::Error::Msg(format!(
                "decoder step got tokens {:?}, expected ({}, {})",
                tokens.dims(),
                state.rows,
                self.num_codebooks
            ))));
        }
        if state.position >= state.max_positions && state.fixed.is_some() {
            return Err(Error::Tensor(candle_core::Error::Msg(format!(
                "decoder step {} is beyond the {} steps this request was started with",
                state.position, state.max_positions
            ))));
        }
        let logits = if state.fixed.is_some() {
            let mut inputs = Vec::with_capacity(1 + rows * k);
            inputs.push(state.position as u32);
            inputs.extend(tokens.flatten_all()?.to_vec1::<u32>()?);
            self.fixed_step(&inputs, state)?
        } else {
            let xs = self.embed(&tokens.to_device(&self.device)?.unsqueeze(1)?)?;
            let xs = xs.broadcast_add(&self.positions(state.position, 1)?)?;
            self.logits(&self.host_pass(xs, state)?)?
        };
        state.position += 1;
        Ok(logits)
    }

    /// Decodes several positions in one pass, leaving `state` as that many [`Decoder::step`]s
    /// would: `tokens` `(rows, len, num_codebooks)` u32 are the tokens at positions
    /// `state.position()..+len` (a prompt's codes, BOS included). Returns the logits after the
    /// last of them `(rows, K, vocab)` in f32, for the next step to continue from. Runs eagerly
    /// in every [`StepMode`]: a CUDA graph records the first single step after it.
    pub fn prefill(&self, tokens: &Tensor, state: &mut DecoderState) -> Result<Tensor> {
        let (rows, len, k) = tokens.dims3()?;
        if rows != state.rows || k != self.num_codebooks || len == 0 {
            return Err(Error::Tensor(candle_core::Error::Msg(format!(
                "decoder prefill got tokens {:?}, expected ({}, positions ≥ 1, {})",
                tokens.dims(),
                state.rows,
                self.num_codebooks
            ))));
        }
        if state.position + len > state.max_positions && state.fixed.is_some() {
            return Err(Error::Tensor(candle_core::Error::Msg(format!(
                "decoder prefill of {len} positions from {} is beyond the {} this request was started with",
                state.position, state.max_positions
            ))));
        }
        let xs = self.embed(&tokens.to_device(&self.device)?)?;
        let xs = xs.broadcast_add(&self.positions(state.position, len)?)?;
        let xs = self.host_pass(xs, state)?;
        let logits = self.logits(&xs.narrow(1, len - 1, 1)?.contiguous()?)?;
        state.position += len;
        Ok(logits)
    }

    /// Uploads `inputs` and runs the step on the fixed buffers: replayed from the CUDA graph
    /// when there is one, recorded into it after the first step when asked for. Returns the
    /// state's logits buffer itself.
    fn fixed_step(&self, inputs: &[u32], state: &mut DecoderState) -> Result<Tensor> {
        let DecoderState { self_kv, memory, fixed, graph, .. } = state;
        let fixed = fixed.as_ref().expect("fixed buffers of a fixed-mode state");
        write_u32(&fixed.inputs, inputs)?;
        let mut forward = || self.fixed_forward(fixed, self_kv, memory.as_ref());
        graph.run(&self.device, &mut forward)?;
        Ok(fixed.logits.clone())
    }

    /// One fixed-mode step from device-resident inputs to `fixed.logits`, in place: no host
    /// data moves, so the same kernels can be recorded once and replayed.
    fn fixed_forward(&self, fixed: &FixedBuffers, self_kv: &mut [KvCache], memory: Option<&Memory>) -> Result<()> {
        let (rows, _, _) = fixed.logits.dims3()?;
        let (xs, step) = if self.backend == Backend::Fused {
            let xs = cuda_embed::step_embedding(&self.embedding_tables, &fixed.inputs, &fixed.positions)?;
            (xs, DeviceStep::Fused { inputs: fixed.inputs.clone() })
        } else {
            let position = fixed.inputs.narrow(0, 0, 1)?;
            let tokens =
                fixed.inputs.narrow(0, 1, rows * self.num_codebooks)?.reshape((rows, 1, self.num_codebooks))?;
            let embedding = fixed.positions.index_select(&position, 0)?.unsqueeze(0)?;
            let xs = self.embed(&tokens)?.broadcast_add(&embedding)?;
            let position = position.reshape((1, 1, 1, 1))?;
            let step = DeviceStep::Unfused {
                write_index: position
                    .broadcast_as((rows, self.heads, 1, self.hidden_size / self.heads))?
                    .contiguous()?,
                mask: fixed.arange.broadcast_le(&position)?.where_cond(&fixed.open, &fixed.closed)?,
            };
            (xs, step)
        };
        let xs = self.layers(xs, self_kv, &Pass::Device(step), memory)?;
        fixed.logits.slice_set(&self.logits(&xs)?, 0, 0)?;
        Ok(())
    }

    /// The summed codebook embeddings of `tokens` `(rows, len, K)` u32 on the device,
    /// `(rows, len, hidden)`.
    fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
        let mut xs = self.embed_tokens[0].forward(&tokens.i((.., .., 0))?)?;
        for (codebook, embedding) in self.embed_tokens.iter().enumerate().skip(1) {
            xs = (xs + embedding.forward(&tokens.i((.., .., codebook))?)?)?;
        }
        Ok(xs)
    }

    /// Sinusoidal positions `start..start + len`, `(1, len, hidden)` in the activations' dtype.
    fn positions(&self, start: usize, len: usize) -> Result<Tensor> {
        let table: Vec<f32> = (start..start + len).flat_map(|p| sinusoidal_position(p, self.hidden_size)).collect();
        Ok(Tensor::from_vec(table, (1, len, self.hidden_size), &self.device)?.to_dtype(self.activations())?)
    }

    /// The layers over `xs` `(rows, len, hidden)` (embeddings and positions) at the state's
    /// positions, known on the host; the last layer's output.
    fn host_pass(&self, xs: Tensor, state: &mut DecoderState) -> Result<Tensor> {
        let pass = Pass::host(state.position, xs.dim(1)?, self.activations(), &self.device)?;
        self.layers(xs, &mut state.self_kv, &pass, state.memory.as_ref())
    }

    fn layers(&self, xs: Tensor, self_kv: &mut [KvCache], pass: &Pass, memory: Option<&Memory>) -> Result<Tensor> {
        let mut xs = xs;
        for (i, (layer, cache)) in self.layers.iter().zip(self_kv.iter_mut()).enumerate() {
            xs = layer.forward(&xs, i, cache, pass, memory)?;
        }
        Ok(xs)
    }

    /// The final norm and the heads over `xs` `(rows, 1, hidden)`: logits `(rows, K, vocab)` f32.
    fn logits(&self, xs: &Tensor) -> Result<Tensor> {
        let rows = xs.dim(0)?;
        let logits = self.lm_heads.forward(&self.layer_norm.forward(xs)?)?;
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
        let mut state = decoder.start(Conditioning::CrossAttention { memory: &memory, mask: &mask }, 4).unwrap();
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
            let (memory, mask) = (memory.narrow(0, 0, rows).unwrap(), mask.narrow(0, 0, rows).unwrap());
            let mut state = decoder.start(Conditioning::CrossAttention { memory: &memory, mask: &mask }, 2).unwrap();
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
        let conditioning = Conditioning::CrossAttention { memory: &memory, mask: &mask };
        let mut a = growing.start(conditioning, inputs.len()).unwrap();
        let mut b = fixed.start(conditioning, inputs.len()).unwrap();
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
        let mut state = decoder.start(Conditioning::CrossAttention { memory: &memory, mask: &mask }, 2).unwrap();
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
            assert_eq!(half.backend, Backend::Cpu);
            let gap = relative_gap(&six_steps(&half), &reference);
            assert!(gap < bound, "{dtype:?} logits off by {gap} of the largest");
        }
    }

    /// Tokens of a `(rows, len, 2)` grid, each row and position its own.
    fn token_grid(rows: usize, len: usize) -> Vec<u32> {
        (0..rows * len * 2).map(|i| ((i * 7 + i / 5) % 17) as u32).collect()
    }

    /// Positions `from..from + len` of a [`token_grid`] as a `(rows, len, 2)` tensor.
    fn grid_block(grid: &[u32], rows: usize, total: usize, from: usize, len: usize) -> Tensor {
        let block: Vec<u32> =
            (0..rows).flat_map(|r| grid[(r * total + from) * 2..(r * total + from + len) * 2].to_vec()).collect();
        Tensor::from_vec(block, (rows, len, 2), &Device::Cpu).unwrap()
    }

    /// The logits after each call of `schedule` (0: a step, n: a prefill of n positions) over a
    /// token grid, started with three rows of memory as [`six_steps`]'s.
    fn scheduled_logits(decoder: &Decoder, schedule: &[usize]) -> Vec<Vec<f32>> {
        let memory: Vec<f32> = (0..96).map(|i| if i < 64 { (i as f32 * 0.7).sin() * 1.5 } else { 0.0 }).collect();
        let memory = Tensor::from_vec(memory, (3, 4, 8), &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], &Device::Cpu).unwrap();
        let total: usize = schedule.iter().map(|&n| n.max(1)).sum();
        let grid = token_grid(3, total);
        let mut state = decoder.start(Conditioning::CrossAttention { memory: &memory, mask: &mask }, total).unwrap();
        schedule
            .iter()
            .map(|&n| {
                let from = state.position();
                let logits = if n == 0 {
                    let tokens = grid_block(&grid, 3, total, from, 1).squeeze(1).unwrap();
                    decoder.step(&tokens, &mut state).unwrap()
                } else {
                    decoder.prefill(&grid_block(&grid, 3, total, from, n), &mut state).unwrap()
                };
                assert_eq!(logits.dims(), &[3, 2, 16]);
                logits.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            })
            .collect()
    }

    #[test]
    fn prefill_leaves_the_state_of_single_steps_in_every_mode_and_dtype() {
        let cfg = tiny_config();
        // Prefills from position 0 and from later ones, of one position and of several.
        let schedule = [4, 0, 1, 0, 3, 0, 0];
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            for mode in [StepMode::Growing, StepMode::Fixed] {
                let mut decoder = random_decoder(&cfg, dtype);
                decoder.set_step_mode(mode).unwrap();
                let got = scheduled_logits(&decoder, &schedule);
                let total: usize = schedule.iter().map(|&n| n.max(1)).sum();
                let steps = scheduled_logits(&decoder, &vec![0; total]);
                let reference: Vec<Vec<f32>> = schedule
                    .iter()
                    .scan(0, |at, &n| {
                        *at += n.max(1);
                        Some(steps[*at - 1].clone())
                    })
                    .collect();
                let gap = relative_gap(&got, &reference);
                // Measured 1.3e-7 to 2.7e-7 (summation order only: the same values are rounded
                // the same way whether they arrive one by one or together).
                assert!(gap < 1e-5, "{dtype:?} {mode:?}: prefill differs from single steps by {gap}");
            }
        }
    }

    #[test]
    fn a_fixed_cache_refuses_a_prefill_beyond_its_length() {
        let mut decoder = random_decoder(&tiny_config(), DType::F32);
        decoder.set_step_mode(StepMode::Fixed).unwrap();
        let memory = Tensor::zeros((1, 2, 8), DType::F32, &Device::Cpu).unwrap();
        let mask = Tensor::ones((1, 2), DType::U32, &Device::Cpu).unwrap();
        let mut state = decoder.start(Conditioning::CrossAttention { memory: &memory, mask: &mask }, 3).unwrap();
        let tokens = Tensor::zeros((1, 4, 2), DType::U32, &Device::Cpu).unwrap();
        let err = decoder.prefill(&tokens, &mut state).unwrap_err().to_string();
        assert!(err.contains("prefill of 4 positions from 0 is beyond the 3"), "{err}");
        assert_eq!(state.position(), 0);
    }

    /// A musicgen-melody decoder: no cross-attention in its layers.
    fn melody_config() -> DecoderConfig {
        DecoderConfig { model_type: Some("musicgen_melody_decoder".into()), ..tiny_config() }
    }

    /// transformers' `MusicgenMelodyForCausalLM` forward without a cache, written out with
    /// candle's ops: the prefix `(rows, p, hidden)` concatenated before the tokens' summed
    /// embeddings, sinusoidal positions over both, causal attention over both. Logits
    /// `(rows, p + len, K·vocab)`.
    fn melody_reference(cfg: &DecoderConfig, vb: &VarBuilder, prefix: &Tensor, tokens: &Tensor) -> Tensor {
        let (hidden, heads, vocab) = (cfg.hidden_size, cfg.num_attention_heads, cfg.vocab_size);
        let (rows, len, k) = tokens.dims3().unwrap();
        let model = vb.pp("model").pp("decoder");
        let mut embeds = Tensor::zeros((rows, len, hidden), DType::F32, &Device::Cpu).unwrap();
        for c in 0..k {
            let table = model.pp("embed_tokens").pp(c).get((vocab + 1, hidden), "weight").unwrap();
            let ids = tokens.i((.., .., c)).unwrap().flatten_all().unwrap();
            embeds = (embeds + table.index_select(&ids, 0).unwrap().reshape((rows, len, hidden)).unwrap()).unwrap();
        }
        let total = prefix.dim(1).unwrap() + len;
        let positions: Vec<f32> = (0..total).flat_map(|p| sinusoidal_position(p, hidden)).collect();
        let positions = Tensor::from_vec(positions, (1, total, hidden), &Device::Cpu).unwrap();
        let mut xs = Tensor::cat(&[prefix, &embeds], 1).unwrap().broadcast_add(&positions).unwrap();
        let causal: Vec<f32> =
            (0..total * total).map(|i| if i % total <= i / total { 0.0 } else { f32::NEG_INFINITY }).collect();
        let causal = Tensor::from_vec(causal, (1, 1, total, total), &Device::Cpu).unwrap();
        let norm = |vb: VarBuilder, xs: &Tensor| {
            let (w, b) = (vb.get(hidden, "weight").unwrap(), vb.get(hidden, "bias").unwrap());
            candle_nn::ops::layer_norm(xs, &w, &b, 1e-5).unwrap()
        };
        let project = |vb: VarBuilder, xs: &Tensor, out: usize, inputs: usize| {
            xs.broadcast_matmul(&vb.get((out, inputs), "weight").unwrap().t().unwrap()).unwrap()
        };
        let split = |xs: Tensor| {
            xs.reshape((rows, total, heads, hidden / heads)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap()
        };
        for l in 0..cfg.num_hidden_layers {
            let layer = model.pp("layers").pp(l);
            let attn = layer.pp("self_attn");
            let h = norm(layer.pp("self_attn_layer_norm"), &xs);
            let scale = ((hidden / heads) as f64).powf(-0.5);
            let q = split((project(attn.pp("q_proj"), &h, hidden, hidden) * scale).unwrap());
            let key = split(project(attn.pp("k_proj"), &h, hidden, hidden));
            let value = split(project(attn.pp("v_proj"), &h, hidden, hidden));
            let scores = q.matmul(&key.t().unwrap()).unwrap().broadcast_add(&causal).unwrap();
            let attended = candle_nn::ops::softmax_last_dim(&scores).unwrap().matmul(&value).unwrap();
            let attended = attended.transpose(1, 2).unwrap().reshape((rows, total, hidden)).unwrap();
            xs = (xs + project(attn.pp("out_proj"), &attended, hidden, hidden)).unwrap();
            let h = norm(layer.pp("final_layer_norm"), &xs);
            let h = project(layer.pp("fc1"), &h, cfg.ffn_dim, hidden).gelu_erf().unwrap();
            xs = (xs + project(layer.pp("fc2"), &h, hidden, cfg.ffn_dim)).unwrap();
        }
        let xs = norm(model.pp("layer_norm"), &xs);
        let logits: Vec<Tensor> = (0..k).map(|c| project(vb.pp("lm_heads").pp(c), &xs, vocab, hidden)).collect();
        Tensor::cat(&logits, 2).unwrap()
    }

    #[test]
    fn a_prefix_is_attended_as_the_positions_before_the_tokens() {
        let cfg = melody_config();
        let vb = crate::model::random::RandomWeights::new(7).var_builder(DType::F32, &Device::Cpu);
        let decoder = Decoder::load(&cfg, vb.clone()).unwrap();
        assert!(!decoder.has_cross_attention());
        let (rows, prefix_len, len) = (2, 3, 4);
        let prefix: Vec<f32> = (0..rows * prefix_len * 8).map(|i| (i as f32 * 0.37).cos()).collect();
        let prefix = Tensor::from_vec(prefix, (rows, prefix_len, 8), &Device::Cpu).unwrap();
        let grid = token_grid(rows, len);
        let tokens = grid_block(&grid, rows, len, 0, len);
        let reference = melody_reference(&cfg, &vb, &prefix, &tokens);
        let expected = |t: usize| -> Vec<f32> {
            reference.i((.., prefix_len + t)).unwrap().flatten_all().unwrap().to_vec1().unwrap()
        };
        let reference_steps: Vec<Vec<f32>> = (0..len).map(expected).collect();
        for mode in [StepMode::Growing, StepMode::Fixed] {
            let mut decoder = decoder.clone();
            decoder.set_step_mode(mode).unwrap();
            let mut state = decoder.start(Conditioning::Prefix(&prefix), len).unwrap();
            assert_eq!(state.position(), prefix_len);
            let got: Vec<Vec<f32>> = (0..len)
                .map(|t| {
                    let tokens = grid_block(&grid, rows, len, t, 1).squeeze(1).unwrap();
                    decoder.step(&tokens, &mut state).unwrap().flatten_all().unwrap().to_vec1().unwrap()
                })
                .collect();
            let gap = relative_gap(&got, &reference_steps);
            // Measured 2.0e-7, the prefill too.
            assert!(gap < 1e-5, "{mode:?}: prefix then steps differ from the full forward by {gap}");
            let mut state = decoder.start(Conditioning::Prefix(&prefix), len).unwrap();
            let last = decoder.prefill(&tokens, &mut state).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let gap = relative_gap(&[last], &reference_steps[len - 1..]);
            assert!(gap < 1e-5, "{mode:?}: prefix then prefill differs from the full forward by {gap}");
        }

        // Each decoder takes the conditioning its layers are made for.
        let memory = Tensor::zeros((rows, 2, 8), DType::F32, &Device::Cpu).unwrap();
        let mask = Tensor::ones((rows, 2), DType::U32, &Device::Cpu).unwrap();
        let err = decoder.start(Conditioning::CrossAttention { memory: &memory, mask: &mask }, 2).unwrap_err();
        assert!(err.to_string().contains("no cross-attention"), "{err}");
        let musicgen = random_decoder(&tiny_config(), DType::F32);
        let err = musicgen.start(Conditioning::Prefix(&prefix), 2).unwrap_err();
        assert!(err.to_string().contains("not a prefix"), "{err}");
    }
}
