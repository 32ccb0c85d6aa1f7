//! The T5 encoder against transformers' `last_hidden_state` recorded in the fixtures.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use musicgen::t5::T5Encoder;
use musicgen::weights::Checkpoint;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn reference(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("reference.safetensors"), &Device::Cpu).unwrap()
}

fn encoder(dir: &Path) -> T5Encoder {
    let ckpt = Checkpoint::open(dir).unwrap();
    let vb = ckpt.var_builder(DType::F32, &Device::Cpu).unwrap();
    T5Encoder::load(vb.pp("text_encoder"), &ckpt.config().text_encoder).map_err(|e| ckpt.load_error(e)).unwrap()
}

fn encode(encoder: &T5Encoder, ids: &Tensor, mask: &Tensor) -> Tensor {
    let ids = ids.to_dtype(DType::U32).unwrap();
    encoder.forward(&ids, mask).unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

/// max |a - b| / max |b|.
fn relative_error(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    max_abs(&(a - b).unwrap()) / max_abs(b)
}

#[test]
fn encoder_output_matches_transformers() {
    for name in ["tiny-mono", "tiny-stereo"] {
        let reference = reference(name);
        let encoder = encoder(&fixture(name).join("checkpoint"));
        let expected = &reference["encoder_hidden_states"];
        let got = encode(&encoder, &reference["input_ids"], &reference["attention_mask"]);
        let err = relative_error(&got, expected);
        eprintln!("{name}: relative error {err:e}");
        assert!(err < 1e-4, "{name}: relative error {err}");
    }
}

#[test]
fn padding_does_not_change_a_prompt_s_encoding() {
    let reference = reference("tiny-mono");
    let encoder = encoder(&fixture("tiny-mono").join("checkpoint"));
    let batch = encode(&encoder, &reference["input_ids"], &reference["attention_mask"]);
    let single = encode(&encoder, &reference["input_ids_single"], &reference["attention_mask_single"]);
    let len = single.dim(1).unwrap();
    let row = batch.narrow(0, 0, 1).unwrap().narrow(1, 0, len).unwrap();
    assert!(relative_error(&row, &single) < 1e-5);
}

#[test]
fn a_fully_masked_prompt_stays_finite() {
    let reference = reference("tiny-mono");
    let encoder = encoder(&fixture("tiny-mono").join("checkpoint"));
    let mask = reference["attention_mask"].zeros_like().unwrap();
    let out = encode(&encoder, &reference["input_ids"], &mask);
    let values: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
    assert!(values.iter().all(|v| v.is_finite()));
}

#[test]
fn all_layouts_and_embedding_names_give_the_same_encoding() {
    let reference = reference("tiny-mono");
    let (ids, mask) = (&reference["input_ids"], &reference["attention_mask"]);
    let expected = encode(&encoder(&fixture("tiny-mono").join("checkpoint")), ids, mask);
    for name in ["tiny-mono-legacy", "tiny-mono-bin"] {
        let got = encode(&encoder(&fixture(name).join("checkpoint")), ids, mask);
        assert_eq!(relative_error(&got, &expected), 0.0, "{name}");
    }

    // The tied embedding stored only as encoder.embed_tokens (as some exporters write it).
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("tiny-mono").join("checkpoint")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    let file = tmp.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let shared = tensors.remove("text_encoder.shared.weight").unwrap();
    tensors.insert("text_encoder.encoder.embed_tokens.weight".into(), shared);
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let got = encode(&encoder(tmp.path()), ids, mask);
    assert_eq!(relative_error(&got, &expected), 0.0);
}
