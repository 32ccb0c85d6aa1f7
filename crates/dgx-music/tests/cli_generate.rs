//! `dgx-music generate` as a user runs it: bad values are refused before any model loads, and
//! the tiny fixture checkpoint produces exactly transformers' waveform; plus what every
//! subcommand shares (the default device, a closed stdout).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The binary under test; through `DGX_MUSIC_TEST_RUNNER` (a command and its arguments) when
/// it is set: `tools/test-aarch64.sh` runs the aarch64 build under qemu-user that way.
fn dgx_music_command() -> Command {
    let runner = std::env::var("DGX_MUSIC_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(words).arg(env!("CARGO_BIN_EXE_dgx-music"));
            command
        }
        None => Command::new(env!("CARGO_BIN_EXE_dgx-music")),
    }
}

fn dgx_music(args: &[&str]) -> Output {
    dgx_music_command().args(args).output().expect("run dgx-music")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A model path that does not exist: if validation ran after loading, the error would be about it.
const NO_MODEL: &str = "/nonexistent/model-dir";

#[test]
fn bad_values_are_refused_before_the_model_loads() {
    let cases: &[(&[&str], &str)] = &[
        (&["generate", "", "--model", NO_MODEL], "prompt"),
        (&["generate", "piano", "--duration", "0", "--model", NO_MODEL], "duration"),
        (&["generate", "piano", "--duration", "-3", "--model", NO_MODEL], "duration"),
        (&["generate", "piano", "--top-p", "1.5", "--model", NO_MODEL], "top_p"),
        (&["generate", "piano", "--top-k", "0", "--model", NO_MODEL], "top_k"),
        (&["generate", "piano", "--temperature", "0", "--model", NO_MODEL], "temperature"),
        (&["generate", "piano", "--cfg-coef", "-1", "--model", NO_MODEL], "cfg_coef"),
        (&["generate", "piano", "--device", "tpu", "--model", NO_MODEL], "cuda:N"),
        (&["generate", "piano", "--dtype", "f64", "--model", NO_MODEL], "bf16"),
        (&["generate", "piano", "--normalize", "loud", "--model", NO_MODEL], "loudness"),
        (&["generate", "piano", "-o", "x.aiff", "--model", NO_MODEL], "wav16, wav24, wav-f32, flac, mp3 or ogg"),
        (&["generate", "piano", "-o", "x", "--model", NO_MODEL], ".wav, .flac, .mp3 or .ogg"),
        (&["generate", "piano", "--format", "aac", "--model", NO_MODEL], "wav16, wav24, wav-f32, flac, mp3 or ogg"),
        (&["generate", "piano", "-o", "x.mp3", "--sample-format", "f32", "--model", NO_MODEL], "--sample-format"),
        (&["generate", "piano", "--duration", "0", "--model", NO_MODEL], "--stream or --play"),
        (&["generate", "piano", "--raw", "--model", NO_MODEL], "--stream"),
        (&["generate", "a", "b", "--stream", "-", "--model", NO_MODEL], "one prompt"),
        (&["generate", "piano", "--stream", "-", "--chunk", "0", "--model", NO_MODEL], "--chunk"),
        (&["generate", "piano", "--duration", "0", "--stream", "-", "-o", "x.wav", "--model", NO_MODEL], "endless"),
        (&["generate", "piano", "--stream", "/no-such-dir/x.wav", "--model", NO_MODEL], "cannot create"),
    ];
    for (args, expected) in cases {
        let out = dgx_music(args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(!err.contains("nonexistent"), "{args:?} reached the model load: {err}");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
}

#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    // The write end of a pipe whose reader has exited: every write fails with EPIPE, as for
    // `dgx-music validate --json | head -c 0`.
    let mut reader = Command::new("true").stdin(Stdio::piped()).spawn().expect("run true");
    let write_end = reader.stdin.take().unwrap();
    reader.wait().unwrap();
    for args in [&["validate", "--json"][..], &["validate"][..]] {
        let out = dgx_music_command()
            .args(args)
            .stdout(Stdio::from(write_end.as_fd().try_clone_to_owned().unwrap()))
            .output()
            .expect("run dgx-music");
        let err = stderr(&out);
        assert!(err.is_empty(), "{args:?}: {err}");
        assert!(out.status.success(), "{args:?}: {:?}", out.status);
    }
}

#[test]
fn a_missing_model_directory_is_a_clear_error() {
    let out = dgx_music(&["generate", "piano", "--duration", "1", "--model", "./no/such/dir"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("no/such/dir"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../musicgen/tests/fixtures").join(name)
}

/// Reads an f32 tensor from the fixture's reference file as (shape, values).
fn reference_f32(name: &str, key: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(fixture(name).join("reference.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = tensors.tensor(key).unwrap();
    assert_eq!(view.dtype(), safetensors::Dtype::F32);
    let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    (view.shape().to_vec(), values)
}

/// The prompt list at JSON `pointer` of the fixture's reference.json (`/prompts`, `/continuation/prompts`).
fn prompts_at(name: &str, pointer: &str) -> Vec<String> {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture(name).join("reference.json")).unwrap()).unwrap();
    json.pointer(pointer).unwrap().as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect()
}

/// Runs the issue checker's command: greedy guided generation of `texts` on fixture `name`'s
/// checkpoint with `extra` options, `samples` per channel, f32 WAVs at `output` (numbered when
/// several prompts).
fn generate_greedy(name: &str, texts: &[String], extra: &[&str], samples: usize, output: &Path) {
    let model = fixture(name).join("checkpoint");
    let duration = (samples as f64 / 32000.0).to_string();
    let mut args: Vec<&str> = vec!["generate"];
    args.extend(texts.iter().map(String::as_str));
    args.extend(["--model", model.to_str().unwrap(), "--duration", &duration]);
    args.extend(extra);
    args.extend(["--top-k", "1", "--cfg-coef", "3", "--seed", "0", "--normalize", "none", "--device", "cpu"]);
    args.extend(["--sample-format", "f32", "-o", output.to_str().unwrap(), "--quiet"]);
    let out = dgx_music(&args);
    assert!(out.status.success(), "{name}: {}", stderr(&out));
}

/// Without `--device` and `--dtype` a CPU build says in one line why it runs on the CPU, and runs
/// the decoder in f32 there.
#[cfg(not(feature = "cuda"))]
#[test]
fn the_default_device_of_a_cpu_build_is_the_cpu_in_f32() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("x.wav");
    let model = fixture("tiny-mono").join("checkpoint");
    let (model, wav_path) = (model.to_str().unwrap(), wav.to_str().unwrap());
    let out = dgx_music(&["generate", "piano", "--model", model, "--duration", "0.1", "--seed", "0", "-o", wav_path]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("--device auto: using the CPU, this binary was built without CUDA\n"), "{err}");
    assert!(err.lines().any(|l| l.starts_with("Loaded ") && l.contains(" on cpu (f32)")), "{err}");
    assert!(wav.exists());
}

/// `--weights int8` on the CPU: int8 projections, and the bf16 cache as the default dtype there.
#[test]
fn int8_weights_on_the_cpu_default_to_the_bf16_cache() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("x.wav");
    let model = fixture("tiny-mono").join("checkpoint");
    let (model, wav_path) = (model.to_str().unwrap(), wav.to_str().unwrap());
    let args = ["generate", "piano", "--model", model, "--device", "cpu", "--duration", "0.1", "--seed", "0"];
    let out = dgx_music(&[&args[..], &["--weights", "int8", "-o", wav_path]].concat());
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.lines().any(|l| l.starts_with("Loaded ") && l.contains(" on cpu (bf16, int8 weights)")), "{err}");
    assert!(wav.exists());
    let out = dgx_music(&[&args[..], &["--weights", "int4", "-o", wav_path]].concat());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unknown weight format \"int4\"; use dtype or int8"), "{}", stderr(&out));
}

