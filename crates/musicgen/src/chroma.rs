//! musicgen-melody's melody input: the chroma of a mono signal, one-hot per frame. A port of
//! transformers 4.48.3's `MusicgenMelodyFeatureExtractor` (itself audiocraft's `ChromaExtractor`):
//! librosa's chroma filter bank over torchaudio's power spectrogram, each frame divided by its
//! largest value, then one-hot at the argmax.
//!
//! The signal must already be mono at the config's sampling rate (`audio::read_audio` does both);
//! as transformers does for one signal, it is truncated to `chunk_length` seconds but not padded
//! to them, so a 10 s melody gives the frames of 10 s.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use realfft::RealToComplex;

use crate::cpu::gemv::dot;
use crate::error::{Error, Result};
use crate::sampling::argmax;

/// Named in the errors of [`ChromaConfig::from_preprocessor_config`].
const PREPROCESSOR_FILE_NAME: &str = "preprocessor_config.json";

/// The largest FFT accepted: 2^20 points is 33 s at 32 kHz, far past any chroma extractor's
/// window; larger values are typos that would allocate gigabytes.
const MAX_N_FFT: usize = 1 << 20;

/// torch.nn.functional.normalize's default `eps`, the floor of each frame's divisor.
const NORMALIZE_EPS: f32 = 1e-6;

/// The extractor's settings: `preprocessor_config.json` of a musicgen-melody checkpoint, with
/// transformers' defaults (those of facebook/musicgen-melody).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChromaConfig {
    /// Hz; the signal must already be at this rate.
    pub sampling_rate: u32,
    /// FFT and window length, in samples.
    pub n_fft: usize,
    /// Samples between frames.
    pub hop_length: usize,
    /// Chroma bins per octave (12: one per semitone, bin 0 is C).
    pub num_chroma: usize,
    /// Seconds kept of a longer signal.
    pub chunk_length: u32,
}

impl Default for ChromaConfig {
    fn default() -> Self {
        Self { sampling_rate: 32000, n_fft: 16384, hop_length: 4096, num_chroma: 12, chunk_length: 30 }
    }
}

impl ChromaConfig {
    /// Reads the keys of a parsed `preprocessor_config.json` that the chroma depends on; a missing
    /// key takes transformers' default, as `MusicgenMelodyFeatureExtractor(**json)` would. The bin
    /// count is `num_chroma`, else `feature_size` (save_pretrained writes only the latter).
    pub fn from_preprocessor_config(json: &serde_json::Value) -> Result<Self> {
        if let Some(kind) = json.get("feature_extractor_type") {
            if kind.as_str() != Some("MusicgenMelodyFeatureExtractor") {
                return Err(Error::Unsupported(format!(
                    "{PREPROCESSOR_FILE_NAME}: feature_extractor_type {kind} is not \
                     \"MusicgenMelodyFeatureExtractor\"; only musicgen-melody's chroma is implemented"
                )));
            }
        }
        let defaults = Self::default();
        let num_chroma = positive(json, "num_chroma")?;
        let feature_size = positive(json, "feature_size")?;
        if let (Some(chroma), Some(features)) = (num_chroma, feature_size) {
            if chroma != features {
                return Err(Error::Unsupported(format!(
                    "{PREPROCESSOR_FILE_NAME}: num_chroma {chroma} and feature_size {features} differ; \
                     the melody features are the chroma bins, so they must be equal"
                )));
            }
        }
        let config = Self {
            sampling_rate: narrow(positive(json, "sampling_rate")?, "sampling_rate")?.unwrap_or(defaults.sampling_rate),
            n_fft: size(positive(json, "n_fft")?, "n_fft")?.unwrap_or(defaults.n_fft),
            hop_length: size(positive(json, "hop_length")?, "hop_length")?.unwrap_or(defaults.hop_length),
            num_chroma: size(num_chroma.or(feature_size), "num_chroma")?.unwrap_or(defaults.num_chroma),
            chunk_length: narrow(positive(json, "chunk_length")?, "chunk_length")?.unwrap_or(defaults.chunk_length),
        };
        config.check()?;
        Ok(config)
    }

