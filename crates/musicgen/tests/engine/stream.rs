//! Streaming: pieces handed out while a track is generated are the whole-track decode's samples,
//! mono and stereo, across windows, and an endless track stays within one window of memory.

use candle_core::{DType, Device, Tensor};
use musicgen::internals::EncodecDecoder;
use musicgen::request::ENDLESS;
use musicgen::{
    Audio, CancelToken, Checkpoint, Error, GenerationItem, GenerationRequest, LoadOptions, MusicGen, SamplingParams,
    StreamOptions,
};

use crate::util::checkpoint;

fn load(name: &str) -> MusicGen {
    MusicGen::load(checkpoint(name).to_str().unwrap(), &LoadOptions::default()).unwrap()
}

fn request(prompts: &[&str], duration_secs: f64) -> GenerationRequest {
    let sampling = SamplingParams { top_k: 32, ..SamplingParams::default() };
    GenerationRequest::new(
        prompts
            .iter()
            .enumerate()
            .map(|(i, p)| GenerationItem { prompt: p.to_string(), sampling, seed: i as u64 })
            .collect(),
        duration_secs,
    )
}

/// The largest difference between two tracks, and how many 16-bit samples differ.
fn compare(a: &Audio, b: &Audio) -> (f32, usize) {
    assert_eq!(a.channels.len(), b.channels.len());
    let (mut worst, mut steps) = (0f32, 0);
    for (x, y) in a.channels.iter().zip(&b.channels) {
        assert_eq!(x.len(), y.len(), "track lengths");
        for (&p, &q) in x.iter().zip(y) {
            worst = worst.max((p - q).abs());
            let pcm = |v: f32| (v.clamp(-1.0, 1.0) * 32767.0).round() as i32;
            steps += usize::from(pcm(p) != pcm(q));
        }
    }
    (worst, steps)
}

/// Streams `request`, checking that pieces come while steps remain, and returns the pieces put
/// end to end with what `generate_streaming` returned.
fn stream(model: &MusicGen, request: &GenerationRequest, chunk_secs: f64) -> (Vec<Audio>, Vec<Audio>, usize) {
    let mut joined: Vec<Audio> = Vec::new();
    let (mut pieces, mut early) = (0usize, 0usize);
    let step = std::cell::Cell::new((0usize, 0usize));
    let result = model
        .generate_streaming(
            request,
            StreamOptions { chunk_secs },
            &mut |p| step.set((p.step, p.total_steps)),
            &mut |items| {
                pieces += 1;
                early += usize::from(step.get().0 < step.get().1);
                if joined.is_empty() {
                    joined = items.to_vec();
                } else {
                    for (track, piece) in joined.iter_mut().zip(items) {
                        for (all, new) in track.channels.iter_mut().zip(&piece.channels) {
                            all.extend_from_slice(new);
                        }
                    }
                }
                Ok(())
            },
            &CancelToken::default(),
        )
        .unwrap();
    assert!(early >= pieces.saturating_sub(1) && early >= 1, "{early} of {pieces} pieces came before the last step");
    (joined, result, pieces)
}

fn check_stream_equals_whole(name: &str, prompts: &[&str], duration: f64) {
    let model = load(name);
    let request = request(prompts, duration);
    let whole = model.generate(&request, &mut |_| {}, &CancelToken::default()).unwrap();
    let (joined, returned, pieces) = stream(&model, &request, 0.5);
    assert!(pieces >= (duration / 0.5) as usize - 1, "{pieces} pieces for {duration} s in 0.5 s pieces");
    for (item, ((w, j), r)) in whole.iter().zip(&joined).zip(&returned).enumerate() {
        assert_eq!(j, r, "{name} item {item}: the returned track is the pieces end to end");
        assert_eq!(w.len(), (duration * 32000.0).round() as usize);
        let (worst, steps) = compare(w, j);
        eprintln!(
            "{name} item {item}, {duration} s: streamed vs whole max abs diff {worst:e}, {steps} 16-bit samples differ"
        );
        assert!(worst < 1e-5, "{name} item {item}: streamed audio differs from the whole-track decode by {worst}");
    }
}

#[test]
fn streamed_pieces_are_the_whole_track_decode_mono() {
    check_stream_equals_whole("tiny-mono", &["ambient piano", "fast drums"], 3.13);
}

#[test]
fn streamed_pieces_are_the_whole_track_decode_stereo() {
    check_stream_equals_whole("tiny-stereo", &["ambient piano"], 2.0);
}

#[test]
fn streaming_carries_across_windows() {
    let model = load("tiny-mono");
    let mut request = request(&["ambient piano"], 34.0);
    request.extend_stride_secs = 25.0;
    let whole = model.generate(&request, &mut |_| {}, &CancelToken::default()).unwrap();
    let (joined, _, _) = stream(&model, &request, 2.0);
    let (worst, steps) = compare(&whole[0], &joined[0]);
    eprintln!("34 s in two windows: streamed vs whole max abs diff {worst:e}, {steps} 16-bit samples differ");
    assert!(worst < 1e-5, "two windows: streamed audio differs by {worst}");
}

