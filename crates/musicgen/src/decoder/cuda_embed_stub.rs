//! Builds without the `cuda` feature have no step-embedding kernel: the interface of
//! `cuda_embed.rs`, never chosen (the decoder uses it only with the fused CUDA backend).

use candle_core::Tensor;

pub(super) fn step_embedding(_: &Tensor, _: &Tensor, _: &Tensor) -> candle_core::Result<Tensor> {
    Err(candle_core::Error::Msg("the step embedding kernel needs a build with the `cuda` feature".into()))
}
