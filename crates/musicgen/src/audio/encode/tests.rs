//! Every encoder decoded back with symphonia (through `read_audio`, at the file's own rate and
//! channels, so nothing is resampled or mixed): lossless formats sample for sample, lossy ones
//! within a stated signal-to-noise ratio on a signal with content across the band, and the tags
//! read back from the container.

use std::io::Cursor;

use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::{MetadataOptions, StandardTagKey};
use symphonia::core::probe::Hint;

use super::*;
use crate::audio::{read_audio, to_pcm};

const RATE: u32 = 32000;

/// A chord of tones from 110 Hz to 7 kHz, different in each channel, under full scale.
fn chord(secs: f32, channels: usize) -> Audio {
    let n = (secs * RATE as f32) as usize;
    let tones = [110.0f32, 440.0, 1250.0, 3300.0, 7000.0];
    let planes = (0..channels)
        .map(|c| {
            (0..n)
                .map(|i| {
                    let t = i as f32 / RATE as f32;
                    tones
                        .iter()
                        .enumerate()
                        .map(|(k, f)| {
                            let phase = (k + c) as f32;
                            0.15 * (2.0 * std::f32::consts::PI * f * (1.0 + 0.01 * c as f32) * t + phase).sin()
                        })
                        .sum::<f32>()
                })
                .collect()
        })
        .collect();
    Audio { sample_rate: RATE, channels: planes }
}

fn tags() -> Tags {
    Tags {
        title: "ambient piano, soft rain".into(),
        software: "DGX Music 0.1.0".into(),
        comment: "seed 7, model facebook/musicgen-small".into(),
    }
}

fn decode(bytes: &[u8], format: Format, channels: usize) -> Audio {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("track.{}", format.extension()));
    std::fs::write(&path, bytes).unwrap();
    read_audio(&path, RATE, channels, 60.0).unwrap()
}

/// Every tag symphonia finds, before the stream (ID3v2) and in it (Vorbis comments), as
/// (standard key, value).
fn read_tags(bytes: &[u8], format: Format) -> Vec<(Option<StandardTagKey>, String)> {
    let mut hint = Hint::new();
    hint.with_extension(format.extension());
    let stream = MediaSourceStream::new(Box::new(Cursor::new(bytes.to_vec())), Default::default());
    let mut probed = symphonia::default::get_probe()
        .format(&hint, stream, &FormatOptions::default(), &MetadataOptions::default())
        .unwrap();
    let mut found = Vec::new();
    if let Some(metadata) = probed.metadata.get() {
        if let Some(revision) = metadata.current() {
            found.extend(revision.tags().iter().map(|t| (t.std_key, t.value.to_string())));
        }
    }
    let mut metadata = probed.format.metadata();
    metadata.skip_to_latest();
    if let Some(revision) = metadata.current() {
        found.extend(revision.tags().iter().map(|t| (t.std_key, t.value.to_string())));
    }
    found
}

fn quantised(audio: &Audio, bits: u32) -> Vec<Vec<f32>> {
    let full = (1u32 << (bits - 1)) as f32;
    audio.channels.iter().map(|c| c.iter().map(|&s| to_pcm(s, bits) as f32 / full).collect()).collect()
}

/// Signal-to-noise ratio in dB of `decoded` against `source`, `decoded` read from `lag` on.
fn snr_db(source: &[f32], decoded: &[f32], lag: usize) -> f64 {
    let (mut signal, mut noise) = (0.0f64, 0.0f64);
    for (i, &s) in source.iter().enumerate() {
        let d = decoded.get(i + lag).copied().unwrap_or(0.0);
        signal += (s as f64).powi(2);
        noise += ((s - d) as f64).powi(2);
    }
    10.0 * (signal / noise.max(1e-30)).log10()
}

/// The lag (0..max) at which `decoded` best matches `source`, and the SNR there.
fn best_alignment(source: &[f32], decoded: &[f32], max: usize) -> (usize, f64) {
    (0..max).map(|lag| (lag, snr_db(source, decoded, lag))).fold((0, f64::MIN), |a, b| if b.1 > a.1 { b } else { a })
}

#[test]
fn names_extensions_and_mime_types_round_trip() {
    for format in Format::ALL {
        assert_eq!(format.name().parse::<Format>().unwrap(), format);
        assert_eq!(format.to_string(), format.name());
    }
    assert_eq!("WAV".parse::<Format>().unwrap(), Format::Wav16);
    assert_eq!(Format::from_path(Path::new("a/b.FLAC")).unwrap(), Format::Flac);
    assert_eq!(Format::from_path(Path::new("x.wav")).unwrap(), Format::Wav16);
    assert_eq!(Format::from_path(Path::new("x.mp3")).unwrap(), Format::Mp3);
    assert_eq!(Format::from_path(Path::new("x.ogg")).unwrap(), Format::Ogg);
    assert_eq!(Format::Mp3.mime_type(), "audio/mpeg");
    assert_eq!(Format::Flac.mime_type(), "audio/flac");
    assert_eq!(Format::WavF32.extension(), "wav");
    assert_eq!(Format::choices(), "wav16, wav24, wav-f32, flac, mp3 or ogg");
}

#[test]
fn unknown_names_and_extensions_list_the_choices() {
    let err = "aiff".parse::<Format>().unwrap_err().to_string();
    assert!(err.contains("\"aiff\"") && err.contains("wav16, wav24, wav-f32, flac, mp3 or ogg"), "{err}");
    for path in ["track.aiff", "track"] {
        let err = Format::from_path(Path::new(path)).unwrap_err().to_string();
        assert!(err.contains(path) && err.contains(".wav, .flac, .mp3 or .ogg"), "{err}");
    }
}

