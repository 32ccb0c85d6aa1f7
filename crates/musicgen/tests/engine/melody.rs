//! musicgen-melody against transformers 4.48 (tools/make_melody_fixtures.py): the chroma of the
//! fixture tunes, the decoder's prefix (chroma then text states), every step's logits, the codes
//! and the waveform, for two tunes and for the null melody; both config dialects and sharded weights.

use musicgen::audio::read_audio;
use musicgen::internals::{ChromaConfig, ChromaExtractor};
use musicgen::{Audio, GenerationItem, GenerationRequest, LoadOptions, MusicGen, SamplingParams};

use crate::util::{checkpoint, fixture, floats, ints, max_abs_diff, prompts, reference, relative_error, tensor_diff};

fn load(name: &str) -> MusicGen {
    MusicGen::load(checkpoint(name).to_str().unwrap(), &LoadOptions::default()).unwrap()
}

fn tune(name: &str, key: &str) -> Audio {
    let (r, _) = reference(name);
    Audio { sample_rate: 32000, channels: vec![floats(&r[key])] }
}

fn greedy(name: &str, melody: Option<Audio>) -> GenerationRequest {
    let (_, json) = reference(name);
    let items = prompts(&json, "prompts")
        .into_iter()
        .map(|prompt| GenerationItem { prompt, sampling: SamplingParams::greedy(3.0), seed: 0 })
        .collect();
    let mut request = GenerationRequest::new(items, json["frames"].as_u64().unwrap() as f64 / 50.0);
    request.melody = melody;
    request
}

#[test]
fn the_fixture_tunes_have_transformers_chroma() {
    let (r, _) = reference("tiny-melody");
    let extractor = ChromaExtractor::new(ChromaConfig::default()).unwrap();
    for (audio, features) in [("melody_audio", "input_features"), ("melody2_audio", "input_features2")] {
        let ours = extractor.one_hot(&floats(&r[audio])).unwrap();
        assert_eq!(floats(&ours), floats(&r[features].get(0).unwrap()), "{audio}");
    }
    // The WAVs next to the fixture hold exactly those samples.
    let read = read_audio(&fixture("tiny-melody").join("melody.wav"), 32000, 1, 30.0).unwrap();
    assert_eq!(read, tune("tiny-melody", "melody_audio"));
}

/// The melody run: prefix to 1e-5, every step's logits to 1e-5 (relative), codes exact, audio 1e-5.
fn check_melody(name: &str) {
    let model = load(name);
    assert!(model.info().melody);
    let (r, _) = reference(name);
    let mut generation = model.start(&greedy(name, Some(tune(name, "melody_audio")))).unwrap();
    let prefix = generation.prefix().expect("a melody checkpoint is conditioned by a prefix").clone();
    let diff = tensor_diff(&prefix, &r["prefix"]);
    println!("{name}: prefix max abs diff {diff:e}");
    assert!(diff <= 1e-5, "{name}: prefix differs by {diff}");
    let mut step = 0;
    while let Some(out) = generation.step_logits().unwrap() {
        let err = relative_error(&out.logits, &floats(&r["logits"].get(step).unwrap()));
        assert!(err <= 1e-5, "{name}: step {step} logits relative error {err}");
        step += 1;
    }
    assert_eq!(generation.codes().concat(), ints(&r["codes"]), "{name}: codes differ from transformers'");
    let audio: Vec<f32> = generation.finish().unwrap().iter().flat_map(|t| t.channels.concat()).collect();
    let diff = max_abs_diff(&audio, &floats(&r["audio"]));
    println!("{name}: audio max abs diff {diff:e}");
    assert!(diff <= 1e-5, "{name}: audio differs by {diff}");
}

#[test]
fn melody_generation_matches_transformers_4_48_mono() {
    check_melody("tiny-melody");
}

#[test]
fn melody_generation_matches_transformers_4_48_stereo_from_sharded_weights() {
    check_melody("tiny-stereo-melody");
}

