//! Reading input audio files (`musicgen::audio::read_audio`): each format the engine accepts,
//! resampled to 32 kHz and mixed to the checkpoint's channels, and every kind of bad file refused
//! with an error naming it. The fixtures are 0.2 s of a 440 Hz sine, left at amplitude 0.5 and
//! right at 0.25, made by tools/make_audio_fixtures.sh; the bad files are made here.

use std::f32::consts::PI;
use std::path::{Path, PathBuf};

use musicgen::audio::read_audio;
use musicgen::{Audio, Error};

use crate::util::{fixture, max_abs_diff};

const RATE: u32 = 32000;
/// 0.2 s at 32 kHz.
const FRAMES: usize = 6400;
/// The middle of the signal, 44 whole periods of 440 Hz at 32 kHz, clear of the edges where a
/// sine that starts and stops abruptly rings through any band-limited resampler.
const MIDDLE: std::ops::Range<usize> = 1600..4800;
/// One MPEG-1 layer III frame at 44.1 kHz, in 32 kHz output samples.
const MP3_FRAME: usize = 1152 * 32000 / 44100 + 1;

fn audio_fixture(name: &str) -> PathBuf {
    fixture("audio").join(name)
}

fn read(path: &Path, channels: usize) -> Audio {
    read_audio(path, RATE, channels, 10.0).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The amplitude of the 440 Hz component of `samples[MIDDLE]` at 32 kHz (whole periods, so a
/// pure sine of any phase gives its amplitude exactly).
fn amplitude_440(samples: &[f32]) -> f32 {
    let window = &samples[MIDDLE];
    let (mut s, mut c) = (0f64, 0f64);
    for (i, &x) in window.iter().enumerate() {
        let phase = 2.0 * std::f64::consts::PI * 440.0 * (MIDDLE.start + i) as f64 / RATE as f64;
        s += x as f64 * phase.sin();
        c += x as f64 * phase.cos();
    }
    (2.0 * (s * s + c * c).sqrt() / window.len() as f64) as f32
}

/// The frequency implied by the zero crossings of `samples[MIDDLE]` at 32 kHz: half-periods
/// between the first and the last crossing, each placed by linear interpolation.
fn crossing_frequency(samples: &[f32]) -> f32 {
    let crossings: Vec<f32> = samples[MIDDLE]
        .windows(2)
        .enumerate()
        .filter(|(_, w)| (w[0] < 0.0) != (w[1] < 0.0))
        .map(|(i, w)| i as f32 + w[0] / (w[0] - w[1]))
        .collect();
    assert!(crossings.len() > 2, "no oscillation: {} crossings", crossings.len());
    let span = (crossings[crossings.len() - 1] - crossings[0]) / RATE as f32;
    (crossings.len() - 1) as f32 / 2.0 / span
}

fn sine_440(amplitude: f32) -> Vec<f32> {
    MIDDLE.map(|i| amplitude * (2.0 * PI * 440.0 * i as f32 / RATE as f32).sin()).collect()
}

fn assert_sine(samples: &[f32], amplitude: f32, tolerance: f32) {
    let frequency = crossing_frequency(samples);
    assert!((frequency - 440.0).abs() < 440.0 * 0.01, "frequency {frequency}");
    let measured = amplitude_440(samples);
    assert!((measured - amplitude).abs() < tolerance, "amplitude {measured}, expected {amplitude}");
}

#[test]
fn lossless_files_resample_to_32k_keeping_frequency_amplitude_and_phase() {
    for name in ["sine_44k1_stereo.wav", "sine_44k1_stereo.flac", "sine_16k_mono.flac"] {
        let path = audio_fixture(name);
        let stereo_source = name.contains("stereo");
        let audio = read(&path, 2);
        assert_eq!(audio.sample_rate, RATE, "{name}");
        assert_eq!(audio.channels.len(), 2, "{name}");
        assert_eq!(audio.len(), FRAMES, "{name}");
        let (left, right) = if stereo_source { (0.5, 0.25) } else { (0.5, 0.5) };
        for (channel, amplitude) in audio.channels.iter().zip([left, right]) {
            assert_sine(channel, amplitude, 1e-3);
            // Sample for sample: the resampler's delay is removed, so time 0 stays at sample 0.
            let diff = max_abs_diff(&channel[MIDDLE], &sine_440(amplitude));
            assert!(diff < 1e-3, "{name}: {diff}");
        }
    }
}

#[test]
fn lossy_files_decode_to_the_sine_within_a_frame_of_its_length() {
    // MP3 keeps the encoder's delay and padding: up to two frames longer, sine shifted by the delay.
    let mp3 = read(&audio_fixture("sine_44k1_stereo.mp3"), 2);
    assert_eq!(mp3.channels.len(), 2);
    assert!((FRAMES..=FRAMES + 2 * MP3_FRAME).contains(&mp3.len()), "mp3 length {}", mp3.len());
    assert_sine(&mp3.channels[0], 0.5, 0.05);
    assert_sine(&mp3.channels[1], 0.25, 0.05);

    // Vorbis trims its pre-skip, so the length is the source's to within one block.
    let ogg = read(&audio_fixture("sine_16k_mono.ogg"), 1);
    assert_eq!(ogg.channels.len(), 1);
    assert!(ogg.len().abs_diff(FRAMES) <= 2048, "ogg length {}", ogg.len());
    assert_sine(&ogg.channels[0], 0.5, 0.05);
}

#[test]
fn channels_are_averaged_for_mono_and_duplicated_for_stereo() {
    let mono = read(&audio_fixture("sine_44k1_stereo.flac"), 1);
    assert_eq!(mono.channels.len(), 1);
    assert_sine(&mono.channels[0], 0.375, 1e-3);

    let stereo = read(&audio_fixture("sine_16k_mono.flac"), 2);
    assert_eq!(stereo.channels[0], stereo.channels[1]);

    // More than two channels: the average of all of them, duplicated.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("three.wav");
    let levels = [0.1f32, 0.2, 0.6];
    write_wav(&path, RATE, &[vec![levels[0]; 320], vec![levels[1]; 320], vec![levels[2]; 320]]);
    for channels in [1, 2] {
        let audio = read(&path, channels);
        assert_eq!(audio.channels.len(), channels);
        for channel in &audio.channels {
            assert!(channel.iter().all(|&s| (s - 0.3).abs() < 1e-6), "{:?}", &channel[..4]);
        }
    }
}

/// A float WAV via hound, planar `channels` interleaved.
fn write_wav(path: &Path, rate: u32, channels: &[Vec<f32>]) {
    let spec = hound::WavSpec {
        channels: channels.len() as u16,
        sample_rate: rate,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut writer = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..channels[0].len() {
        for channel in channels {
            writer.write_sample(channel[i]).unwrap();
        }
    }
    writer.finalize().unwrap();
}

#[test]
fn a_wav_already_at_32k_passes_through_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("at_rate.wav");
    // Not a sine: any resampling or mixing would change these samples.
    let left: Vec<f32> = (0..1000).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.9).collect();
    let right: Vec<f32> = left.iter().rev().copied().collect();
    write_wav(&path, RATE, &[left.clone(), right.clone()]);
    let audio = read(&path, 2);
    assert_eq!(audio, Audio { sample_rate: RATE, channels: vec![left, right] });
}

/// The error for `path`, checked to be `BadAudio` naming the file in its message.
fn refused(path: &Path, max_seconds: f64) -> String {
    match read_audio(path, RATE, 2, max_seconds) {
        Ok(audio) => panic!("{} was accepted ({} frames)", path.display(), audio.len()),
        Err(e @ Error::BadAudio { .. }) => {
            let message = e.to_string();
            let name = path.file_name().unwrap().to_str().unwrap();
            assert!(message.contains(name), "{message:?} does not name {name}");
            message
        }
        Err(e) => panic!("{}: expected BadAudio, got {e:?}", path.display()),
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(audio_fixture(name)).unwrap()
}

#[test]
fn missing_empty_and_non_audio_files_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let message = refused(&dir.path().join("nowhere.wav"), 10.0);
    assert!(message.contains("cannot open"), "{message}");

    let message = refused(&write(dir.path(), "empty.wav", b""), 10.0);
    assert!(message.contains("empty"), "{message}");

    let text = b"these are liner notes, not audio\n".repeat(100);
    let message = refused(&write(dir.path(), "notes.mp3", &text), 10.0);
    assert!(message.contains("not an audio file") && message.contains("OGG/Vorbis"), "{message}");

    // A WAV header whose chunks are cut short.
    let message = refused(&write(dir.path(), "header_only.wav", &fixture_bytes("sine_44k1_stereo.wav")[..20]), 10.0);
    assert!(message.contains("malformed") || message.contains("not an audio file"), "{message}");
}

#[test]
fn truncated_files_are_refused_rather_than_read_in_part() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["sine_44k1_stereo.wav", "sine_44k1_stereo.flac"] {
        let bytes = fixture_bytes(name);
        let path = write(dir.path(), &format!("cut_{name}"), &bytes[..bytes.len() / 2]);
        let message = refused(&path, 10.0);
        assert!(message.contains("truncated") || message.contains("corrupt"), "{message}");
    }
}

