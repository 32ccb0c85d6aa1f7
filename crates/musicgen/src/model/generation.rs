//! One request in flight: the decoder loop as transformers' `MusicgenForConditionalGeneration.generate`
//! runs it, one position per step, in windows as audiocraft's `BaseGenModel._generate_tokens`
//! runs tracks longer than the model's 30 s.
//!
//! Decoder rows are the conditional row of every item, then an unconditional row (zeroed memory,
//! zero mask) for each item that uses guidance (cfg_coef != 1), in item order. When every item
//! has cfg_coef 3 this is transformers' `[cond; uncond]` batch exactly.
//!
//! Codes are kept on one timeline per item. A window covers frames `offset..offset + frames` of
//! it; its first `prompt` frames are given (the continued audio's codes, or the end of the
//! window before) and fed in one prefill from position 0, as transformers feeds
//! `decoder_input_ids`; the rest are predicted and appended. Each window has its own decoder
//! state, so memory is bounded by one window whatever the duration.

use candle_core::Tensor;
use rayon::prelude::*;

use super::MusicGen;
use crate::audio::Audio;
use crate::decoder::{Conditioning, DecoderState};
use crate::delay::DelayPattern;
use crate::error::{Error, Result};
use crate::request::{frames_for, GenerationRequest, WINDOW_SECS};
use crate::sampling::{guide, Sampler};

/// What one decoder step computed, for callers that check it against a reference.
#[derive(Debug, Clone)]
pub struct Step {
    /// Raw decoder logits `(rows, K, vocab)` row-major, rows ordered as the module doc says.
    pub logits: Vec<f32>,
    /// Guided scores `(items, K, vocab)`: what each item's tokens were picked from.
    pub scores: Vec<f32>,
}

/// Where one window sits on the timeline, in frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WindowPlan {
    offset: usize,
    /// Leading frames given rather than predicted.
    prompt: usize,
    frames: usize,
}

/// audiocraft's window loop over frame counts: the first window starts at 0 with the continued
/// audio (if any) as its prompt; each next one starts `stride` frames later, its prompt the
/// previous window's frames from there on, until the timeline reaches `total` frames.
fn plan_windows(total: usize, window: usize, stride: usize, prompt: usize) -> Vec<WindowPlan> {
    let mut plans = vec![WindowPlan { offset: 0, prompt, frames: total.min(window) }];
    loop {
        let last = plans[plans.len() - 1];
        if last.offset + last.frames >= total {
            return plans;
        }
        let offset = last.offset + stride;
        let prompt = (last.offset + last.frames).saturating_sub(offset);
        plans.push(WindowPlan { offset, prompt, frames: (total - offset).min(window) });
    }
}

/// The window being decoded.
struct Window {
    plan: WindowPlan,
    pattern: DelayPattern,
    /// Token grid `(items, K, grid_len)`: BOS, the prompt, then each step's tokens with the
    /// pattern's pads.
    grid: Vec<u32>,
    state: DecoderState,
    /// The next position fed to the decoder (its output predicts the one after).
    position: usize,
    /// Whether its predictions are on the timeline (the last window, once finished).
    merged: bool,
    /// musicgen-melody: the hidden states before the tokens (melody chroma, then text).
    prefix: Option<Tensor>,
}

/// A request being generated; made by [`MusicGen::start`].
pub struct Generation<'m> {
    model: &'m MusicGen,
    samplers: Vec<Sampler>,
    /// Decoder row of each item's unconditional half, for the items that use guidance.
    uncond_rows: Vec<Option<usize>>,
    /// The item each decoder row belongs to.
    row_items: Vec<usize>,
    memory: Tensor,
    conditions: Conditions,
    plans: Vec<WindowPlan>,
    window_index: usize,
    window: Window,
    /// Each item's codes `(K, frames)` per codebook on the timeline, up to the current window's
    /// predicted frames (which join it when the window ends).
    kept: Vec<Vec<Vec<u32>>>,
    steps_done: usize,
    total_steps: usize,
    samples: usize,
}

