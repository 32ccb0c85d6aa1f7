//! Ogg/Vorbis through libvorbis (vorbis_rs), with the tags as Vorbis comments. The stream serial
//! is fixed, so the same audio always gives the same bytes.

use std::num::{NonZeroU32, NonZeroU8};

use vorbis_rs::{VorbisBitrateManagementStrategy, VorbisEncoderBuilder};

use super::Tags;
use crate::audio::Audio;
use crate::error::{Error, Result};

/// libvorbis' quality scale (-0.2 to 1); 0.5 is its own default and vorbis_rs'.
const QUALITY: f32 = 0.5;
/// Samples per channel handed to the encoder at a time.
const BLOCK: usize = 4096;
/// "DGXM".
const SERIAL: i32 = 0x4447_584d;

pub(super) fn encode(audio: &Audio, tags: &Tags) -> Result<Vec<u8>> {
    let failed = |what: String| Error::Audio(format!("Vorbis encoding failed: {what}"));
    let rate = NonZeroU32::new(audio.sample_rate).ok_or_else(|| failed("the sample rate is 0".into()))?;
    let channels = u8::try_from(audio.channels.len())
        .ok()
        .and_then(NonZeroU8::new)
        .ok_or_else(|| failed(format!("{} channels", audio.channels.len())))?;
    let mut builder = VorbisEncoderBuilder::new_with_serial(rate, channels, Vec::new(), SERIAL);
    builder.bitrate_management_strategy(VorbisBitrateManagementStrategy::QualityVbr { target_quality: QUALITY });
    builder.comment_tags(tags.vorbis_comments()).map_err(|e| failed(e.to_string()))?;
    let mut encoder = builder.build().map_err(|e| failed(e.to_string()))?;
    for start in (0..audio.len()).step_by(BLOCK) {
        let end = (start + BLOCK).min(audio.len());
        let block: Vec<&[f32]> = audio.channels.iter().map(|c| &c[start..end]).collect();
        encoder.encode_audio_block(&block).map_err(|e| failed(e.to_string()))?;
    }
    encoder.finish().map_err(|e| failed(e.to_string()))
}