#[test]
fn a_piece_size_out_of_range_is_refused() {
    let model = load("tiny-mono");
    for chunk_secs in [0.0, -1.0, f64::NAN, 31.0] {
        let mut generation = model.start(&request(&["piano"], 1.0)).unwrap();
        let err = generation.stream(StreamOptions { chunk_secs }).unwrap_err();
        assert!(matches!(err, Error::InvalidRequest { .. }), "{chunk_secs}: {err}");
    }
    let mut generation = model.start(&request(&["piano"], 1.0)).unwrap();
    generation.step().unwrap();
    assert!(generation.stream(StreamOptions::default()).is_err(), "streaming turned on after a step");
}

/// The codec of `name` and random codes `(1, K, frames)` for it.
fn codec(name: &str, frames: usize) -> (EncodecDecoder, Tensor) {
    let checkpoint = Checkpoint::open(&checkpoint(name)).unwrap();
    let config = checkpoint.config().clone();
    let vb = checkpoint.var_builder(DType::F32, &Device::Cpu).unwrap();
    let k = config.codebooks_per_channel();
    let codec = EncodecDecoder::load(vb.pp("audio_encoder"), &config.audio_encoder, k).unwrap();
    let size = config.audio_encoder.codebook_size as u32;
    let codes: Vec<u32> = (0..k * frames).map(|i| (i as u32).wrapping_mul(2_654_435_761) % size).collect();
    (codec, Tensor::from_vec(codes, (1, k, frames), &Device::Cpu).unwrap())
}

/// Decodes `codes` in pieces of `piece` frames with `context`, and returns the largest
/// difference from the whole decode.
fn streamed_error(codec: &EncodecDecoder, codes: &Tensor, piece: usize, context: (usize, usize)) -> f32 {
    let whole: Vec<f32> = codec.decode(codes).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let frames = codes.dim(2).unwrap();
    let mut stream = codec.start_stream(1, Some(context));
    let mut samples = Vec::new();
    for start in (0..frames).step_by(piece) {
        let n = piece.min(frames - start);
        codec.stream_push(&mut stream, &codes.narrow(2, start, n).unwrap()).unwrap();
        if let Some(out) = codec.stream_pull(&mut stream, start + n == frames).unwrap() {
            samples.extend(out.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
    }
    assert_eq!(samples.len(), whole.len(), "every frame's samples, once");
    samples.iter().zip(&whole).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

/// The context the decoder computes is exactly its receptive field: with it, pieces of any size
/// decode to the whole track's samples; one frame less on either side changes them.
#[test]
fn the_stream_context_is_the_decoder_s_receptive_field() {
    let (codec, codes) = codec("tiny-mono", 120);
    let (left, right) = codec.stream_context();
    eprintln!("upsampling context {left} + {right} frames, look-ahead {} frames", codec.stream_lookahead());
    assert!(left > 0 && right > 0);
    for piece in [1, 7, 25, 119] {
        let err = streamed_error(&codec, &codes, piece, (left, right));
        eprintln!("pieces of {piece} frames: max abs diff {err:e}");
        assert!(err < 1e-5, "pieces of {piece} frames differ by {err}");
    }
    for context in [(left - 1, right), (left, right - 1), (0, 0)] {
        let err = streamed_error(&codec, &codes, 25, context);
        eprintln!("context {context:?}: max abs diff {err:e}");
        assert!(err > 1e-4, "context {context:?} should not be enough, yet differs only by {err}");
    }
}

#[test]
fn an_endless_track_keeps_one_window_and_takes_a_new_prompt() {
    let model = load("tiny-mono");
    let mut request = request(&["ambient piano"], ENDLESS);
    request.extend_stride_secs = 20.0;
    assert!(model.generate(&request, &mut |_| {}, &CancelToken::default()).is_err(), "endless is stream-only");

    // Two runs, the same seed; the second changes its prompt during the first window.
    let run = |change: bool| {
        let mut generation = model.start(&request).unwrap();
        generation.stream(StreamOptions { chunk_secs: 5.0 }).unwrap();
        let mut audio = Vec::new();
        let mut most_kept = 0;
        while generation.windows() < 4 {
            generation.step().unwrap();
            if change && generation.steps_done() == 100 {
                generation.set_prompts(&["fast metal drums"]).unwrap();
            }
            if let Some(pieces) = generation.take_audio().unwrap() {
                audio.extend_from_slice(&pieces[0].channels[0]);
            }
            most_kept = most_kept.max(generation.codes()[0].len() / model.config().decoder.num_codebooks);
        }
        assert!(!generation.is_finished());
        (audio, most_kept)
    };
    let (same, kept) = run(false);
    let (changed, _) = run(true);
    assert!(same.len() as f64 / 32000.0 > 60.0, "{} s streamed over three windows", same.len() / 32000);
    assert!(kept <= 1500, "an endless track kept {kept} frames of codes, more than one window");
    // The first window (its text set before the change) is the same; the next ones differ.
    let window = 30 * 32000 - 32000;
    assert_eq!(same[..window], changed[..window], "the first window follows the prompt it started with");
    let later = (window + 32000 * 12)..(window + 32000 * 20);
    assert_ne!(same[later.clone()], changed[later], "a new prompt changes the windows after it");
}
