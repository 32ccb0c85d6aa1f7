//! The melody chroma (`internals::ChromaExtractor`) against transformers 4.48.3's
//! `MusicgenMelodyFeatureExtractor` on the signals of `fixtures/chroma`
//! (tools/make_chroma_fixtures.py): the filter bank, every signal's normalised chroma and one-hot
//! frames, and the inputs and configs it refuses. Every recorded frame is compared; the fixture
//! keeps each frame's top two chroma values at least `gap_floor` apart (or the frame exactly
//! silent), so the one-hot frames agreeing is evidence, not luck.

use std::collections::HashMap;

use candle_core::Tensor;
use musicgen::internals::{ChromaConfig, ChromaExtractor};
use musicgen::Error;
use serde_json::{json, Value};

use crate::util::{fixture, floats, max_abs_diff, reference};

/// Normalised chroma values (in [0, 1]) agree with torch's to this; the recorded gaps are 10x
/// above it and more.
const CHROMA_TOLERANCE: f32 = 1e-5;

fn extractor() -> ChromaExtractor {
    ChromaExtractor::new(ChromaConfig::default()).unwrap()
}

/// A formula signal of reference.json, rebuilt exactly as the script does (see its docstring):
/// sums of sines in f64 with the C library's `sin` and `pow`, quantised to int16.
fn notes(formula: &Value) -> Vec<i16> {
    let length = formula["length"].as_u64().unwrap() as usize;
    let segment = formula["segment_samples"].as_u64().unwrap() as usize;
    let chords: Vec<Vec<(f64, f64)>> = formula["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|chord| {
            chord
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    let midi = p[0].as_i64().unwrap();
                    (440.0 * 2f64.powf((midi - 69) as f64 / 12.0), p[1].as_f64().unwrap())
                })
                .collect()
        })
        .collect();
    (0..length)
        .map(|n| {
            let s = n / segment;
            let k = n - s * segment;
            let mut x = 0.0f64;
            for &(f, a) in &chords[s % chords.len()] {
                x += a * (2.0 * std::f64::consts::PI * f * k as f64 / 32000.0).sin();
            }
            (x * 32768.0).round_ties_even().clamp(-32768.0, 32767.0) as i16
        })
        .collect()
}

fn fnv1a64(codes: &[i16]) -> String {
    let hash = codes
        .iter()
        .flat_map(|c| c.to_le_bytes())
        .fold(0xcbf29ce484222325u64, |h, byte| (h ^ byte as u64).wrapping_mul(0x100000001b3));
    format!("{hash:016x}")
}

/// The samples of signal `name`: from its WAV (tone_a4, through the engine's reader), its
/// formula (checked against the recorded hash) or reference.safetensors.
fn samples(name: &str, facts: &Value, tensors: &HashMap<String, Tensor>) -> Vec<f32> {
    if let Some(formula) = facts.get("formula") {
        let codes = notes(formula);
        assert_eq!(fnv1a64(&codes), facts["fnv1a64"].as_str().unwrap(), "{name}: the formula was not rebuilt exactly");
        return codes.iter().map(|&c| c as f32 / 32768.0).collect();
    }
    if name == "tone_a4" {
        let audio = musicgen::audio::read_audio(&fixture("chroma").join("tone_a4.wav"), 32000, 1, 60.0).unwrap();
        return audio.channels.into_iter().next().unwrap();
    }
    floats(&tensors[&format!("samples.{name}")])
}