/// Largest |ours − expected| of an interleaved 32 kHz f32 WAV against planar `expected` (C, S).
fn wav_error(path: &Path, expected: &[f32], channels: usize) -> f32 {
    let mut reader = hound::WavReader::open(path).unwrap();
    assert_eq!(reader.spec().channels as usize, channels, "{}", path.display());
    assert_eq!(reader.spec().sample_rate, 32000);
    let ours: Vec<f32> = reader.samples::<f32>().map(Result::unwrap).collect();
    assert_eq!(ours.len(), expected.len(), "{}", path.display());
    let samples = expected.len() / channels;
    (0..samples)
        .flat_map(|i| (0..channels).map(move |c| (i, c)))
        .map(|(i, c)| (ours[i * channels + c] - expected[c * samples + i]).abs())
        .fold(0.0f32, f32::max)
}

/// The command the checker runs, on each fixture, compared sample by sample.
#[test]
fn generate_matches_transformers_sample_by_sample() {
    for name in ["tiny-mono", "tiny-stereo"] {
        let (shape, reference) = reference_f32(name, "audio_single");
        let dir = tempfile::tempdir().unwrap();
        let wav = dir.path().join("x.wav");
        generate_greedy(name, &prompts_at(name, "/prompts")[..1], &[], shape[2], &wav);
        let max_err = wav_error(&wav, &reference, shape[1]);
        assert!(max_err < 1e-4, "{name}: max abs error {max_err}");
    }
}

