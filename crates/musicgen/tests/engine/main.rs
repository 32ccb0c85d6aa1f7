//! The engine's integration tests, one binary (ripgrep's layout), each module a part of the
//! engine against what transformers recorded on the fixtures (tools/make_fixtures.py: tiny random
//! MusicGen checkpoints saved by transformers), plus the behaviour callers rely on. The GPU
//! tests are a binary of their own (`tests/gpu.rs`), carried to GPU machines.

#[path = "../util/mod.rs"]
mod util;

mod audio_files;
mod checkpoints;
mod chroma;
mod continuation;
mod decoder;
mod encodec;
mod generate;
mod int8;
mod melody;
mod sharing;
mod stream;
mod t5;