#[test]
fn a_corrupt_stream_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = fixture_bytes("sine_44k1_stereo.flac");
    let middle = bytes.len() / 2;
    bytes[middle..middle + 64].iter_mut().for_each(|b| *b ^= 0x5a);
    let message = refused(&write(dir.path(), "garbled.flac", &bytes), 10.0);
    assert!(message.contains("corrupt") || message.contains("truncated"), "{message}");
}

#[test]
fn a_wav_with_zero_channels_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = fixture_bytes("sine_44k1_stereo.wav");
    // The fmt chunk's channel count, after "RIFF" size "WAVE" "fmt " size format.
    let fmt = bytes.windows(4).position(|w| w == b"fmt ").unwrap();
    bytes[fmt + 10..fmt + 12].copy_from_slice(&0u16.to_le_bytes());
    let message = refused(&write(dir.path(), "no_channels.wav", &bytes), 10.0);
    assert!(message.contains("channel count"), "{message}");
}

#[test]
fn files_longer_than_the_limit_are_refused_with_both_lengths() {
    for name in ["sine_44k1_stereo.wav", "sine_44k1_stereo.flac", "sine_44k1_stereo.mp3", "sine_16k_mono.ogg"] {
        let message = refused(&audio_fixture(name), 0.1);
        assert!(message.contains("0.2 s") && message.contains("limit of 0.1 s"), "{message}");
    }
}

#[test]
fn a_file_without_a_declared_length_is_stopped_at_the_limit_while_decoding() {
    let path = audio_fixture("sine_44k1_stereo_no_xing.mp3");
    // Read whole under a loose limit, refused under a tight one.
    assert!(read(&path, 2).len() >= FRAMES);
    let message = refused(&path, 0.1);
    assert!(message.contains("longer than the limit of 0.1 s") && message.contains("no length"), "{message}");
}
