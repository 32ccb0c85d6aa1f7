//! One request in flight: the decoder loop as transformers' `MusicgenForConditionalGeneration.generate`
//! runs it, one position per step.
//!
//! Decoder rows are the conditional row of every item, then an unconditional row (zeroed memory,
//! zero mask) for each item that uses guidance (cfg_coef != 1), in item order. When every item
//! has cfg_coef 3 this is transformers' `[cond; uncond]` batch exactly.

use candle_core::Tensor;
use rayon::prelude::*;

use super::MusicGen;
use crate::audio::Audio;
use crate::decoder::{Conditioning, DecoderState};
use crate::delay::DelayPattern;
use crate::error::Result;
use crate::request::GenerationRequest;
use crate::sampling::{guide, Sampler};

/// What one decoder step computed, for callers that check it against a reference.
#[derive(Debug, Clone)]
pub struct Step {
    /// Raw decoder logits `(rows, K, vocab)` row-major, rows ordered as the module doc says.
    pub logits: Vec<f32>,
    /// Guided scores `(items, K, vocab)`: what each item's tokens were picked from.
    pub scores: Vec<f32>,
}

/// A request being generated; made by [`MusicGen::start`].
pub struct Generation<'m> {
    model: &'m MusicGen,
    pattern: DelayPattern,
    samplers: Vec<Sampler>,
    /// Decoder row of each item's unconditional half, for the items that use guidance.
    uncond_rows: Vec<Option<usize>>,
    /// The item each decoder row belongs to.
    row_items: Vec<usize>,
    memory: Tensor,
    state: DecoderState,
    /// Token grid `(items, K, grid_len)`: BOS, then each step's tokens with the pattern's pads.
    grid: Vec<u32>,
    steps_done: usize,
    samples: usize,
}

impl<'m> Generation<'m> {
    pub(super) fn new(model: &'m MusicGen, request: &GenerationRequest, memory: Tensor, mask: Tensor) -> Result<Self> {
        let batch = request.items.len();
        let decoder = &model.decoder;
        let k = decoder.num_codebooks();
        let sample_rate = model.codec.sample_rate() as f64;
        let frame_rate = sample_rate / model.codec.hop_length() as f64;
        // transformers builds the pattern with the decoder start token as its pad
        // (`build_delay_pattern_mask(pad_token_id=decoder_start_token_id)`): that is what the decoder sees.
        let frames = crate::request::frames_for(request.duration_secs, frame_rate);
        let pattern = DelayPattern::new(k, model.config.decoder.audio_channels, frames, model.decoder_start_token);

        let mut uncond_rows = Vec::with_capacity(batch);
        let mut uncond_items = Vec::new();
        for (i, item) in request.items.iter().enumerate() {
            if item.sampling.cfg_coef != 1.0 {
                uncond_rows.push(Some(batch + uncond_items.len()));
                uncond_items.push(i);
            } else {
                uncond_rows.push(None);
            }
        }
        let (rows_memory, rows_mask) = if uncond_items.is_empty() {
            (memory.clone(), mask)
        } else {
            let (_, len, hidden) = memory.dims3()?;
            let n = uncond_items.len();
            let zeros = Tensor::zeros((n, len, hidden), memory.dtype(), memory.device())?;
            let no_text = Tensor::zeros((n, len), mask.dtype(), mask.device())?;
            (Tensor::cat(&[&memory, &zeros], 0)?, Tensor::cat(&[&mask, &no_text], 0)?)
        };
        let row_items = (0..batch).chain(uncond_items).collect();
        let conditioning = Conditioning::CrossAttention { memory: &rows_memory, mask: &rows_mask };
        let state = decoder.start(conditioning, pattern.steps())?;
        let grid = vec![model.decoder_start_token; batch * k * pattern.grid_len()];
        Ok(Self {
            model,
            pattern,
            samplers: request.items.iter().map(|item| Sampler::new(item.sampling, item.seed)).collect(),
            uncond_rows,
            row_items,
            memory,
            state,
            grid,
            steps_done: 0,
            samples: (request.duration_secs * sample_rate).round() as usize,
        })
    }

    /// Decoder steps in all: frames plus the longest codebook delay.
    pub fn total_steps(&self) -> usize {
        self.pattern.steps()
    }

    pub fn steps_done(&self) -> usize {
        self.steps_done
    }

    pub fn is_finished(&self) -> bool {
        self.steps_done >= self.total_steps()
    }

