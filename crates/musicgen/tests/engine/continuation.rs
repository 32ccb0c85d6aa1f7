//! EnCodec encoding, continuation and windowed long tracks against what transformers recorded
//! (tools/make_fixtures.py): the prompt's codes exactly and its embeddings to 1e-5, greedy guided
//! continuations of it (transformers' `generate(input_values=...)`), and audiocraft's window loop
//! run over transformers' continuation, codes exact and waveforms to 1e-5.

use candle_core::{DType, Device, Tensor};
use musicgen::audio::read_audio;
use musicgen::internals::EncodecEncoder;
use musicgen::{
    Audio, CancelToken, Checkpoint, Error, GenerationItem, GenerationRequest, LoadOptions, MusicGen, SamplingParams,
};

use crate::util::{checkpoint, fixture, floats, ints, max_abs_diff, reference, tensor_diff};

fn load(name: &str) -> MusicGen {
    MusicGen::load(checkpoint(name).to_str().unwrap(), &LoadOptions::default()).unwrap()
}

fn encoder(name: &str) -> (EncodecEncoder, usize) {
    let checkpoint = Checkpoint::open(&checkpoint(name)).unwrap();
    let config = checkpoint.config().clone();
    let vb = checkpoint.var_builder(DType::F32, &Device::Cpu).unwrap();
    let encoder =
        EncodecEncoder::load(vb.pp("audio_encoder"), &config.audio_encoder, config.codebooks_per_channel()).unwrap();
    (encoder, config.decoder.audio_channels)
}

/// A `(1, C, S)` reference waveform as planar audio at 32 kHz.
fn audio_of(t: &Tensor) -> Audio {
    let t = t.get(0).unwrap();
    let channels = (0..t.dim(0).unwrap()).map(|c| floats(&t.get(c).unwrap())).collect();
    Audio { sample_rate: 32000, channels }
}

fn greedy(prompts: &[String], duration_secs: f64) -> GenerationRequest {
    let items = prompts
        .iter()
        .map(|p| GenerationItem { prompt: p.clone(), sampling: SamplingParams::greedy(3.0), seed: 0 })
        .collect();
    GenerationRequest::new(items, duration_secs)
}

fn prompts_at(json: &serde_json::Value) -> Vec<String> {
    json.as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect()
}

fn check_encoding(name: &str) {
    let (r, json) = reference(name);
    let (encoder, channels) = encoder(name);
    let audio = &r["prompt_audio"];
    let streams: Vec<Tensor> = (0..channels).map(|c| audio.narrow(1, c, 1).unwrap()).collect();
    let embeddings = encoder.embed(&Tensor::cat(&streams, 0).unwrap()).unwrap();
    let diff = tensor_diff(&embeddings, &r["prompt_embeddings"]);
    println!("{name}: embeddings max abs diff {diff:e}");
    assert!(diff <= 1e-5, "{name}: embeddings differ by {diff}");
    let codes = encoder.encode_interleaved(audio, channels).unwrap();
    assert_eq!(codes.dims(), r["prompt_codes"].dims());
    assert_eq!(ints(&codes), ints(&r["prompt_codes"]), "{name}: codes differ from transformers'");
    // The comparison means something only if every search had a clear winner.
    assert!(json["min_nearest_code_gap_relative"].as_f64().unwrap() >= 2e-5);
}

#[test]
fn encodec_encodes_like_transformers_mono() {
    check_encoding("tiny-mono");
}

#[test]
fn encodec_encodes_stereo_channels_alone_and_interleaves_their_codebooks() {
    check_encoding("tiny-stereo");
}

#[test]
fn legacy_weight_norm_names_encode_the_same() {
    let (r, _) = reference("tiny-mono");
    let (encoder, _) = encoder("tiny-mono-legacy");
    assert_eq!(ints(&encoder.encode(&r["prompt_audio"]).unwrap()), ints(&r["prompt_codes"]));
}

#[test]
fn the_prompt_wav_reads_back_sample_for_sample() {
    for name in ["tiny-mono", "tiny-stereo"] {
        let (r, _) = reference(name);
        let channels = r["prompt_audio"].dim(1).unwrap();
        let read = read_audio(&fixture(name).join("prompt.wav"), 32000, channels, 30.0).unwrap();
        assert_eq!(read, audio_of(&r["prompt_audio"]), "{name}");
    }
}

fn check_continuation(name: &str) {
    let model = load(name);
    let (r, json) = reference(name);
    let cont = &json["continuation"];
    let frames = cont["frames"].as_u64().unwrap() as f64;
    let mut request = greedy(&prompts_at(&cont["prompts"]), frames / 50.0);
    request.continuation = Some(audio_of(&r["prompt_audio"]));
    let mut generation = model.start(&request).unwrap();
    assert_eq!(generation.total_steps(), cont["max_new_tokens"].as_u64().unwrap() as usize);
    while generation.step().unwrap() {}
    let codes: Vec<u32> = generation.codes().concat();
    assert_eq!(codes, ints(&r["continuation_codes"]), "{name}: continuation codes differ from transformers'");
    let tracks = generation.finish().unwrap();
    let audio: Vec<f32> = tracks.iter().flat_map(|t| t.channels.concat()).collect();
    let diff = max_abs_diff(&audio, &floats(&r["continuation_audio"]));
    println!("{name}: continuation audio max abs diff {diff:e}");
    assert!(diff <= 1e-5, "{name}: continuation audio differs by {diff}");
}