/// One signal through `extractor` against the reference tensors under `prefix`: frame count,
/// chroma values, bins and one-hot frames. Returns the frames compared.
fn check_signal(
    extractor: &ChromaExtractor,
    tensors: &HashMap<String, Tensor>,
    prefix: &str,
    name: &str,
    samples: &[f32],
    facts: &Value,
) -> usize {
    let frames = facts["frames"].as_u64().unwrap() as usize;
    let num_chroma = extractor.config().num_chroma;
    assert_eq!(samples.len(), facts["samples"].as_u64().unwrap() as usize, "{name}");
    assert_eq!(extractor.config().frames(samples.len()), frames, "{name}: frame count");

    let gap = facts["min_gap"].as_f64().unwrap() as f32;
    assert!(CHROMA_TOLERANCE < gap / 2.0, "{name}: a gap of {gap} would not make the argmax decisive");
    let chroma = extractor.chroma(samples).unwrap();
    let expected = floats(&tensors[&format!("{prefix}chroma.{name}")]);
    let error = max_abs_diff(&chroma, &expected);
    assert!(error <= CHROMA_TOLERANCE, "{name}: chroma differs from transformers' by {error}");

    let bins = extractor.extract(samples).unwrap();
    let recorded: Vec<usize> = facts["bins"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as usize).collect();
    assert_eq!(bins, recorded, "{name}: bins");

    let one_hot = extractor.one_hot(samples).unwrap();
    assert_eq!(one_hot.dims(), [frames, num_chroma], "{name}");
    let expected = &tensors[&format!("{prefix}input_features.{name}")];
    assert_eq!(expected.dims(), [frames, num_chroma], "{name}");
    assert_eq!(floats(&one_hot), floats(expected), "{name}: one-hot frames");
    frames
}

#[test]
fn filter_bank_is_transformers_chroma_filters() {
    let (tensors, json) = reference("chroma");
    for (prefix, config) in [("", ChromaConfig::default()), ("alt.", alt_config(&json))] {
        let extractor = ChromaExtractor::new(config).unwrap();
        let expected = &tensors[&format!("{prefix}chroma_filters")];
        assert_eq!(expected.dims(), [config.num_chroma, config.n_fft / 2 + 1]);
        let error = max_abs_diff(extractor.filter_bank(), &floats(expected));
        assert!(error <= 1e-6, "{prefix}chroma_filters differ by {error}");
    }
}

#[test]
fn every_signal_gives_transformers_one_hot_frames() {
    let (tensors, json) = reference("chroma");
    let extractor = extractor();
    let signals = json["signals"].as_object().unwrap();
    assert!(signals.len() >= 8, "the fixture lost signals");
    let mut compared = 0;
    for (name, facts) in signals {
        let samples = samples(name, facts, &tensors);
        compared += check_signal(&extractor, &tensors, "", name, &samples, facts);
    }
    assert_eq!(compared, 6 + 5 + 13 + 5 + 5 + 7 + 235 + 79);
}

#[test]
fn another_config_from_json_gives_its_frames() {
    let (tensors, json) = reference("chroma");
    let extractor = ChromaExtractor::new(alt_config(&json)).unwrap();
    let chord = floats(&tensors["samples.chord_c_major"]);
    let frames =
        check_signal(&extractor, &tensors, "alt.", "chord_c_major", &chord, &json["alt_signals"]["chord_c_major"]);
    // 16000 samples, hop 512.
    assert_eq!(frames, 1 + 16000 / 512);
}

#[test]
fn notes_give_their_pitch_class() {
    let (tensors, json) = reference("chroma");
    let extractor = extractor();
    let bins = |name: &str| extractor.extract(&samples(name, &json["signals"][name], &tensors)).unwrap();
    // Bins count semitones from C: A is 9, E is 4, B is 11.
    assert_eq!(bins("tone_a4"), [9; 6]);
    assert_eq!(bins("chord_c_major"), [0; 5]);
    assert_eq!(bins("short_odd"), [4; 5]);
    // Frames 0 and 1 see only the leading zeros: bin 0, torch's first index of an all-zero frame.
    assert_eq!(bins("silence_tone"), [0, 0, 11, 11, 11, 11, 11]);
    // C E D A, 12800 samples (3.125 hops) each.
    assert_eq!(bins("melody"), [0, 0, 0, 0, 4, 4, 4, 2, 2, 2, 9, 9, 9]);
}

