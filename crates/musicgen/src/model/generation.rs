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
use crate::encodec::DecodeStream;
use crate::error::{Error, Result};
use crate::request::{frames_for, GenerationRequest, WINDOW_SECS};
use crate::sampling::{guide, DeviceSampler, Sampler};

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
/// previous window's frames from there on, until the timeline reaches `total` frames (never,
/// for an endless track).
#[derive(Debug, Clone, Copy)]
struct WindowPlanner {
    total: Option<usize>,
    window: usize,
    stride: usize,
}

impl WindowPlanner {
    fn first(&self, prompt: usize) -> WindowPlan {
        WindowPlan { offset: 0, prompt, frames: self.total.map_or(self.window, |t| t.min(self.window)) }
    }

    fn next(&self, last: &WindowPlan) -> Option<WindowPlan> {
        let end = last.offset + last.frames;
        if self.total.is_some_and(|total| end >= total) {
            return None;
        }
        let offset = last.offset + self.stride;
        let prompt = end.saturating_sub(offset);
        let frames = self.total.map_or(self.window, |total| (total - offset).min(self.window));
        Some(WindowPlan { offset, prompt, frames })
    }
}

#[cfg(test)]
fn plan_windows(total: usize, window: usize, stride: usize, prompt: usize) -> Vec<WindowPlan> {
    let planner = WindowPlanner { total: Some(total), window, stride };
    std::iter::successors(Some(planner.first(prompt)), |last| planner.next(last)).collect()
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

/// How a streamed generation hands out its audio (see [`Generation::stream`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamOptions {
    /// Seconds of audio per piece handed out; the first piece comes once this much of music
    /// and EnCodec's few frames of look-ahead are generated.
    pub chunk_secs: f64,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self { chunk_secs: DEFAULT_CHUNK_SECS }
    }
}

/// The default piece: first audio after half a second of music.
pub const DEFAULT_CHUNK_SECS: f64 = 0.5;

/// A streamed generation's decoding: codes go to EnCodec as their frames complete.
struct Streamer {
    decode: DecodeStream,
    chunk_frames: usize,
    /// Samples handed out per item so far.
    samples_out: usize,
    /// Everything handed out, per item, which `finish` returns (not kept for an endless track).
    kept: Option<Vec<Audio>>,
}

