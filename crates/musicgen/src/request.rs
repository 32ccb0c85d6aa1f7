//! What a caller asks of the engine, and what it hears back while it works.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::audio::Audio;
use crate::error::{Error, Result};

/// Frames of EnCodec codes per second of audio at 32 kHz (hop length 640).
pub const FRAME_RATE: f64 = 50.0;

/// Longest prompt accepted, in characters; T5 would truncate far before this anyway.
pub const MAX_PROMPT_CHARS: usize = 2000;

/// The longest stretch MusicGen was trained on (audiocraft's `max_duration`): one decoder pass
/// never covers more. Longer tracks are generated in windows of at most this length.
pub const WINDOW_SECS: f64 = 30.0;

/// How far each window moves on from the last (audiocraft's `extend_stride`): every window after
/// the first starts from the last `WINDOW_SECS - stride` seconds of the one before.
pub const DEFAULT_EXTEND_STRIDE_SECS: f64 = 18.0;

/// The duration of an endless track: windows follow one another as long as it is streamed
/// ([`crate::Generation::stream`]), memory bounded by one window; only streaming can play it.
pub const ENDLESS: f64 = f64::INFINITY;

/// How tokens are drawn from the decoder's logits. Defaults follow audiocraft.
///
/// A missing field deserializes to its default, so stored requests stay readable when a
/// parameter is added.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Keep only the k most likely tokens; 1 means greedy decoding.
    pub top_k: usize,
    /// Nucleus sampling threshold; 0 turns it off. Applied after top-k when both are set.
    pub top_p: f64,
    /// Softmax temperature; must be > 0.
    pub temperature: f64,
    /// Classifier-free guidance coefficient: logits = u + s·(c − u). 1 disables guidance.
    pub cfg_coef: f64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { top_k: 250, top_p: 0.0, temperature: 1.0, cfg_coef: 3.0 }
    }
}

impl SamplingParams {
    /// Greedy decoding with guidance, as transformers' `do_sample=False`.
    pub fn greedy(cfg_coef: f64) -> Self {
        Self { top_k: 1, top_p: 0.0, temperature: 1.0, cfg_coef }
    }

    /// Checks every field against its accepted range; `vocab_size` bounds `top_k`.
    pub fn validate(&self, vocab_size: usize) -> Result<()> {
        if self.top_k == 0 || self.top_k > vocab_size {
            return Err(Error::invalid(
                "top_k",
                format!("{} is outside 1..={vocab_size} (1 is greedy decoding)", self.top_k),
            ));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(Error::invalid("top_p", format!("{} is outside [0, 1] (0 turns it off)", self.top_p)));
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Error::invalid("temperature", format!("{} must be a finite number > 0", self.temperature)));
        }
        if !(self.cfg_coef >= 0.0 && self.cfg_coef.is_finite()) {
            return Err(Error::invalid("cfg_coef", format!("{} must be a finite number >= 0", self.cfg_coef)));
        }
        Ok(())
    }
}

/// One prompt of a batch, with its own sampling parameters and seed, so that a batched
/// result equals the same item generated alone.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GenerationItem {
    pub prompt: String,
    pub sampling: SamplingParams,
    pub seed: u64,
}

impl GenerationItem {
    /// Checks the prompt and the sampling parameters; `vocab_size` bounds `top_k`.
    pub fn validate(&self, vocab_size: usize) -> Result<()> {
        validate_prompt(&self.prompt)?;
        self.sampling.validate(vocab_size)
    }
}