fn codes_and_audio(model: &MusicGen, request: &GenerationRequest) -> (Vec<u32>, Vec<f32>) {
    let mut generation = model.start(request).unwrap();
    while generation.step().unwrap() {}
    let codes = generation.codes().concat();
    (codes, generation.finish().unwrap().iter().flat_map(|t| t.channels.concat()).collect())
}

#[test]
fn another_melody_and_the_null_melody_match_transformers_and_differ() {
    for name in ["tiny-melody", "tiny-stereo-melody"] {
        let model = load(name);
        let (r, _) = reference(name);
        let (codes2, audio2) = codes_and_audio(&model, &greedy(name, Some(tune(name, "melody2_audio"))));
        assert_eq!(codes2, ints(&r["codes_melody2"]), "{name}: second melody's codes");
        assert!(max_abs_diff(&audio2, &floats(&r["audio_melody2"])) <= 1e-5);
        let (codes_null, audio_null) = codes_and_audio(&model, &greedy(name, None));
        assert_eq!(codes_null, ints(&r["codes_null"]), "{name}: null melody's codes");
        assert!(max_abs_diff(&audio_null, &floats(&r["audio_null"])) <= 1e-5);
        assert_ne!(codes2, ints(&r["codes"]), "{name}: two melodies gave the same music");
    }
}

#[test]
fn both_config_dialects_load_the_same_model() {
    let (r, _) = reference("tiny-melody");
    let (codes, _) =
        codes_and_audio(&load("tiny-melody-v5"), &greedy("tiny-melody", Some(tune("tiny-melody", "melody_audio"))));
    assert_eq!(codes, ints(&r["codes"]));
}

#[test]
fn melody_rules_name_what_to_do() {
    let text_model = load("tiny-mono");
    let mut request = GenerationRequest::single("piano", 0.2);
    request.items[0].sampling = SamplingParams::greedy(3.0);
    request.melody = Some(tune("tiny-melody", "melody_audio"));
    let err = text_model.start(&request).err().unwrap().to_string();
    assert!(err.contains("melody") && err.contains("facebook/musicgen-melody"), "{err}");

    let model = load("tiny-melody");
    request.melody = Some(Audio { sample_rate: 44100, channels: vec![vec![0.1; 4410]] });
    let err = model.start(&request).err().unwrap().to_string();
    assert!(err.contains("mono at 32000 Hz"), "{err}");
    request.melody = Some(Audio { sample_rate: 32000, channels: vec![vec![]] });
    assert!(model.start(&request).is_err(), "an empty melody");
}

#[test]
fn long_tracks_follow_the_melody_window_by_window() {
    // 35 s at stride 17: the second window starts 17 s in and takes the 30 s of melody from
    // there, the 2 s tune looped (audiocraft's `wav[..., positions % length]`): 1 s into the tune.
    let model = load("tiny-melody");
    let melody = tune("tiny-melody", "melody_audio");
    let mut request = GenerationRequest::single("lofi beat", 35.0);
    request.items[0].sampling = SamplingParams::greedy(3.0);
    request.extend_stride_secs = 17.0;
    request.melody = Some(melody.clone());
    let mut generation = model.start(&request).unwrap();
    assert_eq!(generation.windows(), 2);
    let first = floats(generation.prefix().unwrap());
    for _ in 0..1500 + 3 {
        generation.step().unwrap();
    }
    let second = floats(generation.prefix().unwrap());
    assert_ne!(first, second, "each window takes its own stretch of melody");

    // The same stretch given as the melody of a one-window track gives the same prefix.
    let samples = &melody.channels[0];
    let looped: Vec<f32> = (0..30 * 32000).map(|i| samples[(17 * 32000 + i) % samples.len()]).collect();
    let mut alone = GenerationRequest::single("lofi beat", 1.0);
    alone.items[0].sampling = SamplingParams::greedy(3.0);
    alone.melody = Some(Audio { sample_rate: 32000, channels: vec![looped] });
    assert_eq!(floats(model.start(&alone).unwrap().prefix().unwrap()), second);

    while generation.step().unwrap() {}
    let tracks = generation.finish().unwrap();
    assert_eq!(tracks[0].len(), 35 * 32000);
}
