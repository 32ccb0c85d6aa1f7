//! Encoding a finished track in one of the download formats: WAV (16-bit, 24-bit, 32-bit float),
//! FLAC, MP3 and Ogg/Vorbis, each with the track's tags where the format has them.
//!
//! Integer formats quantise as `to_pcm` does (audiocraft's rule), so a FLAC holds exactly the
//! samples of the WAV of the same depth. The lossy ones follow audiocraft's `audio_write`, which
//! pipes to ffmpeg: MP3 through LAME at 320 kbps constant bit rate, Vorbis at libvorbis' quality
//! scale (here 0.5, about 160 kbps for stereo at 32 kHz).

use std::path::Path;
use std::str::FromStr;

use super::{wav_bytes, Audio, SampleFormat};
use crate::error::{Error, Result};

mod flac;
mod mp3;
mod vorbis;

/// A download format, by the names the CLI, the API and the page share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Format {
    /// 16-bit integer WAV, what every player reads (the stored original).
    #[default]
    Wav16,
    /// 24-bit integer WAV.
    Wav24,
    /// 32-bit float WAV: the decoder's samples unquantised.
    WavF32,
    /// FLAC, 16-bit: lossless, the samples of `Wav16` in about half the bytes.
    Flac,
    /// MP3, 320 kbps CBR (LAME).
    Mp3,
    /// Ogg/Vorbis.
    Ogg,
}

impl Format {
    pub const ALL: [Format; 6] = [Format::Wav16, Format::Wav24, Format::WavF32, Format::Flac, Format::Mp3, Format::Ogg];

    /// The name `FromStr` reads back: `wav16`, `wav24`, `wav-f32`, `flac`, `mp3`, `ogg`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Wav16 => "wav16",
            Format::Wav24 => "wav24",
            Format::WavF32 => "wav-f32",
            Format::Flac => "flac",
            Format::Mp3 => "mp3",
            Format::Ogg => "ogg",
        }
    }

    /// The file name extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Wav16 | Format::Wav24 | Format::WavF32 => "wav",
            Format::Flac => "flac",
            Format::Mp3 => "mp3",
            Format::Ogg => "ogg",
        }
    }

    /// The MIME type of an HTTP answer.
    pub fn mime_type(self) -> &'static str {
        match self {
            Format::Wav16 | Format::Wav24 | Format::WavF32 => "audio/wav",
            Format::Flac => "audio/flac",
            Format::Mp3 => "audio/mpeg",
            Format::Ogg => "audio/ogg",
        }
    }

    /// "wav16, wav24, wav-f32, flac, mp3 or ogg", for messages.
    pub fn choices() -> String {
        let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
        format!("{} or {}", names[..names.len() - 1].join(", "), names[names.len() - 1])
    }

    /// The format a file name asks for: `.wav` (16-bit), `.flac`, `.mp3`, `.ogg`, any case.
    pub fn from_path(path: &Path) -> Result<Format> {
        let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        match extension.as_str() {
            "wav" => Ok(Format::Wav16),
            "flac" => Ok(Format::Flac),
            "mp3" => Ok(Format::Mp3),
            "ogg" => Ok(Format::Ogg),
            _ => Err(Error::invalid(
                "format",
                format!(
                    "cannot tell the format of {:?} from its extension; use .wav, .flac, .mp3 or .ogg, or name \
                     one of {}",
                    path.display().to_string(),
                    Format::choices()
                ),
            )),
        }
    }
}

impl FromStr for Format {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let name = s.trim().to_ascii_lowercase();
        match name.as_str() {
            "wav" => Ok(Format::Wav16),
            _ => Format::ALL
                .into_iter()
                .find(|f| f.name() == name)
                .ok_or_else(|| Error::invalid("format", format!("unknown format {s:?}; use {}", Format::choices()))),
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a file says about itself, where its format has tags (FLAC and Vorbis comments, MP3's
/// ID3v2; WAV carries none). An empty string is left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tags {
    /// The prompt.
    pub title: String,
    /// "DGX Music <version>".
    pub software: String,
    /// How to make it again: seed and model.
    pub comment: String,
}

/// What files written by DGX Music name as their encoder.
pub const SOFTWARE: &str = concat!("DGX Music ", env!("CARGO_PKG_VERSION"));

impl Tags {
    /// The tags of a generated track: its prompt, this software, and how to make it again.
    pub fn for_track(prompt: &str, seed: u64, model: &str) -> Tags {
        Tags {
            title: prompt.to_string(),
            software: SOFTWARE.to_string(),
            comment: format!("seed {seed}, model {model}"),
        }
    }

    /// The tags as Vorbis comment fields (FLAC, Ogg): `TITLE`, `ENCODER`, `COMMENT`.
    fn vorbis_comments(&self) -> Vec<(&'static str, &str)> {
        [("TITLE", &self.title), ("ENCODER", &self.software), ("COMMENT", &self.comment)]
            .into_iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(key, value)| (key, value.as_str()))
            .collect()
    }
}

/// The bytes of `audio` as a file of `format`.
pub fn encode(audio: &Audio, format: Format, tags: &Tags) -> Result<Vec<u8>> {
    check(audio)?;
    match format {
        Format::Wav16 => wav_bytes(audio, SampleFormat::Pcm16),
        Format::Wav24 => wav_bytes(audio, SampleFormat::Pcm24),
        Format::WavF32 => wav_bytes(audio, SampleFormat::F32),
        Format::Flac => flac::encode(audio, 16, tags),
        Format::Mp3 => mp3::encode(audio, mp3::DEFAULT_KBPS, tags),
        Format::Ogg => vorbis::encode(audio, tags),
    }
}

fn check(audio: &Audio) -> Result<()> {
    if audio.channels.is_empty() || audio.channels.iter().any(|c| c.len() != audio.len()) {
        return Err(Error::Audio("audio must have at least one channel, all of the same length".into()));
    }
    Ok(())
}

/// Interleaved integer samples of `bits` bits, quantised as the WAV writer does.
fn interleaved_pcm(audio: &Audio, bits: u32) -> Vec<i32> {
    let mut samples = Vec::with_capacity(audio.len() * audio.channels.len());
    for i in 0..audio.len() {
        samples.extend(audio.channels.iter().map(|channel| super::to_pcm(channel[i], bits)));
    }
    samples
}

#[cfg(test)]
mod tests;
