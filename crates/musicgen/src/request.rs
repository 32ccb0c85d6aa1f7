//! What a caller asks of the engine, and what it hears back while it works.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};

/// Frames of EnCodec codes per second of audio at 32 kHz (hop length 640).
pub const FRAME_RATE: f64 = 50.0;

/// Longest prompt accepted, in characters; T5 would truncate far before this anyway.
pub const MAX_PROMPT_CHARS: usize = 2000;

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

/// A batch of prompts that share one duration.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GenerationRequest {
    pub items: Vec<GenerationItem>,
    /// Seconds of audio per item.
    pub duration_secs: f64,
}

impl GenerationRequest {
    /// One prompt with audiocraft's default sampling and seed 0.
    pub fn single(prompt: impl Into<String>, duration_secs: f64) -> Self {
        Self {
            items: vec![GenerationItem { prompt: prompt.into(), sampling: SamplingParams::default(), seed: 0 }],
            duration_secs,
        }
    }

    /// Frames of codes to generate: round(D·50), or one more where that would not cover
    /// D·32000 samples (durations that are not a multiple of 20 ms).
    pub fn frames(&self) -> usize {
        frames_for(self.duration_secs, FRAME_RATE)
    }

    /// Validates everything that does not need the model; the model adds vocabulary limits.
    pub fn validate(&self, vocab_size: usize) -> Result<()> {
        if self.items.is_empty() {
            return Err(Error::invalid("prompts", "the request has no prompt"));
        }
        validate_duration(self.duration_secs)?;
        for item in &self.items {
            item.validate(vocab_size)?;
        }
        Ok(())
    }
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