/// A batch of prompts that share one duration, and the audio they continue, if any.
///
/// A track longer than [`WINDOW_SECS`] is generated as audiocraft does it: windows of at most
/// 30 s, each after the first starting from the last `30 - extend_stride_secs` seconds of codes
/// of the one before, with the same text; all kept codes are decoded once.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    pub items: Vec<GenerationItem>,
    /// Seconds of audio per item, the continued audio included; [`ENDLESS`] for a track that
    /// goes on window after window until its caller stops streaming it.
    pub duration_secs: f64,
    /// Audio every item continues, at the model's sample rate and channel count (what
    /// [`crate::audio::read_audio`] returns for them): each track starts with it, re-synthesised
    /// through EnCodec, as audiocraft's `generate_continuation` and transformers'
    /// `generate(input_values=...)` return it. At most [`WINDOW_SECS`] and shorter than the track.
    pub continuation: Option<Audio>,
    /// The tune a musicgen-melody checkpoint follows, mono at the model's sample rate (what
    /// [`crate::audio::read_audio`] returns for 1 channel). Up to 30 s it conditions the whole
    /// track as transformers' `generate(input_features=...)` does (longer is cut); a longer track
    /// takes, in each window, the 30 s of melody from that window's start, looping a short
    /// melody, as audiocraft does. `None` on a melody checkpoint is transformers' null melody.
    pub melody: Option<Audio>,
    /// Seconds each window moves on from the last; in `(0, WINDOW_SECS)`. Only tracks longer
    /// than one window use it.
    pub extend_stride_secs: f64,
}

impl GenerationRequest {
    /// Generates `items`, `duration_secs` each, from nothing, with the default stride.
    pub fn new(items: Vec<GenerationItem>, duration_secs: f64) -> Self {
        Self { items, duration_secs, continuation: None, melody: None, extend_stride_secs: DEFAULT_EXTEND_STRIDE_SECS }
    }

    /// One prompt with audiocraft's default sampling and seed 0.
    pub fn single(prompt: impl Into<String>, duration_secs: f64) -> Self {
        Self::new(
            vec![GenerationItem { prompt: prompt.into(), sampling: SamplingParams::default(), seed: 0 }],
            duration_secs,
        )
    }

    /// Frames of codes to generate: round(D·50), or one more where that would not cover
    /// D·32000 samples (durations that are not a multiple of 20 ms).
    pub fn frames(&self) -> usize {
        frames_for(self.duration_secs, FRAME_RATE)
    }

    /// Samples per channel of each finished track at `sample_rate`: what `finish` returns and a
    /// stream's WAV header announces; `None` for an endless track.
    pub fn samples(&self, sample_rate: u32) -> Option<usize> {
        (!self.is_endless()).then(|| (self.duration_secs * f64::from(sample_rate)).round() as usize)
    }

    /// Whether the track has no end (see [`ENDLESS`]).
    pub fn is_endless(&self) -> bool {
        self.duration_secs == ENDLESS
    }

    /// Validates everything that does not need the model; the model adds vocabulary limits.
    pub fn validate(&self, vocab_size: usize) -> Result<()> {
        if self.items.is_empty() {
            return Err(Error::invalid("prompts", "the request has no prompt"));
        }
        if !self.is_endless() {
            validate_duration(self.duration_secs)?;
        }
        validate_extend_stride(self.extend_stride_secs)?;
        if let Some(audio) = &self.continuation {
            validate_continuation(audio.len(), audio.sample_rate, self.duration_secs)?;
        }
        if let Some(melody) = &self.melody {
            validate_melody(melody.len(), melody.sample_rate)?;
        }
        for item in &self.items {
            item.validate(vocab_size)?;
        }
        Ok(())
    }
}

/// The stride must leave each window a prompt from the one before and move it on.
pub fn validate_extend_stride(stride_secs: f64) -> Result<()> {
    if !(stride_secs > 0.0 && stride_secs < WINDOW_SECS) {
        return Err(Error::invalid(
            "extend_stride",
            format!(
                "{stride_secs} seconds must be above 0 and below the {WINDOW_SECS} s window \
                 (default {DEFAULT_EXTEND_STRIDE_SECS})"
            ),
        ));
    }
    Ok(())
}

/// Longest melody accepted: the server's longest track, with room to spare.
pub const MAX_MELODY_SECS: f64 = 600.0;

