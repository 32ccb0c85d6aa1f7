//! The whole engine against transformers' `generate` on the tiny fixtures, plus the behaviour the
//! server relies on: batches, seeds, progress, cancellation and exact sample counts.

use musicgen::MusicgenConfig;
use musicgen::{CancelToken, Error, GenerationItem, GenerationRequest, LoadOptions, MusicGen, SamplingParams};

use crate::util::{checkpoint, floats, ints, max_abs_diff, prompts, reference, relative_error};

fn load(name: &str) -> MusicGen {
    MusicGen::load(checkpoint(name).to_str().unwrap(), &LoadOptions::default()).unwrap()
}

fn request(prompts: &[&str], sampling: SamplingParams, duration_secs: f64) -> GenerationRequest {
    GenerationRequest::new(
        prompts.iter().map(|p| GenerationItem { prompt: p.to_string(), sampling, seed: 0 }).collect(),
        duration_secs,
    )
}

/// Greedy guided generation of the reference's prompts, checked at every stage.
fn check_against_reference(name: &str, suffix: &str, prompts_key: &str) {
    let model = load(name);
    let (tensors, json) = reference(name);
    let t = |key: &str| &tensors[&format!("{key}{suffix}")];
    let prompts = prompts(&json, prompts_key);
    let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let frames = json["frames"].as_u64().unwrap() as usize;
    let guidance = json["guidance_scale"].as_f64().unwrap();
    let duration = frames as f64 / 50.0;
    let request = request(&prompts, SamplingParams::greedy(guidance), duration);

    let mut generation = model.start(&request).unwrap();
    assert_eq!(generation.total_steps(), json["steps"].as_u64().unwrap() as usize);
    if suffix.is_empty() {
        let err = relative_error(&floats(generation.memory()), &floats(&tensors["projected_encoder_hidden_states"]));
        eprintln!("{name}: text memory relative error {err:e}");
        assert!(err < 1e-4, "{name}: text memory relative error {err}");
    }
    let (mut worst_logits, mut worst_scores) = (0f32, 0f32);
    let mut step = 0;
    while let Some(out) = generation.step_logits().unwrap() {
        let err = relative_error(&out.logits, &floats(&t("logits").get(step).unwrap()));
        assert!(err < 1e-4, "{name}{suffix} step {step}: logits relative error {err}");
        worst_logits = worst_logits.max(err);
        let err = relative_error(&out.scores, &floats(&t("scores").get(step).unwrap()));
        assert!(err < 1e-4, "{name}{suffix} step {step}: scores relative error {err}");
        worst_scores = worst_scores.max(err);
        step += 1;
    }
    assert_eq!(generation.sequences(), ints(t("sequences")).as_slice(), "{name}{suffix}: token grid");
    assert_eq!(generation.codes().concat(), ints(t("codes")), "{name}{suffix}: codes");

    let audio = generation.finish().unwrap();
    let expected = floats(t("audio"));
    let got: Vec<f32> = audio.iter().flat_map(|a| a.channels.concat()).collect();
    let err = max_abs_diff(&got, &expected);
    eprintln!(
        "{name}{suffix}: logits rel err {worst_logits:e}, scores rel err {worst_scores:e}, audio max abs err {err:e}"
    );
    assert!(err < 1e-4, "{name}{suffix}: waveform max abs error {err}");
    let channels = json["audio_channels"].as_u64().unwrap() as usize;
    assert!(audio.iter().all(|a| a.channels.len() == channels && a.sample_rate == 32000));
}

#[test]
fn tiny_mono_batch_matches_transformers() {
    check_against_reference("tiny-mono", "", "prompts");
}

#[test]
fn tiny_mono_single_prompt_matches_transformers() {
    check_against_reference("tiny-mono", "_single", "prompts_single");
}

#[test]
fn tiny_stereo_batch_matches_transformers() {
    check_against_reference("tiny-stereo", "", "prompts");
}

#[test]
fn weight_norm_and_bin_variants_generate_the_same_audio() {
    let request = request(&["lofi beat"], SamplingParams::greedy(3.0), 0.1);
    let none = &mut |_: &musicgen::Progress| {};
    let base = load("tiny-mono").generate(&request, none, &CancelToken::default()).unwrap();
    for variant in ["tiny-mono-legacy", "tiny-mono-bin"] {
        let audio = load(variant).generate(&request, none, &CancelToken::default()).unwrap();
        assert_eq!(audio, base, "{variant}");
    }
}

#[test]
fn batch_items_equal_the_items_generated_alone() {
    let model = load("tiny-mono");
    let mut prompts = vec!["lofi beat", "calm ambient piano with soft rain"];
    let none = &mut |_: &musicgen::Progress| {};
    let cancel = CancelToken::default();
    // Item 1 runs without guidance: the batch mixes guided and unguided rows.
    let mut batch = request(&prompts, SamplingParams::greedy(3.0), 0.3);
    batch.items[1].sampling.cfg_coef = 1.0;
    let together = model.generate(&batch, none, &cancel).unwrap();
    for (i, item) in batch.items.iter().enumerate() {
        let alone = GenerationRequest::new(vec![item.clone()], batch.duration_secs);
        let alone = model.generate(&alone, none, &cancel).unwrap();
        assert_eq!(alone[0], together[i], "item {i}");
    }
    prompts.reverse();
    let reversed = model.generate(&request(&prompts, SamplingParams::greedy(3.0), 0.3), none, &cancel).unwrap();
    assert_eq!(reversed[1], together[0]);
}