#[test]
fn continuation_matches_transformers_generate_with_input_values_mono() {
    check_continuation("tiny-mono");
}

#[test]
fn continuation_matches_transformers_generate_with_input_values_stereo() {
    check_continuation("tiny-stereo");
}

fn check_long_track(case: &str) {
    let model = load("tiny-mono");
    let (r, json) = reference("tiny-mono");
    let meta = &json["long_tracks"][case];
    let mut request = greedy(&[meta["prompt"].as_str().unwrap().to_string()], meta["duration"].as_f64().unwrap());
    request.extend_stride_secs = meta["stride"].as_f64().unwrap();
    if meta["continue_prompt"].as_bool().unwrap() {
        request.continuation = Some(audio_of(&r["prompt_audio"]));
    }
    let mut steps = 0;
    let mut total = 0;
    let started = std::time::Instant::now();
    let tracks = model
        .generate(
            &request,
            &mut |p| {
                assert_eq!(p.step, steps + 1, "progress counts every step once, over all windows");
                steps = p.step;
                total = p.total_steps;
            },
            &CancelToken::default(),
        )
        .unwrap();
    println!("{case}: {} s of audio in {:.1} s", meta["duration"], started.elapsed().as_secs_f64());
    let windows = meta["windows"].as_array().unwrap();
    let expected_steps: u64 =
        windows.iter().map(|w| w["frames"].as_u64().unwrap() + 3 - w["prompt"].as_u64().unwrap()).sum();
    assert_eq!((steps, total), (expected_steps as usize, expected_steps as usize));

    let generation = {
        let mut g = model.start(&request).unwrap();
        assert_eq!(g.windows(), windows.len());
        while g.step().unwrap() {}
        g
    };
    assert_eq!(generation.codes().concat(), ints(&r[&format!("{case}_codes")]), "{case}: codes differ");
    let audio = &tracks[0].channels[0];
    assert_eq!(audio.len(), meta["samples"].as_u64().unwrap() as usize);
    let slices = &r[&format!("{case}_audio_slices")];
    let width = meta["slice_samples"].as_u64().unwrap() as usize;
    for (i, start) in meta["slice_starts"].as_array().unwrap().iter().enumerate() {
        let start = start.as_u64().unwrap() as usize;
        let diff = max_abs_diff(&audio[start..start + width], &floats(&slices.get(i).unwrap()));
        println!("{case}: audio from sample {start}: max abs diff {diff:e}");
        assert!(diff <= 1e-5, "{case}: audio from sample {start} differs by {diff}");
    }
}

#[test]
fn long_tracks_run_audiocraft_s_window_loop_over_transformers() {
    check_long_track("long");
}

#[test]
fn continuation_and_long_tracks_combine() {
    check_long_track("long_continued");
}

#[test]
fn cancel_stops_inside_a_later_window() {
    let model = load("tiny-mono");
    let request = greedy(&["lofi beat".into()], 31.0);
    let cancel = CancelToken::default();
    let first_window = 1500 + 3;
    let mut last = 0;
    let result = model.generate(
        &request,
        &mut |p| {
            last = p.step;
            if p.step == first_window + 10 {
                cancel.cancel();
            }
        },
        &cancel,
    );
    assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
    assert_eq!(last, first_window + 10);
}

#[test]
fn continued_audio_that_does_not_fit_is_refused_with_the_numbers() {
    let model = load("tiny-mono");
    let mut request = greedy(&["lofi beat".into()], 40.0);
    request.continuation = Some(Audio { sample_rate: 32000, channels: vec![vec![0.1; 32000 * 31]] });
    let err = model.start(&request).err().unwrap().to_string();
    assert!(err.contains("31.00 s") && err.contains("at most 30 s"), "{err}");

    let mut request = greedy(&["lofi beat".into()], 2.0);
    request.continuation = Some(Audio { sample_rate: 32000, channels: vec![vec![0.1; 32000 * 3]] });
    let err = model.start(&request).err().unwrap().to_string();
    assert!(err.contains("2 s is the whole track") && err.contains("3.00 s"), "{err}");

    request.continuation = Some(Audio { sample_rate: 44100, channels: vec![vec![0.1; 4410]] });
    let err = model.start(&request).err().unwrap().to_string();
    assert!(err.contains("44100 Hz") && err.contains("32000 Hz") && err.contains("read_audio"), "{err}");

    request.continuation = Some(Audio { sample_rate: 32000, channels: vec![vec![0.1; 3200]; 2] });
    let err = model.start(&request).err().unwrap().to_string();
    assert!(err.contains("2 channel(s)") && err.contains("needs 1 channel(s)"), "{err}");
}
