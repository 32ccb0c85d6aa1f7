//! `config.json` of an HF MusicGen checkpoint: three sub-configs (T5 text encoder, EnCodec
//! audio codec, MusicGen decoder). Fields mirror transformers' names; a missing field takes
//! the default of transformers' config class (`T5Config`, `EncodecConfig`,
//! `MusicgenDecoderConfig`: the same in 4.3x and 5.x), an unknown one is ignored. This matters
//! because `save_pretrained` writes only the fields that differ from those class defaults.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// Named in errors from [`MusicgenConfig::from_json`], which has no path.
const CONFIG_FILE_NAME: &str = "config.json";

#[derive(Debug, Clone, Deserialize)]
pub struct MusicgenConfig {
    #[serde(default)]
    pub model_type: Option<String>,
    pub text_encoder: T5Config,
    pub audio_encoder: EncodecConfig,
    /// transformers 5.x builds a default decoder config when the key is absent; 4.3x required it.
    #[serde(default)]
    pub decoder: DecoderConfig,
    /// musicgen-melody: chroma bins per melody frame (`MusicgenMelodyConfig.num_chroma`).
    #[serde(default = "default_num_chroma")]
    pub num_chroma: usize,
    /// musicgen-melody: melody frames in the decoder's prefix (`chroma_length`).
    #[serde(default = "default_chroma_length")]
    pub chroma_length: usize,
}

fn default_num_chroma() -> usize {
    12
}

fn default_chroma_length() -> usize {
    235
}

/// The two `model_type`s this engine runs.
pub const MUSICGEN: &str = "musicgen";
pub const MUSICGEN_MELODY: &str = "musicgen_melody";
const MELODY_DECODER: &str = "musicgen_melody_decoder";

impl MusicgenConfig {
    /// Reads and checks `config.json`, refusing architectures we do not implement by name.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::MissingFile {
            path: path.to_path_buf(),
            hint: format!("{e}; a MusicGen checkpoint directory holds config.json"),
        })?;
        Self::from_json(&text).map_err(|e| match e {
            Error::BadCheckpoint { message, .. } => Error::BadCheckpoint { path: path.to_path_buf(), message },
            other => other,
        })
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let malformed = |message: String| Error::BadCheckpoint { path: PathBuf::from(CONFIG_FILE_NAME), message };
        let raw: serde_json::Value =
            serde_json::from_str(text).map_err(|e| malformed(format!("not valid JSON ({e}); download it again")))?;
        let model_type = raw.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
        if model_type != MUSICGEN && model_type != MUSICGEN_MELODY {
            let name = if model_type.is_empty() { "(no model_type)" } else { model_type };
            return Err(Error::Unsupported(format!(
                "model_type {name:?}: only \"{MUSICGEN}\" (text to music) and \"{MUSICGEN_MELODY}\" \
                 checkpoints are supported"
            )));
        }
        // transformers pops `model_type` from both encoder sub-configs to pick their classes,
        // so a config without them cannot be loaded there either.
        for key in ["text_encoder", "audio_encoder"] {
            let sub = raw.get(key).ok_or_else(|| {
                Error::Unsupported(format!("config.json has no \"{key}\" section; it is not a MusicGen checkpoint"))
            })?;
            if sub.get("model_type").and_then(|v| v.as_str()).is_none() {
                return Err(Error::Unsupported(format!("config.json's \"{key}\" section has no model_type")));
            }
        }
        let mut config: Self = serde_json::from_value(raw)
            .map_err(|e| malformed(format!("a field has the wrong type ({e}); download it again")))?;
        // transformers builds the melody decoder from the top-level model_type, whatever the
        // decoder section says of itself (older saves leave it out).
        if config.is_melody() {
            match config.decoder.model_type.as_deref() {
                None | Some(MELODY_DECODER) => config.decoder.model_type = Some(MELODY_DECODER.into()),
                Some(other) => {
                    return Err(Error::Unsupported(format!(
                        "a {MUSICGEN_MELODY} checkpoint with a {other:?} decoder (expected {MELODY_DECODER:?})"
                    )))
                }
            }
        } else if config.decoder.model_type.as_deref() == Some(MELODY_DECODER) {
            return Err(Error::Unsupported(format!("a {MUSICGEN} checkpoint with a {MELODY_DECODER:?} decoder")));
        }
        config.check()?;
        Ok(config)
    }

    /// Whether this is musicgen-melody: a decoder conditioned by a prefix of melody chroma and
    /// text states instead of cross-attention.
    pub fn is_melody(&self) -> bool {
        self.model_type.as_deref() == Some(MUSICGEN_MELODY)
    }

    fn check(&self) -> Result<()> {
        let t = &self.text_encoder;
        if let Some(mt) = &t.model_type {
            if mt != "t5" {
                return Err(Error::Unsupported(format!("text encoder {mt:?}: only T5 is supported")));
            }
        }
        t.feed_forward()?;
        if t.num_heads == 0 || t.d_kv == 0 || t.relative_attention_num_buckets < 4 {
            return Err(Error::Unsupported(format!(
                "T5 with {} heads of {} and {} relative-position buckets",
                t.num_heads, t.d_kv, t.relative_attention_num_buckets
            )));
        }
        let a = &self.audio_encoder;
        if let Some(mt) = &a.model_type {
            if mt != "encodec" {
                return Err(Error::Unsupported(format!("audio encoder {mt:?}: only EnCodec is supported")));
            }
        }
        if a.use_causal_conv {
            return Err(Error::Unsupported("EnCodec with causal convolutions (the 24 kHz/48 kHz codecs)".into()));
        }
        if a.norm_type != "weight_norm" {
            return Err(Error::Unsupported(format!("EnCodec norm_type {:?}: only weight_norm", a.norm_type)));
        }
        if a.pad_mode != "reflect" && a.pad_mode != "constant" {
            return Err(Error::Unsupported(format!("EnCodec pad_mode {:?}", a.pad_mode)));
        }
        if a.upsampling_ratios.is_empty() || a.upsampling_ratios.contains(&0) {
            return Err(Error::Unsupported(format!("EnCodec upsampling_ratios {:?}", a.upsampling_ratios)));
        }
        let d = &self.decoder;
        if d.num_attention_heads == 0 || d.num_codebooks == 0 {
            return Err(Error::Unsupported(format!(
                "decoder with {} attention heads and {} codebooks",
                d.num_attention_heads, d.num_codebooks
            )));
        }
        if d.audio_channels != 1 && d.audio_channels != 2 {
            return Err(Error::Unsupported(format!("{} audio channels (1 or 2 only)", d.audio_channels)));
        }
        if d.num_codebooks % d.audio_channels != 0 {
            return Err(Error::Unsupported(format!(
                "{} codebooks do not split over {} channels",
                d.num_codebooks, d.audio_channels
            )));
        }
        if self.is_melody() && (self.num_chroma == 0 || self.chroma_length == 0) {
            return Err(Error::Unsupported(format!(
                "musicgen-melody with num_chroma {} and chroma_length {} (both must be at least 1)",
                self.num_chroma, self.chroma_length
            )));
        }
        if d.hidden_size % d.num_attention_heads != 0 {
            return Err(Error::Unsupported(format!(
                "decoder hidden_size {} is not a multiple of {} heads",
                d.hidden_size, d.num_attention_heads
            )));
        }
        Ok(())
    }

    /// Codebooks per audio channel (4 for every published checkpoint).
    pub fn codebooks_per_channel(&self) -> usize {
        self.decoder.num_codebooks / self.decoder.audio_channels
    }
}