#[test]
fn same_seed_same_audio_other_seed_other_audio() {
    let model = load("tiny-mono");
    let sampling = SamplingParams { top_k: 50, top_p: 0.0, temperature: 1.0, cfg_coef: 3.0 };
    let run = |seeds: &[u64]| {
        let items = seeds.iter().map(|&seed| GenerationItem { prompt: "lofi beat".into(), sampling, seed }).collect();
        let request = GenerationRequest::new(items, 0.3);
        model.generate(&request, &mut |_| {}, &CancelToken::default()).unwrap()
    };
    let first = run(&[7]);
    assert_eq!(first, run(&[7]));
    assert_ne!(first, run(&[8]));
    // Each item draws from its own stream: in a batch it still gets its own music.
    let batch = run(&[8, 7]);
    assert_eq!(batch[1], first[0]);
    let nucleus = SamplingParams { top_p: 0.9, ..sampling };
    let request = request(&["lofi beat"], nucleus, 0.3);
    let a = model.generate(&request, &mut |_| {}, &CancelToken::default()).unwrap();
    assert_eq!(a, model.generate(&request, &mut |_| {}, &CancelToken::default()).unwrap());
}

#[test]
fn progress_reports_every_step_and_cancellation_stops_within_one() {
    let model = load("tiny-stereo");
    let request = request(&["lofi beat"], SamplingParams::greedy(3.0), 0.2);
    let mut seen = Vec::new();
    model.generate(&request, &mut |p| seen.push((p.step, p.total_steps)), &CancelToken::default()).unwrap();
    // 10 frames + 3: the delay spans the 4 codebooks of a channel.
    let total = 10 + 3;
    assert_eq!(seen, (1..=total).map(|s| (s, total)).collect::<Vec<_>>());

    let cancel = CancelToken::default();
    let mut steps = 0;
    let result = model.generate(
        &request,
        &mut |p| {
            steps = p.step;
            if p.step == 4 {
                cancel.cancel();
            }
        },
        &cancel,
    );
    assert!(matches!(result, Err(Error::Cancelled)), "{:?}", result.map(|a| a.len()));
    assert_eq!(steps, 4);
}

#[test]
fn sample_count_is_the_requested_duration() {
    for name in ["tiny-mono", "tiny-stereo"] {
        let model = load(name);
        // Whole frames, then half a frame (10.5 -> 11 frames) and a fraction that rounds down.
        for (duration, samples) in [(0.2, 6400), (0.21, 6720), (0.2345, 7504)] {
            let request = request(&["piano"], SamplingParams::greedy(3.0), duration);
            let audio = model.generate(&request, &mut |_| {}, &CancelToken::default()).unwrap();
            for channel in &audio[0].channels {
                assert_eq!(channel.len(), samples, "{name} at {duration} s");
                assert!(channel.iter().all(|s| s.is_finite()));
            }
        }
    }
}

#[test]
fn bad_requests_are_refused_before_any_work() {
    let model = load("tiny-mono");
    let mut bad = request(&["piano"], SamplingParams::greedy(3.0), 1.0);
    bad.items[0].sampling.top_k = 65;
    let err = model.start(&bad).err().unwrap().to_string();
    assert!(err.contains("top_k") && err.contains("65"), "{err}");
    let empty = request(&[""], SamplingParams::greedy(3.0), 1.0);
    assert!(matches!(model.start(&empty), Err(Error::InvalidRequest { field: "prompt", .. })));
    let none = GenerationRequest::new(vec![], 1.0);
    assert!(model.generate(&none, &mut |_| {}, &CancelToken::default()).is_err());
}

#[test]
fn random_weights_build_any_configuration_and_generate() {
    let text = std::fs::read_to_string(checkpoint("tiny-stereo").join("config.json")).unwrap();
    let config = MusicgenConfig::from_json(&text).unwrap();
    let model = MusicGen::random_with_config(config, &LoadOptions::default()).unwrap();
    assert!(model.info().parameters > 0);
    assert_eq!(model.info().audio_channels, 2);
    let request = request(&["anything"], SamplingParams { top_k: 8, ..SamplingParams::default() }, 0.1);
    let audio = model.generate(&request, &mut |_| {}, &CancelToken::default()).unwrap();
    assert_eq!(audio[0].channels.len(), 2);
    assert_eq!(audio[0].channels[0].len(), 3200);
    assert!(matches!(MusicGen::random("tiny", &LoadOptions::default()), Err(Error::InvalidRequest { .. })));
}
