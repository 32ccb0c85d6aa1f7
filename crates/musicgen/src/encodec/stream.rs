//! Decoding a track piece by piece while its codes are still being generated, so that every
//! sample streamed equals the sample the whole-track decode gives (to float rounding).
//!
//! EnCodec's decoder is not causal, but its reach is bounded everywhere except the LSTM, which
//! only looks back. So a piece is decoded in three parts:
//! 1. the first convolution over the new latent frames plus [`SeanetDecoder::latent_context`]
//!    frames of real signal on each side (padding only at the track's true start and end);
//! 2. the LSTM over its output, carrying its state from the piece before (exact: it never looks
//!    ahead);
//! 3. the upsampling stack over the LSTM frames plus [`SeanetDecoder::upsample_context`] frames
//!    on each side, keeping only the samples of the piece's own frames. Whatever the stack does
//!    at a piece's artificial edges stays within that context.
//!
//! A frame's samples are therefore final once `latent_context.1 + upsample_context.1` more frames
//! of codes exist (5 frames, 0.1 s, for the 32 kHz codec), and the state kept between pieces is
//! those few frames and the LSTM's state, whatever the track's length.

use candle_core::Tensor;

use super::lstm::LstmState;
use super::EncodecDecoder;
use crate::error::{Error, Result};

/// One track's (or one batch of tracks') decoding in progress; see the module doc.
#[derive(Debug)]
pub struct DecodeStream {
    rows: usize,
    /// Frames of codes pushed so far.
    frames_in: usize,
    /// Quantised latent `(rows, n, hidden)` of frames `latent_start..frames_in`: what the first
    /// convolution still reads.
    latent: Option<Tensor>,
    latent_start: usize,
    lstm: LstmState,
    /// LSTM output `(rows, n, channels)` of frames `hidden_start..hidden_end`.
    hidden: Option<Tensor>,
    hidden_start: usize,
    hidden_end: usize,
    /// Frames whose samples have been returned.
    emitted: usize,
    /// LSTM frames each side the upsampling stack is given, `(left, right)`.
    context: (usize, usize),
    finished: bool,
}

impl DecodeStream {
    /// Frames whose samples have been returned.
    pub fn frames_out(&self) -> usize {
        self.emitted
    }

    /// Frames of codes pushed so far.
    pub fn frames_in(&self) -> usize {
        self.frames_in
    }

    /// Whether the last pull has been made.
    pub fn is_finished(&self) -> bool {
        self.finished
    }
}

/// Appends frames along the time axis of a buffer that may be empty.
fn append(buffer: &mut Option<Tensor>, frames: Tensor) -> Result<()> {
    *buffer = Some(match buffer.take() {
        Some(old) => Tensor::cat(&[&old, &frames], 1)?,
        None => frames,
    });
    Ok(())
}

/// Drops the frames of `buffer` (starting at frame `*start`) before frame `keep_from`.
fn drop_before(buffer: &mut Option<Tensor>, start: &mut usize, keep_from: usize) -> Result<()> {
    if let Some(tensor) = buffer.as_mut() {
        let drop = keep_from.saturating_sub(*start).min(tensor.dim(1)?);
        if drop > 0 {
            *tensor = tensor.narrow(1, drop, tensor.dim(1)? - drop)?;
            *start += drop;
        }
    }
    Ok(())
}

impl EncodecDecoder {
    /// Frames of codes past a frame that must exist before its samples are final: the first
    /// convolution's and the upsampling stack's reach ahead.
    pub fn stream_lookahead(&self) -> usize {
        self.decoder.latent_context().1 + self.decoder.upsample_context().1
    }

    /// The exact upsampling context, `(left, right)` LSTM frames: what [`Self::start_stream`]
    /// uses by default.
    pub fn stream_context(&self) -> (usize, usize) {
        self.decoder.upsample_context()
    }

