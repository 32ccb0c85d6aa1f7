//! One generation timed phase by phase through the engine's public step API.
//!
//! `MusicGen::start` encodes the prompts, each `Generation::step` runs one decoder step and
//! reads its logits back to the host (which waits for the GPU), and `Generation::finish` runs
//! EnCodec and copies the audio out. The device is synchronised after `start`, whose GPU work
//! would otherwise be charged to the first step.

use std::time::{Duration, Instant};

use musicgen::{Audio, GenerationRequest, MusicGen};
use serde::Serialize;

/// Phases of one generation, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Phases {
    /// Prompt validation, tokenising and the T5 encoder (plus decoder setup).
    pub text_encoder_s: f64,
    /// All decoder steps, sampling included.
    pub decoder_s: f64,
    pub steps: usize,
    /// Median single step: the steady-state cost without the first step's cross-attention setup.
    pub median_step_ms: f64,
    /// Undoing the delay pattern, EnCodec, and copying the audio to the host.
    pub encodec_s: f64,
    pub total_s: f64,
}

impl Phases {
    /// Mean time per decoder step.
    pub fn ms_per_step(&self) -> f64 {
        if self.steps == 0 {
            0.0
        } else {
            self.decoder_s * 1e3 / self.steps as f64
        }
    }
}

/// Generates `request`, calling `sync` to wait for the device after the prompts are encoded.
pub fn timed_generation(
    model: &MusicGen,
    request: &GenerationRequest,
    sync: &dyn Fn() -> anyhow::Result<()>,
) -> anyhow::Result<(Phases, Vec<Audio>)> {
    let started = Instant::now();
    let mut generation = model.start(request)?;
    sync()?;
    let encoded = Instant::now();
    let mut steps: Vec<Duration> = Vec::with_capacity(generation.total_steps());
    while !generation.is_finished() {
        let t = Instant::now();
        generation.step()?;
        steps.push(t.elapsed());
    }
    let decoded = Instant::now();
    let audio = generation.finish()?;
    let done = Instant::now();
    let phases = Phases {
        text_encoder_s: encoded.duration_since(started).as_secs_f64(),
        decoder_s: decoded.duration_since(encoded).as_secs_f64(),
        steps: steps.len(),
        median_step_ms: median(&steps.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>()),
        encodec_s: done.duration_since(decoded).as_secs_f64(),
        total_s: done.duration_since(started).as_secs_f64(),
    };
    Ok((phases, audio))
}

/// Median of a list; NaN for an empty one.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn ms_per_step_is_the_mean() {
        let p = Phases {
            text_encoder_s: 0.1,
            decoder_s: 0.8,
            steps: 400,
            median_step_ms: 1.9,
            encodec_s: 0.1,
            total_s: 1.0,
        };
        assert!((p.ms_per_step() - 2.0).abs() < 1e-12);
        assert_eq!(Phases { steps: 0, ..p }.ms_per_step(), 0.0);
    }
}
