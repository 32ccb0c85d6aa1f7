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
pub mod config;
mod cpu;
pub mod decoder;
pub mod delay;
pub mod device;
pub mod encodec;
mod error;
pub mod hub;
pub mod linear;
mod model;
pub mod request;
pub mod sampling;
pub mod t5;
pub mod tokenizer;
pub mod weights;

pub use audio::{Audio, Normalize, SampleFormat};
pub use device::{DType, DeviceSpec};
pub use error::{Error, Result};
pub use model::{Generation, LoadOptions, ModelInfo, MusicGen, Step};
pub use request::{CancelToken, GenerationItem, GenerationRequest, Progress, SamplingParams};
