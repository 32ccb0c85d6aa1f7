//! EnCodec: MusicGen's audio codes to a waveform and back, as transformers'
//! `EncodecModel.decode` and `EncodecModel.encode` compute them for the 32 kHz codec (one chunk,
//! no scales, no normalisation).
//!
//! Encoding (a continuation's prompt) runs the SEANet encoder (conv, four strided-conv
//! downsampling stages with residual blocks, LSTM, conv) to `(B, ceil(S / hop), hidden)` and
//! the residual vector quantizer's nearest-vector search, codebook by codebook.
//!
//! Codes `(B, K, T)` go through the residual vector quantizer (the sum of K codebook vectors
//! per frame) and the SEANet decoder (conv, LSTM, four transposed-conv upsampling stages with
//! residual blocks, conv) to `(B, audio_channels, T * hop_length)` samples. Everything runs in
//! f32 whatever the decoder's dtype; weight norm is folded into plain weights at load time.
//! Inside, signals are time-major `(B, T, C)`: each convolution is one matrix product per time
//! chunk (plus shifted sums of tap responses), with no im2col buffer and no transposes between
//! layers. The LSTM, sequential over frames, runs once for the whole batch; the upsampling
//! stack runs one item at a time to bound memory.
//!
//! ```no_run
//! # fn main() -> musicgen::Result<()> {
//! use candle_core::{DType, Device, Tensor};
//! use musicgen::MusicgenConfig;
//! use musicgen::internals::EncodecDecoder;
//! let config = MusicgenConfig::from_file("musicgen-small/config.json".as_ref())?;
//! let files = ["musicgen-small/model.safetensors"];
//! let vb = unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(&files, DType::F32, &Device::Cpu)? };
//! let codec = EncodecDecoder::load(vb.pp("audio_encoder"), &config.audio_encoder, config.codebooks_per_channel())?;
//! let codes = Tensor::zeros((1, 4, 50), DType::U32, &Device::Cpu)?;
//! let audio = codec.decode(&codes)?; // (1, 1, 32000): one second
//! # Ok(()) }
//! ```

mod conv;
// CUDA builds fuse the LSTM's cell step into one kernel; others compile a stub that never applies.
#[cfg_attr(not(feature = "cuda"), path = "encodec/cuda_lstm_stub.rs")]
mod cuda_lstm;
mod lstm;
mod quantizer;
mod seanet;
mod stream;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use self::conv::{ConvStyle, PadMode};
use self::quantizer::ResidualVectorQuantizer;
use self::seanet::{SeanetDecoder, SeanetEncoder};
use crate::config::EncodecConfig;
use crate::error::{Error, Result};

pub use self::stream::DecodeStream;

/// The decoding half of an EnCodec checkpoint, loaded once and reused.
#[derive(Debug, Clone)]
pub struct EncodecDecoder {
    quantizer: ResidualVectorQuantizer,
    decoder: SeanetDecoder,
    hop_length: usize,
    audio_channels: usize,
    sample_rate: u32,
}

impl EncodecDecoder {
    /// Loads the first `num_codebooks` codebooks and the SEANet decoder from `vb`, which points
    /// at the codec (`audio_encoder` in a MusicGen checkpoint). Weights are read as f32 on
    /// `vb`'s device whatever `vb`'s dtype.
    pub fn load(vb: VarBuilder, cfg: &EncodecConfig, num_codebooks: usize) -> Result<Self> {
        let (vb, style, quantizer) = open_codec(vb, cfg, num_codebooks)?;
        let decoder = SeanetDecoder::load(&vb.pp("decoder"), cfg, style)?;
        Ok(Self {
            quantizer,
            decoder,
            hop_length: cfg.hop_length(),
            audio_channels: cfg.audio_channels,
            sample_rate: cfg.sampling_rate,
        })
    }

    /// Codes `(B, K, T)` (u32 or i64, `1 <= K <=` the loaded codebooks, every value a valid
    /// index) to f32 audio `(B, audio_channels, T * hop_length)`. Batch items are independent:
    /// decoding a batch equals decoding each item alone.
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        let latent = self.quantizer.decode(codes)?;
        // The LSTM steps frame by frame, so it runs on the whole batch at once; the upsampling
        // stack works on up to hop_length times more samples and runs one item at a time to
        // bound its memory.
        let latent = self.decoder.forward_latent(&latent)?;
        let batch = latent.dim(0)?;
        let items = (0..batch)
            .map(|i| {
                let samples = self.decoder.forward_upsample(&latent.narrow(0, i, 1)?)?;
                Ok(samples.transpose(1, 2)?.contiguous()?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&items, 0)?)
    }