/// A request being generated; made by [`MusicGen::start`].
pub struct Generation<'m> {
    model: &'m MusicGen,
    samplers: Vec<Sampler>,
    /// Where the GPU picks the tokens (`None`: the host does).
    device_sampler: Option<DeviceSampler>,
    /// Decoder row of each item's unconditional half, for the items that use guidance.
    uncond_rows: Vec<Option<usize>>,
    /// The item each decoder row belongs to.
    row_items: Vec<usize>,
    memory: Tensor,
    conditions: Conditions,
    planner: WindowPlanner,
    /// Windows in all (a finite track), or opened so far (an endless one).
    windows: usize,
    window: Window,
    /// Each item's codes `(K, frames)` per codebook on the timeline from frame `kept_from`, up
    /// to the current window's predicted frames (which join it when the window ends). Only an
    /// endless track drops frames, once they are streamed and no window prompt needs them.
    kept: Vec<Vec<Vec<u32>>>,
    kept_from: usize,
    steps_done: usize,
    /// `usize::MAX` for an endless track.
    total_steps: usize,
    /// Samples per item of the finished track; `None` for an endless one.
    samples: Option<usize>,
    stream: Option<Streamer>,
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
        let endless = request.is_endless();
        let total = (!endless).then(|| frames_for(request.duration_secs, frame_rate));
        let window = frames_for(WINDOW_SECS, frame_rate);
        // audiocraft: `int(frame_rate * extend_stride)`.
        let stride = ((request.extend_stride_secs * frame_rate + 1e-9).floor() as usize).clamp(1, window - 1);
        let (prompt, prompt_frames) = prompt_codes.unwrap_or_default();
        if total.is_some_and(|total| prompt_frames >= total) || prompt_frames > window {
            return Err(Error::invalid(
                "continue",
                format!(
                    "{prompt_frames} frames of audio to continue do not fit a track of {} frames",
                    total.unwrap_or(window)
                ),
            ));
        }
        let planner = WindowPlanner { total, window, stride };
        let first = planner.first(prompt_frames);

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
        let (rows_memory, rows_mask) = with_unconditional_rows(&memory, &mask, uncond_items.len())?;
        let kept: Vec<Vec<Vec<u32>>> =
            vec![(0..k).map(|c| prompt[c * prompt_frames..(c + 1) * prompt_frames].to_vec()).collect(); batch];
        let (mut windows, mut total_steps) = (0, 0);
        if total.is_some() {
            for plan in std::iter::successors(Some(first), |last| planner.next(last)) {
                let pattern = model.pattern(&plan)?;
                total_steps += pattern.steps() + 1 - pattern.first_free_position();
                windows += 1;
            }
        } else {
            (windows, total_steps) = (1, usize::MAX);
        }
        let conditions = Conditions {
            memory: rows_memory,
            mask: rows_mask,
            follows: (0..batch).map(|_| true).chain(uncond_items.iter().map(|_| false)).collect(),
            melody: request.melody.as_ref().map(|m| m.channels.concat()),
            windowed: windows > 1 || endless,
        };
        let window = open_window(model, first, &kept, 0, &conditions)?;
        let samplers: Vec<Sampler> = request.items.iter().map(|item| Sampler::new(item.sampling, item.seed)).collect();
        let device_sampler =
            DeviceSampler::new(model.decoder.device(), &samplers, &uncond_rows, k, model.decoder.vocab_size())?;
        Ok(Self {
            model,
            samplers,
            device_sampler,
            uncond_rows,
            row_items: (0..batch).chain(uncond_items).collect(),
            memory,
            conditions,
            planner,
            windows,
            window,
            kept,
            kept_from: 0,
            steps_done: 0,
            total_steps,
            samples: request.samples(model.codec.sample_rate()),
            stream: None,
        })
    }

    /// Decoder steps in all, over every window: in each, one per predicted position (a prompt's
    /// prefill counts as the step its last position is). `usize::MAX` for an endless track.
    pub fn total_steps(&self) -> usize {
        self.total_steps
    }

    /// Kernels one replayed decoder step launches (its CUDA graph's), once a window has
    /// recorded it; `None` on the CPU or before.
    pub fn graph_kernels(&self) -> Option<usize> {
        self.window.state.graph_kernels()
    }

    /// Whether the current window replays a CUDA graph an earlier request (or window) of the
    /// same shape recorded, rather than recording its own.
    pub fn reuses_graph(&self) -> bool {
        self.window.state.reuses_graph()
    }

    /// Whether [`Self::step`] picks the tokens on the GPU (a CUDA device, unless
    /// `DGX_DEVICE_SAMPLING=0`) rather than on the host.
    pub fn picks_on_device(&self) -> bool {
        self.device_sampler.is_some()
    }

    pub fn steps_done(&self) -> usize {
        self.steps_done
    }

    pub fn is_finished(&self) -> bool {
        self.steps_done >= self.total_steps
    }

    /// Windows this request runs in (1 up to 30 s); for an endless track, those opened so far.
    pub fn windows(&self) -> usize {
        self.windows
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
        self.codes_between(self.kept_from, self.frames_ready())
    }

    /// Frames of the timeline whose codes are all known: a frame's last codebook comes the
    /// pattern's longest delay after its first.
    pub fn frames_ready(&self) -> usize {
        let window = &self.window;
        if window.merged {
            return window.plan.offset + window.pattern.frames();
        }
        let known = window.pattern.frames_known(window.position).max(window.plan.prompt);
        window.plan.offset + known
    }

    /// Each item's codes `(K, to - from)` row-major for timeline frames `from..to`, which must be
    /// ready and kept.
    fn codes_between(&self, from: usize, to: usize) -> Vec<Vec<u32>> {
        let window = &self.window;
        let pattern = &window.pattern;
        let (k, len) = (pattern.num_codebooks(), pattern.grid_len());
        // Frames past the timeline kept so far are in the window's grid, undelayed here.
        let in_grid = window.plan.offset + window.plan.prompt;
        let kept_end = if window.merged { window.plan.offset + pattern.frames() } else { in_grid };
        (0..self.kept.len())
            .map(|item| {
                let mut codes = Vec::with_capacity(k * (to - from));
                for c in 0..k {
                    let row = &self.kept[item][c];
                    let kept_to = to.min(kept_end);
                    if from < kept_to {
                        codes.extend_from_slice(&row[from - self.kept_from..kept_to - self.kept_from]);
                    }
                    let grid = &window.grid[(item * k + c) * len..(item * k + c + 1) * len];
                    let first = from.max(kept_end);
                    codes.extend((first..to.max(first)).map(|f| grid[pattern.position_of(c, f - window.plan.offset)]));
                }
                codes
            })
            .collect()
    }

    /// Replaces every item's prompt (one per item, in order) from the next window on: an endless
    /// track's way of changing what it plays. The current window keeps the text it started with.
    pub fn set_prompts(&mut self, prompts: &[&str]) -> Result<()> {
        if prompts.len() != self.samplers.len() {
            return Err(Error::invalid(
                "prompt",
                format!("{} prompt(s) for a request of {} item(s)", prompts.len(), self.samplers.len()),
            ));
        }
        for prompt in prompts {
            crate::request::validate_prompt(prompt)?;
        }
        let (memory, mask) = self.model.encode_texts(prompts)?;
        let unconditional = self.uncond_rows.iter().flatten().count();
        (self.conditions.memory, self.conditions.mask) = with_unconditional_rows(&memory, &mask, unconditional)?;
        self.memory = memory;
        Ok(())
    }

    /// Turns on streaming: from now on [`Self::take_audio`] hands out each item's audio as its
    /// frames complete, and [`Self::finish`] returns what was handed out rather than decoding
    /// the track again. Must come before the first step.
    pub fn stream(&mut self, options: StreamOptions) -> Result<()> {
        if self.steps_done > 0 {
            return Err(Error::invalid("stream", "streaming must start before the first step"));
        }
        if !(options.chunk_secs > 0.0 && options.chunk_secs <= WINDOW_SECS) {
            return Err(Error::invalid(
                "chunk",
                format!("{} seconds per piece must be above 0 and at most {WINDOW_SECS}", options.chunk_secs),
            ));
        }
        let codec = &self.model.codec;
        let frame_rate = codec.sample_rate() as f64 / codec.hop_length() as f64;
        let rows = self.samplers.len() * self.model.config.decoder.audio_channels;
        let channels = self.model.config.decoder.audio_channels;
        let empty = Audio { sample_rate: codec.sample_rate(), channels: vec![Vec::new(); channels] };
        self.stream = Some(Streamer {
            decode: codec.start_stream(rows, None),
            chunk_frames: ((options.chunk_secs * frame_rate).round() as usize).max(1),
            samples_out: 0,
            kept: self.samples.map(|_| vec![empty; self.samplers.len()]),
        });
        Ok(())
    }

    /// Seconds of each item's audio handed out so far by [`Self::take_audio`].
    pub fn seconds_streamed(&self) -> f64 {
        self.stream.as_ref().map_or(0.0, |s| s.samples_out as f64 / self.model.codec.sample_rate() as f64)
    }

    /// Each item's audio that became final since the last call, once at least a piece of it
    /// (all that is left, when the track is finished); `None` until then, or when streaming is
    /// off. The pieces of a track, put end to end, are the track: the samples the whole-track
    /// decode gives (to float rounding), trimmed to its duration.
    pub fn take_audio(&mut self) -> Result<Option<Vec<Audio>>> {
        let finished = self.is_finished();
        let ready = self.frames_ready();
        let model = self.model;
        let Some(stream) = &self.stream else { return Ok(None) };
        let pushed = stream.decode.frames_in();
        let wanted = stream.decode.frames_out() + stream.chunk_frames + model.codec.stream_lookahead();
        if stream.decode.is_finished() || !(finished || ready >= wanted) {
            return Ok(None);
        }
        let codes = self.codes_between(pushed, ready);
        let channels = model.config.decoder.audio_channels;
        let k = self.window.pattern.num_codebooks();
        let rows = split_channels(&codes, k, channels, ready - pushed, model.decoder.device())?;
        let Some(stream) = &mut self.stream else { return Ok(None) };
        model.codec.stream_push(&mut stream.decode, &rows)?;
        let Some(wave) = model.codec.stream_pull(&mut stream.decode, finished)? else { return Ok(None) };
        let mut pieces = Vec::with_capacity(self.samplers.len());
        let limit = self.samples.map_or(usize::MAX, |total| total - stream.samples_out);
        for item in 0..self.samplers.len() {
            let channels = (0..channels)
                .map(|c| {
                    let mut samples = wave.get(item * channels + c)?.flatten_all()?.to_vec1::<f32>()?;
                    samples.truncate(limit);
                    Ok(samples)
                })
                .collect::<Result<Vec<_>>>()?;
            pieces.push(Audio { sample_rate: model.codec.sample_rate(), channels });
        }
        stream.samples_out += pieces.first().map_or(0, Audio::len);
        if let Some(kept) = &mut stream.kept {
            for (track, piece) in kept.iter_mut().zip(&pieces) {
                for (all, new) in track.channels.iter_mut().zip(&piece.channels) {
                    all.extend_from_slice(new);
                }
            }
        }
        Ok(Some(pieces))
    }

    /// Runs the next decoder step and picks every item's tokens; false once all steps ran. On a
    /// GPU the tokens are picked there (`kernels/sampling.cu`) and only they come back to the host.
    pub fn step(&mut self) -> Result<bool> {
        if self.is_finished() {
            return Ok(false);
        }
        self.run_step(false)?;
        Ok(true)
    }

    /// [`Self::step`], returning what it computed: its logits come to the host, and the tokens
    /// are picked there, from the same streams (the same tokens, up to float ties). `None`
    /// once all steps ran.
    pub fn step_logits(&mut self) -> Result<Option<Step>> {
        if self.is_finished() {
            return Ok(None);
        }
        self.run_step(true)
    }

    /// One step; its [`Step`] when `report`.
    fn run_step(&mut self, report: bool) -> Result<Option<Step>> {
        let k = self.window.pattern.num_codebooks();
        let len = self.window.pattern.grid_len();
        let rows = self.row_items.len();
        let decoder = &self.model.decoder;

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
        let vocab = decoder.vocab_size();
        let device_sampler = if report { None } else { self.device_sampler.as_mut() };
        let (samplers, uncond_rows) = (&mut self.samplers, &self.uncond_rows);
        let pick = |logits: &Tensor| -> Result<(Vec<u32>, Option<Step>)> {
            if let Some(sampler) = device_sampler {
                return Ok((sampler.pick(logits, samplers)?, None));
            }
            let logits = logits.flatten_all()?.to_vec1::<f32>()?;
            let (picked, scores) = pick_on_host(&logits, samplers, uncond_rows, k, vocab);
            Ok((picked, report.then_some(Step { logits, scores })))
        };
        // On the host: the decoder uploads them where its step mode needs them (a GPU graph step
        // reads them from the host into its own input buffer, so a device copy would be wasted).
        let (picked, step) = if fed.len() == 1 {
            let tokens = Tensor::from_vec(tokens, (rows, k), &candle_core::Device::Cpu)?;
            decoder.step_then(&tokens, &mut self.window.state, pick)?
        } else {
            let tokens = Tensor::from_vec(tokens, (rows, fed.len(), k), &candle_core::Device::Cpu)?;
            pick(&decoder.prefill(&tokens, &mut self.window.state)?)?
        };
        let position = fed.end - 1;

        let window = &mut self.window;
        for (item, tokens) in picked.chunks_exact(k).enumerate() {
            for (c, &token) in tokens.iter().enumerate() {
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
        Ok(step)
    }

    /// Puts the finished window's predictions on the timeline and opens the next window.
    fn end_window(&mut self) -> Result<()> {
        let plan = self.window.plan;
        let predicted = self.codes_between(plan.offset + plan.prompt, plan.offset + self.window.pattern.frames());
        for (rows, codes) in self.kept.iter_mut().zip(predicted) {
            let n = codes.len() / rows.len();
            for (c, row) in rows.iter_mut().enumerate() {
                row.extend_from_slice(&codes[c * n..(c + 1) * n]);
            }
        }
        self.window.merged = true;
        let Some(next) = self.planner.next(&plan) else { return Ok(()) };
        if self.samples.is_none() {
            // An endless track keeps only what the next window's prompt and the stream still need.
            let streamed = self.stream.as_ref().map_or(usize::MAX, |s| s.decode.frames_in());
            let keep_from = next.offset.min(streamed);
            let drop = keep_from.saturating_sub(self.kept_from);
            for rows in &mut self.kept {
                rows.iter_mut().for_each(|row| drop_front(row, drop));
            }
            self.kept_from += drop;
            self.windows += 1;
        }
        // Its recorded step can serve the next window, which has the same shape.
        self.window.state.release();
        self.window = open_window(self.model, next, &self.kept, self.kept_from, &self.conditions)?;
        Ok(())
    }

    /// Runs any steps left, undoes the delay and decodes the items with EnCodec (stereo: even
    /// codebooks left, odd right), trimmed to the requested duration. A streamed generation
    /// returns the pieces it handed out instead, put end to end. A GPU decodes the whole batch
    /// in one call (its cost is launches, not arithmetic); the CPU decodes item by item, which
    /// bounds the memory of long batches and costs nothing there.
    pub fn finish(mut self) -> Result<Vec<Audio>> {
        let Some(track_len) = self.samples else {
            return Err(Error::invalid("duration", "an endless track has no end to finish at; stream it"));
        };
        while self.step()? {}
        if self.stream.is_some() {
            while self.take_audio()?.is_some() {}
            return Ok(self.stream.and_then(|s| s.kept).unwrap_or_default());
        }
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
                        samples.truncate(track_len);
                        Ok(samples)
                    })
                    .collect::<Result<Vec<_>>>()?;
                tracks.push(Audio { sample_rate: model.codec.sample_rate(), channels });
            }
        }
        Ok(tracks)
    }
}