#[test]
fn a_signal_past_30_s_is_truncated_and_a_shorter_one_not_padded() {
    let (tensors, json) = reference("chroma");
    let extractor = extractor();
    let long = samples("long_31s", &json["signals"]["long_31s"], &tensors);
    assert_eq!(long.len(), 31 * 32000);
    let bins = extractor.extract(&long).unwrap();
    assert_eq!(bins.len(), 235);
    assert_eq!(bins, extractor.extract(&long[..30 * 32000]).unwrap());
    // The notes change, so that equality is not trivial: the 30 s from 1 s on give other frames.
    assert_ne!(extractor.extract(&long[32000..]).unwrap()[..], bins[..]);
    let ten = samples("chords_10s", &json["signals"]["chords_10s"], &tensors);
    assert_eq!(extractor.extract(&ten).unwrap().len(), 1 + 320000 / 4096);
}

#[test]
fn preprocessor_config_json_reads_back_as_the_default() {
    let text = std::fs::read_to_string(fixture("chroma").join("preprocessor_config.json")).unwrap();
    let config = ChromaConfig::from_preprocessor_config(&serde_json::from_str(&text).unwrap()).unwrap();
    assert_eq!(config, ChromaConfig::default());
    let (_, json) = reference("chroma");
    let recorded = &json["config"];
    assert_eq!(config.sampling_rate as u64, recorded["sampling_rate"].as_u64().unwrap());
    assert_eq!(config.n_fft as u64, recorded["n_fft"].as_u64().unwrap());
    assert_eq!(config.hop_length as u64, recorded["hop_length"].as_u64().unwrap());
    assert_eq!(config.num_chroma as u64, recorded["num_chroma"].as_u64().unwrap());
    assert_eq!(config.chunk_length as u64, recorded["chunk_length"].as_u64().unwrap());
    assert_eq!(config.max_samples(), 960000);
    // Missing keys take transformers' defaults.
    assert_eq!(ChromaConfig::from_preprocessor_config(&json!({})).unwrap(), ChromaConfig::default());
}

fn alt_config(json: &Value) -> ChromaConfig {
    let config = ChromaConfig::from_preprocessor_config(&json["alt_config"]).unwrap();
    assert_eq!(
        config,
        ChromaConfig { sampling_rate: 16000, n_fft: 2048, hop_length: 512, num_chroma: 24, chunk_length: 30 }
    );
    config
}

#[test]
fn nonsense_preprocessor_configs_are_refused_naming_the_key() {
    let cases = [
        (json!({"sampling_rate": 0}), "sampling_rate"),
        (json!({"sampling_rate": 32000.5}), "sampling_rate"),
        (json!({"n_fft": 0}), "n_fft"),
        (json!({"n_fft": "16384"}), "n_fft"),
        (json!({"n_fft": 1024, "hop_length": 4096}), "hop_length"),
        (json!({"hop_length": -1}), "hop_length"),
        (json!({"num_chroma": 0}), "num_chroma"),
        (json!({"feature_size": 0}), "feature_size"),
        (json!({"num_chroma": 12, "feature_size": 24}), "feature_size"),
        (json!({"chunk_length": 0}), "chunk_length"),
        (json!({"chunk_length": 4294967296u64}), "chunk_length"),
        (json!({"feature_extractor_type": "WhisperFeatureExtractor"}), "feature_extractor_type"),
    ];
    for (config, key) in cases {
        match ChromaConfig::from_preprocessor_config(&config) {
            Err(Error::Unsupported(message)) => {
                assert!(message.contains(key) && message.contains("preprocessor_config.json"), "{config}: {message}")
            }
            other => panic!("{config}: {other:?}"),
        }
    }
}

#[test]
fn empty_and_non_finite_melodies_are_refused() {
    let extractor = extractor();
    match extractor.extract(&[]) {
        Err(Error::InvalidRequest { field: "melody", message }) => assert!(message.contains("no samples"), "{message}"),
        other => panic!("{other:?}"),
    }
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut samples = vec![0.25f32; 20000];
        samples[1234] = bad;
        for result in [extractor.extract(&samples).map(|_| ()), extractor.one_hot(&samples).map(|_| ())] {
            match result {
                Err(Error::InvalidRequest { field: "melody", message }) => {
                    assert!(message.contains("sample 1234") && message.contains(&bad.to_string()), "{message}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