    /// A stream of `rows` independent tracks (the rows of every [`Self::stream_push`]).
    /// `context` overrides the upsampling context, to measure what less of it costs.
    pub fn start_stream(&self, rows: usize, context: Option<(usize, usize)>) -> DecodeStream {
        DecodeStream {
            rows,
            frames_in: 0,
            latent: None,
            latent_start: 0,
            lstm: LstmState::default(),
            hidden: None,
            hidden_start: 0,
            hidden_end: 0,
            emitted: 0,
            context: context.unwrap_or_else(|| self.stream_context()),
            finished: false,
        }
    }

    /// Adds the next frames of codes `(rows, K, n)`.
    pub fn stream_push(&self, stream: &mut DecodeStream, codes: &Tensor) -> Result<()> {
        let (rows, _, n) = codes.dims3()?;
        if rows != stream.rows || stream.finished {
            return Err(Error::Tensor(candle_core::Error::Msg(format!(
                "EnCodec stream of {} rows{}: cannot take codes of {rows} rows",
                stream.rows,
                if stream.finished { ", already finished" } else { "" }
            ))));
        }
        if n > 0 {
            append(&mut stream.latent, self.quantizer.decode(codes)?)?;
            stream.frames_in += n;
        }
        Ok(())
    }

    /// The samples `(rows, audio_channels, frames * hop_length)` of every frame that became final
    /// since the last call, `None` if none did. `last` says no codes follow: every frame left is
    /// then decoded, and the stream takes no more.
    pub fn stream_pull(&self, stream: &mut DecodeStream, last: bool) -> Result<Option<Tensor>> {
        if stream.finished {
            return Ok(None);
        }
        stream.finished = last;
        self.stream_latent(stream, last)?;
        let (left, right) = stream.context;
        let end = if last { stream.hidden_end } else { stream.hidden_end.saturating_sub(right) };
        if end <= stream.emitted {
            return Ok(None);
        }
        let Some(hidden) = &stream.hidden else { return Ok(None) };
        let from = stream.emitted.saturating_sub(left).max(stream.hidden_start);
        let to = if last { stream.hidden_end } else { end + right };
        let piece = hidden.narrow(1, from - stream.hidden_start, to - from)?;
        let hop = self.hop_length;
        let (skip, keep) = ((stream.emitted - from) * hop, (end - stream.emitted) * hop);
        // One row at a time through the upsampling stack, as the whole-track decode does, to
        // bound its memory.
        let rows = (0..stream.rows)
            .map(|r| {
                let samples = self.decoder.forward_upsample(&piece.narrow(0, r, 1)?)?;
                Ok(samples.narrow(1, skip, keep)?.transpose(1, 2)?.contiguous()?)
            })
            .collect::<Result<Vec<_>>>()?;
        stream.emitted = end;
        drop_before(&mut stream.hidden, &mut stream.hidden_start, end.saturating_sub(left))?;
        Ok(Some(Tensor::cat(&rows, 0)?))
    }

    /// Runs the first convolution and the LSTM over every latent frame whose right context
    /// exists (all of them when `last`).
    fn stream_latent(&self, stream: &mut DecodeStream, last: bool) -> Result<()> {
        let (left, right) = self.decoder.latent_context();
        let target = if last { stream.frames_in } else { stream.frames_in.saturating_sub(right) };
        let done = stream.hidden_end;
        let Some(latent) = &stream.latent else { return Ok(()) };
        if target <= done {
            return Ok(());
        }
        let from = done.saturating_sub(left);
        let to = if last { stream.frames_in } else { target + right };
        let piece = latent.narrow(1, from - stream.latent_start, to - from)?;
        // Padded where the piece starts at the track's start or ends at its end; the output then
        // begins at `from` rather than `from + left`, and frames already run are left out.
        let at_start = from == 0;
        let out = self.decoder.conv_in_piece(&piece, (at_start, last))?;
        let first = if at_start { 0 } else { from + left };
        let out = out.narrow(1, done - first, target - done)?;
        let out = self.decoder.lstm_carry(&out, &mut stream.lstm)?;
        append(&mut stream.hidden, out)?;
        stream.hidden_end = target;
        drop_before(&mut stream.latent, &mut stream.latent_start, target.saturating_sub(left))?;
        Ok(())
    }
}