/// T5 encoder settings (transformers' `T5Config`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct T5Config {
    pub model_type: Option<String>,
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    /// `relu`, `gated-gelu`, `gelu`, `gated-silu`...: the FFN's activation, gated or not
    /// (see [`T5Config::feed_forward`]).
    pub feed_forward_proj: String,
    pub pad_token_id: u32,
    pub eos_token_id: u32,
}

impl Default for T5Config {
    fn default() -> Self {
        Self {
            model_type: None,
            vocab_size: 32128,
            d_model: 512,
            d_kv: 64,
            d_ff: 2048,
            num_layers: 6,
            num_heads: 8,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "relu".into(),
            pad_token_id: 0,
            eos_token_id: 1,
        }
    }
}

/// Activation of T5's feed-forward block, by the name transformers' `ACT2FN` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum T5Activation {
    Relu,
    /// Exact (erf) GELU, transformers' "gelu".
    Gelu,
    /// tanh-approximated GELU, transformers' "gelu_new" / "gelu_pytorch_tanh".
    GeluTanh,
    Silu,
}

/// The parsed `feed_forward_proj`: `ACT` or `gated-ACT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct T5FeedForward {
    pub activation: T5Activation,
    /// Gated FFNs have two input projections (`wi_0` through the activation, times `wi_1`).
    pub gated: bool,
}

