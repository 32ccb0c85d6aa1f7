//! What the engine's test binaries share (ripgrep's `tests/util.rs`): where the fixtures are, the
//! references transformers recorded for them, and the error measures every comparison uses.
//!
//! Two binaries include it (`engine`, the CPU suite, and `gpu`, the executable carried to GPU
//! machines), and each uses part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

/// The fixture `name` (tools/make_fixtures.py) where this crate was built, else under the
/// working directory: the GPU test executable is often carried to a machine where the checkout
/// is at another path, and run from its root.
pub fn fixture(name: &str) -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let dir = if built.is_dir() { built } else { PathBuf::from("crates/musicgen/tests/fixtures") };
    dir.join(name)
}

/// The fixture's checkpoint directory, in the Hugging Face layout.
pub fn checkpoint(name: &str) -> PathBuf {
    fixture(name).join("checkpoint")
}

/// What transformers recorded for a fixture: the tensors of `reference.safetensors` and the
/// settings and facts of `reference.json`.
pub fn reference(name: &str) -> (HashMap<String, Tensor>, serde_json::Value) {
    let tensors = candle_core::safetensors::load(fixture(name).join("reference.safetensors"), &Device::Cpu).unwrap();
    let json = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    (tensors, serde_json::from_str(&json).unwrap())
}

/// A list of prompts `reference.json` records under `key` (`prompts`, `prompts_single`).
pub fn prompts(json: &serde_json::Value, key: &str) -> Vec<String> {
    json[key].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect()
}

/// A writable copy of a fixture's checkpoint, for tests that break or rename files.
pub fn copy_checkpoint(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(checkpoint(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    tmp
}

/// [`copy_checkpoint`] of a single-file fixture whose `model.safetensors` tensors `edit` changed.
pub fn copy_checkpoint_with(name: &str, edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> tempfile::TempDir {
    let tmp = copy_checkpoint(name);
    let file = tmp.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &file).unwrap();
    tmp
}

/// The tokens at position `step` of a `(batch, k, len)` token grid, as a guided step feeds them:
/// every item's K tokens, then the same again for the unconditional rows, `(2·batch) × k`.
pub fn guided_step_tokens(grid: &[u32], batch: usize, k: usize, step: usize) -> Vec<u32> {
    let len = grid.len() / (batch * k);
    (0..2 * batch).flat_map(|row| (0..k).map(move |c| grid[((row % batch) * k + c) * len + step])).collect()
}

pub fn floats(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Token ids or codes (transformers records them as int64) as u32.
pub fn ints(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::I64).unwrap().flatten_all().unwrap().to_vec1::<i64>().unwrap().iter().map(|&v| v as u32).collect()
}

/// max |a − b|; NaN anywhere gives NaN, so a broken result never passes a bound.
pub fn max_abs_diff(actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(actual.len(), expected.len(), "lengths differ");
    actual.iter().zip(expected).fold(0f32, |m, (a, b)| {
        let d = (a - b).abs();
        if m.is_nan() || d.is_nan() {
            f32::NAN
        } else {
            m.max(d)
        }
    })
}

/// max |a − b| / max |b|: the error measure of the parity tests.
pub fn relative_error(actual: &[f32], expected: &[f32]) -> f32 {
    max_abs_diff(actual, expected) / expected.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// [`max_abs_diff`] of two tensors of the same shape.
pub fn tensor_diff(actual: &Tensor, expected: &Tensor) -> f32 {
    assert_eq!(actual.dims(), expected.dims(), "shapes differ");
    max_abs_diff(&floats(actual), &floats(expected))
}

/// [`relative_error`] of two tensors of the same shape.
pub fn tensor_relative_error(actual: &Tensor, expected: &Tensor) -> f32 {
    assert_eq!(actual.dims(), expected.dims(), "shapes differ");
    relative_error(&floats(actual), &floats(expected))
}