    /// The text memory of the conditional rows, `(items, L, hidden)` f32.
    pub fn memory(&self) -> &Tensor {
        &self.memory
    }

    /// The token grid `(items, K, total_steps + 1)` row-major, BOS and pattern pads included.
    pub fn sequences(&self) -> &[u32] {
        &self.grid
    }

    /// Each item's codes `(K, frames)` row-major, the delay undone (complete once finished).
    pub fn codes(&self) -> Vec<Vec<u32>> {
        self.grid.chunks(self.pattern.num_codebooks() * self.pattern.grid_len()).map(|g| self.pattern.undo(g)).collect()
    }

    /// Runs the next decoder step and picks every item's tokens; `None` once all steps ran.
    pub fn step(&mut self) -> Result<Option<Step>> {
        if self.is_finished() {
            return Ok(None);
        }
        let k = self.pattern.num_codebooks();
        let len = self.pattern.grid_len();
        let position = self.steps_done;
        let items = self.samplers.len();
        let rows = self.row_items.len();

        let mut tokens = Vec::with_capacity(rows * k);
        for &item in &self.row_items {
            tokens.extend((0..k).map(|c| self.grid[(item * k + c) * len + position]));
        }
        // On the host: the decoder uploads them where its step mode needs them (a GPU graph step
        // reads them from the host into its own input buffer, so a device copy would be wasted).
        let tokens = Tensor::from_vec(tokens, (rows, k), &candle_core::Device::Cpu)?;
        let logits = self.model.decoder.step(&tokens, &mut self.state)?.flatten_all()?.to_vec1::<f32>()?;

        let row_len = k * self.model.decoder.vocab_size();
        let vocab = self.model.decoder.vocab_size();
        let mut scores = vec![0f32; items * row_len];
        // Items draw from their own streams, so sampling them on several threads picks the
        // same tokens as one after the other; it is most of a step's host time in big batches.
        let uncond_rows = &self.uncond_rows;
        let picked: Vec<Vec<u32>> = scores
            .par_chunks_mut(row_len)
            .zip(self.samplers.par_iter_mut())
            .enumerate()
            .with_max_len(1)
            .map(|(item, (out, sampler))| {
                let cond = &logits[item * row_len..(item + 1) * row_len];
                match uncond_rows[item] {
                    Some(row) => {
                        let uncond = &logits[row * row_len..(row + 1) * row_len];
                        guide(cond, uncond, sampler.params().cfg_coef as f32, out);
                    }
                    None => out.copy_from_slice(cond),
                }
                (0..k).map(|c| sampler.pick(&out[c * vocab..(c + 1) * vocab])).collect()
            })
            .collect();
        for (item, tokens) in picked.into_iter().enumerate() {
            for (c, token) in tokens.into_iter().enumerate() {
                self.grid[(item * k + c) * len + position + 1] = self.pattern.apply(c, position + 1, token);
            }
        }
        self.steps_done += 1;
        Ok(Some(Step { logits, scores }))
    }

    /// Runs any steps left, undoes the delay and decodes the items with EnCodec (stereo: even
    /// codebooks left, odd right), trimmed to the requested duration. A GPU decodes the whole
    /// batch in one call (its cost is launches, not arithmetic); the CPU decodes item by item,
    /// which bounds the memory of long batches and costs nothing there.
    pub fn finish(mut self) -> Result<Vec<Audio>> {
        while self.step()?.is_some() {}
        let model = self.model;
        let k = self.pattern.num_codebooks();
        let channels = model.config.decoder.audio_channels;
        let device = model.decoder.device();
        let codes = self.codes();
        let frames = codes.first().map_or(0, |c| c.len() / k);
        let group = if device.is_cpu() { 1 } else { codes.len().max(1) };
        let mut tracks = Vec::with_capacity(codes.len());
        for items in codes.chunks(group) {
            let flat: Vec<u32> = items.concat();
            let codes = Tensor::from_vec(flat, (items.len(), k, frames), device)?;
            let wave = model.codec.decode_interleaved(&codes, channels)?;
            for item in 0..items.len() {
                let wave = wave.get(item)?;
                let channels = (0..wave.dim(0)?)
                    .map(|c| {
                        let mut samples = wave.get(c)?.to_vec1::<f32>()?;
                        samples.truncate(self.samples);
                        Ok(samples)
                    })
                    .collect::<Result<Vec<_>>>()?;
                tracks.push(Audio { sample_rate: model.codec.sample_rate(), channels });
            }
        }
        Ok(tracks)
    }
}