    /// The relations between the values; each error names the key at fault.
    fn check(&self) -> Result<()> {
        let bad =
            |key: &str, message: String| Err(Error::Unsupported(format!("{PREPROCESSOR_FILE_NAME}: {key} {message}")));
        if self.sampling_rate == 0 {
            return bad("sampling_rate", "0: must be a positive number of Hz".into());
        }
        if !(2..=MAX_N_FFT).contains(&self.n_fft) {
            return bad("n_fft", format!("{}: must be from 2 to {MAX_N_FFT} samples", self.n_fft));
        }
        if self.hop_length == 0 || self.hop_length > self.n_fft {
            return bad(
                "hop_length",
                format!(
                    "{}: must be from 1 to n_fft ({}) samples, or frames skip samples",
                    self.hop_length, self.n_fft
                ),
            );
        }
        if self.num_chroma == 0 || self.num_chroma > self.n_fft / 2 + 1 {
            return bad(
                "num_chroma",
                format!("{}: must be from 1 to the {} frequency bins of n_fft", self.num_chroma, self.n_fft / 2 + 1),
            );
        }
        if self.chunk_length == 0 {
            return bad("chunk_length", "0: must be a positive number of seconds".into());
        }
        if usize::try_from(self.chunk_length as u64 * self.sampling_rate as u64).is_err() {
            return bad(
                "chunk_length",
                format!("{} s at {} Hz is more samples than memory holds", self.chunk_length, self.sampling_rate),
            );
        }
        Ok(())
    }

    /// Samples kept of a longer signal: `chunk_length * sampling_rate` (transformers' `n_samples`).
    pub fn max_samples(&self) -> usize {
        self.chunk_length as usize * self.sampling_rate as usize
    }

    /// Frames of a signal of `samples` samples: truncated to [`Self::max_samples`], zero-padded to
    /// `n_fft` when shorter, then centred (`n_fft / 2` reflected samples each side) and framed
    /// every `hop_length`; `1 + len / hop` for an even `n_fft`.
    pub fn frames(&self, samples: usize) -> usize {
        let len = samples.min(self.max_samples()).max(self.n_fft);
        1 + (len + 2 * (self.n_fft / 2) - self.n_fft) / self.hop_length
    }

    /// One-sided spectrum bins, `n_fft / 2 + 1`.
    fn frequency_bins(&self) -> usize {
        self.n_fft / 2 + 1
    }
}

/// A key's value if present: a positive integer, else an error naming the key.
fn positive(json: &serde_json::Value, key: &str) -> Result<Option<u64>> {
    match json.get(key) {
        None => Ok(None),
        Some(value) => match value.as_u64() {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => {
                Err(Error::Unsupported(format!("{PREPROCESSOR_FILE_NAME}: {key} {value}: must be a positive integer")))
            }
        },
    }
}

fn narrow(value: Option<u64>, key: &str) -> Result<Option<u32>> {
    value
        .map(|v| {
            u32::try_from(v)
                .map_err(|_| Error::Unsupported(format!("{PREPROCESSOR_FILE_NAME}: {key} {v} is too large")))
        })
        .transpose()
}

fn size(value: Option<u64>, key: &str) -> Result<Option<usize>> {
    value
        .map(|v| {
            usize::try_from(v)
                .map_err(|_| Error::Unsupported(format!("{PREPROCESSOR_FILE_NAME}: {key} {v} is too large")))
        })
        .transpose()
}

/// The chroma of mono signals, built once per config and shared: the filter bank, the window
/// and the FFT plan. `Send + Sync`; each call allocates its own buffers.
pub struct ChromaExtractor {
    config: ChromaConfig,
    /// `(num_chroma, n_fft / 2 + 1)`, row-major.
    filters: Vec<f32>,
    window: Vec<f32>,
    /// torchaudio's `normalized=True`: the spectrum divided by the window's L2 norm, so the power
    /// by its square.
    power_scale: f32,
    fft: Arc<dyn RealToComplex<f32>>,
}

impl std::fmt::Debug for ChromaExtractor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChromaExtractor").field("config", &self.config).finish_non_exhaustive()
    }
}

impl ChromaExtractor {
    /// Checks `config` and precomputes what every signal shares.
    pub fn new(config: ChromaConfig) -> Result<Self> {
        config.check()?;
        // transformers computes the bank in float64 with numpy, then `.float()`.
        let filters = chroma_filter_bank(config.sampling_rate, config.n_fft, config.num_chroma)
            .into_iter()
            .map(|v| v as f32)
            .collect();
        let window = hann_window(config.n_fft);
        // torch sums the squares in f32 with a cascade; f64 then rounding gives the same float.
        let energy = window.iter().map(|&w| w as f64 * w as f64).sum::<f64>();
        let norm = energy.sqrt() as f32;
        let power_scale = 1.0 / (norm * norm);
        let fft = realfft::RealFftPlanner::<f32>::new().plan_fft_forward(config.n_fft);
        Ok(Self { config, filters, window, power_scale, fft })
    }

