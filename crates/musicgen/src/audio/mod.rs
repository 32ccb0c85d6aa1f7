//! Generated audio, its loudness normalisation and its encoding as WAV; the download formats
//! (`encode`: WAV, FLAC, MP3, Ogg/Vorbis); reading input audio files (`read`).
//!
//! Normalisation follows audiocraft's `audio_write`: `peak` scales the loudest sample to
//! −1 dBFS; `loudness` brings integrated loudness (EBU R128 / ITU-R BS.1770, as torchaudio's
//! `Loudness`) to −14 LUFS and soft-clips with `tanh`, as audiocraft's README example
//! (`strategy="loudness", loudness_compressor=True`) does.

use std::io::{Cursor, Seek, Write};
use std::path::Path;
use std::str::FromStr;

use crate::error::{Error, Result};

mod encode;
mod read;

pub use encode::{encode, Format, Tags, SOFTWARE};
pub use read::{read_audio, read_audio_bytes, read_audio_native, read_audio_native_bytes};

/// Planar audio: one vector of samples, nominally in [-1, 1], per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    pub sample_rate: u32,
    pub channels: Vec<Vec<f32>>,
}

impl Audio {
    /// Samples per channel.
    pub fn len(&self) -> usize {
        self.channels.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn duration_secs(&self) -> f64 {
        self.len() as f64 / self.sample_rate as f64
    }

    fn peak(&self) -> f32 {
        self.channels.iter().flatten().fold(0.0f32, |m, s| m.max(s.abs()))
    }

    fn scale(&mut self, gain: f32) {
        self.channels.iter_mut().flatten().for_each(|s| *s *= gain);
    }
}

/// How to bring generated audio to a listening level before it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Normalize {
    /// Leave the decoder's output untouched (what parity tests compare).
    None,
    /// Loudest sample at −1 dBFS.
    Peak,
    /// −14 LUFS integrated loudness, soft-clipped.
    #[default]
    Loudness,
}

impl FromStr for Normalize {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "peak" => Ok(Self::Peak),
            "loudness" => Ok(Self::Loudness),
            _ => Err(Error::invalid("normalize", format!("unknown strategy {s:?}; use none, peak or loudness"))),
        }
    }
}

const PEAK_HEADROOM_DB: f64 = 1.0;
const LOUDNESS_HEADROOM_DB: f64 = 14.0;
/// Below this RMS audiocraft leaves audio alone: silence has no meaningful loudness.
const ENERGY_FLOOR: f64 = 2e-3;

/// Applies `strategy` in place.
pub fn normalize(audio: &mut Audio, strategy: Normalize) -> Result<()> {
    if let Some(level) = Level::of(audio, strategy)? {
        level.apply(audio);
    }
    Ok(())
}

/// What a strategy does to one track: a gain, then for `loudness` a `tanh` soft clip.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Level {
    gain: f32,
    soft_clip: bool,
}

impl Level {
    /// The level `strategy` sets for `audio`; `None` where it leaves it untouched (`none`, or
    /// audio too quiet to measure, which audiocraft leaves alone).
    fn of(audio: &Audio, strategy: Normalize) -> Result<Option<Self>> {
        match strategy {
            Normalize::None => Ok(None),
            Normalize::Peak => {
                let peak = audio.peak();
                let target = 10f64.powf(-PEAK_HEADROOM_DB / 20.0) as f32;
                Ok((peak > 0.0).then(|| Self { gain: target / peak, soft_clip: false }))
            }
            Normalize::Loudness => {
                let samples = audio.channels.iter().map(Vec::len).sum::<usize>().max(1);
                let energy =
                    (audio.channels.iter().flatten().map(|&s| (s as f64).powi(2)).sum::<f64>() / samples as f64).sqrt();
                if energy < ENERGY_FLOOR {
                    return Ok(None);
                }
                let loudness = integrated_loudness(audio)?;
                let gain = if loudness.is_finite() {
                    10f64.powf((-LOUDNESS_HEADROOM_DB - loudness) / 20.0) as f32
                } else {
                    1.0
                };
                Ok(Some(Self { gain, soft_clip: true }))
            }
        }
    }