#[test]
fn flac_holds_the_16_and_24_bit_samples_exactly() {
    let audio = chord(1.3, 2);
    for bits in [16, 24] {
        let bytes = flac::encode(&audio, bits, &Tags::default()).unwrap();
        assert_eq!(&bytes[..4], b"fLaC");
        let decoded = decode(&bytes, Format::Flac, 2);
        assert_eq!(decoded.channels, quantised(&audio, bits), "{bits}-bit FLAC differs from its source");
        // Lossless, and smaller than the WAV of the same depth.
        assert!(bytes.len() < audio.len() * 2 * bits as usize / 8, "{} bytes", bytes.len());
    }
    // The 16-bit FLAC is exactly the 16-bit WAV.
    let flac = decode(&encode(&audio, Format::Flac, &tags()).unwrap(), Format::Flac, 2);
    let wav = decode(&encode(&audio, Format::Wav16, &tags()).unwrap(), Format::Wav16, 2);
    assert_eq!(flac, wav);
}

#[test]
fn wav_depths_keep_their_samples() {
    let audio = chord(0.2, 1);
    let wav24 = decode(&encode(&audio, Format::Wav24, &Tags::default()).unwrap(), Format::Wav24, 1);
    assert_eq!(wav24.channels, quantised(&audio, 24));
    let f32 = decode(&encode(&audio, Format::WavF32, &Tags::default()).unwrap(), Format::WavF32, 1);
    assert_eq!(f32.channels, audio.channels);
}

#[test]
fn mp3_decodes_close_to_its_source_after_the_encoder_delay() {
    for channels in [1, 2] {
        let audio = chord(1.5, channels);
        let bytes = encode(&audio, Format::Mp3, &tags()).unwrap();
        // 320 kbps: 40 kB a second, whatever the channels.
        let expected = 320_000.0 / 8.0 * audio.duration_secs();
        assert!((bytes.len() as f64 - expected).abs() < 0.1 * expected, "{} bytes", bytes.len());
        let decoded = decode(&bytes, Format::Mp3, channels);
        // LAME's delay (576) and the decoder's (529) come first; the last frame is padded.
        let extra = decoded.len() - audio.len();
        assert!((1105..1105 + 2 * 1152).contains(&extra), "{extra} extra samples");
        for c in 0..channels {
            let (lag, snr) = best_alignment(&audio.channels[c], &decoded.channels[c], 2 * 1152);
            assert_eq!(lag, 1105, "channel {c}");
            assert!(snr > 30.0, "channel {c}: SNR {snr:.1} dB");
        }
    }
}

#[test]
fn ogg_vorbis_decodes_close_to_its_source() {
    for channels in [1, 2] {
        let audio = chord(1.5, channels);
        let bytes = encode(&audio, Format::Ogg, &tags()).unwrap();
        assert_eq!(&bytes[..4], b"OggS");
        let decoded = decode(&bytes, Format::Ogg, channels);
        // symphonia does not trim the last packet to the final granule position: at most one long
        // block (2048 samples at 32 kHz) more than the source.
        let extra = decoded.len() - audio.len();
        assert!(extra <= 2048, "{extra} extra samples");
        for c in 0..channels {
            let snr = snr_db(&audio.channels[c], &decoded.channels[c], 0);
            assert!(snr > 15.0, "channel {c}: SNR {snr:.1} dB");
        }
        // Same audio, same bytes: the stream serial is fixed.
        assert_eq!(bytes, encode(&audio, Format::Ogg, &tags()).unwrap());
    }
}

#[test]
fn tags_read_back_where_the_format_has_them() {
    let audio = chord(0.5, 1);
    let tags = tags();
    for format in [Format::Flac, Format::Ogg] {
        let found = read_tags(&encode(&audio, format, &tags).unwrap(), format);
        let value = |key| found.iter().find(|(k, _)| *k == Some(key)).map(|(_, v)| v.clone());
        assert_eq!(value(StandardTagKey::TrackTitle).as_deref(), Some(tags.title.as_str()), "{format}: {found:?}");
        assert_eq!(value(StandardTagKey::Encoder).as_deref(), Some(tags.software.as_str()), "{format}: {found:?}");
        assert_eq!(value(StandardTagKey::Comment).as_deref(), Some(tags.comment.as_str()), "{format}: {found:?}");
    }
    let found = read_tags(&encode(&audio, Format::Mp3, &tags).unwrap(), Format::Mp3);
    let value = |key| found.iter().find(|(k, _)| *k == Some(key)).map(|(_, v)| v.clone());
    assert_eq!(value(StandardTagKey::TrackTitle).as_deref(), Some(tags.title.as_str()), "{found:?}");
    let comment = value(StandardTagKey::Comment).unwrap_or_default();
    assert!(comment.contains(&tags.software) && comment.contains(&tags.comment), "{found:?}");
    // No tags asked for, none written.
    assert!(read_tags(&encode(&audio, Format::Flac, &Tags::default()).unwrap(), Format::Flac).is_empty());
}

#[test]
fn ragged_or_empty_audio_is_refused_by_every_encoder() {
    let ragged = Audio { sample_rate: RATE, channels: vec![vec![0.0; 10], vec![0.0; 9]] };
    let none = Audio { sample_rate: RATE, channels: vec![] };
    for format in Format::ALL {
        assert!(encode(&ragged, format, &Tags::default()).is_err(), "{format}");
        assert!(encode(&none, format, &Tags::default()).is_err(), "{format}");
    }
}

#[test]
fn mp3_refuses_more_than_two_channels_and_odd_bitrates() {
    let audio = chord(0.1, 3);
    assert!(encode(&audio, Format::Mp3, &Tags::default()).unwrap_err().to_string().contains("3"));
    assert!(mp3::encode(&chord(0.1, 1), 100, &Tags::default()).is_err());
}
