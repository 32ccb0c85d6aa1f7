//! Reading input audio (a continuation's prompt, an upload): WAV, FLAC, MP3 and OGG/Vorbis
//! decoded by symphonia (pure Rust), mixed to the channels the checkpoint needs and resampled to
//! its rate. Every bad file is an `Error::BadAudio` naming it, raised before any model work.
//!
//! Policy, as audiocraft (torchaudio, ffmpeg underneath) behaves when it loads a prompt:
//! - a decode error anywhere in the stream refuses the file; partial audio is never returned;
//! - a stream that ends before the frame count its header declares (a cut-off WAV or FLAC) is
//!   refused as truncated;
//! - the length limit is checked from the header when it declares one, before decoding, and
//!   again while decoding, so a huge file never fills memory.
//!
//! Channels: a file with the checkpoint's channel count is kept as is; otherwise its channels are
//! averaged to mono, which is then duplicated to every channel the checkpoint needs (stereo to a
//! mono checkpoint: the average; mono to stereo: the same samples twice; 5.1 to stereo: the
//! average of all six, twice).
//!
//! MP3 keeps its encoder delay and padding (symphonia's default, no gapless trimming), so an MP3
//! decodes up to one MPEG frame (1152 samples) plus the encoder's delay longer than its source.

use std::fs::File;
use std::io::Cursor;
use std::path::Path;

use rubato::{FftFixedIn, Resampler};
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as DecodeError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use super::Audio;
use crate::error::{Error, Result};

const SUPPORTED: &str = "supported: WAV, FLAC, MP3, OGG/Vorbis";

/// Input frames per resampler call.
const RESAMPLE_CHUNK: usize = 1024;

/// Decodes the audio file at `path` into `channels` channels at `target_rate` Hz, refusing files
/// longer than `max_seconds`. A file already at `target_rate` is not resampled.
pub fn read_audio(path: &Path, target_rate: u32, channels: usize, max_seconds: f64) -> Result<Audio> {
    check_target(target_rate, channels)?;
    conform(path, read_audio_native(path, max_seconds)?, target_rate, channels)
}

/// [`read_audio`] of a file already in memory (an object fetched from a store); `name` stands for
/// it in messages, and its extension hints the format.
pub fn read_audio_bytes(
    name: &Path,
    bytes: Vec<u8>,
    target_rate: u32,
    channels: usize,
    max_seconds: f64,
) -> Result<Audio> {
    check_target(target_rate, channels)?;
    conform(name, read_audio_native_bytes(name, bytes, max_seconds)?, target_rate, channels)
}

/// Decodes the audio file at `path` as it is: its own rate and channels, nothing mixed or
/// resampled; the same checks as `read_audio`.
pub fn read_audio_native(path: &Path, max_seconds: f64) -> Result<Audio> {
    check_length(max_seconds)?;
    let file = File::open(path).map_err(|e| bad(path, format!("cannot open it: {e}")))?;
    let size = file.metadata().map_err(|e| bad(path, format!("cannot read it: {e}")))?.len();
    let (sample_rate, channels) = decode(path, Box::new(file), size, max_seconds)?;
    Ok(Audio { sample_rate, channels })
}

/// [`read_audio_native`] of a file already in memory, named `name` in messages.
pub fn read_audio_native_bytes(name: &Path, bytes: Vec<u8>, max_seconds: f64) -> Result<Audio> {
    check_length(max_seconds)?;
    let size = bytes.len() as u64;
    let (sample_rate, channels) = decode(name, Box::new(Cursor::new(bytes)), size, max_seconds)?;
    Ok(Audio { sample_rate, channels })
}

fn check_target(target_rate: u32, channels: usize) -> Result<()> {
    if target_rate == 0 {
        return Err(Error::invalid("sample_rate", "the target sample rate must be positive"));
    }
    if channels == 0 {
        return Err(Error::invalid("channels", "the target must have at least one channel"));
    }
    Ok(())
}

fn check_length(max_seconds: f64) -> Result<()> {
    if !(max_seconds.is_finite() && max_seconds > 0.0) {
        return Err(Error::invalid("max_seconds", format!("{max_seconds} is not a positive length")));
    }
    Ok(())
}

/// Decoded audio mixed to `channels` and resampled to `target_rate`.
fn conform(path: &Path, audio: Audio, target_rate: u32, channels: usize) -> Result<Audio> {
    let Audio { sample_rate: rate, channels: decoded } = audio;
    let mixed = mix(decoded, channels);
    let resampled = if rate == target_rate {
        mixed
    } else {
        resample(&mixed, rate, target_rate).map_err(|message| bad(path, message))?
    };
    Ok(Audio { sample_rate: target_rate, channels: resampled })
}

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::BadAudio { path: path.to_path_buf(), message: message.into() }
}

