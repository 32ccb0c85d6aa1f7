//! FLAC through flacenc (pure Rust), with the tags as a Vorbis comment block.

use flacenc::bitsink::ByteSink;
use flacenc::component::{BitRepr, MetadataBlockData};
use flacenc::error::Verify;
use flacenc::source::MemSource;

use super::{interleaved_pcm, Tags};
use crate::audio::Audio;
use crate::error::{Error, Result};

/// FLAC's metadata block type of a Vorbis comment.
const VORBIS_COMMENT: u8 = 4;

pub(super) fn encode(audio: &Audio, bits: u32, tags: &Tags) -> Result<Vec<u8>> {
    let failed = |what: String| Error::Audio(format!("FLAC encoding failed: {what}"));
    let config = flacenc::config::Encoder::default().into_verified().map_err(|(_, e)| failed(format!("{e:?}")))?;
    let samples = interleaved_pcm(audio, bits);
    let source = MemSource::from_samples(&samples, audio.channels.len(), bits as usize, audio.sample_rate as usize);
    let mut stream = flacenc::encode_with_fixed_block_size(&config, source, config.block_size)
        .map_err(|e| failed(format!("{e:?}")))?;
    // Fixed-size blocks: the FLAC format's minimum block size leaves out the last, shorter block,
    // and flacenc counts it, which makes symphonia (rightly) read the stream as variable-size and
    // refuse its frame numbers.
    stream
        .stream_info_mut()
        .set_block_sizes(config.block_size, config.block_size)
        .map_err(|e| failed(format!("{e:?}")))?;
    let comments = tags.vorbis_comments();
    if !comments.is_empty() {
        let block = MetadataBlockData::new_unknown(VORBIS_COMMENT, &vorbis_comment_block(&comments))
            .map_err(|e| failed(format!("{e:?}")))?;
        stream.add_metadata_block(block);
    }
    let mut sink = ByteSink::new();
    stream.write(&mut sink).map_err(|e| failed(format!("{e:?}")))?;
    Ok(sink.into_inner())
}

/// A Vorbis comment header without framing bit, as FLAC stores it: little-endian lengths,
/// the vendor string, then `KEY=value` fields.
fn vorbis_comment_block(comments: &[(&str, &str)]) -> Vec<u8> {
    let vendor = super::SOFTWARE;
    let mut block = Vec::new();
    let put = |text: &[u8], block: &mut Vec<u8>| {
        block.extend_from_slice(&(text.len() as u32).to_le_bytes());
        block.extend_from_slice(text);
    };
    put(vendor.as_bytes(), &mut block);
    block.extend_from_slice(&(comments.len() as u32).to_le_bytes());
    for (key, value) in comments {
        put(format!("{key}={value}").as_bytes(), &mut block);
    }
    block
}