    pub fn config(&self) -> &ChromaConfig {
        &self.config
    }

    /// The chroma filter bank, `(num_chroma, n_fft / 2 + 1)` row-major: transformers'
    /// `chroma_filters`.
    pub fn filter_bank(&self) -> &[f32] {
        &self.filters
    }

    /// Each frame's chroma divided by its largest value (transformers' `norm_chroma`, before the
    /// one-hot): `(frames, num_chroma)` row-major, values in `[0, 1]`. A frame of digital
    /// silence is all zeros.
    pub fn chroma(&self, samples: &[f32]) -> Result<Vec<f32>> {
        check_samples(samples)?;
        let cfg = &self.config;
        let padded = centred(&samples[..samples.len().min(cfg.max_samples())], cfg.n_fft);
        let frames = cfg.frames(samples.len());
        let (bins, chroma) = (cfg.frequency_bins(), cfg.num_chroma);
        let mut out = vec![0f32; frames * chroma];
        // Each rayon task reuses one set of buffers over its frames.
        let buffers =
            || (self.fft.make_input_vec(), self.fft.make_output_vec(), self.fft.make_scratch_vec(), vec![0f32; bins]);
        out.par_chunks_mut(chroma).enumerate().try_for_each_init(
            buffers,
            |(input, spectrum, scratch, power), (t, row)| {
                let frame = &padded[t * cfg.hop_length..t * cfg.hop_length + cfg.n_fft];
                for ((x, &s), &w) in input.iter_mut().zip(frame).zip(&self.window) {
                    *x = s * w;
                }
                self.fft.process_with_scratch(input, spectrum, scratch).expect("the buffers are the plan's own");
                for (p, c) in power.iter_mut().zip(spectrum.iter()) {
                    *p = (c.re * c.re + c.im * c.im) * self.power_scale;
                }
                for (value, filter) in row.iter_mut().zip(self.filters.chunks_exact(bins)) {
                    *value = dot(filter, power);
                }
                if row.iter().any(|v| !v.is_finite()) {
                    return Err(Error::invalid(
                        "melody",
                        format!("the power of frame {t} overflows f32: the samples must be audio, about -1 to 1"),
                    ));
                }
                // normalize(p=inf, eps): the values are sums of non-negative powers, so the norm is the max.
                let max = row.iter().fold(0f32, |m, &v| m.max(v));
                let divisor = max.max(NORMALIZE_EPS);
                row.iter_mut().for_each(|v| *v /= divisor);
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// The chroma bin of each frame: the argmax of [`Self::chroma`], the first on ties as
    /// `torch.argmax` (so a silent frame gives bin 0).
    pub fn extract(&self, samples: &[f32]) -> Result<Vec<usize>> {
        let chroma = self.chroma(samples)?;
        Ok(chroma.chunks_exact(self.config.num_chroma).map(|row| argmax(row) as usize).collect())
    }

    /// transformers' `input_features` for one signal: `(frames, num_chroma)` f32 on the CPU, one
    /// at each frame's [`Self::extract`] bin and zero elsewhere.
    pub fn one_hot(&self, samples: &[f32]) -> Result<Tensor> {
        let bins = self.extract(samples)?;
        let chroma = self.config.num_chroma;
        let mut data = vec![0f32; bins.len() * chroma];
        for (t, &bin) in bins.iter().enumerate() {
            data[t * chroma + bin] = 1.0;
        }
        Ok(Tensor::from_vec(data, (bins.len(), chroma), &Device::Cpu)?)
    }
}

fn check_samples(samples: &[f32]) -> Result<()> {
    if samples.is_empty() {
        return Err(Error::invalid("melody", "the melody has no samples; give at least one"));
    }
    if let Some((i, v)) = samples.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(Error::invalid("melody", format!("sample {i} is {v}; every sample must be a finite number")));
    }
    Ok(())
}

/// A periodic Hann window of `n` points as `torch.hann_window(n)` computes it, in f32:
/// `0.5 - 0.5 cos(i * (2π / n))`.
fn hann_window(n: usize) -> Vec<f32> {
    let step = (2.0 * std::f64::consts::PI / n as f64) as f32;
    (0..n).map(|i| 0.5 - 0.5 * (i as f32 * step).cos()).collect()
}

/// The signal as the STFT frames it: zero-padded to `n_fft` when shorter (half left, the odd
/// sample right), then `n_fft / 2` samples reflected at each end (torch's "reflect", which does
/// not repeat the edge sample). `samples` is not empty.
fn centred(samples: &[f32], n_fft: usize) -> Vec<f32> {
    let short = n_fft.saturating_sub(samples.len());
    let len = samples.len() + short;
    let pad = n_fft / 2;
    // The signal after zero padding, without building it.
    let at = |i: usize| if i < short / 2 || i >= short / 2 + samples.len() { 0.0 } else { samples[i - short / 2] };
    let mut out = Vec::with_capacity(len + 2 * pad);
    out.extend((1..=pad).rev().map(at));
    out.extend((0..len).map(at));
    out.extend((len - 1 - pad..len - 1).rev().map(at));
    out
}

/// librosa's chroma filter bank as transformers' `chroma_filter_bank(sampling_rate,
/// num_frequency_bins=n_fft, num_chroma, tuning=0)` computes it (power 2, weighting (5, 2),
/// starting at C), in f64: `(num_chroma, n_fft / 2 + 1)` row-major.
fn chroma_filter_bank(sampling_rate: u32, n_fft: usize, num_chroma: usize) -> Vec<f64> {
    let nc = num_chroma as f64;
    // The FFT bins' frequencies `k * sr / n_fft` (numpy's linspace) without 0 Hz, in fractional
    // chroma bins above A0 (440 / 16 = 27.5 Hz): `nc * log2(f / 27.5)`.
    let step = sampling_rate as f64 / n_fft as f64;
    let mut freq_bins: Vec<f64> = (1..n_fft).map(|k| nc * (k as f64 * step / (440.0 / 16.0)).log2()).collect();
    // "make up a value for the 0 Hz bin = 1.5 octaves below bin 1".
    freq_bins.insert(0, freq_bins[0] - 1.5 * nc);
    let widths: Vec<f64> = freq_bins.windows(2).map(|w| (w[1] - w[0]).max(1.0)).chain([1.0]).collect();
    let half = (nc / 2.0).round_ties_even();
    let mut bank = vec![0f64; num_chroma * n_fft];
    for (c, row) in bank.chunks_exact_mut(n_fft).enumerate() {
        for ((v, &bin), &width) in row.iter_mut().zip(&freq_bins).zip(&widths) {
            // Distance from chroma c, wrapped into [-nc/2, nc/2); then a Gaussian bump.
            let d = (bin - c as f64 + half + 10.0 * nc).rem_euclid(nc) - half;
            let z = 2.0 * d / width;
            *v = (-0.5 * (z * z)).exp();
        }
    }
    for k in 0..n_fft {
        // Each frequency's column to unit L2 norm, then the Gaussian weighting centred on
        // octave 5 with a half-width of 2 octaves.
        let norm = (0..num_chroma).map(|c| bank[c * n_fft + k] * bank[c * n_fft + k]).sum::<f64>().sqrt();
        let z = (freq_bins[k] / nc - 5.0) / 2.0;
        let weight = (-0.5 * (z * z)).exp();
        for c in 0..num_chroma {
            let v = &mut bank[c * n_fft + k];
            *v = *v / norm * weight;
        }
    }
    // Rows rolled to start at C (np.roll by -3 * (nc // 12)), and only the one-sided bins kept.
    let shift = 3 * (num_chroma / 12);
    let bins = n_fft / 2 + 1;
    (0..num_chroma).flat_map(|c| bank[(c + shift) % num_chroma * n_fft..][..bins].to_vec()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hann_window_is_periodic_and_symmetric() {
        let n = 16384;
        let w = hann_window(n);
        assert_eq!(w.len(), n);
        assert_eq!(w[0], 0.0);
        assert_eq!(w[n / 2], 1.0);
        assert!((w[n / 4] - 0.5).abs() < 1e-6 && (w[3 * n / 4] - 0.5).abs() < 1e-6);
        // Periodic: w[i] == w[n - i], so the point after the last would be 0 again.
        for i in 1..n {
            assert!((w[i] - w[n - i]).abs() < 1e-6, "w[{i}] {} w[{}] {}", w[i], n - i, w[n - i]);
        }
        // Σw = n/2 and Σw² = 3n/8 for a periodic Hann window.
        let sum: f64 = w.iter().map(|&v| v as f64).sum();
        let energy: f64 = w.iter().map(|&v| v as f64 * v as f64).sum();
        assert!((sum - n as f64 / 2.0).abs() < 1e-3, "{sum}");
        assert!((energy - 3.0 * n as f64 / 8.0).abs() < 1e-3, "{energy}");
    }

    #[test]
    fn centring_reflects_without_repeating_the_edge() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(centred(&x, 4), [3.0, 2.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 5.0, 4.0]);
        // Shorter than n_fft: zeros first (2 left, 3 right for 5 missing), then reflected.
        assert_eq!(
            centred(&[1.0, 2.0, 3.0], 8),
            [3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 2.0]
        );
    }

    #[test]
    fn frames_are_one_plus_length_over_hop_after_centring() {
        let cfg = ChromaConfig::default();
        assert_eq!(cfg.frames(1), 1 + 16384 / 4096);
        assert_eq!(cfg.frames(16384), 5);
        assert_eq!(cfg.frames(20000), 1 + 20000 / 4096);
        assert_eq!(cfg.frames(320_000), 79);
        // 30 s is the most: 960000 / 4096 = 234.4.
        assert_eq!(cfg.frames(960_000), 235);
        assert_eq!(cfg.frames(992_000), 235);
        // The count is what the framing loop can take: the last frame ends inside the padding.
        for samples in [1, 4095, 16383, 16385, 20000, 1_000_000] {
            let len = samples.min(cfg.max_samples()).max(cfg.n_fft);
            let padded = centred(&vec![0.5; samples.min(cfg.max_samples())], cfg.n_fft).len();
            assert_eq!(padded, len + cfg.n_fft);
            let last_end = (cfg.frames(samples) - 1) * cfg.hop_length + cfg.n_fft;
            assert!(last_end <= padded && last_end + cfg.hop_length > padded, "{samples}");
        }
    }

    #[test]
    fn filter_bank_columns_follow_librosa() {
        let cfg = ChromaConfig::default();
        let bank = chroma_filter_bank(cfg.sampling_rate, cfg.n_fft, cfg.num_chroma);
        let bins = cfg.frequency_bins();
        assert_eq!(bank.len(), 12 * bins);
        // 440 Hz is FFT bin 225.28: bin 225 (439.45 Hz) weighs A (9) most, and C (0) starts the rows.
        let column = |k: usize| (0..12).map(|c| bank[c * bins + k] as f32).collect::<Vec<_>>();
        assert_eq!(argmax(&column(225)), 9);
        // 261.6 Hz (C4) is bin 133.9.
        assert_eq!(argmax(&column(134)), 0);
        // Before the weighting every column had unit L2 norm, so each is at most the weight.
        for k in 1..bins {
            let norm: f64 = (0..12).map(|c| bank[c * bins + k].powi(2)).sum::<f64>().sqrt();
            assert!(norm <= 1.0 + 1e-12 && norm > 0.0, "bin {k}: {norm}");
        }
    }

    #[test]
    fn silence_is_bin_zero_in_every_frame() {
        let extractor = ChromaExtractor::new(ChromaConfig::default()).unwrap();
        let bins = extractor.extract(&vec![0.0; 20000]).unwrap();
        assert_eq!(bins, vec![0; 1 + 20000 / 4096]);
        assert!(extractor.chroma(&[0.0; 10]).unwrap().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn samples_too_loud_for_f32_power_are_refused() {
        let extractor = ChromaExtractor::new(ChromaConfig::default()).unwrap();
        let loud: Vec<f32> = (0..20000).map(|i| 1e30 * (i as f32 * 0.1).sin()).collect();
        let message = extractor.extract(&loud).unwrap_err().to_string();
        assert!(message.contains("melody") && message.contains("overflows"), "{message}");
    }

    #[test]
    fn nonsense_configs_are_refused_naming_the_key() {
        let cases = [
            (ChromaConfig { sampling_rate: 0, ..Default::default() }, "sampling_rate"),
            (ChromaConfig { n_fft: 1, ..Default::default() }, "n_fft"),
            (ChromaConfig { n_fft: MAX_N_FFT + 1, ..Default::default() }, "n_fft"),
            (ChromaConfig { hop_length: 0, ..Default::default() }, "hop_length"),
            (ChromaConfig { hop_length: 16385, ..Default::default() }, "hop_length"),
            (ChromaConfig { num_chroma: 0, ..Default::default() }, "num_chroma"),
            (ChromaConfig { chunk_length: 0, ..Default::default() }, "chunk_length"),
        ];
        for (config, key) in cases {
            match ChromaExtractor::new(config) {
                Err(Error::Unsupported(message)) => assert!(message.contains(key), "{message}"),
                other => panic!("{config:?}: {other:?}"),
            }
        }
    }
}
