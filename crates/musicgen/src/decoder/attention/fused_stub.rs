//! Builds without the `cuda` feature have no fused kernels: the interface of `fused.rs`, never
//! chosen ([`supports`] is false), refusing if called.

use candle_core::{DType, Device, Tensor};

pub(super) fn supports(_: &Device, _: usize, _: DType) -> bool {
    false
}

fn refused() -> candle_core::Error {
    candle_core::Error::Msg("the fused attention kernels need a build with the `cuda` feature".into())
}

pub(super) fn self_attention(_: &Tensor, _: &Tensor, _: &Tensor, _: usize) -> candle_core::Result<Tensor> {
    Err(refused())
}

pub(super) fn cross_attention(_: &Tensor, _: &Tensor, _: Option<&Tensor>, _: usize) -> candle_core::Result<Tensor> {
    Err(refused())
}
