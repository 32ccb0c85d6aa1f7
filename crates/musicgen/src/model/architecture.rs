//! The published MusicGen architectures, for building models with random weights.

use crate::config::{DecoderConfig, EncodecConfig, MusicgenConfig, T5Config, MUSICGEN, MUSICGEN_MELODY};
use crate::error::{Error, Result};

const NAMES: &str = "small, medium, large, stereo-small, stereo-medium, stereo-large, melody, melody-large, \
                     stereo-melody, stereo-melody-large";

/// The configuration of `facebook/musicgen-<name>` (the prefix is optional).
pub(crate) fn config(name: &str) -> Result<MusicgenConfig> {
    let short = name.trim().trim_start_matches("facebook/").trim_start_matches("musicgen-");
    let (stereo, size) = match short.strip_prefix("stereo-") {
        Some(size) => (true, size),
        None => (false, short),
    };
    // musicgen-melody is the medium decoder conditioned by a prefix; -large the large one.
    let (melody, size) = match size {
        "melody" => (true, "medium"),
        "melody-large" => (true, "large"),
        other => (false, other),
    };
    let (hidden_size, num_hidden_layers, num_attention_heads, ffn_dim) = match size {
        "small" => (1024, 24, 16, 4096),
        "medium" => (1536, 48, 24, 6144),
        "large" => (2048, 48, 32, 8192),
        _ => return Err(Error::invalid("model", format!("unknown architecture {name:?}; use one of {NAMES}"))),
    };
    let channels = if stereo { 2 } else { 1 };
    Ok(MusicgenConfig {
        model_type: Some(if melody { MUSICGEN_MELODY } else { MUSICGEN }.into()),
        num_chroma: 12,
        chroma_length: 235,
        text_encoder: T5Config {
            model_type: Some("t5".into()),
            vocab_size: 32128,
            d_model: 768,
            d_kv: 64,
            d_ff: 3072,
            num_layers: 12,
            num_heads: 12,
            feed_forward_proj: "relu".into(),
            ..T5Config::default()
        },
        audio_encoder: EncodecConfig {
            model_type: Some("encodec".into()),
            // 2.2 kbps at 50 frames/s: 4 codebooks of 2048 entries.
            target_bandwidths: vec![2.2],
            sampling_rate: 32000,
            audio_channels: 1,
            normalize: false,
            hidden_size: 128,
            num_filters: 64,
            num_residual_layers: 1,
            upsampling_ratios: vec![8, 5, 4, 4],
            kernel_size: 7,
            last_kernel_size: 7,
            residual_kernel_size: 3,
            dilation_growth_rate: 2,
            use_causal_conv: false,
            pad_mode: "reflect".into(),
            compress: 2,
            num_lstm_layers: 2,
            codebook_size: 2048,
            use_conv_shortcut: false,
            ..EncodecConfig::default()
        },
        decoder: DecoderConfig {
            model_type: Some(if melody { "musicgen_melody_decoder" } else { "musicgen_decoder" }.into()),
            vocab_size: 2048,
            max_position_embeddings: 2048,
            num_hidden_layers,
            ffn_dim,
            num_attention_heads,
            activation_function: "gelu".into(),
            hidden_size,
            num_codebooks: 4 * channels,
            audio_channels: channels,
            pad_token_id: 2048,
            bos_token_id: 2048,
            ..DecoderConfig::default()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_the_published_sizes() {
        let small = config("small").unwrap();
        assert_eq!((small.decoder.hidden_size, small.decoder.num_hidden_layers), (1024, 24));
        assert_eq!(small.audio_encoder.num_quantizers(), 4);
        assert_eq!(small.audio_encoder.hop_length(), 640);
        let large = config("facebook/musicgen-stereo-large").unwrap();
        assert_eq!(
            (large.decoder.hidden_size, large.decoder.num_codebooks, large.decoder.audio_channels),
            (2048, 8, 2)
        );
        assert_eq!(config("musicgen-medium").unwrap().decoder.ffn_dim, 6144);
        let melody = config("facebook/musicgen-stereo-melody-large").unwrap();
        assert!(melody.is_melody());
        assert_eq!((melody.decoder.hidden_size, melody.decoder.audio_channels), (2048, 2));
        assert_eq!(config("melody").unwrap().decoder.hidden_size, 1536);
        assert!(!config("small").unwrap().is_melody());
        let err = config("huge").unwrap_err().to_string();
        assert!(err.contains("huge") && err.contains("stereo-small"), "{err}");
    }
}
