//! MusicGen text-to-music inference in Rust.
//!
//! This crate is the engine of DGX Music: it loads Hugging Face MusicGen checkpoints
//! (`facebook/musicgen-*` or a local directory in the same layout) and turns text prompts into
//! audio on the CPU or a CUDA GPU, numerically matching transformers' implementation.
//! It knows nothing of HTTP, databases or command lines.
//!
//! ```no_run
//! use musicgen::{GenerationRequest, LoadOptions, MusicGen, CancelToken};
//! let model = MusicGen::load("facebook/musicgen-small", &LoadOptions::default())?;
//! let request = GenerationRequest::single("ambient piano music", 8.0);
//! let tracks = model.generate(&request, &mut |_progress| {}, &CancelToken::default())?;
//! musicgen::audio::write_wav("piano.wav", &tracks[0], musicgen::audio::SampleFormat::Pcm16)?;
//! # Ok::<(), musicgen::Error>(())
//! ```

pub mod audio;
mod chroma;
mod config;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda_view;
mod decoder;
mod delay;
mod device;
mod encodec;
mod error;
pub mod hub;
mod linear;
mod model;
pub mod request;
/// The PTX of `kernels/*.cu`, compiled by build.rs (one constant per file).
#[cfg(feature = "cuda")]
mod ptx {
    include!(concat!(env!("OUT_DIR"), "/ptx.rs"));
}
mod sampling;
mod t5;
mod tokenizer;
mod weights;

pub use audio::{Audio, Normalize, SampleFormat};
pub use config::MusicgenConfig;
pub use device::{DType, DeviceSpec, Weights};
pub use error::{Error, Result};
pub use model::{
    DeviceMemory, Generation, LoadOptions, ModelInfo, MusicGen, SharedParts, Step, StreamOptions, DEFAULT_CHUNK_SECS,
};
pub use request::{CancelToken, GenerationItem, GenerationRequest, Progress, SamplingParams};
pub use weights::Checkpoint;

/// The engine's building blocks, for its own tests and examples and for the binary's `validate`
/// and `bench`: not a supported API, and free to change with any commit.
#[doc(hidden)]
pub mod internals {
    pub use crate::chroma::{ChromaConfig, ChromaExtractor};
    pub use crate::config::{DecoderConfig, EncodecConfig};
    pub use crate::decoder::{Conditioning, Decoder, DecoderState, StepMode};
    pub use crate::delay::DelayPattern;
    pub use crate::encodec::{DecodeStream, EncodecDecoder, EncodecEncoder};
    pub use crate::linear::cuda_gemv::max_rows as gpu_gemv_max_rows;
    pub use crate::linear::{Activation, Linear};
    pub use crate::sampling::{argmax, guide};
    pub use crate::t5::T5Encoder;
    pub use crate::tokenizer::Tokenizer;
    pub use crate::weights::WeightFormat;

    /// A published architecture's configuration (`small`, `medium`, `large`, `melody`, ...).
    pub fn architecture(name: &str) -> crate::Result<crate::MusicgenConfig> {
        crate::model::architecture::config(name)
    }

    /// The random weights of `MusicGen::random`, for any module of an architecture.
    pub fn random_weights(dtype: candle_core::DType, device: &candle_core::Device) -> candle_nn::VarBuilder<'static> {
        crate::model::random::RandomWeights::new(0).var_builder(dtype, device)
    }
}