impl T5Config {
    /// Parses `feed_forward_proj` as transformers' `T5Config.__init__` does, including its
    /// special case that "gated-gelu" means the tanh approximation ("gelu_new").
    pub fn feed_forward(&self) -> Result<T5FeedForward> {
        let proj = self.feed_forward_proj.as_str();
        let parts: Vec<&str> = proj.split('-').collect();
        let gated = parts[0] == "gated";
        if (parts.len() > 1 && !gated) || parts.len() > 2 {
            return Err(Error::Unsupported(format!(
                "T5 feed_forward_proj {proj:?}: expected \"ACT\" or \"gated-ACT\", e.g. \"relu\" or \"gated-gelu\""
            )));
        }
        let name = if proj == "gated-gelu" { "gelu_new" } else { parts[parts.len() - 1] };
        let activation = match name {
            "relu" => T5Activation::Relu,
            "gelu" => T5Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => T5Activation::GeluTanh,
            "silu" | "swish" => T5Activation::Silu,
            other => {
                return Err(Error::Unsupported(format!(
                    "T5 activation {other:?} (from feed_forward_proj {proj:?}); supported: relu, gelu, gelu_new, \
                     gelu_pytorch_tanh, silu"
                )))
            }
        };
        Ok(T5FeedForward { activation, gated })
    }
}

/// EnCodec settings (transformers' `EncodecConfig`). Only the decoder half is used.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct EncodecConfig {
    pub model_type: Option<String>,
    /// kbps; the last one fixes how many quantizers the model has (see `num_quantizers`).
    pub target_bandwidths: Vec<f64>,
    pub sampling_rate: u32,
    pub audio_channels: usize,
    pub normalize: bool,
    pub hidden_size: usize,
    pub num_filters: usize,
    pub num_residual_layers: usize,
    pub upsampling_ratios: Vec<usize>,
    pub norm_type: String,
    pub kernel_size: usize,
    pub last_kernel_size: usize,
    pub residual_kernel_size: usize,
    pub dilation_growth_rate: usize,
    pub use_causal_conv: bool,
    pub pad_mode: String,
    pub compress: usize,
    pub num_lstm_layers: usize,
    pub trim_right_ratio: f64,
    pub codebook_size: usize,
    pub codebook_dim: Option<usize>,
    pub use_conv_shortcut: bool,
}

impl Default for EncodecConfig {
    fn default() -> Self {
        Self {
            model_type: None,
            target_bandwidths: vec![1.5, 3.0, 6.0, 12.0, 24.0],
            sampling_rate: 24000,
            audio_channels: 1,
            normalize: false,
            hidden_size: 128,
            num_filters: 32,
            num_residual_layers: 1,
            upsampling_ratios: vec![8, 5, 4, 2],
            norm_type: "weight_norm".into(),
            kernel_size: 7,
            last_kernel_size: 7,
            residual_kernel_size: 3,
            dilation_growth_rate: 2,
            use_causal_conv: true,
            pad_mode: "reflect".into(),
            compress: 2,
            num_lstm_layers: 2,
            trim_right_ratio: 1.0,
            codebook_size: 1024,
            codebook_dim: None,
            use_conv_shortcut: true,
        }
    }
}

impl EncodecConfig {
    /// Samples per frame of codes.
    pub fn hop_length(&self) -> usize {
        self.upsampling_ratios.iter().product()
    }

    pub fn codebook_dim(&self) -> usize {
        self.codebook_dim.unwrap_or(self.hidden_size)
    }

    /// Frames of codes per second, rounded up as transformers' `EncodecConfig.frame_rate`.
    pub fn frame_rate(&self) -> usize {
        (self.sampling_rate as usize).div_ceil(self.hop_length().max(1))
    }

    /// Residual quantizers in the checkpoint: transformers' `EncodecConfig.num_quantizers`,
    /// `int(1000 * target_bandwidths[-1] // (frame_rate * 10))`.
    pub fn num_quantizers(&self) -> usize {
        let bandwidth = self.target_bandwidths.last().copied().unwrap_or(0.0);
        (1000.0 * bandwidth / (self.frame_rate() as f64 * 10.0)).floor() as usize
    }
}

