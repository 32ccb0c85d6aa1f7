//! Builds without the `cuda` feature have no GPU kernels: the interface of `cuda_gemv.rs`, never
//! chosen ([`takes`] is false), refusing if called.

use candle_core::{DType, Tensor};

use super::Activation;

pub fn max_rows(_int8: bool) -> usize {
    0
}

pub(crate) fn takes(_: DType, _: DType, _: usize, _: usize, _: bool) -> bool {
    false
}

pub(crate) fn product(
    _: &Tensor,
    _: &Tensor,
    _: Option<&Tensor>,
    _: Option<&Tensor>,
    _: Option<Activation>,
    _: usize,
) -> candle_core::Result<Option<Tensor>> {
    Err(candle_core::Error::Msg("the GEMV kernels need a build with the `cuda` feature".into()))
}
