//! MP3 through LAME (mp3lame-encoder): constant bit rate, joint stereo for two channels, the
//! tags as ID3v2 (title; software, seed and model in the comment, ID3 having no encoder field
//! that LAME sets). No Xing/LAME header frame is written, so a decoder sees LAME's delay (576
//! samples plus the decoder's 529) and the last frame's padding as audio, as `read_audio` says.

use mp3lame_encoder::{Bitrate, Builder, DualPcm, FlushGap, Id3Tag, Mode, MonoPcm, Quality};

use super::Tags;
use crate::audio::Audio;
use crate::error::{Error, Result};

/// audiocraft's `mp3_rate`.
pub(super) const DEFAULT_KBPS: u16 = 320;

pub(super) fn encode(audio: &Audio, kbps: u16, tags: &Tags) -> Result<Vec<u8>> {
    let failed = |what: String| Error::Audio(format!("MP3 encoding failed: {what}"));
    let channels = audio.channels.len();
    if channels > 2 {
        return Err(Error::Audio(format!("MP3 holds one or two channels, not {channels}")));
    }
    let mut builder = Builder::new().ok_or_else(|| failed("LAME could not allocate an encoder".into()))?;
    builder.set_num_channels(channels as u8).map_err(|e| failed(e.to_string()))?;
    builder.set_sample_rate(audio.sample_rate).map_err(|e| failed(e.to_string()))?;
    builder.set_brate(bitrate(kbps)?).map_err(|e| failed(e.to_string()))?;
    builder.set_mode(if channels == 1 { Mode::Mono } else { Mode::JointStereo }).map_err(|e| failed(e.to_string()))?;
    builder.set_quality(Quality::NearBest).map_err(|e| failed(e.to_string()))?;
    builder.set_to_write_vbr_tag(false).map_err(|e| failed(e.to_string()))?;
    let comment = [tags.software.as_str(), tags.comment.as_str()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    builder
        .set_id3_tag(Id3Tag {
            title: tags.title.as_bytes(),
            artist: b"",
            album: b"",
            album_art: b"",
            year: b"",
            comment: comment.as_bytes(),
        })
        .map_err(|e| failed(format!("{e:?}")))?;
    let mut encoder = builder.build().map_err(|e| failed(e.to_string()))?;
    let mut out = Vec::with_capacity(mp3lame_encoder::max_required_buffer_size(audio.len()));
    let written = if channels == 1 {
        encoder.encode_to_vec(MonoPcm(&audio.channels[0]), &mut out)
    } else {
        encoder.encode_to_vec(DualPcm { left: &audio.channels[0], right: &audio.channels[1] }, &mut out)
    };
    written.map_err(|e| failed(e.to_string()))?;
    out.reserve(7200);
    encoder.flush_to_vec::<FlushGap>(&mut out).map_err(|e| failed(e.to_string()))?;
    Ok(out)
}

fn bitrate(kbps: u16) -> Result<Bitrate> {
    Ok(match kbps {
        128 => Bitrate::Kbps128,
        160 => Bitrate::Kbps160,
        192 => Bitrate::Kbps192,
        224 => Bitrate::Kbps224,
        256 => Bitrate::Kbps256,
        320 => Bitrate::Kbps320,
        _ => return Err(Error::invalid("bitrate", format!("{kbps} kbps; use 128, 160, 192, 224, 256 or 320"))),
    })
}