/// A melody must have samples, and no more than [`MAX_MELODY_SECS`] of them.
pub fn validate_melody(samples: usize, sample_rate: u32) -> Result<()> {
    if samples == 0 || sample_rate == 0 {
        return Err(Error::invalid("melody", "the melody has no samples"));
    }
    let secs = samples as f64 / sample_rate as f64;
    if secs > MAX_MELODY_SECS {
        return Err(Error::invalid("melody", format!("{secs:.1} s is longer than the limit of {MAX_MELODY_SECS} s")));
    }
    Ok(())
}

/// Audio of `samples` samples at `sample_rate` Hz can start a track of `duration_secs`: it fits
/// one window and leaves at least one frame to generate.
pub fn validate_continuation(samples: usize, sample_rate: u32, duration_secs: f64) -> Result<()> {
    if samples == 0 || sample_rate == 0 {
        return Err(Error::invalid("continue", "the audio to continue has no samples"));
    }
    let secs = samples as f64 / sample_rate as f64;
    if frames_for(secs, FRAME_RATE) > frames_for(WINDOW_SECS, FRAME_RATE) {
        return Err(Error::invalid(
            "continue",
            format!("the audio to continue is {secs:.2} s; at most {WINDOW_SECS} s fits the model's window: trim it"),
        ));
    }
    if frames_for(secs, FRAME_RATE) >= frames_for(duration_secs, FRAME_RATE) {
        return Err(Error::invalid(
            "duration",
            format!(
                "{duration_secs} s is the whole track, and the audio to continue is already {secs:.2} s: \
                 ask for more than {secs:.2} s"
            ),
        ));
    }
    Ok(())
}

/// Frames covering `duration_secs` at `frame_rate` frames per second: the rounded count, or one
/// more where that would fall short of the requested samples (see [`GenerationRequest::frames`]).
pub fn frames_for(duration_secs: f64, frame_rate: f64) -> usize {
    let exact = duration_secs * frame_rate;
    let rounded = exact.round() as usize;
    let covering = (exact - 1e-9).ceil() as usize;
    rounded.max(covering).max(1)
}

pub fn validate_prompt(prompt: &str) -> Result<()> {
    if prompt.trim().is_empty() {
        return Err(Error::invalid(
            "prompt",
            format!("{prompt:?} is empty; describe the music, e.g. \"ambient piano\""),
        ));
    }
    let chars = prompt.chars().count();
    if chars > MAX_PROMPT_CHARS {
        return Err(Error::invalid("prompt", format!("{chars} characters is over the limit of {MAX_PROMPT_CHARS}")));
    }
    Ok(())
}

pub fn validate_duration(duration_secs: f64) -> Result<()> {
    if !(duration_secs > 0.0 && duration_secs.is_finite()) {
        return Err(Error::invalid("duration", format!("{duration_secs} seconds must be a positive number")));
    }
    Ok(())
}

/// A front end's own duration limits (the server's 1..=300 s), on top of [`validate_duration`].
pub fn validate_duration_within(duration_secs: f64, limits: RangeInclusive<f64>) -> Result<()> {
    if !limits.contains(&duration_secs) {
        let (min, max) = limits.into_inner();
        return Err(Error::invalid("duration", format!("{duration_secs} is outside {min}..={max} seconds")));
    }
    validate_duration(duration_secs)
}

/// Reported once per decoder step (and once per phase change) while a request runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Decoder steps done so far.
    pub step: usize,
    /// Decoder steps in total: frames + codebooks − 1.
    pub total_steps: usize,
    /// Time since generation started.
    pub elapsed: Duration,
}

impl Progress {
    pub fn fraction(&self) -> f64 {
        if self.total_steps == 0 {
            1.0
        } else {
            self.step as f64 / self.total_steps as f64
        }
    }
}

