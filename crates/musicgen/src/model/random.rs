//! Random weights for any tensor name: the `bench --random-weights` path and unit tests build
//! real architectures without a checkpoint. Each tensor's values depend only on the seed and
//! its name, so a module loaded twice (say in f32 and bf16) gets the same weights.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone)]
pub(crate) struct RandomWeights {
    seed: u64,
    /// Values handed out so far, over every clone: the model's parameter count once built.
    drawn: Arc<AtomicUsize>,
}

impl RandomWeights {
    pub(crate) fn new(seed: u64) -> Self {
        Self { seed, drawn: Arc::default() }
    }

    pub(crate) fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    pub(crate) fn values_drawn(&self) -> usize {
        self.drawn.load(Ordering::Relaxed)
    }

    /// Uniform values with PyTorch's default scale for the tensor's role: norm scales near 1,
    /// biases near 0, matrices within ±1/sqrt(fan_in).
    fn values(&self, name: &str, shape: &Shape) -> Vec<f32> {
        let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ self.seed;
        for byte in name.bytes() {
            hash = (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(hash);
        let dims = shape.dims();
        let (center, bound) = match dims {
            [_] if name.ends_with("weight") => (1.0, 0.1),
            [_] => (0.0, 0.02),
            _ => (0.0, 1.0 / (dims[1..].iter().product::<usize>() as f32).sqrt()),
        };
        (0..shape.elem_count())
            .map(|_| {
                let unit = (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
                center + bound * (2.0 * unit - 1.0)
            })
            .collect()
    }
}

impl SimpleBackend for RandomWeights {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let values = self.values(name, &s);
        self.drawn.fetch_add(values.len(), Ordering::Relaxed);
        Tensor::from_vec(values, s, &Device::Cpu)?.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        candle_core::bail!("random weights need the shape of {name}")
    }

    /// Every tensor exists except the weight-norm halves: their shapes cannot be guessed from a
    /// name, so layers that accept either take their plain `weight` instead (the same compute).
    fn contains_tensor(&self, name: &str) -> bool {
        !(name.ends_with("weight_g") || name.ends_with("weight_v") || name.contains("parametrizations.weight."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_depend_on_seed_and_name_only() {
        let w = RandomWeights::new(1);
        let a = w.values("a.weight", &Shape::from((4, 8)));
        assert_eq!(a, w.values("a.weight", &Shape::from((4, 8))));
        assert_ne!(a, w.values("b.weight", &Shape::from((4, 8))));
        assert_ne!(a, RandomWeights::new(2).values("a.weight", &Shape::from((4, 8))));
        let bound = 1.0 / 8f32.sqrt();
        assert!(a.iter().all(|v| v.abs() <= bound));
        let norm = w.values("ln.weight", &Shape::from(16));
        assert!(norm.iter().all(|v| (v - 1.0).abs() <= 0.1));
    }
}
