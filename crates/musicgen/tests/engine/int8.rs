//! int8 weights (`--weights int8`) on the fixtures: how far their logits land from transformers'
//! f32 ones, teacher-forced on the reference's tokens, and how many greedy codes stay those of
//! f32. A quantisation step is 1/127 of an output channel's largest weight, so int8 logits are
//! held to the bf16 decoder's bound (5e-2, `tests/gpu.rs`) and must differ from f32 at all (or
//! the weights were not quantised). The figures printed are docs/PERFORMANCE.md's.

use candle_core::{DType, Device, Tensor};
use musicgen::internals::{Conditioning, Decoder};
use musicgen::{
    Checkpoint, DType as ModelDType, GenerationItem, GenerationRequest, LoadOptions, MusicGen, SamplingParams, Weights,
};

use crate::util::{checkpoint, floats, ints, reference, relative_error};

const FIXTURES: [&str; 2] = ["tiny-mono", "tiny-stereo"];

/// The decoder of fixture `name` in `dtype` on the CPU, its projections int8 when `int8`: the
/// largest relative error of any step's logits against transformers', fed transformers' tokens.
fn teacher_forced_error(name: &str, dtype: DType, int8: bool) -> f32 {
    let (tensors, json) = reference(name);
    let checkpoint = Checkpoint::open(&checkpoint(name)).unwrap();
    let cfg = checkpoint.config().decoder.clone();
    let mut decoder = Decoder::load(&cfg, checkpoint.var_builder(dtype, &Device::Cpu).unwrap().pp("decoder")).unwrap();
    if int8 {
        decoder.quantize_int8().unwrap();
        assert!(decoder.is_int8());
    }
    let memory = &tensors["projected_encoder_hidden_states"];
    let mask = &tensors["attention_mask"];
    let memory = Tensor::cat(&[memory, &memory.zeros_like().unwrap()], 0).unwrap();
    let mask = Tensor::cat(&[mask, &mask.zeros_like().unwrap()], 0).unwrap();
    let batch = mask.dim(0).unwrap() / 2;
    let steps = json["steps"].as_u64().unwrap() as usize;
    let k = cfg.num_codebooks;
    let grid = ints(&tensors["sequences"]);
    let len = grid.len() / (batch * k);
    let mut state = decoder.start(Conditioning::CrossAttention { memory: &memory, mask: &mask }, steps).unwrap();
    let mut worst = 0f32;
    for step in 0..steps {
        let tokens: Vec<u32> = (0..2 * batch)
            .flat_map(|row| (0..k).map(move |c| ((row % batch) * k + c) * len + step))
            .map(|i| grid[i])
            .collect();
        let tokens = Tensor::from_vec(tokens, (2 * batch, k), &Device::Cpu).unwrap();
        let logits = decoder.step(&tokens, &mut state).unwrap();
        worst = worst.max(relative_error(&floats(&logits), &floats(&tensors["logits"].get(step).unwrap())));
    }
    worst
}

/// Greedy, guided generation of the reference's prompts with `weights`: every item's codes.
fn greedy_codes(name: &str, weights: Weights) -> Vec<u32> {
    let (_, json) = reference(name);
    let options = LoadOptions { dtype: ModelDType::F32, weights, ..LoadOptions::default() };
    let model = MusicGen::load(checkpoint(name).to_str().unwrap(), &options).unwrap();
    assert_eq!(model.info().weights, if weights == Weights::Int8 { "int8" } else { "f32" });
    let coef = json["guidance_scale"].as_f64().unwrap();
    let items = json["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| GenerationItem { prompt: p.as_str().unwrap().into(), sampling: SamplingParams::greedy(coef), seed: 0 })
        .collect();
    let frames = json["frames"].as_u64().unwrap() as f64;
    let mut generation = model.start(&GenerationRequest::new(items, frames / 50.0)).unwrap();
    while generation.step().unwrap().is_some() {}
    let codes = generation.codes().concat();
    let audio = generation.finish().unwrap();
    assert!(audio.iter().all(|a| a.channels.iter().flatten().all(|v| v.is_finite())), "{name}: int8 audio");
    codes
}

#[test]
fn int8_logits_stay_within_the_bf16_bound_of_transformers() {
    for name in FIXTURES {
        let f32_error = teacher_forced_error(name, DType::F32, false);
        for dtype in [DType::F32, DType::BF16] {
            let error = teacher_forced_error(name, dtype, true);
            eprintln!(
                "{name}: int8 weights, {dtype:?} activations: logits relative error {error:.2e} (f32: {f32_error:.1e})"
            );
            assert!(error <= 5e-2, "{name} int8 {dtype:?}: logits relative error {error}");
            assert!(error > 10.0 * f32_error, "{name} int8 {dtype:?}: {error} is f32's error: nothing was quantised");
        }
    }
}

#[test]
fn int8_greedy_codes_against_f32() {
    for name in FIXTURES {
        let (tensors, _) = reference(name);
        let f32_codes = greedy_codes(name, Weights::Dtype);
        assert_eq!(f32_codes, ints(&tensors["codes"]), "{name}: f32 greedy codes are transformers'");
        let int8 = greedy_codes(name, Weights::Int8);
        assert_eq!(int8.len(), f32_codes.len());
        let same = int8.iter().zip(&f32_codes).filter(|(a, b)| a == b).count();
        let first = int8.iter().zip(&f32_codes).position(|(a, b)| a != b);
        eprintln!(
            "{name}: int8 greedy codes equal to f32: {same}/{} ({:.0}%), first difference at {first:?}",
            int8.len(),
            100.0 * same as f64 / int8.len() as f64
        );
        // Each item's first frame follows from the first step alone, whose int8 logits are the
        // teacher-forced ones above: its codes must be f32's wherever f32's top-two margin is
        // clear of the int8 error. A quarter of all codes is far below what the logits allow.
        assert!(same * 4 >= int8.len(), "{name}: only {same} of {} int8 codes are f32's", int8.len());
    }
}
