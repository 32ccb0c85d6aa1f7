//! The T5 encoder against transformers' `last_hidden_state` recorded in the fixtures.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use musicgen::internals::T5Encoder;
use musicgen::Checkpoint;

use crate::util::{checkpoint, copy_checkpoint_with, reference, tensor_relative_error};

fn encoder(dir: &Path) -> T5Encoder {
    let ckpt = Checkpoint::open(dir).unwrap();
    let vb = ckpt.var_builder(DType::F32, &Device::Cpu).unwrap();
    T5Encoder::load(vb.pp("text_encoder"), &ckpt.config().text_encoder).map_err(|e| ckpt.load_error(e)).unwrap()
}

fn encode(encoder: &T5Encoder, ids: &Tensor, mask: &Tensor) -> Tensor {
    let ids = ids.to_dtype(DType::U32).unwrap();
    encoder.forward(&ids, mask).unwrap()
}

#[test]
fn encoder_output_matches_transformers() {
    for name in ["tiny-mono", "tiny-stereo"] {
        let (reference, _) = reference(name);
        let encoder = encoder(&checkpoint(name));
        let expected = &reference["encoder_hidden_states"];
        let got = encode(&encoder, &reference["input_ids"], &reference["attention_mask"]);
        let err = tensor_relative_error(&got, expected);
        eprintln!("{name}: relative error {err:e}");
        assert!(err < 1e-4, "{name}: relative error {err}");
    }
}

#[test]
fn padding_does_not_change_a_prompt_s_encoding() {
    let (reference, _) = reference("tiny-mono");
    let encoder = encoder(&checkpoint("tiny-mono"));
    let batch = encode(&encoder, &reference["input_ids"], &reference["attention_mask"]);
    let single = encode(&encoder, &reference["input_ids_single"], &reference["attention_mask_single"]);
    let len = single.dim(1).unwrap();
    let row = batch.narrow(0, 0, 1).unwrap().narrow(1, 0, len).unwrap();
    assert!(tensor_relative_error(&row, &single) < 1e-5);
}

#[test]
fn a_fully_masked_prompt_stays_finite() {
    let (reference, _) = reference("tiny-mono");
    let encoder = encoder(&checkpoint("tiny-mono"));
    let mask = reference["attention_mask"].zeros_like().unwrap();
    let out = encode(&encoder, &reference["input_ids"], &mask);
    let values: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
    assert!(values.iter().all(|v| v.is_finite()));
}

/// The tied embedding stored only as `encoder.embed_tokens` (as some exporters write it) encodes
/// as `shared` does. (Every other layout is checked end to end in `generate`.)
#[test]
fn a_tied_embedding_stored_under_the_encoder_s_name_encodes_the_same() {
    let (reference, _) = reference("tiny-mono");
    let (ids, mask) = (&reference["input_ids"], &reference["attention_mask"]);
    let expected = encode(&encoder(&checkpoint("tiny-mono")), ids, mask);
    let tmp = copy_checkpoint_with("tiny-mono", |tensors| {
        let shared = tensors.remove("text_encoder.shared.weight").unwrap();
        tensors.insert("text_encoder.encoder.embed_tokens.weight".into(), shared);
    });
    let got = encode(&encoder(tmp.path()), ids, mask);
    assert_eq!(tensor_relative_error(&got, &expected), 0.0);
}
