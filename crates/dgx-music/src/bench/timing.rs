//! One generation timed phase by phase through the engine's public step API.
//!
//! `MusicGen::start` encodes the prompts, each `Generation::step` runs one decoder step and
//! reads its logits back to the host (which waits for the GPU), and `Generation::finish` runs
//! EnCodec and copies the audio out. The device is synchronised after `start`, whose GPU work
//! would otherwise be charged to the first step. A streamed run (`bench --stream`) also times
//! each piece `Generation::take_audio` hands out: when the first arrives after the request, and
//! whether every later one arrives before a listener who started at the first has played all
//! the audio before it.

use std::time::{Duration, Instant};

use musicgen::{Audio, GenerationRequest, MusicGen, StreamOptions};
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
    /// Streamed runs: seconds from the request (before text encoding) to the first audio.
    pub first_audio_s: Option<f64>,
    /// Streamed runs: the least time by which a piece arrived before playback, started at the
    /// first piece, would have needed it; negative means a listener would hear a gap.
    pub stream_lead_s: Option<f64>,
    /// Kernels one replayed decoder step launches (its CUDA graph's); none on the CPU.
    pub graph_kernels: Option<usize>,
    /// Whether the tokens were picked on the GPU (the host copying back only them).
    pub picks_on_device: bool,
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

/// Generates `request` (streamed in `stream`'s pieces if given), calling `sync` to wait for the
/// device after the prompts are encoded.
pub fn timed_generation(
    model: &MusicGen,
    request: &GenerationRequest,
    stream: Option<StreamOptions>,
    sync: &dyn Fn() -> anyhow::Result<()>,
) -> anyhow::Result<(Phases, Vec<Audio>)> {
    let started = Instant::now();
    let mut generation = model.start(request)?;
    if let Some(options) = stream {
        generation.stream(options)?;
    }
    sync()?;
    let encoded = Instant::now();
    let mut steps: Vec<Duration> = Vec::with_capacity(generation.total_steps());
    let (mut streaming, mut pieces) = (Duration::ZERO, Pieces::default());
    let mut take = |generation: &mut musicgen::Generation<'_>| -> anyhow::Result<bool> {
        let t = Instant::now();
        let before = generation.seconds_streamed();
        let got = generation.take_audio()?.is_some();
        streaming += t.elapsed();
        if got {
            pieces.arrived(started.elapsed().as_secs_f64(), before);
        }
        Ok(got)
    };
    while !generation.is_finished() {
        let t = Instant::now();
        generation.step()?;
        steps.push(t.elapsed());
        take(&mut generation)?;
    }
    let decoded = Instant::now();
    let graph_kernels = generation.graph_kernels();
    let picks_on_device = generation.picks_on_device();
    while take(&mut generation)? {}
    let audio = generation.finish()?;
    let done = Instant::now();
    let phases = Phases {
        text_encoder_s: encoded.duration_since(started).as_secs_f64(),
        // Pieces decoded between steps are EnCodec's time, not the decoder's.
        decoder_s: (decoded.duration_since(encoded) - streaming.min(decoded.duration_since(encoded))).as_secs_f64(),
        steps: steps.len(),
        median_step_ms: median(&steps.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>()),
        encodec_s: (done.duration_since(decoded) + streaming).as_secs_f64(),
        total_s: done.duration_since(started).as_secs_f64(),
        first_audio_s: pieces.first,
        stream_lead_s: pieces.lead,
        graph_kernels,
        picks_on_device,
    };
    Ok((phases, audio))
}

/// When the pieces of a stream arrived.
#[derive(Default)]
struct Pieces {
    first: Option<f64>,
    lead: Option<f64>,
}

impl Pieces {
    /// A piece starting `audio_at` seconds into the track arrived `at` seconds after the request.
    /// The first piece starts playback, so only the later ones can be early or late.
    fn arrived(&mut self, at: f64, audio_at: f64) {
        let Some(first) = self.first else {
            self.first = Some(at);
            return;
        };
        let lead = first + audio_at - at;
        self.lead = Some(self.lead.map_or(lead, |l| l.min(lead)));
    }
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
    fn a_stream_s_lead_is_its_tightest_piece() {
        let mut pieces = Pieces::default();
        pieces.arrived(0.2, 0.0); // first audio at 0.2 s
        pieces.arrived(0.5, 0.5); // needed at 0.7 s: 0.2 s early
        pieces.arrived(1.25, 1.0); // needed at 1.2 s: 0.05 s late
        assert_eq!(pieces.first, Some(0.2));
        assert!((pieces.lead.unwrap() + 0.05).abs() < 1e-12);
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
            first_audio_s: None,
            stream_lead_s: None,
            graph_kernels: None,
            picks_on_device: false,
        };
        assert!((p.ms_per_step() - 2.0).abs() < 1e-12);
        assert_eq!(Phases { steps: 0, ..p }.ms_per_step(), 0.0);
    }
}