/// MusicGen decoder settings (transformers' `MusicgenDecoderConfig`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DecoderConfig {
    pub model_type: Option<String>,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub num_hidden_layers: usize,
    pub ffn_dim: usize,
    pub num_attention_heads: usize,
    pub activation_function: String,
    pub hidden_size: usize,
    pub scale_embedding: bool,
    pub num_codebooks: usize,
    pub audio_channels: usize,
    pub pad_token_id: u32,
    pub bos_token_id: u32,
    /// Saved by transformers 5.x beside `bos_token_id`; generation_config.json's value wins.
    pub decoder_start_token_id: Option<u32>,
    pub tie_word_embeddings: bool,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        Self {
            model_type: None,
            vocab_size: 2048,
            max_position_embeddings: 2048,
            num_hidden_layers: 24,
            ffn_dim: 4096,
            num_attention_heads: 16,
            activation_function: "gelu".into(),
            hidden_size: 1024,
            scale_embedding: false,
            num_codebooks: 4,
            audio_channels: 1,
            pad_token_id: 2048,
            bos_token_id: 2048,
            decoder_start_token_id: None,
            tie_word_embeddings: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_other_architectures_by_name() {
        let err = MusicgenConfig::from_json(r#"{"model_type": "musicgen_sdxl"}"#).unwrap_err().to_string();
        assert!(err.contains("musicgen_sdxl") && err.contains("musicgen_melody"), "{err}");
    }

    #[test]
    fn missing_fields_take_transformers_defaults() {
        let c = MusicgenConfig::from_json(
            r#"{"model_type": "musicgen", "text_encoder": {"model_type": "t5"},
                "audio_encoder": {"model_type": "encodec", "use_causal_conv": false},
                "decoder": {"model_type": "musicgen_decoder", "some_future_field": 1}}"#,
        )
        .unwrap();
        assert_eq!(c.decoder.num_codebooks, 4);
        assert_eq!(c.text_encoder.relative_attention_num_buckets, 32);
        assert_eq!(c.audio_encoder.hop_length(), 320);
    }

    /// The musicgen-small config as transformers 4.31 saved it (abridged to the fields we read).
    const SMALL_4_3X: &str = r#"{
        "architectures": ["MusicgenForConditionalGeneration"], "model_type": "musicgen",
        "audio_encoder": {"model_type": "encodec", "sampling_rate": 32000, "target_bandwidths": [2.2],
            "upsampling_ratios": [8, 5, 4, 4], "num_filters": 64, "codebook_size": 2048, "codebook_dim": 128,
            "use_causal_conv": false, "norm_type": "weight_norm", "pad_mode": "reflect", "normalize": false,
            "chunk_length_s": null, "overlap": null},
        "decoder": {"model_type": "musicgen_decoder", "hidden_size": 1024, "num_hidden_layers": 24,
            "num_attention_heads": 16, "ffn_dim": 4096, "vocab_size": 2048, "num_codebooks": 4,
            "eos_token_id": null, "dropout": 0.1},
        "text_encoder": {"model_type": "t5", "_name_or_path": "t5-base", "d_model": 768, "d_ff": 3072,
            "num_layers": 12, "num_heads": 12, "feed_forward_proj": "relu", "dense_act_fn": "relu",
            "is_gated_act": false, "n_positions": 512},
        "is_encoder_decoder": true, "torch_dtype": "float32", "transformers_version": "4.31.0.dev0"
    }"#;

    #[test]
    fn parses_the_published_4_3x_dialect() {
        let c = MusicgenConfig::from_json(SMALL_4_3X).unwrap();
        assert_eq!(c.text_encoder.d_model, 768);
        assert_eq!(c.audio_encoder.hop_length(), 640);
        assert_eq!(c.audio_encoder.frame_rate(), 50);
        assert_eq!(c.audio_encoder.num_quantizers(), 4);
        assert_eq!(c.decoder.pad_token_id, 2048);
        assert_eq!(c.codebooks_per_channel(), 4);
    }

    #[test]
    fn a_5x_config_may_omit_the_decoder() {
        let c = MusicgenConfig::from_json(
            r#"{"model_type": "musicgen", "text_encoder": {"model_type": "t5"},
                "audio_encoder": {"model_type": "encodec", "use_causal_conv": false}}"#,
        )
        .unwrap();
        assert_eq!(c.decoder.hidden_size, 1024);
        assert_eq!(c.audio_encoder.num_quantizers(), 32);
    }

    #[test]
    fn encoder_sections_need_their_model_type() {
        let err = MusicgenConfig::from_json(
            r#"{"model_type": "musicgen", "text_encoder": {}, "audio_encoder": {"model_type": "encodec"}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("text_encoder") && err.contains("model_type"), "{err}");
    }

    #[test]
    fn feed_forward_proj_follows_transformers() {
        let ff = |proj: &str| T5Config { feed_forward_proj: proj.into(), ..T5Config::default() }.feed_forward();
        assert_eq!(ff("relu").unwrap(), T5FeedForward { activation: T5Activation::Relu, gated: false });
        assert_eq!(ff("gated-gelu").unwrap(), T5FeedForward { activation: T5Activation::GeluTanh, gated: true });
        assert_eq!(ff("gelu").unwrap(), T5FeedForward { activation: T5Activation::Gelu, gated: false });
        assert_eq!(ff("gated-silu").unwrap(), T5FeedForward { activation: T5Activation::Silu, gated: true });
        let err = ff("fancy-relu").unwrap_err().to_string();
        assert!(err.contains("fancy-relu"), "{err}");
        assert!(ff("gated-mish").unwrap_err().to_string().contains("mish"));
    }
}
