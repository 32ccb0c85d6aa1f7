//! Builds without the `cuda` feature record no graphs: the interface of `graph.rs`, where every
//! step runs eagerly ([`crate::decoder::StepMode::Graph`] is refused without a CUDA device).

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

#[derive(Debug)]
pub(super) struct StepGraph;

impl StepGraph {
    pub(super) fn new(_: bool) -> Self {
        Self
    }

    pub(super) fn is_ready(&self) -> bool {
        false
    }

    pub(super) fn kernels(&self) -> Option<usize> {
        None
    }

    pub(super) fn run(&mut self, _: &Device, forward: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        forward()
    }
}

pub(super) fn upload_u32(_: &Tensor, _: &[u32]) -> Result<()> {
    Err(Error::Unsupported("uploads to a CUDA device need a build with the `cuda` feature".into()))
}
