//! The decoder alone against transformers: fed the reference's text memory, it must produce the
//! reference's per-step logits and guided scores, and greedy decoding through the delay pattern
//! must rebuild the reference's token grid and codes exactly.

use candle_core::{DType, Device, Tensor};
use musicgen::internals::{argmax, guide, Conditioning, Decoder, DelayPattern};
use musicgen::Checkpoint;

use crate::util::{checkpoint, guided_step_tokens, ints, reference, relative_error};

/// Runs the reference's greedy, guided generation through our decoder and checks every step.
fn check_decoder_against_reference(name: &str) {
    let (tensors, json) = reference(name);
    let checkpoint = Checkpoint::open(&checkpoint(name)).unwrap();
    let cfg = checkpoint.config().decoder.clone();
    let vb = checkpoint.var_builder(DType::F32, &Device::Cpu).unwrap();
    let decoder = Decoder::load(&cfg, vb.pp("decoder")).unwrap();

    let memory = &tensors["projected_encoder_hidden_states"];
    let mask = &tensors["attention_mask"];
    let (batch, len, hidden) = memory.dims3().unwrap();
    let memory =
        Tensor::cat(&[memory, &Tensor::zeros((batch, len, hidden), DType::F32, &Device::Cpu).unwrap()], 0).unwrap();
    let mask = Tensor::cat(&[mask, &mask.zeros_like().unwrap()], 0).unwrap();

    let steps = json["steps"].as_u64().unwrap() as usize;
    let frames = json["frames"].as_u64().unwrap() as usize;
    let coef = json["guidance_scale"].as_f64().unwrap() as f32;
    let start = checkpoint.generation().decoder_start_token_id;
    let (k, v) = (cfg.num_codebooks, cfg.vocab_size);
    let pattern = DelayPattern::new(k, cfg.audio_channels, frames, checkpoint.generation().pad_token_id);
    assert_eq!(pattern.steps(), steps);

    let len = pattern.grid_len();
    let mut grid = vec![start; batch * k * len];
    let mut state = decoder.start(Conditioning::CrossAttention { memory: &memory, mask: &mask }, steps).unwrap();
    let (mut worst_logits, mut worst_scores) = (0f32, 0f32);
    for step in 0..steps {
        let tokens = Tensor::from_vec(guided_step_tokens(&grid, batch, k, step), (2 * batch, k), &Device::Cpu).unwrap();
        let logits = decoder.step(&tokens, &mut state).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let expected = tensors["logits"].get(step).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let err = relative_error(&logits, &expected);
        assert!(err < 1e-4, "{name} step {step}: logits relative error {err}");
        worst_logits = worst_logits.max(err);

        let half = batch * k * v;
        let mut scores = vec![0f32; half];
        guide(&logits[..half], &logits[half..], coef, &mut scores);
        let expected = tensors["scores"].get(step).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let err = relative_error(&scores, &expected);
        assert!(err < 1e-4, "{name} step {step}: scores relative error {err}");
        worst_scores = worst_scores.max(err);

        for b in 0..batch {
            for c in 0..k {
                let row = b * k + c;
                let token = argmax(&scores[row * v..(row + 1) * v]);
                grid[row * len + step + 1] = pattern.apply(c, step + 1, token);
            }
        }
    }
    eprintln!("{name}: decoder logits max relative error {worst_logits:e}, scores {worst_scores:e}");

    assert_eq!(grid, ints(&tensors["sequences"]), "{name}: token grid differs from transformers");
    let codes: Vec<u32> = (0..batch).flat_map(|b| pattern.undo(&grid[b * k * len..(b + 1) * k * len])).collect();
    assert_eq!(codes, ints(&tensors["codes"]), "{name}: codes differ from transformers");
}

#[test]
fn tiny_mono_decoder_matches_transformers() {
    check_decoder_against_reference("tiny-mono");
}

#[test]
fn tiny_stereo_decoder_matches_transformers() {
    check_decoder_against_reference("tiny-stereo");
}

#[test]
fn delay_pattern_matches_transformers_mask() {
    for name in ["tiny-mono", "tiny-stereo"] {
        let (tensors, json) = reference(name);
        let k = json["num_codebooks"].as_u64().unwrap() as usize;
        let channels = json["audio_channels"].as_u64().unwrap() as usize;
        let frames = json["frames"].as_u64().unwrap() as usize;
        let pad = json["pad_token_id"].as_u64().unwrap() as u32;
        let pattern = DelayPattern::new(k, channels, frames, pad);
        let mask: Vec<i64> = tensors["delay_pattern_mask"].flatten_all().unwrap().to_vec1::<i64>().unwrap();
        let len = pattern.grid_len();
        // The reference mask covers B·K rows; every item's K rows are the same.
        for (row, chunk) in mask.chunks(len).enumerate() {
            for (t, &value) in chunk.iter().enumerate() {
                let forced = value != -1;
                assert_eq!(pattern.is_forced(row % k, t), forced, "{name} row {row} position {t}");
                if forced {
                    assert_eq!(value, pad as i64);
                }
            }
        }
    }
}