/// The file's own sample rate and planar samples, every check on the way; `size` is its length in
/// bytes.
fn decode(path: &Path, source: Box<dyn MediaSource>, size: u64, max_seconds: f64) -> Result<(u32, Vec<Vec<f32>>)> {
    if size == 0 {
        return Err(bad(path, "the file is empty"));
    }
    let mut hint = Hint::new();
    if let Some(extension) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(extension);
    }
    let stream = MediaSourceStream::new(source, Default::default());
    let probed = symphonia::default::get_probe()
        .format(&hint, stream, &FormatOptions::default(), &MetadataOptions::default())
        .map_err(|e| match e {
            DecodeError::Unsupported(_) => bad(path, format!("not an audio file this build can read ({SUPPORTED})")),
            e => bad(path, format!("its header is malformed ({e}); re-encode the file")),
        })?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| bad(path, "the file has no audio track"))?;
    let track_id = track.id;
    let params = track.codec_params.clone();
    let header_rate = params.sample_rate.ok_or_else(|| bad(path, "the header gives no sample rate"))?;
    if header_rate == 0 {
        return Err(bad(path, "the header gives a sample rate of 0 Hz"));
    }
    if params.channels.is_some_and(|c| c.count() == 0) {
        return Err(bad(path, "the header declares 0 channels"));
    }
    let max_frames = (max_seconds * header_rate as f64).ceil() as u64;
    if let Some(frames) = params.n_frames.filter(|&n| n > max_frames) {
        return Err(bad(
            path,
            format!(
                "it is {:.1} s long, more than the limit of {max_seconds} s; trim it first",
                frames as f64 / header_rate as f64
            ),
        ));
    }
    let mut decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|e| bad(path, format!("its codec is not supported ({SUPPORTED}): {e}")))?;

    let mut planes: Vec<Vec<f32>> = Vec::new();
    let mut buffer: Option<SampleBuffer<f32>> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(packet) => packet,
            // symphonia's end of stream.
            Err(DecodeError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(bad(path, corrupt(&planes, header_rate, e))),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = decoder.decode(&packet).map_err(|e| bad(path, corrupt(&planes, header_rate, e)))?;
        let spec = *decoded.spec();
        let count = spec.channels.count();
        if count == 0 {
            return Err(bad(path, "the stream has 0 channels"));
        }
        if spec.rate != header_rate {
            return Err(bad(path, format!("the sample rate changes from {header_rate} Hz to {} Hz", spec.rate)));
        }
        if planes.is_empty() {
            planes = vec![Vec::new(); count];
        } else if planes.len() != count {
            return Err(bad(path, format!("the channel count changes from {} to {count}", planes.len())));
        }
        if decoded.frames() == 0 {
            continue;
        }
        let samples = match &mut buffer {
            Some(b) if b.capacity() >= decoded.capacity() * count => b,
            _ => buffer.insert(SampleBuffer::new(decoded.capacity() as u64, spec)),
        };
        samples.copy_interleaved_ref(decoded);
        for frame in samples.samples().chunks_exact(count) {
            for (plane, &s) in planes.iter_mut().zip(frame) {
                plane.push(s);
            }
        }
        let frames = planes[0].len() as u64;
        if frames > max_frames {
            return Err(bad(
                path,
                format!("it is longer than the limit of {max_seconds} s (its header gives no length); trim it first"),
            ));
        }
    }
    let frames = planes.first().map_or(0, Vec::len) as u64;
    // symphonia ends a FLAC stream quietly at a frame it cannot parse, so this is also where a
    // corrupt FLAC is caught.
    if let Some(declared) = params.n_frames.filter(|&n| frames < n) {
        return Err(bad(
            path,
            format!(
                "truncated or corrupt: the header declares {declared} frames ({:.3} s), the stream ends after {frames} ({:.3} s)",
                declared as f64 / header_rate as f64,
                frames as f64 / header_rate as f64
            ),
        ));
    }
    if frames == 0 {
        return Err(bad(path, "the file contains no audio samples"));
    }
    Ok((header_rate, planes))
}

fn corrupt(planes: &[Vec<f32>], rate: u32, e: DecodeError) -> String {
    let at = planes.first().map_or(0, Vec::len) as f64 / rate as f64;
    format!("corrupt audio stream after {at:.3} s: {e}; re-encode the file")
}

/// The file's channels brought to `channels` (the rule in the module doc).
fn mix(planes: Vec<Vec<f32>>, channels: usize) -> Vec<Vec<f32>> {
    if planes.len() == channels {
        return planes;
    }
    let n = planes.len() as f32;
    let mono: Vec<f32> = (0..planes[0].len()).map(|i| planes.iter().map(|p| p[i]).sum::<f32>() / n).collect();
    vec![mono; channels]
}

/// Resamples with rubato's `FftFixedIn`: a synchronous resampler for a fixed integer ratio
/// (exactly `to/from`, every rate pair we meet) whose anti-aliasing filter is a windowed sinc
/// applied by FFT, band-limited like the asynchronous sinc resampler but several times faster
/// and without its interpolation of the filter. The filter's delay is dropped and the tail
/// flushed, so sample `i` of the output is at time `i / to` as in the input.
fn resample(planes: &[Vec<f32>], from: u32, to: u32) -> std::result::Result<Vec<Vec<f32>>, String> {
    let n = planes[0].len();
    let expected = (n as u64 * to as u64).div_ceil(from as u64) as usize;
    let mut resampler = FftFixedIn::<f32>::new(from as usize, to as usize, RESAMPLE_CHUNK, 2, planes.len())
        .map_err(|e| format!("cannot resample {from} Hz to {to} Hz: {e}"))?;
    let delay = resampler.output_delay();
    let mut out = vec![Vec::with_capacity(expected + delay + resampler.output_frames_max()); planes.len()];
    let mut position = 0;
    while out[0].len() < expected + delay {
        let want = resampler.input_frames_next();
        let (start, end) = (position.min(n), (position + want).min(n));
        let chunk: Vec<&[f32]> = planes.iter().map(|p| &p[start..end]).collect();
        let produced = if end - start == want {
            resampler.process(&chunk, None)
        } else if end > start {
            resampler.process_partial(Some(&chunk), None)
        } else {
            // Past the input: zeros flush the filter's tail.
            resampler.process_partial(None::<&[&[f32]]>, None)
        }
        .map_err(|e| format!("resampling {from} Hz to {to} Hz failed: {e}"))?;
        position += want;
        for (plane, new) in out.iter_mut().zip(produced) {
            plane.extend_from_slice(&new);
        }
    }
    for plane in &mut out {
        plane.drain(..delay);
        plane.truncate(expected);
    }
    Ok(out)
}