impl<'m> Generation<'m> {
    /// `prompt_codes` are the continued audio's codes `(K, P)` row-major, the same for every item.
    pub(super) fn new(
        model: &'m MusicGen,
        request: &GenerationRequest,
        memory: Tensor,
        mask: Tensor,
        prompt_codes: Option<(Vec<u32>, usize)>,
    ) -> Result<Self> {
        let batch = request.items.len();
        let k = model.decoder.num_codebooks();
        let sample_rate = model.codec.sample_rate() as f64;
        let frame_rate = sample_rate / model.codec.hop_length() as f64;
        let total = frames_for(request.duration_secs, frame_rate);
        let window = frames_for(WINDOW_SECS, frame_rate);
        // audiocraft: `int(frame_rate * extend_stride)`.
        let stride = ((request.extend_stride_secs * frame_rate + 1e-9).floor() as usize).clamp(1, window - 1);
        let (prompt, prompt_frames) = prompt_codes.unwrap_or_default();
        if prompt_frames >= total || prompt_frames > window {
            return Err(Error::invalid(
                "continue",
                format!("{prompt_frames} frames of audio to continue do not fit a track of {total} frames"),
            ));
        }
        let plans = plan_windows(total, window, stride, prompt_frames);

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
        let kept: Vec<Vec<Vec<u32>>> =
            vec![(0..k).map(|c| prompt[c * prompt_frames..(c + 1) * prompt_frames].to_vec()).collect(); batch];
        let mut total_steps = 0;
        for plan in &plans {
            let pattern = model.pattern(plan)?;
            total_steps += pattern.steps() + 1 - pattern.first_free_position();
        }
        let conditions = Conditions {
            memory: rows_memory,
            mask: rows_mask,
            follows: (0..batch).map(|_| true).chain(uncond_items.iter().map(|_| false)).collect(),
            melody: request.melody.as_ref().map(|m| m.channels.concat()),
            windowed: plans.len() > 1,
        };
        let window = open_window(model, plans[0], &kept, &conditions)?;
        Ok(Self {
            model,
            samplers: request.items.iter().map(|item| Sampler::new(item.sampling, item.seed)).collect(),
            uncond_rows,
            row_items: (0..batch).chain(uncond_items).collect(),
            memory,
            conditions,
            plans,
            window_index: 0,
            window,
            kept,
            steps_done: 0,
            total_steps,
            samples: (request.duration_secs * sample_rate).round() as usize,
        })
    }

    /// Decoder steps in all, over every window: in each, one per predicted position (a prompt's
    /// prefill counts as the step its last position is).
    pub fn total_steps(&self) -> usize {
        self.total_steps
    }

    pub fn steps_done(&self) -> usize {
        self.steps_done
    }

    pub fn is_finished(&self) -> bool {
        self.steps_done >= self.total_steps
    }

    /// Windows this request runs in (1 up to 30 s).
    pub fn windows(&self) -> usize {
        self.plans.len()
    }

    /// musicgen-melody: the current window's prefix `(rows, chroma_length + L, hidden)` f32, rows as
    /// the module doc says (transformers' `encoder_hidden_states` of the decoder); `None` for
    /// text-to-music checkpoints.
    pub fn prefix(&self) -> Option<&Tensor> {
        self.window.prefix.as_ref()
    }

    /// The text memory of the conditional rows, `(items, L, hidden)` f32.
    pub fn memory(&self) -> &Tensor {
        &self.memory
    }

    /// The current window's token grid `(items, K, grid_len)` row-major, BOS, prompt and
    /// pattern pads included (for a one-window request: transformers' `sequences`).
    pub fn sequences(&self) -> &[u32] {
        &self.window.grid
    }

    /// Each item's codes `(K, frames)` row-major, the delay undone, from the start of the track
    /// (the continued audio's codes first); complete once finished.
    pub fn codes(&self) -> Vec<Vec<u32>> {
        let current = if self.window.merged { vec![Vec::new(); self.kept.len()] } else { self.window_codes() };
        self.kept
            .iter()
            .zip(current)
            .map(|(rows, extra)| {
                let n = extra.len() / rows.len().max(1);
                rows.iter()
                    .enumerate()
                    .flat_map(|(c, row)| row.iter().chain(&extra[c * n..(c + 1) * n]))
                    .copied()
                    .collect()
            })
            .collect()
    }

