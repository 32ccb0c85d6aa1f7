//! The engine on a CUDA GPU against transformers' fixtures. Run with the CUDA build on a machine
//! with a GPU (`just test-cuda`, or the executable `tools/build-cuda.sh 80 --tests` leaves, run
//! from the repository root); elsewhere each test prints why it skipped and passes.
//!
//! Run on one test thread (`--test-threads=1`, as `just test-cuda` and `tools/gpu-run.sh` do)
//! or with `RUST_MIN_STACK=67108864`: on 8 test threads with their default 2 MiB stacks the
//! binary segfaulted (the CUDA stack, most likely the driver's PTX JIT, needs more; 64 MiB
//! stacks passed), and one thread also keeps the GPU's memory and timings to one test at a time.
//!
//! Tolerances (max |a − b| / max |b|, as in the CPU parity tests):
//! - f32 on the GPU: codes equal to transformers', logits within 1e-4, audio within 1e-3
//!   (cuBLAS and cuDNN-free convolutions sum in another order than PyTorch on the CPU).
//! - f16 decoder, teacher-forced on the reference tokens: logits within 1e-2 of transformers'
//!   (10 mantissa bits: ~5e-4 per operation, grown over the layers).
//! - bf16 decoder, teacher-forced: logits within 5e-2 (7 mantissa bits: ~4e-3 per operation).
//! - f16 and bf16 end to end: the waveform within 5e-2 of the f32 GPU waveform when greedy
//!   decoding picks the same codes. Where the fixture's top-two margin (reference.json
//!   `min_top1_margin_relative`, 2e-3 for tiny-mono) is under the dtype's rounding, greedy decoding
//!   may pick another code and, decoding being autoregressive, everything after it differs; how
//!   early that happens says nothing more than the teacher-forced logits above, so then the
//!   waveform must only be finite and within a factor 2 of the f32 loudness (the share of equal
//!   codes is printed).

mod util;

use candle_core::{DType, Device, Tensor};
use musicgen::internals::{Conditioning, Decoder, DelayPattern, StepMode};
use musicgen::Checkpoint;
use musicgen::{
    DType as ModelDType, DeviceSpec, GenerationItem, GenerationRequest, LoadOptions, MusicGen, SamplingParams,
};

use util::{checkpoint, ints, reference, relative_error};

const FIXTURES: [&str; 2] = ["tiny-mono", "tiny-stereo"];

/// The GPU to test on, or `None` after saying why the test skips.
fn gpu() -> Option<Device> {
    if !cfg!(feature = "cuda") {
        eprintln!("skipped: built without the `cuda` feature (run `just test-cuda` on a machine with a GPU)");
        return None;
    }
    match DeviceSpec::Cuda(0).open() {
        Ok(device) => Some(device),
        Err(e) => {
            eprintln!("skipped: no usable GPU: {e}");
            None
        }
    }
}