    fn apply(&self, audio: &mut Audio) {
        audio.scale(self.gain);
        if self.soft_clip {
            audio.channels.iter_mut().flatten().for_each(|s| *s = s.tanh());
        }
    }
}

/// Normalisation of audio handed out piece by piece, which cannot wait for the whole track: the
/// strategy's level is measured on the first piece loud enough to measure (earlier, quieter
/// pieces pass unchanged) and then fixed for every piece after. A stored track is normalised
/// whole, so a stream of it differs from the file by the ratio of the two gains
/// ([`Self::gain`] and the track's).
#[derive(Debug, Clone)]
pub struct StreamNormalizer {
    strategy: Normalize,
    level: Option<Level>,
}

impl StreamNormalizer {
    pub fn new(strategy: Normalize) -> Self {
        Self { strategy, level: None }
    }

    /// Normalises the next piece in place.
    pub fn apply(&mut self, piece: &mut Audio) -> Result<()> {
        if self.level.is_none() {
            self.level = Level::of(piece, self.strategy)?;
        }
        if let Some(level) = &self.level {
            level.apply(piece);
        }
        Ok(())
    }

    /// The gain fixed so far (before any soft clip); `None` until a piece fixed it.
    pub fn gain(&self) -> Option<f32> {
        self.level.map(|level| level.gain)
    }
}

/// Integrated loudness in LUFS (−∞ for audio too short or too quiet to gate).
pub fn integrated_loudness(audio: &Audio) -> Result<f64> {
    let loud = |e: ebur128::Error| Error::Audio(format!("loudness measurement failed: {e}"));
    let mut meter =
        ebur128::EbuR128::new(audio.channels.len() as u32, audio.sample_rate, ebur128::Mode::I).map_err(loud)?;
    let planes: Vec<&[f32]> = audio.channels.iter().map(Vec::as_slice).collect();
    meter.add_frames_planar_f32(&planes).map_err(loud)?;
    meter.loudness_global().map_err(loud)
}

/// Sample encoding of a written WAV file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SampleFormat {
    /// 16-bit integer PCM, what every player reads.
    #[default]
    Pcm16,
    /// 24-bit integer PCM.
    Pcm24,
    /// 32-bit IEEE float, lossless for parity checks.
    F32,
}

impl FromStr for SampleFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "pcm16" | "s16" | "i16" | "16" => Ok(Self::Pcm16),
            "pcm24" | "s24" | "i24" | "24" => Ok(Self::Pcm24),
            "f32" | "float" | "float32" => Ok(Self::F32),
            _ => Err(Error::invalid("sample_format", format!("unknown sample format {s:?}; use pcm16, pcm24 or f32"))),
        }
    }
}

/// Writes `audio` to `path` as a WAV file.
pub fn write_wav(path: impl AsRef<Path>, audio: &Audio, format: SampleFormat) -> Result<()> {
    let path = path.as_ref();
    let file =
        std::fs::File::create(path).map_err(|e| Error::Audio(format!("cannot create {}: {e}", path.display())))?;
    encode_wav(std::io::BufWriter::new(file), audio, format)
}

/// The WAV file's bytes, for callers that store audio elsewhere than a local path.
pub fn wav_bytes(audio: &Audio, format: SampleFormat) -> Result<Vec<u8>> {
    let mut cursor = Cursor::new(Vec::new());
    encode_wav(&mut cursor, audio, format)?;
    Ok(cursor.into_inner())
}

fn encode_wav<W: Write + Seek>(writer: W, audio: &Audio, format: SampleFormat) -> Result<()> {
    let channels = audio.channels.len();
    if channels == 0 || audio.channels.iter().any(|c| c.len() != audio.len()) {
        return Err(Error::Audio("audio must have at least one channel, all of the same length".into()));
    }
    let spec = hound::WavSpec {
        channels: channels as u16,
        sample_rate: audio.sample_rate,
        bits_per_sample: match format {
            SampleFormat::Pcm16 => 16,
            SampleFormat::Pcm24 => 24,
            SampleFormat::F32 => 32,
        },
        sample_format: match format {
            SampleFormat::Pcm16 | SampleFormat::Pcm24 => hound::SampleFormat::Int,
            SampleFormat::F32 => hound::SampleFormat::Float,
        },
    };
    let wav = |e: hound::Error| Error::Audio(format!("WAV encoding failed: {e}"));
    let mut out = hound::WavWriter::new(writer, spec).map_err(wav)?;
    for i in 0..audio.len() {
        for channel in &audio.channels {
            match format {
                SampleFormat::Pcm16 => out.write_sample(to_pcm(channel[i], 16) as i16).map_err(wav)?,
                SampleFormat::Pcm24 => out.write_sample(to_pcm(channel[i], 24)).map_err(wav)?,
                SampleFormat::F32 => out.write_sample(channel[i]).map_err(wav)?,
            }
        }
    }
    out.finalize().map_err(wav)
}