/// Every item's tokens `(items, K)` picked on the host from a step's `logits` `(rows, K, vocab)`,
/// with the guided scores they were picked from `(items, K, vocab)`.
fn pick_on_host(
    logits: &[f32],
    samplers: &mut [Sampler],
    uncond_rows: &[Option<usize>],
    k: usize,
    vocab: usize,
) -> (Vec<u32>, Vec<f32>) {
    let row_len = k * vocab;
    let mut scores = vec![0f32; samplers.len() * row_len];
    // Items draw from their own streams, so sampling them on several threads picks the
    // same tokens as one after the other; it is most of a step's host time in big batches.
    let picked: Vec<Vec<u32>> = scores
        .par_chunks_mut(row_len)
        .zip(samplers.par_iter_mut())
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
    (picked.concat(), scores)
}

/// Drops the first `n` elements of `row` (all of them if it is shorter).
fn drop_front(row: &mut Vec<u32>, n: usize) {
    row.drain(..n.min(row.len()));
}

/// The memory and mask of every decoder row: the conditional rows', then `unconditional` rows
/// of zeroed memory and zero mask (guidance's "no text").
fn with_unconditional_rows(memory: &Tensor, mask: &Tensor, unconditional: usize) -> Result<(Tensor, Tensor)> {
    if unconditional == 0 {
        return Ok((memory.clone(), mask.clone()));
    }
    let (_, len, hidden) = memory.dims3()?;
    let zeros = Tensor::zeros((unconditional, len, hidden), memory.dtype(), memory.device())?;
    let no_text = Tensor::zeros((unconditional, len), mask.dtype(), mask.device())?;
    Ok((Tensor::cat(&[memory, &zeros], 0)?, Tensor::cat(&[mask, &no_text], 0)?))
}