    /// The current window's predicted frames so far, per item `(K, n)` row-major.
    fn window_codes(&self) -> Vec<Vec<u32>> {
        let window = &self.window;
        let pattern = &window.pattern;
        let per_item = pattern.num_codebooks() * pattern.grid_len();
        window
            .grid
            .chunks(per_item)
            .map(|grid| {
                let codes = pattern.undo(grid);
                let frames = pattern.frames();
                let k = pattern.num_codebooks();
                (0..k).flat_map(|c| codes[c * frames + window.plan.prompt..(c + 1) * frames].to_vec()).collect()
            })
            .collect()
    }

    /// Runs the next decoder step and picks every item's tokens; `None` once all steps ran.
    pub fn step(&mut self) -> Result<Option<Step>> {
        if self.is_finished() {
            return Ok(None);
        }
        let k = self.window.pattern.num_codebooks();
        let len = self.window.pattern.grid_len();
        let items = self.samplers.len();
        let rows = self.row_items.len();

        let first = self.window.pattern.first_free_position() - 1;
        let position = self.window.position;
        // The window's given positions go in one prefill; then one position per step.
        let fed = if position == 0 { 0..first + 1 } else { position..position + 1 };
        let mut tokens = Vec::with_capacity(rows * fed.len() * k);
        for &item in &self.row_items {
            for t in fed.clone() {
                tokens.extend((0..k).map(|c| self.window.grid[(item * k + c) * len + t]));
            }
        }
        // On the host: the decoder uploads them where its step mode needs them (a GPU graph step
        // reads them from the host into its own input buffer, so a device copy would be wasted).
        let logits = if fed.len() == 1 {
            let tokens = Tensor::from_vec(tokens, (rows, k), &candle_core::Device::Cpu)?;
            self.model.decoder.step(&tokens, &mut self.window.state)?
        } else {
            let tokens = Tensor::from_vec(tokens, (rows, fed.len(), k), &candle_core::Device::Cpu)?;
            self.model.decoder.prefill(&tokens, &mut self.window.state)?
        };
        let logits = logits.flatten_all()?.to_vec1::<f32>()?;
        let position = fed.end - 1;

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
        let window = &mut self.window;
        for (item, tokens) in picked.into_iter().enumerate() {
            for (c, token) in tokens.into_iter().enumerate() {
                if window.pattern.predicts(c, position + 1) {
                    window.grid[(item * k + c) * len + position + 1] = token;
                }
            }
        }
        window.position = position + 1;
        self.steps_done += 1;
        if window.position == window.pattern.steps() {
            self.end_window()?;
        }
        Ok(Some(Step { logits, scores }))
    }

    /// Puts the finished window's predictions on the timeline and opens the next window.
    fn end_window(&mut self) -> Result<()> {
        let predicted = self.window_codes();
        for (rows, codes) in self.kept.iter_mut().zip(predicted) {
            let n = codes.len() / rows.len();
            for (c, row) in rows.iter_mut().enumerate() {
                row.extend_from_slice(&codes[c * n..(c + 1) * n]);
            }
        }
        self.window.merged = true;
        if self.window_index + 1 < self.plans.len() {
            self.window_index += 1;
            let plan = self.plans[self.window_index];
            self.window = open_window(self.model, plan, &self.kept, &self.conditions)?;
        }
        Ok(())
    }