/// Shared flag a caller sets to stop a running generation; checked before every decoder step.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_follow_audiocraft_for_whole_frames() {
        assert_eq!(frames_for(16.0, FRAME_RATE), 800);
        assert_eq!(frames_for(1.0, FRAME_RATE), 50);
        assert_eq!(frames_for(0.5, FRAME_RATE), 25);
        // 1.01 s needs 50.5 frames: one more frame covers the 32320 samples asked for.
        assert_eq!(frames_for(1.01, FRAME_RATE), 51);
        assert_eq!(frames_for(0.001, FRAME_RATE), 1, "never zero frames");
    }

    #[test]
    fn front_end_duration_limits_name_the_range() {
        assert!(validate_duration_within(1.0, 1.0..=300.0).is_ok());
        assert!(validate_duration_within(300.0, 1.0..=300.0).is_ok());
        for bad in [0.5, 301.0, -1.0, f64::NAN] {
            let err = validate_duration_within(bad, 1.0..=300.0).unwrap_err().to_string();
            assert!(err.contains("duration"), "{err}");
        }
        let err = validate_duration_within(301.0, 1.0..=300.0).unwrap_err().to_string();
        assert!(err.contains("301 is outside 1..=300 seconds"), "{err}");
    }

    #[test]
    fn extend_stride_must_fall_inside_the_window() {
        assert!(validate_extend_stride(DEFAULT_EXTEND_STRIDE_SECS).is_ok());
        assert!(validate_extend_stride(29.9).is_ok());
        for bad in [0.0, -1.0, 30.0, 45.0, f64::NAN, f64::INFINITY] {
            let err = validate_extend_stride(bad).unwrap_err().to_string();
            assert!(err.contains("extend_stride") && err.contains("30 s window"), "{err}");
        }
        let mut r = GenerationRequest::single("piano", 60.0);
        r.extend_stride_secs = 30.0;
        assert!(r.validate(2048).is_err());
    }

    #[test]
    fn continued_audio_must_fit_the_window_and_leave_music_to_make() {
        let rate = 32000;
        assert!(validate_continuation(12 * rate as usize, rate, 120.0).is_ok());
        assert!(validate_continuation(30 * rate as usize, rate, 31.0).is_ok());
        let err = validate_continuation(31 * rate as usize, rate, 60.0).unwrap_err().to_string();
        assert!(err.contains("31.00 s") && err.contains("at most 30 s"), "{err}");
        let err = validate_continuation(12 * rate as usize, rate, 10.0).unwrap_err().to_string();
        assert!(err.contains("10 s is the whole track") && err.contains("12.00 s"), "{err}");
        assert!(validate_continuation(10 * rate as usize, rate, 10.0).is_err(), "nothing left to generate");
        assert!(validate_continuation(0, rate, 10.0).is_err());
        let mut r = GenerationRequest::single("piano", 4.0);
        r.continuation = Some(Audio { sample_rate: rate, channels: vec![vec![0.0; 5 * rate as usize]] });
        let err = r.validate(2048).unwrap_err().to_string();
        assert!(err.contains("invalid duration"), "{err}");
    }

    #[test]
    fn missing_sampling_fields_take_their_defaults() {
        let item: GenerationItem =
            serde_json::from_str(r#"{"prompt": "piano", "sampling": {"top_k": 5}, "seed": 3}"#).unwrap();
        assert_eq!(item.sampling, SamplingParams { top_k: 5, ..SamplingParams::default() });
    }

    #[test]
    fn validation_names_the_field() {
        let mut r = GenerationRequest::single("piano", 4.0);
        r.items[0].sampling.top_p = 1.5;
        let err = r.validate(2048).unwrap_err().to_string();
        assert!(err.contains("top_p") && err.contains("1.5"), "{err}");
        assert!(GenerationRequest::single("  ", 4.0).validate(2048).is_err());
        assert!(GenerationRequest::single("piano", 0.0).validate(2048).is_err());
        assert!(GenerationRequest::single("piano", f64::NAN).validate(2048).is_err());
        let mut r = GenerationRequest::single("piano", 4.0);
        r.items[0].sampling.top_k = 2049;
        assert!(r.validate(2048).is_err());
        assert!(GenerationRequest::single("piano", 4.0).validate(2048).is_ok());
    }
}