/// Greedy, guided generation of the reference's prompts: (codes of every item, concatenated;
/// audio of every item, channels and items concatenated).
fn generate(name: &str, dtype: ModelDType) -> (Vec<u32>, Vec<f32>) {
    let (_, json) = reference(name);
    let model = MusicGen::load(
        checkpoint(name).to_str().unwrap(),
        &LoadOptions { device: DeviceSpec::Cuda(0), dtype, ..LoadOptions::default() },
    )
    .unwrap();
    let coef = json["guidance_scale"].as_f64().unwrap();
    let frames = json["frames"].as_u64().unwrap() as f64;
    let items = json["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| GenerationItem { prompt: p.as_str().unwrap().into(), sampling: SamplingParams::greedy(coef), seed: 0 })
        .collect();
    let request = GenerationRequest::new(items, frames / 50.0);
    assert_eq!(model.info().step_mode, "graph");
    let mut generation = model.start(&request).unwrap();
    while generation.step().unwrap() {}
    let codes = generation.codes().concat();
    let audio = generation.finish().unwrap().into_iter().flat_map(|a| a.channels.concat()).collect();
    (codes, audio)
}

#[test]
fn f32_on_the_gpu_reproduces_transformers_codes_and_audio() {
    if gpu().is_none() {
        return;
    }
    for name in FIXTURES {
        let (tensors, _) = reference(name);
        let (codes, audio) = generate(name, ModelDType::F32);
        assert_eq!(codes, ints(&tensors["codes"]), "{name}: GPU f32 greedy codes differ from transformers");
        let expected = tensors["audio"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let err = relative_error(&audio, &expected);
        eprintln!("{name}: GPU f32 codes equal transformers'; audio max relative error {err:e}");
        assert!(err <= 1e-3, "{name}: GPU f32 audio relative error {err}");
    }
}

/// The fixture's prompt audio `(1, C, S)` as planar audio.
fn prompt_audio(tensors: &std::collections::HashMap<String, Tensor>) -> musicgen::Audio {
    let t = tensors["prompt_audio"].get(0).unwrap();
    let channels = (0..t.dim(0).unwrap()).map(|c| t.get(c).unwrap().to_vec1::<f32>().unwrap()).collect();
    musicgen::Audio { sample_rate: 32000, channels }
}

/// Continuation (EnCodec's encoder on the GPU, the prompt prefilled) and audiocraft's window loop
/// for a 35 s track, in f32: codes equal transformers', audio within 1e-3.
#[test]
fn f32_continuation_and_long_tracks_on_the_gpu_reproduce_transformers() {
    if gpu().is_none() {
        return;
    }
    let cuda = LoadOptions { device: DeviceSpec::Cuda(0), ..LoadOptions::default() };
    for name in FIXTURES {
        let (tensors, json) = reference(name);
        let model = MusicGen::load(checkpoint(name).to_str().unwrap(), &cuda).unwrap();
        let cont = &json["continuation"];
        let items = util::prompts(cont, "prompts")
            .into_iter()
            .map(|prompt| GenerationItem { prompt, sampling: SamplingParams::greedy(3.0), seed: 0 })
            .collect();
        let mut request = GenerationRequest::new(items, cont["frames"].as_u64().unwrap() as f64 / 50.0);
        request.continuation = Some(prompt_audio(&tensors));
        let mut generation = model.start(&request).unwrap();
        while generation.step().unwrap() {}
        assert_eq!(generation.codes().concat(), ints(&tensors["continuation_codes"]), "{name}: continuation codes");
        let audio: Vec<f32> = generation.finish().unwrap().iter().flat_map(|t| t.channels.concat()).collect();
        let expected = tensors["continuation_audio"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let err = relative_error(&audio, &expected);
        eprintln!("{name}: GPU f32 continuation codes equal transformers'; audio max relative error {err:e}");
        assert!(err <= 1e-3, "{name}: GPU continuation audio relative error {err}");
    }
    let (tensors, json) = reference("tiny-mono");
    let model = MusicGen::load(checkpoint("tiny-mono").to_str().unwrap(), &cuda).unwrap();
    let long = &json["long_tracks"]["long"];
    let item = GenerationItem {
        prompt: long["prompt"].as_str().unwrap().into(),
        sampling: SamplingParams::greedy(3.0),
        seed: 0,
    };
    let mut request = GenerationRequest::new(vec![item], long["duration"].as_f64().unwrap());
    request.extend_stride_secs = long["stride"].as_f64().unwrap();
    let mut generation = model.start(&request).unwrap();
    while generation.step().unwrap() {}
    assert_eq!(generation.codes().concat(), ints(&tensors["long_codes"]), "35 s windowed codes on the GPU");
    eprintln!("tiny-mono: GPU f32 35 s windowed track: codes equal audiocraft's loop over transformers");
}

const MELODY_FIXTURES: [&str; 2] = ["tiny-melody", "tiny-stereo-melody"];

/// musicgen-melody on the GPU, f32 end to end (chroma, prefix, decoder, EnCodec): codes equal
/// transformers 4.48's for the fixture tune, audio within 1e-3.
#[test]
fn f32_melody_on_the_gpu_reproduces_transformers() {
    if gpu().is_none() {
        return;
    }
    for name in MELODY_FIXTURES {
        let (tensors, json) = reference(name);
        let model = MusicGen::load(
            checkpoint(name).to_str().unwrap(),
            &LoadOptions { device: DeviceSpec::Cuda(0), ..LoadOptions::default() },
        )
        .unwrap();
        let items = util::prompts(&json, "prompts")
            .into_iter()
            .map(|prompt| GenerationItem { prompt, sampling: SamplingParams::greedy(3.0), seed: 0 })
            .collect();
        let mut request = GenerationRequest::new(items, json["frames"].as_u64().unwrap() as f64 / 50.0);
        let tune = tensors["melody_audio"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        request.melody = Some(musicgen::Audio { sample_rate: 32000, channels: vec![tune] });
        let mut generation = model.start(&request).unwrap();
        while generation.step().unwrap() {}
        assert_eq!(generation.codes().concat(), ints(&tensors["codes"]), "{name}: GPU f32 melody codes");
        let audio: Vec<f32> = generation.finish().unwrap().iter().flat_map(|t| t.channels.concat()).collect();
        let err = relative_error(&audio, &tensors["audio"].flatten_all().unwrap().to_vec1::<f32>().unwrap());
        eprintln!("{name}: GPU f32 melody codes equal transformers'; audio max relative error {err:e}");
        assert!(err <= 1e-3, "{name}: GPU melody audio relative error {err}");
    }
}

/// The melody decoder teacher-forced on transformers' prefix and token grid in each dtype, graph
/// replay: every step's logits within the dtype's bound of transformers' f32 logits.
#[test]
fn melody_decoder_logits_on_the_gpu_track_transformers_in_every_dtype() {
    let Some(device) = gpu() else { return };
    for name in MELODY_FIXTURES {
        let (tensors, json) = reference(name);
        let checkpoint = Checkpoint::open(&checkpoint(name)).unwrap();
        let cfg = checkpoint.config().decoder.clone();
        let steps = json["steps"].as_u64().unwrap() as usize;
        let k = cfg.num_codebooks;
        let grid = ints(&tensors["sequences"]);
        let batch = tensors["sequences"].dim(0).unwrap();
        for (dtype, bound) in [(DType::F32, 1e-4), (DType::F16, 1e-2), (DType::BF16, 5e-2)] {
            let vb = checkpoint.var_builder(dtype, &device).unwrap();
            let decoder = Decoder::load(&cfg, vb.pp("decoder")).unwrap();
            let prefix = tensors["prefix"].to_device(&device).unwrap();
            let mut state = decoder.start(Conditioning::Prefix(&prefix), steps).unwrap();
            let mut worst = 0f32;
            for step in 0..steps {
                let tokens = util::guided_step_tokens(&grid, batch, k, step);
                let tokens = Tensor::from_vec(tokens, (2 * batch, k), &device).unwrap();
                let logits = decoder.step(&tokens, &mut state).unwrap();
                let got = logits.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let expected = tensors["logits"].get(step).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                worst = worst.max(relative_error(&got, &expected));
            }
            eprintln!("{name}: {dtype:?} teacher-forced melody logits, max relative error {worst:e}");
            assert!(worst <= bound, "{name} {dtype:?}: {worst} > {bound}");
        }
    }
}

/// Teacher-forced decoder on the GPU (int8 projections when `int8`): fed transformers' text
/// memory and token grid, the largest relative error of any step's logits against transformers'
/// f32 logits.
fn decoder_logits_error(name: &str, device: &Device, dtype: DType, int8: bool) -> f32 {
    let (tensors, _) = reference(name);
    let logits = teacher_forced_logits(name, device, dtype, int8, StepMode::Graph, None, 0);
    logits
        .iter()
        .enumerate()
        .map(|(step, got)| {
            let expected = tensors["logits"].get(step).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            relative_error(got, &expected)
        })
        .fold(0f32, f32::max)
}

/// Every step's logits of the teacher-forced decoder, run in `mode`, for all of the reference's
/// prompts or only the one at `item`. With `prefill` > 0 the first `prefill` positions go in one
/// `Decoder::prefill`, which gives one entry (the logits after its last position). `int8`
/// quantises the projections (`--weights int8`).
fn teacher_forced_logits(
    name: &str,
    device: &Device,
    dtype: DType,
    int8: bool,
    mode: StepMode,
    item: Option<usize>,
    prefill: usize,
) -> Vec<Vec<f32>> {
    let (tensors, json) = reference(name);
    let checkpoint = Checkpoint::open(&checkpoint(name)).unwrap();
    let cfg = checkpoint.config().decoder.clone();
    let vb = checkpoint.var_builder(dtype, device).unwrap();
    let mut decoder = Decoder::load(&cfg, vb.pp("decoder")).unwrap();
    if device.is_cuda() {
        assert_eq!(decoder.step_mode(), StepMode::Graph, "a GPU decoder replays CUDA graphs by default");
        decoder.set_step_mode(mode).unwrap();
    }
    if int8 {
        decoder.quantize_int8().unwrap();
    }

    let mut memory = tensors["projected_encoder_hidden_states"].to_device(device).unwrap();
    let mut mask = tensors["attention_mask"].to_device(device).unwrap();
    let mut items: Vec<usize> = (0..mask.dim(0).unwrap()).collect();
    if let Some(item) = item {
        memory = memory.narrow(0, item, 1).unwrap();
        mask = mask.narrow(0, item, 1).unwrap();
        items = vec![item];
    }
    let memory = Tensor::cat(&[&memory, &memory.zeros_like().unwrap()], 0).unwrap();
    let mask = Tensor::cat(&[&mask, &mask.zeros_like().unwrap()], 0).unwrap();
    let batch = items.len();
    let steps = json["steps"].as_u64().unwrap() as usize;
    let frames = json["frames"].as_u64().unwrap() as usize;
    let k = cfg.num_codebooks;
    let pattern = DelayPattern::new(k, cfg.audio_channels, frames, checkpoint.generation().pad_token_id);
    let len = pattern.grid_len();
    let grid = ints(&tensors["sequences"]);

    let mut state = decoder.start(Conditioning::CrossAttention { memory: &memory, mask: &mask }, steps).unwrap();
    // Row-major (rows, positions, K) tokens of positions `from..from + n`.
    let tokens_at = |from: usize, n: usize| -> Vec<u32> {
        (0..2 * batch)
            .flat_map(|row| (from..from + n).flat_map(move |p| (0..k).map(move |c| (row % batch, p, c))))
            .map(|(i, p, c)| grid[(items[i] * k + c) * len + p])
            .collect()
    };
    let mut all = Vec::with_capacity(steps);
    if prefill > 0 {
        let tokens = Tensor::from_vec(tokens_at(0, prefill), (2 * batch, prefill, k), device).unwrap();
        let logits = decoder.prefill(&tokens, &mut state).unwrap();
        all.push(logits.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    for step in prefill..steps {
        let tokens = Tensor::from_vec(tokens_at(step, 1), (2 * batch, k), device).unwrap();
        let logits = decoder.step(&tokens, &mut state).unwrap();
        all.push(logits.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    let replays = mode == StepMode::Graph && steps > prefill.max(1);
    assert_eq!(state.replays_graph(), replays, "{name}: {mode:?} graph replay");
    all
}

#[test]
fn graph_replay_computes_what_kernel_by_kernel_steps_compute() {
    let Some(device) = gpu() else { return };
    for name in FIXTURES {
        // All prompts: padded, so the cross-attention is masked. The longest prompt alone with
        // its guidance row: no mask needed (see `mask_is_moot`), the other kernel variant.
        let (tensors, _) = reference(name);
        let lengths = tensors["attention_mask"].to_dtype(DType::F32).unwrap().sum(1).unwrap().to_vec1::<f32>().unwrap();
        let longest = (0..lengths.len()).max_by(|&a, &b| lengths[a].total_cmp(&lengths[b])).unwrap();
        for item in [None, Some(longest)] {
            let growing = teacher_forced_logits(name, &device, DType::F32, false, StepMode::Growing, item, 0);
            for mode in [StepMode::Fixed, StepMode::Graph] {
                let got = teacher_forced_logits(name, &device, DType::F32, false, mode, item, 0);
                let err = got.iter().zip(&growing).map(|(a, b)| relative_error(a, b)).fold(0f32, f32::max);
                eprintln!("{name} {item:?}: GPU f32 {mode:?} steps (fused attention) vs growing cache: max relative error {err:e}");
                assert!(err <= 1e-5, "{name} {item:?}: {mode:?} steps differ from the growing cache by {err}");
            }
        }
    }
}

/// Prefill of half the steps then single steps, against single steps all along, in the modes
/// a GPU runs. f32: the same arithmetic up to summation order (cuBLAS over several positions,
/// candle's attention in the prefill against the fused kernels in the steps), so 1e-5 as the
/// graph test. bf16: the prefill's probabilities are rounded to bf16 before the product with
/// the values where the fused kernel keeps them in f32, and cuBLAS rounds its outputs per call;
/// both are bf16 roundings (~4e-3 each) compounded over the layers, which is what the
/// teacher-forced bound against transformers allows too, so 5e-2.
#[test]
fn prefill_then_steps_compute_what_steps_alone_compute() {
    let Some(device) = gpu() else { return };
    for name in FIXTURES {
        let (_, json) = reference(name);
        let steps = json["steps"].as_u64().unwrap() as usize;
        let prefill = steps / 2;
        for (dtype, tolerance) in [(DType::F32, 1e-5f32), (DType::BF16, 5e-2)] {
            for mode in [StepMode::Fixed, StepMode::Graph] {
                let alone = teacher_forced_logits(name, &device, dtype, false, mode, None, 0);
                let got = teacher_forced_logits(name, &device, dtype, false, mode, None, prefill);
                let err = got.iter().zip(&alone[prefill - 1..]).map(|(a, b)| relative_error(a, b)).fold(0f32, f32::max);
                eprintln!(
                    "{name}: GPU {dtype:?} {mode:?}, prefill {prefill} then steps vs steps: max relative error {err:e}"
                );
                assert!(err <= tolerance, "{name}: {dtype:?} {mode:?} prefill differs from steps by {err}");
            }
        }
    }
}

#[test]
fn decoder_logits_on_the_gpu_track_transformers_in_every_dtype() {
    let Some(device) = gpu() else { return };
    for name in FIXTURES {
        for (dtype, tolerance) in [(DType::F32, 1e-4f32), (DType::F16, 1e-2), (DType::BF16, 5e-2)] {
            let err = decoder_logits_error(name, &device, dtype, false);
            eprintln!(
                "{name}: GPU {dtype:?} decoder logits, teacher-forced: max relative error {err:e} (<= {tolerance:e})"
            );
            assert!(err <= tolerance, "{name}: GPU {dtype:?} logits relative error {err} over {tolerance}");
        }
    }
}

/// The few-row kernel (`kernels/gemv.cu`, through `Linear`) against the f32 product of the very
/// weights it reads (rounded, or dequantised) and the same activations: dense f32, f16 and bf16
/// weights, int8 weights with each activation dtype, every tile size, several tiles, outputs that
/// no block divides, and each epilogue. Row counts past the kernel's take cuBLAS or a dequantised
/// matrix, which must agree too.
#[test]
fn few_row_products_on_the_gpu_match_f32_products() {
    use musicgen::internals::Linear;
    let Some(device) = gpu() else { return };
    let (out_dim, in_dim) = (203, 272);
    let weight = Tensor::randn(0f32, 0.05, (out_dim, in_dim), &Device::Cpu).unwrap();
    let cases = [
        (DType::F32, false, DType::F32, 1e-5f32),
        (DType::F16, false, DType::F16, 2e-3),
        (DType::BF16, false, DType::BF16, 1.6e-2),
        (DType::F32, true, DType::F32, 1e-5),
        (DType::F16, true, DType::F16, 2e-3),
        (DType::BF16, true, DType::BF16, 1.6e-2),
    ];
    for (weights, int8, activations, bound) in cases {
        let mut layer = Linear::new(weight.to_dtype(weights).unwrap().to_device(&device).unwrap());
        if int8 {
            layer = layer.quantize().unwrap();
        }
        let exact = layer.dense_weight(DType::F32).unwrap().to_device(&Device::Cpu).unwrap();
        for rows in [1, 2, 3, 5, 8, 9, 16, 17, 64, 130] {
            let xs = Tensor::randn(0f32, 1.0, (rows, 1, in_dim), &device).unwrap().to_dtype(activations).unwrap();
            let residual =
                Tensor::randn(0f32, 1.0, (rows, 1, out_dim), &device).unwrap().to_dtype(activations).unwrap();
            let host = |t: &Tensor| t.to_dtype(DType::F32).unwrap().to_device(&Device::Cpu).unwrap();
            let product = host(&xs).reshape((rows, in_dim)).unwrap().matmul(&exact.t().unwrap()).unwrap();
            let product = product.reshape((rows, 1, out_dim)).unwrap();
            let checks = [
                ("product", layer.forward(&xs).unwrap(), product.clone()),
                ("residual add", layer.forward_add(&xs, &residual).unwrap(), (host(&residual) + &product).unwrap()),
                (
                    "gelu",
                    layer.forward_activated(&xs, musicgen::internals::Activation::GeluErf).unwrap(),
                    product.gelu_erf().unwrap(),
                ),
            ];
            for (what, got, want) in checks {
                assert_eq!((got.dtype(), got.dims()), (activations, want.dims()), "{what}");
                let err = util::tensor_relative_error(&host(&got), &want);
                assert!(
                    err <= bound,
                    "{weights:?} weights (int8 {int8}), {activations:?} activations, {rows} rows, {what}: {err} > {bound}"
                );
            }
        }
    }
}

/// int8 projections on the GPU compute what they compute on the CPU (the same codes: they are
/// made on the host from the same weights), and with bf16 activations stay within bf16's bound
/// of transformers' f32 logits.
#[test]
fn int8_decoder_on_the_gpu_matches_the_cpu() {
    let Some(device) = gpu() else { return };
    for name in FIXTURES {
        let gpu = teacher_forced_logits(name, &device, DType::F32, true, StepMode::Graph, None, 0);
        let cpu = teacher_forced_logits(name, &Device::Cpu, DType::F32, true, StepMode::Growing, None, 0);
        let err = gpu.iter().zip(&cpu).map(|(g, c)| relative_error(g, c)).fold(0f32, f32::max);
        eprintln!("{name}: int8 decoder, GPU against CPU: logits max relative error {err:e}");
        assert!(err <= 1e-4, "{name}: int8 GPU logits differ from the CPU's by {err}");
        let err = decoder_logits_error(name, &device, DType::BF16, true);
        eprintln!(
            "{name}: int8 decoder, bf16 activations on the GPU: logits relative error {err:e} against transformers"
        );
        assert!(err <= 5e-2, "{name}: int8 bf16 GPU logits relative error {err}");
    }
}

#[test]
fn half_precision_waveforms_stay_close_to_f32() {
    if gpu().is_none() {
        return;
    }
    for name in FIXTURES {
        let (f32_codes, f32_audio) = generate(name, ModelDType::F32);
        let rms = |a: &[f32]| (a.iter().map(|v| (v * v) as f64).sum::<f64>() / a.len() as f64).sqrt();
        for dtype in [ModelDType::F16, ModelDType::BF16] {
            let (codes, audio) = generate(name, dtype);
            let same = codes.iter().zip(&f32_codes).filter(|(a, b)| a == b).count() as f64 / codes.len() as f64;
            let err = relative_error(&audio, &f32_audio);
            eprintln!(
                "{name}: GPU {dtype} end to end: {:.1}% of codes equal to f32, waveform max relative error {err:e}, \
                 RMS {:.4} vs {:.4}",
                same * 100.0,
                rms(&audio),
                rms(&f32_audio)
            );
            assert!(audio.iter().all(|v| v.is_finite()), "{name}: {dtype} waveform has NaN or infinity");
            if codes == f32_codes {
                assert!(err <= 5e-2, "{name}: {dtype} picked the f32 codes but its waveform differs by {err}");
            } else {
                let ratio = rms(&audio) / rms(&f32_audio);
                assert!((0.5..=2.0).contains(&ratio), "{name}: {dtype} loudness is {ratio:.2}x the f32 waveform's");
            }
        }
    }
}

#[test]
fn a_borrowed_t5_and_encodec_take_no_gpu_memory_and_change_no_sample() {
    if gpu().is_none() {
        return;
    }
    let options = LoadOptions { device: DeviceSpec::Cuda(0), ..LoadOptions::default() };
    let track = |model: &MusicGen| {
        let item = GenerationItem { prompt: "ambient piano".into(), sampling: SamplingParams::greedy(3.0), seed: 0 };
        let request = GenerationRequest::new(vec![item], 0.4);
        let mut tracks = model.generate(&request, &mut |_| {}, &musicgen::CancelToken::default()).unwrap();
        tracks.remove(0).channels.remove(0)
    };
    let first = MusicGen::load_sharing(checkpoint("tiny-mono").to_str().unwrap(), &options, &[]).unwrap();
    let memory = first.device_memory().expect("a GPU reports its memory");
    assert!(memory.used_bytes > 0 && memory.used_bytes <= memory.total_bytes, "{memory:?}");
    let copy = util::copy_checkpoint("tiny-mono");
    let twin = MusicGen::load_sharing(copy.path().to_str().unwrap(), &options, &[&first]).unwrap();
    assert_eq!(twin.shared_with(&first), musicgen::SharedParts { text_encoder: true, codec: true });
    let alone = MusicGen::load(copy.path().to_str().unwrap(), &options).unwrap();
    assert_eq!(track(&twin), track(&alone), "borrowed parts on the GPU give the same samples");
}

/// Streaming on the GPU: the pieces, end to end, against the same codes decoded whole (cuBLAS
/// may sum a piece's products in another order than the whole track's, so equality is to float
/// rounding; how many 16-bit samples that moves is printed for docs/PERFORMANCE.md).
#[test]
fn streamed_pieces_on_the_gpu_are_the_whole_track_decode() {
    if gpu().is_none() {
        return;
    }
    for name in FIXTURES {
        let model = f32_on_the_gpu(name);
        let sampling = SamplingParams { top_k: 32, ..SamplingParams::default() };
        let request =
            GenerationRequest::new(vec![GenerationItem { prompt: "ambient piano".into(), sampling, seed: 3 }], 34.0);
        let whole = model.generate(&request, &mut |_| {}, &musicgen::CancelToken::default()).unwrap();
        let streamed = model
            .generate_streaming(
                &request,
                musicgen::StreamOptions::default(),
                &mut |_| {},
                &mut |_| Ok(()),
                &musicgen::CancelToken::default(),
            )
            .unwrap();
        let (w, s) = (whole[0].channels.concat(), streamed[0].channels.concat());
        assert_eq!(w.len(), s.len());
        let worst = w.iter().zip(&s).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let pcm = |v: f32| (v.clamp(-1.0, 1.0) * 32768.0).clamp(-32768.0, 32767.0) as i32;
        let moved = w.iter().zip(&s).filter(|(a, b)| pcm(**a) != pcm(**b)).count();
        let peak = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        eprintln!(
            "{name} on the GPU, 34 s (two windows) in 0.5 s pieces: max abs diff {worst:e} (peak {peak:.2}), \
             {moved} of {} 16-bit samples differ",
            w.len()
        );
        assert!(worst <= 1e-4 * peak.max(1.0), "{name}: streamed audio differs from the whole decode by {worst}");
    }
}

/// The fixture `name` in f32 on the GPU.
fn f32_on_the_gpu(name: &str) -> MusicGen {
    MusicGen::load(
        checkpoint(name).to_str().unwrap(),
        &LoadOptions { device: DeviceSpec::Cuda(0), dtype: ModelDType::F32, ..LoadOptions::default() },
    )
    .unwrap()
}

/// Items of one request covering the sampling rules: top-k, top-p after top-k, top-p alone, a
/// temperature, no guidance, greedy.
fn sampled_items(vocab: usize) -> Vec<GenerationItem> {
    let settings = [
        SamplingParams { top_k: vocab.min(250), ..SamplingParams::default() },
        SamplingParams { top_k: vocab / 3, top_p: 0.9, temperature: 0.8, cfg_coef: 3.0 },
        SamplingParams { top_k: vocab, top_p: 0.5, temperature: 1.3, cfg_coef: 4.5 },
        SamplingParams { top_k: vocab / 2, top_p: 0.0, temperature: 1.0, cfg_coef: 1.0 },
        SamplingParams::greedy(3.0),
    ];
    let prompts = ["ambient piano", "lofi beat with vinyl crackle", "80s pop", "drum solo", "calm strings"];
    settings
        .iter()
        .zip(prompts)
        .enumerate()
        .map(|(i, (&sampling, prompt))| GenerationItem { prompt: prompt.into(), sampling, seed: 40 + i as u64 })
        .collect()
}

/// Codes of `request` stepped by [`musicgen::Generation::step`] (tokens picked on the GPU) or by
/// `step_logits` (the same logits brought to the host and picked there).
/// `on_gpu` says where the model is.
fn codes_picked(model: &MusicGen, request: &GenerationRequest, on_device: bool, on_gpu: bool) -> Vec<Vec<u32>> {
    let mut generation = model.start(request).unwrap();
    assert_eq!(generation.picks_on_device(), on_gpu);
    if on_device {
        while generation.step().unwrap() {}
    } else {
        while generation.step_logits().unwrap().is_some() {}
    }
    generation.codes()
}

/// The sampling kernel against the host's `Sampler` on the very same logits: guidance,
/// temperature, top-k, top-p and the draw from each item's ChaCha stream. Float ties aside (the
/// kernel sums in another order), every token is the same.
#[test]
fn tokens_picked_on_the_gpu_are_the_host_s_picks_from_the_same_logits() {
    if gpu().is_none() {
        return;
    }
    let fixture = f32_on_the_gpu("tiny-stereo");
    // musicgen-small's vocabulary of 2048, its logits rounded through bf16: many exact ties.
    let small = MusicGen::random(
        "small",
        &LoadOptions { device: DeviceSpec::Cuda(0), dtype: ModelDType::BF16, ..LoadOptions::default() },
    )
    .unwrap();
    for (name, model, secs) in [("tiny-stereo", &fixture, 2.0), ("small (random, bf16)", &small, 1.0)] {
        let vocab = model.config().decoder.vocab_size;
        let request = GenerationRequest::new(sampled_items(vocab), secs);
        let device = codes_picked(model, &request, true, true);
        let host = codes_picked(model, &request, false, true);
        for (item, (d, h)) in device.iter().zip(&host).enumerate() {
            let same = d.iter().zip(h).filter(|(a, b)| a == b).count();
            eprintln!("{name}, item {item}: {same} of {} codes picked on the GPU equal the host's", d.len());
        }
        assert_eq!(device, host, "{name}: the GPU's picks differ from the host's on the same logits");
    }
}

/// A seed gives the same music on the CPU and the GPU: the decoder's f32 logits agree to ~1e-6,
/// and both sides draw the same numbers from each item's stream.
#[test]
fn a_seed_gives_the_same_codes_on_the_cpu_and_the_gpu() {
    if gpu().is_none() {
        return;
    }
    let load = |device| {
        MusicGen::load(
            checkpoint("tiny-mono").to_str().unwrap(),
            &LoadOptions { device, dtype: ModelDType::F32, ..LoadOptions::default() },
        )
        .unwrap()
    };
    let (cpu, gpu) = (load(DeviceSpec::Cpu), load(DeviceSpec::Cuda(0)));
    let request = GenerationRequest::new(sampled_items(cpu.config().decoder.vocab_size), 2.0);
    let on_cpu = codes_picked(&cpu, &request, true, false);
    let on_gpu = codes_picked(&gpu, &request, true, true);
    assert_eq!(on_cpu, on_gpu, "the same seeds gave other codes on the GPU");
}

/// Every item of a big batch is the item generated alone (greedy, f32: the batch's products are
/// cuBLAS GEMMs where one item's are the few-row kernel, so equality is to float rounding, far
/// under the fixture's top-two margins): 32 and 64 items of the fixture, codes equal and audio
/// within 2e-4.
#[test]
fn batch_items_on_the_gpu_are_the_items_generated_alone() {
    if gpu().is_none() {
        return;
    }
    let model = f32_on_the_gpu("tiny-mono");
    let item = |i: usize| GenerationItem {
        prompt: format!("track {i}: {}", ["ambient piano", "lofi beat", "80s pop with drums", "strings"][i % 4]),
        sampling: SamplingParams::greedy(3.0),
        seed: i as u64,
    };
    let cancel = musicgen::CancelToken::default();
    for batch in [32, 64] {
        let request = GenerationRequest::new((0..batch).map(item).collect(), 1.0);
        let mut generation = model.start(&request).unwrap();
        while generation.step().unwrap() {}
        let codes = generation.codes();
        let audio = generation.finish().unwrap();
        for i in (0..batch).step_by(7).chain([batch - 1]) {
            let alone = GenerationRequest::new(vec![item(i)], 1.0);
            let mut generation = model.start(&alone).unwrap();
            while generation.step().unwrap() {}
            assert_eq!(generation.codes()[0], codes[i], "batch {batch}, item {i}: other codes than alone");
            let solo = model.generate(&alone, &mut |_| {}, &cancel).unwrap();
            let (a, b) = (solo[0].channels.concat(), audio[i].channels.concat());
            let peak = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
            let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(worst <= 2e-4 * peak.max(1.0), "batch {batch}, item {i}: audio differs by {worst}");
        }
    }
}

/// Batch 8 of the published medium and large architectures (random weights, f32, greedy, 0.3 s):
/// every item's codes are the item's alone. Random weights' top-two margins are rarely under
/// f32's rounding, so a flip here would be a bug, not noise, unless the printed margin says so.
#[test]
fn batch_of_8_of_medium_and_large_on_the_gpu_is_each_item_alone() {
    if gpu().is_none() {
        return;
    }
    for architecture in ["medium", "large"] {
        let model = MusicGen::random(
            architecture,
            &LoadOptions { device: DeviceSpec::Cuda(0), dtype: ModelDType::F32, ..LoadOptions::default() },
        )
        .unwrap();
        let item = |i: usize| GenerationItem {
            prompt: ["ambient piano", "lofi beat", "80s pop", "drum solo"][i % 4].repeat(1 + i / 4),
            sampling: SamplingParams::greedy(3.0),
            seed: 0,
        };
        let request = GenerationRequest::new((0..8).map(item).collect(), 0.3);
        let mut generation = model.start(&request).unwrap();
        while generation.step().unwrap() {}
        let codes = generation.codes();
        for i in [0, 5] {
            let mut alone = model.start(&GenerationRequest::new(vec![item(i)], 0.3)).unwrap();
            while alone.step().unwrap() {}
            assert_eq!(alone.codes()[0], codes[i], "{architecture} batch 8, item {i}: other codes than alone");
        }
        eprintln!("{architecture}: items 0 and 5 of a batch of 8 equal the items alone");
    }
}

/// A request of the shape of one before it replays that one's recorded step (its graph and
/// buffers, with the new request's memory copied in) and gets what recording afresh gives: the
/// codes of the same request on another thread, whose parked graphs are its own (none).
#[test]
fn a_request_of_the_same_shape_replays_the_step_the_last_one_recorded() {
    if gpu().is_none() {
        return;
    }
    let model = f32_on_the_gpu("tiny-stereo");
    let request = |prompts: [&str; 2], seed: u64| {
        let sampling = SamplingParams { top_k: 20, ..SamplingParams::default() };
        let items = prompts.iter().map(|p| GenerationItem { prompt: (*p).into(), sampling, seed }).collect();
        GenerationRequest::new(items, 1.0)
    };
    let run = |request: &GenerationRequest| {
        let mut generation = model.start(request).unwrap();
        let reused = generation.reuses_graph();
        while generation.step().unwrap() {}
        (reused, generation.codes())
    };
    let (first_reused, _) = run(&request(["ambient piano with rain", "lofi beat"], 1));
    assert!(!first_reused, "nothing was recorded before the first request");
    // The same text lengths (the longest prompt sets the memory's), other words and seeds.
    let second = request(["lofi beat", "ambient piano with rain"], 2);
    let (reused, codes) = run(&second);
    assert!(reused, "the second request of the same shape recorded its own graph");
    let (fresh_reused, fresh) = std::thread::scope(|s| s.spawn(|| run(&second)).join().unwrap());
    assert!(!fresh_reused);
    assert_eq!(codes, fresh, "a reused graph gave other codes than a fresh recording");
    // Another shape (three items) records its own.
    let third = GenerationRequest::new(
        ["a", "b", "c"].iter().map(|p| GenerationItem { prompt: (*p).into(), ..second.items[0].clone() }).collect(),
        1.0,
    );
    assert!(!run(&third).0);
}