/// A 16-bit PCM WAV header for audio that follows it piece by piece (a stream). Given the
/// length, the header is exact, so the stream is an ordinary WAV file; without one (an endless
/// track) both sizes are 0xFFFFFFFF, which ffmpeg, sox, aplay and browsers read as "until the
/// end of the stream".
pub fn wav_stream_header(sample_rate: u32, channels: u16, samples: Option<usize>) -> [u8; 44] {
    let block = 2 * channels as u32;
    let data = samples.and_then(|n| u32::try_from(n as u64 * block as u64).ok()).filter(|&d| d <= u32::MAX - 36);
    let (riff, data) = data.map_or((u32::MAX, u32::MAX), |d| (d + 36, d));
    let mut header = [0u8; 44];
    let fields: [&[u8]; 13] = [
        b"RIFF",
        &riff.to_le_bytes(),
        b"WAVE",
        b"fmt ",
        &16u32.to_le_bytes(),
        &1u16.to_le_bytes(),
        &channels.to_le_bytes(),
        &sample_rate.to_le_bytes(),
        &(sample_rate * block).to_le_bytes(),
        &(block as u16).to_le_bytes(),
        &16u16.to_le_bytes(),
        b"data",
        &data.to_le_bytes(),
    ];
    let mut at = 0;
    for field in fields {
        header[at..at + field.len()].copy_from_slice(field);
        at += field.len();
    }
    header
}

/// `audio` as interleaved 16-bit little-endian PCM (a WAV's data, or raw PCM), by the same
/// quantisation rule as [`write_wav`].
pub fn pcm16_bytes(audio: &Audio) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(audio.len() * audio.channels.len() * 2);
    for i in 0..audio.len() {
        for channel in &audio.channels {
            bytes.extend_from_slice(&(to_pcm(channel[i], 16) as i16).to_le_bytes());
        }
    }
    bytes
}