/// The check for continuation: `--continue prompt.wav` with both reference prompts, each
/// output against transformers' `generate(input_values=...)` (f32 WAVs: the tiny codec's audio
/// peaks above full scale, which 16-bit output would clip).
#[test]
fn continue_matches_transformers_sample_by_sample() {
    for name in ["tiny-mono", "tiny-stereo"] {
        let (shape, reference) = reference_f32(name, "continuation_audio");
        let item_len = shape[1] * shape[2];
        let dir = tempfile::tempdir().unwrap();
        let prompt = fixture(name).join("prompt.wav");
        let texts = prompts_at(name, "/continuation/prompts");
        generate_greedy(name, &texts, &["--continue", prompt.to_str().unwrap()], shape[2], &dir.path().join("x.wav"));
        for item in 0..texts.len() {
            let expected = &reference[item * item_len..(item + 1) * item_len];
            let max_err = wav_error(&dir.path().join(format!("x-{}.wav", item + 1)), expected, shape[1]);
            assert!(max_err < 2e-4, "{name} item {item}: max abs error {max_err}");
        }
    }
}

#[test]
fn bad_audio_to_continue_is_refused_before_the_model_loads() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.wav");
    std::fs::write(&empty, b"").unwrap();
    let text = dir.path().join("notes.mp3");
    std::fs::write(&text, b"these are not the sounds you are looking for\n".repeat(100)).unwrap();
    let long = dir.path().join("long.wav");
    let spec =
        hound::WavSpec { channels: 1, sample_rate: 8000, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut writer = hound::WavWriter::create(&long, spec).unwrap();
    for _ in 0..8000 * 31 {
        writer.write_sample(0i16).unwrap();
    }
    writer.finalize().unwrap();
    let prompt = fixture("tiny-mono").join("prompt.wav");
    let missing = dir.path().join("missing.wav");
    let cases: Vec<(&std::path::Path, &str, &str)> = vec![
        (&empty, "10", "empty"),
        (&text, "10", "not an audio file"),
        (&missing, "10", "cannot open"),
        (&long, "60", "31.0 s long"),
        (&prompt, "0.2", "ask for more than 0.31 s"),
    ];
    for (path, duration, expected) in cases {
        let out = dgx_music(&[
            "generate",
            "piano",
            "--continue",
            path.to_str().unwrap(),
            "--duration",
            duration,
            "--model",
            NO_MODEL,
        ]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{path:?} succeeded");
        assert!(err.contains(expected), "{path:?}: {err}");
        assert!(!err.contains("nonexistent"), "{path:?} reached the model load: {err}");
        assert!(!err.contains("panicked"), "{path:?} panicked: {err}");
    }
    let out = dgx_music(&["generate", "piano", "--extend-stride", "30", "--model", NO_MODEL]);
    assert!(stderr(&out).contains("extend_stride"), "{}", stderr(&out));
}

/// The check for melody: `--melody melody.wav` on the tiny melody checkpoints, each output
/// against transformers 4.48's `generate(input_features=...)`; a second tune gives other music.
#[test]
fn melody_matches_transformers_sample_by_sample() {
    for name in ["tiny-melody", "tiny-stereo-melody"] {
        let (shape, reference) = reference_f32(name, "audio");
        let (_, other) = reference_f32(name, "audio_melody2");
        let item_len = shape[1] * shape[2];
        let dir = tempfile::tempdir().unwrap();
        let texts = prompts_at(name, "/prompts");
        for (tune, expected) in [("melody.wav", &reference), ("melody2.wav", &other)] {
            let melody = fixture(name).join(tune);
            let wav = dir.path().join(format!("{tune}-out.wav"));
            generate_greedy(name, &texts, &["--melody", melody.to_str().unwrap()], shape[2], &wav);
            for item in 0..texts.len() {
                let path = dir.path().join(format!("{tune}-out-{}.wav", item + 1));
                let max_err = wav_error(&path, &expected[item * item_len..(item + 1) * item_len], shape[1]);
                assert!(max_err < 2e-4, "{name} {tune} item {item}: max abs error {max_err}");
            }
        }
    }
}

#[test]
fn a_melody_needs_a_melody_checkpoint() {
    let model = fixture("tiny-mono").join("checkpoint");
    let melody = fixture("tiny-melody").join("melody.wav");
    let out = dgx_music(&[
        "generate",
        "piano",
        "--model",
        model.to_str().unwrap(),
        "--melody",
        melody.to_str().unwrap(),
        "--duration",
        "0.2",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("melody checkpoint") && err.contains("facebook/musicgen-melody"), "{err}");
    let out = dgx_music(&["generate", "piano", "--melody", "/no/such/tune.wav", "--model", NO_MODEL]);
    let err = stderr(&out);
    assert!(err.contains("tune.wav") && !err.contains("nonexistent"), "{err}");
}

/// The format follows -o's extension or --format; a FLAC holds exactly the samples of the WAV
/// made with the same seed, and the lossy formats decode to a track at least as long.
#[test]
fn output_formats_follow_the_extension_or_format_and_flac_equals_the_wav() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("tiny-mono").join("checkpoint");
    let run = |extra: &[&str]| {
        let mut args = vec!["generate", "warm pads", "--model", model.to_str().unwrap(), "--duration", "0.5"];
        args.extend(["--seed", "5", "--quiet"]);
        args.extend(extra);
        let out = dgx_music_command().args(&args).current_dir(dir.path()).output().unwrap();
        assert!(out.status.success(), "{extra:?}: {}", stderr(&out));
    };
    run(&["-o", "x.wav"]);
    run(&["-o", "x.flac"]);
    run(&["-o", "x.mp3"]);
    run(&["-o", "x.ogg"]);
    run(&["--format", "flac", "-o", "x.data"]);
    run(&["--format", "wav24"]);
    let decode = |name: &str| {
        musicgen::audio::read_audio_native(&dir.path().join(name), 60.0).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let wav = decode("x.wav");
    assert_eq!(wav.len(), 16000);
    assert_eq!(decode("x.flac"), wav, "the FLAC's samples are the WAV's");
    assert_eq!(&std::fs::read(dir.path().join("x.data")).unwrap()[..4], b"fLaC");
    assert_eq!(&std::fs::read(dir.path().join("x.mp3")).unwrap()[..3], b"ID3");
    assert_eq!(&std::fs::read(dir.path().join("x.ogg")).unwrap()[..4], b"OggS");
    assert!(decode("x.mp3").len() > wav.len());
    assert!((wav.len()..=wav.len() + 2048).contains(&decode("x.ogg").len()));
    // Without -o, the name comes from the prompt and the extension from the format.
    let wav24 = hound::WavReader::open(dir.path().join("warm-pads.wav")).unwrap();
    assert_eq!(wav24.spec().bits_per_sample, 24);
}

/// `generate --stream` on the tiny fixture with `extra` options, returning the child with its
/// stdout piped.
fn spawn_stream(dir: &Path, extra: &[&str]) -> std::process::Child {
    let model = fixture("tiny-mono").join("checkpoint");
    let mut args = vec!["generate", "warm pads", "--model", model.to_str().unwrap(), "--seed", "5", "--quiet"];
    args.extend(["--stream", "-"]);
    args.extend(extra);
    dgx_music_command().args(&args).current_dir(dir).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// `--stream -` is a WAV that a reader can take from a pipe as it comes: with the same
/// normalisation, byte for byte the file `-o` writes at the end; `--raw` is the same without
/// the header.
#[test]
fn a_stream_to_stdout_is_the_wav_the_file_gets() {
    let dir = tempfile::tempdir().unwrap();
    let out = spawn_stream(dir.path(), &["--duration", "2.5", "--normalize", "none", "-o", "x.wav"])
        .wait_with_output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let file = std::fs::read(dir.path().join("x.wav")).unwrap();
    assert_eq!(out.stdout.len(), 44 + 2 * 80_000);
    assert_eq!(out.stdout, file, "the stream is the stored file");
    assert!(!String::from_utf8_lossy(&out.stdout[44..]).contains("x.wav"), "the file listing went to stderr");
    let reader = hound::WavReader::new(std::io::Cursor::new(&out.stdout)).unwrap();
    assert_eq!(reader.len(), 80_000);

    let raw =
        spawn_stream(dir.path(), &["--duration", "2.5", "--normalize", "none", "--raw"]).wait_with_output().unwrap();
    assert!(raw.status.success(), "{}", stderr(&raw));
    assert_eq!(raw.stdout, file[44..], "--raw is the WAV's samples");
    assert!(!dir.path().join("warm-pads.wav").exists(), "a stream writes no file unless asked");

    // Loudness (the default) fixes its gain on the first piece: the same length, a louder track.
    let loud = spawn_stream(dir.path(), &["--duration", "2.5"]).wait_with_output().unwrap();
    assert!(loud.status.success(), "{}", stderr(&loud));
    assert_eq!(loud.stdout.len(), file.len());
    assert_ne!(loud.stdout[44..], file[44..]);
}

/// Audio comes out while the track is still being made, and an endless track runs past one
/// window until its reader leaves, which ends the command quietly.
#[test]
fn streamed_audio_comes_before_the_end_and_an_endless_track_stops_with_its_reader() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_stream(dir.path(), &["--duration", "90"]);
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 44 + 32_000];
    stdout.read_exact(&mut first).unwrap();
    assert!(child.try_wait().unwrap().is_none(), "a second of audio came only once the 90 s track was done");
    let header = hound::WavReader::new(std::io::Cursor::new(&first[..44])).unwrap();
    assert_eq!(header.len(), 90 * 32_000, "the header holds the whole track's length");
    child.kill().unwrap();
    child.wait().unwrap();

    let mut child = spawn_stream(dir.path(), &["--duration", "0", "--extend-stride", "20"]);
    let mut stdout = child.stdout.take().unwrap();
    let mut header = [0u8; 44];
    stdout.read_exact(&mut header).unwrap();
    assert_eq!(header[40..44], [0xff; 4], "an endless stream's header leaves the length open");
    // 40 s: past the first 30 s window.
    let mut audio = vec![0u8; 2 * 32_000 * 40];
    stdout.read_exact(&mut audio).unwrap();
    assert!(audio[2 * 32_000 * 35..].iter().any(|&b| b != 0), "the second window has sound");
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("closed"), "{err}");
}

/// `--play` plays where there is an output device; where there is none (CI), or the build has
/// no audio output, it says so and what to do instead, before loading any model.
#[test]
fn play_without_an_output_device_says_what_to_do() {
    let out = dgx_music(&["generate", "piano", "--play", "--model", NO_MODEL]);
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    if !out.status.success() && !err.contains("nonexistent") {
        assert!(err.contains("--play") || err.contains("audio output"), "{err}");
        assert!(err.contains("--stream -") || err.contains("-o "), "no way out offered: {err}");
    }
}
