//! The loaded model and the one entry point that turns a request into audio.

pub(crate) mod random;

use crate::audio::Audio;
use crate::device::{DType, DeviceSpec};
use crate::error::{Error, Result};
use crate::request::{CancelToken, GenerationRequest, Progress};

/// How to load a checkpoint.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub device: DeviceSpec,
    /// Precision of the decoder; the T5 encoder and EnCodec always run in f32.
    pub dtype: DType,
}

/// What a loaded model is, for logs, `/api/v1/models` and `bench`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    /// The `--model` value it was loaded from (hub id or directory).
    pub source: String,
    pub device: String,
    pub dtype: String,
    pub sample_rate: u32,
    pub audio_channels: usize,
    pub num_codebooks: usize,
    pub decoder_layers: usize,
    pub decoder_hidden_size: usize,
    pub vocab_size: usize,
    pub parameters: usize,
}

/// A MusicGen checkpoint loaded on one device, reusable across requests.
pub struct MusicGen {
    info: ModelInfo,
}

impl MusicGen {
    /// Loads a hub id (`facebook/musicgen-small`, downloaded into the HF cache on first use)
    /// or a local checkpoint directory.
    pub fn load(model: &str, options: &LoadOptions) -> Result<Self> {
        let _ = (model, options);
        Err(Error::Unsupported("the engine is being assembled".into()))
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Generates one track per request item. `progress` is called after every decoder step;
    /// `cancel` is checked before every step.
    pub fn generate(
        &self,
        request: &GenerationRequest,
        progress: &mut dyn FnMut(&Progress),
        cancel: &CancelToken,
    ) -> Result<Vec<Audio>> {
        let _ = (request, progress, cancel);
        Err(Error::Unsupported("the engine is being assembled".into()))
    }
}