    /// Decodes codebooks interleaved over `channels` outputs, as stereo MusicGen stores them:
    /// codebook `k` belongs to channel `k % channels` (even = left, odd = right), and each
    /// channel's codebooks are decoded alone. `(B, channels * K', T)` ->
    /// `(B, channels * audio_channels, T * hop_length)`.
    pub fn decode_interleaved(&self, codes: &Tensor, channels: usize) -> Result<Tensor> {
        let (batch, k, _) = codes.dims3()?;
        if channels == 0 || k % channels != 0 {
            return Err(Error::Tensor(candle_core::Error::Msg(format!(
                "EnCodec codes: {k} codebooks do not split over {channels} channels"
            ))));
        }
        if channels == 1 {
            return self.decode(codes);
        }
        // The channels become batch items of one decode, so the LSTM reads its weights once
        // per frame for all of them.
        let per_channel = (0..channels)
            .map(|c| {
                let ids: Vec<u32> = (c..k).step_by(channels).map(|i| i as u32).collect();
                let ids = Tensor::from_vec(ids, k / channels, codes.device())?;
                Ok(codes.index_select(&ids, 1)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let audio = self.decode(&Tensor::cat(&per_channel, 0)?)?;
        let outputs =
            (0..channels).map(|c| audio.narrow(0, c * batch, batch)).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::cat(&outputs, 1)?)
    }

    /// Samples per frame of codes (640 for the 32 kHz codec).
    pub fn hop_length(&self) -> usize {
        self.hop_length
    }

    /// Channels of one decoded stream (1 for every MusicGen codec).
    pub fn audio_channels(&self) -> usize {
        self.audio_channels
    }

    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Whether `other` is a clone of this decoder (the same memory), not an equal copy.
    pub(crate) fn same_tensors(&self, other: &Self) -> bool {
        self.quantizer.same_tensors(&other.quantizer)
    }

    /// How many codebooks were loaded: the most `decode` accepts.
    pub fn num_codebooks(&self) -> usize {
        self.quantizer.num_codebooks()
    }
}

/// The encoding half of an EnCodec checkpoint: waveforms to codes.
#[derive(Debug, Clone)]
pub struct EncodecEncoder {
    encoder: SeanetEncoder,
    quantizer: ResidualVectorQuantizer,
    audio_channels: usize,
    hop_length: usize,
}

impl EncodecEncoder {
    /// Loads the SEANet encoder and the first `num_codebooks` codebooks from `vb` (at
    /// `audio_encoder`), as f32 whatever `vb`'s dtype.
    pub fn load(vb: VarBuilder, cfg: &EncodecConfig, num_codebooks: usize) -> Result<Self> {
        let (vb, style, quantizer) = open_codec(vb, cfg, num_codebooks)?;
        let encoder = SeanetEncoder::load(&vb.pp("encoder"), cfg, style)?;
        Ok(Self { encoder, quantizer, audio_channels: cfg.audio_channels, hop_length: cfg.hop_length() })
    }

    /// The encoder's output for f32 audio `(B, audio_channels, S)`: `(B, hidden, ceil(S / hop))`,
    /// laid out as transformers' `EncodecModel.encoder` returns it.
    pub fn embed(&self, audio: &Tensor) -> Result<Tensor> {
        Ok(self.embed_time_major(audio)?.transpose(1, 2)?.contiguous()?)
    }

    /// Audio `(B, audio_channels, S)` to codes `(B, K, ceil(S / hop))` u32, K the loaded codebooks.
    pub fn encode(&self, audio: &Tensor) -> Result<Tensor> {
        self.quantizer.encode(&self.embed_time_major(audio)?)
    }

    /// Encodes each of `channels` input channels alone and interleaves their codebooks, as
    /// stereo MusicGen reads them (codebook `k` of the result belongs to channel `k % channels`):
    /// `(B, channels * audio_channels, S)` -> `(B, channels * K, ceil(S / hop))`.
    pub fn encode_interleaved(&self, audio: &Tensor, channels: usize) -> Result<Tensor> {
        let (batch, c, _) = audio.dims3()?;
        if channels == 0 || c != channels * self.audio_channels {
            return Err(Error::Tensor(candle_core::Error::Msg(format!(
                "EnCodec input: {c} channels for {channels} streams of {} channel(s)",
                self.audio_channels
            ))));
        }
        if channels == 1 {
            return self.encode(audio);
        }
        // The channels become batch items of one encode; their codes are then woven together.
        let streams = (0..channels)
            .map(|i| audio.narrow(1, i * self.audio_channels, self.audio_channels))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let codes = self.encode(&Tensor::cat(&streams, 0)?)?;
        let (_, k, frames) = codes.dims3()?;
        let per_stream =
            (0..channels).map(|i| codes.narrow(0, i * batch, batch)).collect::<candle_core::Result<Vec<_>>>()?;
        // (channels, B, K, T) -> (B, K, channels, T) -> (B, K * channels, T): codebook j of stream i at j * channels + i.
        let stacked = Tensor::stack(&per_stream, 0)?.permute((1, 2, 0, 3))?.contiguous()?;
        Ok(stacked.reshape((batch, k * channels, frames))?)
    }

    fn embed_time_major(&self, audio: &Tensor) -> Result<Tensor> {
        let (batch, c, samples) = audio.dims3()?;
        if c != self.audio_channels || samples == 0 {
            return Err(Error::Tensor(candle_core::Error::Msg(format!(
                "EnCodec input {:?}: expected (batch, {}, samples ≥ 1)",
                audio.dims(),
                self.audio_channels
            ))));
        }
        let audio = audio.to_dtype(DType::F32)?.transpose(1, 2)?.contiguous()?;
        // The downsampling stack works on up to hop_length times more samples than the LSTM and
        // runs one item at a time to bound its memory; the LSTM steps over the whole batch.
        let items =
            (0..batch).map(|i| self.encoder.forward_downsample(&audio.narrow(0, i, 1)?)).collect::<Result<Vec<_>>>()?;
        self.encoder.forward_latent(&Tensor::cat(&items, 0)?)
    }

    /// Samples per frame of codes (640 for the 32 kHz codec).
    pub fn hop_length(&self) -> usize {
        self.hop_length
    }

    /// How many codebooks `encode` returns per stream.
    pub fn num_codebooks(&self) -> usize {
        self.quantizer.num_codebooks()
    }
}

/// What both halves start from: the checked settings, `vb` reading f32, and the first
/// `num_codebooks` codebooks.
fn open_codec<'a>(
    vb: VarBuilder<'a>,
    cfg: &EncodecConfig,
    num_codebooks: usize,
) -> Result<(VarBuilder<'a>, ConvStyle, ResidualVectorQuantizer)> {
    let style = check_config(cfg)?;
    if num_codebooks == 0 {
        return Err(Error::Unsupported("EnCodec with 0 codebooks".into()));
    }
    let vb = vb.set_dtype(DType::F32);
    let quantizer =
        ResidualVectorQuantizer::load(&vb.pp("quantizer"), num_codebooks, cfg.codebook_size, cfg.codebook_dim())?;
    Ok((vb, style, quantizer))
}

/// Refuses settings transformers refuses or this decoder does not implement, naming them.
fn check_config(cfg: &EncodecConfig) -> Result<ConvStyle> {
    let unsupported = |what: String| Err(Error::Unsupported(format!("EnCodec {what}")));
    if cfg.norm_type != "weight_norm" {
        return unsupported(format!("norm_type {:?}: only \"weight_norm\" is implemented", cfg.norm_type));
    }
    let pad_mode = match cfg.pad_mode.as_str() {
        "reflect" => PadMode::Reflect,
        "constant" => PadMode::Constant,
        other => return unsupported(format!("pad_mode {other:?}: only \"reflect\" and \"constant\"")),
    };
    if cfg.codebook_dim() != cfg.hidden_size {
        return unsupported(format!(
            "codebook_dim {} != hidden_size {}: transformers' decoder has no projection between them",
            cfg.codebook_dim(),
            cfg.hidden_size
        ));
    }
    if !(0.0..=1.0).contains(&cfg.trim_right_ratio) || (!cfg.use_causal_conv && cfg.trim_right_ratio != 1.0) {
        return unsupported(format!(
            "trim_right_ratio {} (must be 1.0 for non-causal convolutions, within [0, 1] for causal ones)",
            cfg.trim_right_ratio
        ));
    }
    let positive = [
        ("hidden_size", cfg.hidden_size),
        ("num_filters", cfg.num_filters),
        ("audio_channels", cfg.audio_channels),
        ("kernel_size", cfg.kernel_size),
        ("last_kernel_size", cfg.last_kernel_size),
        ("residual_kernel_size", cfg.residual_kernel_size),
        ("dilation_growth_rate", cfg.dilation_growth_rate),
        ("compress", cfg.compress),
        ("num_lstm_layers", cfg.num_lstm_layers),
        ("codebook_size", cfg.codebook_size),
    ];
    if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
        return unsupported(format!("{name} 0: must be at least 1"));
    }
    if cfg.upsampling_ratios.len() > 16 || cfg.num_residual_layers > 16 {
        return unsupported(format!(
            "with {} upsampling ratios and {} residual layers (at most 16 of each)",
            cfg.upsampling_ratios.len(),
            cfg.num_residual_layers
        ));
    }
    if cfg.upsampling_ratios.contains(&0) {
        return unsupported(format!("upsampling_ratios {:?}: every ratio must be at least 1", cfg.upsampling_ratios));
    }
    if cfg.num_filters / cfg.compress == 0 {
        return unsupported(format!(
            "num_filters {} with compress {}: residual blocks would have no channels",
            cfg.num_filters, cfg.compress
        ));
    }
    Ok(ConvStyle { causal: cfg.use_causal_conv, pad_mode, trim_right_ratio: cfg.trim_right_ratio })
}