    /// Runs any steps left, undoes the delay and decodes the items with EnCodec (stereo: even
    /// codebooks left, odd right), trimmed to the requested duration. A GPU decodes the whole
    /// batch in one call (its cost is launches, not arithmetic); the CPU decodes item by item,
    /// which bounds the memory of long batches and costs nothing there.
    pub fn finish(mut self) -> Result<Vec<Audio>> {
        while self.step()?.is_some() {}
        let model = self.model;
        let k = self.window.pattern.num_codebooks();
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

/// What every window's decoder rows are conditioned on.
struct Conditions {
    /// The text memory of every row `(rows, L, hidden)` (zeros for unconditional rows) and its
    /// mask: cross-attended by MusicGen, the prefix's text part for musicgen-melody.
    memory: Tensor,
    mask: Tensor,
    /// musicgen-melody: which rows follow the melody (the conditional ones; the others get the
    /// null melody, as transformers' guidance does).
    follows: Vec<bool>,
    /// The melody, mono at the codec's rate.
    melody: Option<Vec<f32>>,
    /// Whether the track runs in several windows, each then taking its own 30 s of melody.
    windowed: bool,
}

/// A fresh decoder state and grid for `plan`, its prompt taken from the timeline.
fn open_window(model: &MusicGen, plan: WindowPlan, kept: &[Vec<Vec<u32>>], conditions: &Conditions) -> Result<Window> {
    let pattern = model.pattern(&plan)?;
    let k = pattern.num_codebooks();
    let mut grid = vec![model.decoder_start_token; kept.len() * k * pattern.grid_len()];
    for (item, rows) in kept.iter().enumerate() {
        let prompt: Vec<u32> =
            rows.iter().flat_map(|row| row[plan.offset..plan.offset + plan.prompt].iter().copied()).collect();
        let per_item = k * pattern.grid_len();
        pattern.write_prompt(&mut grid[item * per_item..(item + 1) * per_item], &prompt);
    }
    let chroma = match &conditions.melody {
        Some(melody) => {
            let start = plan.offset * model.codec.hop_length();
            Some(model.melody_chroma(melody, conditions.windowed.then_some(start))?)
        }
        None => None,
    };
    let (memory, mask) = (&conditions.memory, &conditions.mask);
    let prefix = match model.melody_prefix(chroma.as_ref(), &conditions.follows)? {
        Some(melody) => Some(Tensor::cat(&[&melody, &memory.to_dtype(melody.dtype())?], 1)?),
        None => None,
    };
    let conditioning = match &prefix {
        Some(prefix) => Conditioning::Prefix(prefix),
        None => Conditioning::CrossAttention { memory, mask },
    };
    let state = model.decoder.start(conditioning, pattern.steps())?;
    Ok(Window { plan, pattern, grid, state, position: 0, merged: false, prefix })
}

impl MusicGen {
    /// The delay pattern of a window. transformers builds it with the decoder start token as its
    /// pad (`build_delay_pattern_mask(pad_token_id=decoder_start_token_id)`): that is what the
    /// decoder sees.
    fn pattern(&self, plan: &WindowPlan) -> Result<DelayPattern> {
        DelayPattern::new(
            self.decoder.num_codebooks(),
            self.config.decoder.audio_channels,
            plan.frames,
            self.decoder_start_token,
        )
        .with_prompt(plan.prompt)
        .ok_or_else(|| {
            Error::invalid(
                "duration",
                format!(
                    "a window of {} frames is too short to continue {} frames of audio; ask for a longer track",
                    plan.frames, plan.prompt
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(offset: usize, prompt: usize, frames: usize) -> WindowPlan {
        WindowPlan { offset, prompt, frames }
    }

    #[test]
    fn up_to_one_window_is_one_pass() {
        assert_eq!(plan_windows(800, 1500, 900, 0), vec![plan(0, 0, 800)]);
        assert_eq!(plan_windows(1500, 1500, 900, 0), vec![plan(0, 0, 1500)]);
        assert_eq!(plan_windows(1000, 1500, 900, 600), vec![plan(0, 600, 1000)]);
    }

    #[test]
    fn windows_follow_audiocraft_s_loop() {
        // 40 s at stride 18: [0, 30 s), then from 18 s with the last 12 s as prompt to 40 s.
        assert_eq!(plan_windows(2000, 1500, 900, 0), vec![plan(0, 0, 1500), plan(900, 600, 1100)]);
        // 31 s: the second window ends the track, 50 new frames after its 600-frame prompt.
        assert_eq!(plan_windows(1550, 1500, 900, 0), vec![plan(0, 0, 1500), plan(900, 600, 650)]);
        // 120 s from a 12 s file: 30 s windows moving 18 s, the last one shorter.
        let plans = plan_windows(6000, 1500, 900, 600);
        assert_eq!(plans[0], plan(0, 600, 1500));
        assert!(plans[1..plans.len() - 1].iter().all(|p| p.prompt == 600 && p.frames == 1500));
        let last = plans[plans.len() - 1];
        assert_eq!(last.offset + last.frames, 6000);
        assert_eq!(plans.len(), 6);
        // Every window predicts the frames right after the ones before it: no gap, no overlap.
        let mut end = 0;
        for p in &plans {
            assert_eq!(p.offset + p.prompt, end.max(600), "{p:?}");
            end = p.offset + p.frames;
        }
    }
}