/// As audiocraft's `i16_pcm`, at any depth: scale by 2^(bits-1), clamp, truncate toward zero.
/// (Powers of two and the clamp bounds up to 24 bits are exact in f32.)
fn to_pcm(sample: f32, bits: u32) -> i32 {
    let full = (1u32 << (bits - 1)) as f32;
    (sample * full).clamp(-full, full - 1.0) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f32, amplitude: f32, secs: f32, channels: usize) -> Audio {
        let rate = 32000;
        let n = (secs * rate as f32) as usize;
        let wave: Vec<f32> =
            (0..n).map(|i| amplitude * (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin()).collect();
        Audio { sample_rate: rate, channels: vec![wave; channels] }
    }

    #[test]
    fn pcm16_round_trip_keeps_samples_and_layout() {
        let audio = sine(440.0, 0.5, 0.25, 2);
        let bytes = wav_bytes(&audio, SampleFormat::Pcm16).unwrap();
        let mut reader = hound::WavReader::new(Cursor::new(bytes)).unwrap();
        assert_eq!(reader.spec().channels, 2);
        assert_eq!(reader.spec().sample_rate, 32000);
        let samples: Vec<i16> = reader.samples::<i16>().map(|s| s.unwrap()).collect();
        assert_eq!(samples.len(), audio.len() * 2);
        for (i, pair) in samples.chunks(2).enumerate() {
            let expected = to_pcm(audio.channels[0][i], 16) as i16;
            assert_eq!(pair, [expected, expected]);
        }
    }

    #[test]
    fn a_streamed_wav_is_the_written_wav() {
        let audio = sine(440.0, 0.5, 0.3, 2);
        let mut streamed = wav_stream_header(32000, 2, Some(audio.len())).to_vec();
        streamed.extend(pcm16_bytes(&audio));
        assert_eq!(streamed, wav_bytes(&audio, SampleFormat::Pcm16).unwrap());
        // Open-ended: both sizes unknown, the rest of the header the same.
        let open = wav_stream_header(32000, 2, None);
        assert_eq!(open[4..8], [0xff; 4]);
        assert_eq!(open[40..44], [0xff; 4]);
        assert_eq!(open[8..40], streamed[8..40]);
    }

    #[test]
    fn a_stream_fixes_its_level_on_the_first_audible_piece() {
        let mut stream = StreamNormalizer::new(Normalize::Loudness);
        let mut quiet = Audio { sample_rate: 32000, channels: vec![vec![1e-4; 16000]] };
        stream.apply(&mut quiet).unwrap();
        assert_eq!(quiet.channels[0][0], 1e-4, "silence passes unchanged");
        assert_eq!(stream.gain(), None);
        let first = sine(440.0, 0.05, 1.0, 1);
        let mut piece = first.clone();
        stream.apply(&mut piece).unwrap();
        let gain = stream.gain().unwrap();
        let mut whole = first.clone();
        normalize(&mut whole, Normalize::Loudness).unwrap();
        assert_eq!(piece, whole, "the first audible piece is normalised as a track of its own");
        // A louder piece later keeps the gain fixed by the first.
        let mut loud = sine(440.0, 0.2, 1.0, 1);
        stream.apply(&mut loud).unwrap();
        assert_eq!(stream.gain(), Some(gain));
        assert!(
            (loud.channels[0][8] - (0.2 * (2.0 * std::f32::consts::PI * 440.0 * 8.0 / 32000.0).sin() * gain).tanh())
                .abs()
                < 1e-6
        );
    }

    #[test]
    fn f32_wav_is_lossless() {
        let audio = sine(220.0, 0.9, 0.1, 1);
        let bytes = wav_bytes(&audio, SampleFormat::F32).unwrap();
        let samples: Vec<f32> =
            hound::WavReader::new(Cursor::new(bytes)).unwrap().samples::<f32>().map(|s| s.unwrap()).collect();
        assert_eq!(samples, audio.channels[0]);
    }

    #[test]
    fn pcm16_clamps_out_of_range_samples() {
        assert_eq!(to_pcm(1.5, 16), i16::MAX as i32);
        assert_eq!(to_pcm(-1.5, 16), i16::MIN as i32);
        assert_eq!(to_pcm(0.0, 16), 0);
        assert_eq!(to_pcm(1.5, 24), (1 << 23) - 1);
        assert_eq!(to_pcm(-1.5, 24), -(1 << 23));
    }

    #[test]
    fn peak_normalisation_lands_at_minus_one_dbfs() {
        let mut audio = sine(440.0, 0.1, 0.5, 1);
        normalize(&mut audio, Normalize::Peak).unwrap();
        assert!((audio.peak() - 0.891_250_9).abs() < 1e-4, "{}", audio.peak());
    }

    #[test]
    fn loudness_normalisation_targets_minus_14_lufs() {
        let mut audio = sine(1000.0, 0.05, 3.0, 2);
        let before = integrated_loudness(&audio).unwrap();
        normalize(&mut audio, Normalize::Loudness).unwrap();
        let after = integrated_loudness(&audio).unwrap();
        assert!(before < -25.0, "{before}");
        // tanh soft clipping takes a little off the top.
        assert!((after + 14.0).abs() < 0.5, "{after}");
        assert!(audio.peak() <= 1.0);
    }

    #[test]
    fn silence_is_left_alone() {
        let mut audio = Audio { sample_rate: 32000, channels: vec![vec![0.0; 32000]] };
        normalize(&mut audio, Normalize::Loudness).unwrap();
        assert!(audio.channels[0].iter().all(|&s| s == 0.0));
    }

    #[test]
    fn ragged_channels_are_refused() {
        let audio = Audio { sample_rate: 32000, channels: vec![vec![0.0; 10], vec![0.0; 9]] };
        assert!(wav_bytes(&audio, SampleFormat::Pcm16).is_err());
    }
}