/// Per item `(K, n)` codes to EnCodec's stream rows `(items * channels, K / channels, n)`:
/// codebook `k` belongs to channel `k % channels`, each channel decoded alone, as
/// [`crate::encodec::EncodecDecoder::decode_interleaved`] does.
fn split_channels(
    codes: &[Vec<u32>],
    k: usize,
    channels: usize,
    n: usize,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let mut rows = Vec::with_capacity(codes.len() * k * n);
    for item in codes {
        for c in 0..channels {
            for codebook in (c..k).step_by(channels) {
                rows.extend_from_slice(&item[codebook * n..(codebook + 1) * n]);
            }
        }
    }
    Ok(Tensor::from_vec(rows, (codes.len() * channels, k / channels, n), device)?)
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
/// `kept` starts at timeline frame `kept_from`.
fn open_window(
    model: &MusicGen,
    plan: WindowPlan,
    kept: &[Vec<Vec<u32>>],
    kept_from: usize,
    conditions: &Conditions,
) -> Result<Window> {
    let pattern = model.pattern(&plan)?;
    let k = pattern.num_codebooks();
    let mut grid = vec![model.decoder_start_token; kept.len() * k * pattern.grid_len()];
    for (item, rows) in kept.iter().enumerate() {
        let prompt: Vec<u32> =
            rows.iter().flat_map(|row| row[plan.offset - kept_from..][..plan.prompt].iter().copied()).collect();
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
