//! `config.json` of an HF MusicGen checkpoint: three sub-configs (T5 text encoder, EnCodec
//! audio codec, MusicGen decoder). Fields mirror transformers' names; a missing field takes
//! transformers' default, an unknown one is ignored, so configs saved by transformers 4.3x
//! and 5.x both parse.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
pub struct MusicgenConfig {
    #[serde(default)]
    pub model_type: Option<String>,
    pub text_encoder: T5Config,
    pub audio_encoder: EncodecConfig,
    pub decoder: DecoderConfig,
}

impl MusicgenConfig {
    /// Reads and checks `config.json`, refusing architectures we do not implement by name.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::MissingFile {
            path: path.to_path_buf(),
            hint: format!("{e}; a MusicGen checkpoint directory holds config.json"),
        })?;
        Self::from_json(&text).map_err(|e| match e {
            Error::Unsupported(_) => e,
            other => Error::BadCheckpoint { path: path.to_path_buf(), message: other.to_string() },
        })
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let raw: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::Unsupported(format!("config.json is not valid JSON: {e}")))?;
        let model_type = raw.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
        if model_type != "musicgen" {
            let name = if model_type.is_empty() { "(no model_type)" } else { model_type };
            return Err(Error::Unsupported(format!(
                "model_type {name:?}: only text-to-music \"musicgen\" checkpoints are supported \
                 (musicgen-melody and others are not yet)"
            )));
        }
        let config: Self = serde_json::from_value(raw)
            .map_err(|e| Error::Unsupported(format!("config.json does not describe a MusicGen model: {e}")))?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<()> {
        let t = &self.text_encoder;
        if let Some(mt) = &t.model_type {
            if mt != "t5" {
                return Err(Error::Unsupported(format!("text encoder {mt:?}: only T5 is supported")));
            }
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
        let d = &self.decoder;
        if d.audio_channels != 1 && d.audio_channels != 2 {
            return Err(Error::Unsupported(format!("{} audio channels (1 or 2 only)", d.audio_channels)));
        }
        if d.num_codebooks % d.audio_channels != 0 {
            return Err(Error::Unsupported(format!(
                "{} codebooks do not split over {} channels",
                d.num_codebooks, d.audio_channels
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
    /// `relu`, `gated-gelu`, `gelu`, `gated-silu`...: the FFN's activation, gated or not.
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

/// EnCodec settings (transformers' `EncodecConfig`). Only the decoder half is used.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct EncodecConfig {
    pub model_type: Option<String>,
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
}

/// MusicGen decoder settings (transformers' `MusicgenDecoderConfig`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DecoderConfig {
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
    pub tie_word_embeddings: bool,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        Self {
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
            tie_word_embeddings: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_melody_by_name() {
        let err = MusicgenConfig::from_json(r#"{"model_type": "musicgen_melody"}"#).unwrap_err().to_string();
        assert!(err.contains("musicgen_melody"), "{err}");
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
}
