//! From decoder logits to the next codes: classifier-free guidance, then per item temperature,
//! top-k, top-p and a seeded draw.
//!
//! Each item owns a ChaCha20 stream seeded by its own seed and consumes exactly one 64-bit word
//! per codebook per sampled step, so an item draws the same numbers whether it runs alone or in
//! a batch, on any platform. Greedy decoding (top_k == 1) draws nothing.
//!
//! On a GPU the same rules run as a kernel ([`DeviceSampler`]), fed the numbers these streams give.

use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::request::SamplingParams;

#[cfg_attr(not(feature = "cuda"), path = "sampling/cuda_stub.rs")]
mod cuda;
pub(crate) use cuda::DeviceSampler;

/// Classifier-free guidance, `u + (c − u)·s`, in transformers' operation order so that greedy
/// picks match its `ClassifierFreeGuidanceLogitsProcessor` bit for bit.
pub fn guide(cond: &[f32], uncond: &[f32], coef: f32, out: &mut [f32]) {
    for ((o, &c), &u) in out.iter_mut().zip(cond).zip(uncond) {
        *o = u + (c - u) * coef;
    }
}

/// Index of the largest score; ties go to the lowest index, as `torch.argmax`.
pub fn argmax(scores: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    best as u32
}

/// Draws tokens for one request item.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha20Rng,
    weights: Vec<f64>,
    order: Vec<u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams, seed: u64) -> Self {
        Self { params, rng: ChaCha20Rng::seed_from_u64(seed), weights: Vec::new(), order: Vec::new() }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    pub fn is_greedy(&self) -> bool {
        self.params.top_k <= 1
    }

    /// Whether a pick over `vocab` scores draws from the stream (one number per pick).
    pub fn draws(&self, vocab: usize) -> bool {
        !self.is_greedy() && vocab > 1
    }

    /// The stream's next uniform number in `[0, 1)`, with 53 random bits: what a draw uses.
    pub fn next_unit(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Picks a token from one codebook's guided scores.
    pub fn pick(&mut self, scores: &[f32]) -> u32 {
        if !self.draws(scores.len()) {
            return argmax(scores);
        }
        self.softmax_weights(scores);
        if self.params.top_k < scores.len() {
            self.keep_top_k(self.params.top_k);
        }
        if self.params.top_p > 0.0 {
            self.keep_top_p(self.params.top_p);
        }
        self.draw()
    }

    /// Unnormalised softmax of `scores / temperature`, in f64 so small probabilities survive.
    fn softmax_weights(&mut self, scores: &[f32]) {
        let t = self.params.temperature;
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s)) as f64;
        self.weights.clear();
        self.weights.extend(scores.iter().map(|&s| ((s as f64 - max) / t).exp()));
    }

    /// audiocraft's `sample_top_k`: zero every probability below the k-th largest (ties stay).
    fn keep_top_k(&mut self, k: usize) {
        let mut sorted = self.weights.clone();
        let (_, kth, _) = sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        let threshold = *kth;
        for w in &mut self.weights {
            if *w < threshold {
                *w = 0.0;
            }
        }
    }

    /// audiocraft's `sample_top_p`: in descending order, drop each token whose preceding mass
    /// already exceeds p.
    fn keep_top_p(&mut self, p: f64) {
        let total: f64 = self.weights.iter().sum();
        self.order.clear();
        self.order.extend(0..self.weights.len() as u32);
        let weights = &self.weights;
        self.order.sort_by(|&a, &b| weights[b as usize].total_cmp(&weights[a as usize]).then(a.cmp(&b)));
        let mut before = 0.0;
        for &i in &self.order {
            let w = self.weights[i as usize] / total;
            if before > p {
                self.weights[i as usize] = 0.0;
            }
            before += w;
        }
    }

    /// Inverse-CDF draw over the remaining weights with one 64-bit word of the stream.
    fn draw(&mut self) -> u32 {
        let unit = self.next_unit();
        let total: f64 = self.weights.iter().sum();
        let target = unit * total;
        let mut acc = 0.0;
        let mut last_kept = 0;
        for (i, &w) in self.weights.iter().enumerate() {
            if w > 0.0 {
                acc += w;
                last_kept = i;
                if acc > target {
                    return i as u32;
                }
            }
        }
        // Rounding can leave `target` a hair above the accumulated sum.
        last_kept as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(top_k: usize, top_p: f64, temperature: f64) -> SamplingParams {
        SamplingParams { top_k, top_p, temperature, cfg_coef: 3.0 }
    }

    #[test]
    fn guidance_extrapolates_from_unconditional() {
        let mut out = [0.0; 3];
        guide(&[1.0, 2.0, -1.0], &[0.5, 2.0, 1.0], 3.0, &mut out);
        assert_eq!(out, [2.0, 2.0, -5.0]);
    }

    #[test]
    fn argmax_breaks_ties_toward_lowest_index() {
        assert_eq!(argmax(&[0.0, 3.0, 1.0, 3.0]), 1);
        assert_eq!(argmax(&[-1.0]), 0);
    }

    #[test]
    fn greedy_ignores_temperature_and_draws_nothing() {
        let mut s = Sampler::new(params(1, 0.9, 5.0), 7);
        let before = s.rng.clone();
        assert_eq!(s.pick(&[0.1, 0.9, 0.3]), 1);
        assert_eq!(s.rng, before);
    }

    #[test]
    fn top_k_never_picks_outside_the_k_best() {
        let scores: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut ranked: Vec<usize> = (0..64).collect();
        ranked.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        let allowed = &ranked[..5];
        let mut s = Sampler::new(params(5, 0.0, 4.0), 3);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..500 {
            let t = s.pick(&scores) as usize;
            assert!(allowed.contains(&t), "{t} is not among the top 5");
            seen.insert(t);
        }
        assert_eq!(seen.len(), 5, "a high temperature spreads draws over all five");
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // Probabilities 0.5, 0.3, 0.15, 0.05: with p = 0.7 the first two reach it and the rest go.
        let scores: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let mut s = Sampler::new(params(4, 0.7, 1.0), 11);
        let mut counts = [0usize; 4];
        for _ in 0..2000 {
            counts[s.pick(&scores) as usize] += 1;
        }
        assert_eq!(counts[2] + counts[3], 0, "{counts:?}");
        // Renormalised 0.5/0.8 = 0.625 for token 0.
        let share = counts[0] as f64 / 2000.0;
        assert!((share - 0.625).abs() < 0.05, "{counts:?}");
    }

    #[test]
    fn top_p_applies_after_top_k() {
        // Top-2 leaves 0.4/0.35 -> renormalised 0.533, 0.467; p = 0.5 then keeps only token 0.
        let scores: Vec<f32> = [0.4f32, 0.35, 0.25].iter().map(|p| p.ln()).collect();
        let mut s = Sampler::new(params(2, 0.5, 1.0), 5);
        assert!((0..200).all(|_| s.pick(&scores) == 0));
    }

    #[test]
    fn same_seed_same_draws_other_seed_other_draws() {
        let scores: Vec<f32> = (0..2048).map(|i| ((i * 7919) % 113) as f32 / 50.0).collect();
        let run = |seed| {
            let mut s = Sampler::new(params(250, 0.0, 1.0), seed);
            (0..64).map(|_| s.pick(&scores)).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }
}
