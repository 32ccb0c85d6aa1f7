//! What every [`super::AudioStore`] does to the bytes it keeps, wherever it keeps them: the names of
//! a job's files, the WAV encoding of `put`, the decoding of `read` and the conversions of
//! `convert`. A store only moves these bytes; the rules live here once.

use std::path::Path;

use musicgen::audio::{Format, SampleFormat, Tags};
use uuid::Uuid;

use super::{StoreError, StoreResult};

/// The longest track a conversion decodes: far beyond any duration a job may ask for.
const MAX_CONVERT_SECS: f64 = 24.0 * 3600.0;

/// The name of the file holding the audio of `id` in `format`: `<uuid>.wav` for the original
/// (16-bit WAV), `<uuid>.<format>` for a conversion (`<uuid>.flac`, `<uuid>.wav24`, ...). Built only
/// from a parsed [`Uuid`] and a [`Format`] name, so no client string ever becomes a name.
pub(super) fn file_name(id: Uuid, format: Format) -> String {
    match format {
        Format::Wav16 => format!("{}.wav", id.hyphenated()),
        other => format!("{}.{}", id.hyphenated(), other.name()),
    }
}

/// The job id of an original's file name (`<uuid>.wav`).
pub(super) fn original_of(name: &str) -> Option<Uuid> {
    name.strip_suffix(".wav").and_then(|stem| Uuid::try_parse(stem).ok())
}

/// The job id of a conversion's file name (`<uuid>.<format>` for a format other than 16-bit WAV).
pub(super) fn conversion_of(name: &str) -> Option<Uuid> {
    let (stem, format) = name.split_once('.')?;
    match format.parse::<Format>().ok()? {
        // `<uuid>.wav` is the original ("wav" names 16-bit WAV), not a conversion.
        Format::Wav16 => None,
        _ => Uuid::try_parse(stem).ok(),
    }
}

/// The conversions a job may have: every format but the original's.
pub(super) fn conversion_formats() -> impl Iterator<Item = Format> {
    Format::ALL.into_iter().filter(|f| *f != Format::Wav16)
}

/// The order `delete` removes a job's files in: the conversions first, then the WAV, so that a
/// failure leaves the job's audio, and the job, in place; then the conversions again, for one that
/// a running `convert` made visible meanwhile (one made visible later sees the WAV gone and removes
/// itself).
pub(super) fn deletion_order() -> impl Iterator<Item = Format> {
    conversion_formats().chain([Format::Wav16]).chain(conversion_formats())
}

/// The WAV file `put` stores. Encoded in memory, so that a failed write keeps its own error (a
/// full disk is told apart from a bad sample).
pub(super) fn wav_bytes(audio: &musicgen::Audio, format: SampleFormat) -> StoreResult<Vec<u8>> {
    musicgen::audio::wav_bytes(audio, format).map_err(|err| StoreError::AudioEncoding(err.to_string()))
}

/// The stored WAV of `id` decoded to `sample_rate` and `channels`, refused beyond `max_secs`.
pub(super) fn decode(
    id: Uuid,
    wav: Vec<u8>,
    sample_rate: u32,
    channels: usize,
    max_secs: f64,
) -> StoreResult<musicgen::Audio> {
    let name = file_name(id, Format::Wav16);
    musicgen::audio::read_audio_bytes(Path::new(&name), wav, sample_rate, channels, max_secs)
        .map_err(|err| decoding_error(id, err))
}

/// The stored WAV of `id` converted to `format`, tagged with `tags`.
pub(super) fn convert(id: Uuid, wav: Vec<u8>, format: Format, tags: &Tags) -> StoreResult<Vec<u8>> {
    let name = file_name(id, Format::Wav16);
    let audio = musicgen::audio::read_audio_native_bytes(Path::new(&name), wav, MAX_CONVERT_SECS)
        .map_err(|err| decoding_error(id, err))?;
    musicgen::audio::encode(&audio, format, tags).map_err(|err| StoreError::AudioEncoding(err.to_string()))
}

/// The message alone, without the name it was decoded under: job errors reach clients.
fn decoding_error(id: Uuid, err: musicgen::Error) -> StoreError {
    match err {
        musicgen::Error::BadAudio { message, .. } => StoreError::AudioDecoding { id, message },
        other => StoreError::AudioDecoding { id, message: other.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_tell_the_original_from_its_conversions() {
        let id = Uuid::new_v4();
        assert_eq!(original_of(&file_name(id, Format::Wav16)), Some(id));
        assert_eq!(conversion_of(&file_name(id, Format::Wav16)), None);
        for format in conversion_formats() {
            assert_eq!(conversion_of(&file_name(id, format)), Some(id), "{format}");
            assert_eq!(original_of(&file_name(id, format)), None, "{format}");
        }
        assert_eq!(conversion_of(&format!("{id}.wav-f32")), Some(id));
        assert_eq!(original_of("notes.wav"), None);
    }
}
