//! Keeping a finished request's recorded step for the next request of the same shape.
//!
//! Recording costs every request (and every window of a long track) an eager step, the capture
//! and the graph's instantiation. A graph replays its kernels on the buffers it was recorded
//! with, so it can only be reused together with them: when a recorded state ends, its caches,
//! inputs and graph are parked here, keyed by what fixes their sizes, and the next request of
//! that shape takes them, copies its own memory into them and replays from its first step.
//! Nothing a step reads survives from the request before: each step writes its position's keys
//! and values before attending to the positions up to it, which the request wrote itself.
//!
//! Parked buffers are device memory nobody uses, so the cache is bounded: at most [`MAX_PARKED`]
//! states and `DGX_GRAPH_CACHE_MIB` MiB (default [`DEFAULT_MIB`]; 0 turns reuse off), the oldest
//! going first. It is per thread, as `CudaGraph` is not `Send`; a worker runs all its requests
//! on one thread.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use super::{FixedBuffers, KvCache, Memory};
use crate::decoder::graph::StepGraph;

/// States kept at most, whatever their size.
const MAX_PARKED: usize = 4;
/// The default bound on parked bytes: a batch-1 state of small (0.3 GB in bf16) and medium
/// (0.9 GB) fit, large's (1.2 GB) alone.
const DEFAULT_MIB: usize = 2048;

/// What fixes the buffers' sizes and the graph's kernels, decoder included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Shape {
    /// [`next_decoder_id`] of the weights the graph reads.
    pub decoder: u64,
    pub rows: usize,
    pub max_positions: usize,
    /// Text tokens cross-attended (0 for a prefix-conditioned decoder).
    pub memory_len: usize,
    /// Whether the memory has a mask (a fully attended one has none, and fewer kernels).
    pub masked: bool,
    pub prefix_len: usize,
}

/// A recorded state's buffers and graph, between requests.
pub(super) struct Parked {
    pub shape: Shape,
    pub bytes: usize,
    pub self_kv: Vec<KvCache>,
    pub memory: Option<Memory>,
    pub fixed: FixedBuffers,
    pub graph: StepGraph,
}

thread_local! {
    static PARKED: RefCell<VecDeque<Parked>> = const { RefCell::new(VecDeque::new()) };
}

/// A fresh identity for a decoder's weights: a graph recorded on other weights never matches.
pub(super) fn next_decoder_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Bytes the parked states may hold.
fn budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        let Ok(value) = std::env::var("DGX_GRAPH_CACHE_MIB") else { return DEFAULT_MIB << 20 };
        match value.trim().parse::<usize>() {
            Ok(mib) => mib << 20,
            Err(_) => {
                tracing::warn!("DGX_GRAPH_CACHE_MIB={value:?} is not a number of MiB; keeping up to {DEFAULT_MIB}");
                DEFAULT_MIB << 20
            }
        }
    })
}

/// Keeps `state` for a later request, if it fits; the oldest states go to make room.
pub(super) fn park(state: Parked) {
    let budget = budget();
    if state.bytes > budget {
        return;
    }
    PARKED.with(|parked| {
        let mut parked = parked.borrow_mut();
        parked.push_front(state);
        while parked.len() > MAX_PARKED || parked.iter().map(|p| p.bytes).sum::<usize>() > budget {
            parked.pop_back();
        }
    });
}

/// Takes the parked state of `shape`, the most recent if several.
pub(super) fn take(shape: &Shape) -> Option<Parked> {
    PARKED.with(|parked| {
        let mut parked = parked.borrow_mut();
        let at = parked.iter().position(|p| p.shape == *shape)?;
        parked.remove(at)
    })
}

/// Drops this thread's parked states of `decoder` (its weights are changing or going).
pub(super) fn forget(decoder: u64) {
    // During thread teardown the cache may already be gone; then there is nothing to drop.
    let _ = PARKED.try_with(|parked| parked.borrow_mut().retain(|p| p.shape.decoder != decoder));
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::*;

    /// A parked state of `rows` rows holding `mib` MiB, its buffers stand-ins (only the rules
    /// around them are tested here; the GPU tests replay real ones).
    fn state(decoder: u64, rows: usize, mib: usize) -> Parked {
        let t = || Tensor::zeros(1, DType::U32, &Device::Cpu).unwrap();
        Parked {
            shape: Shape { decoder, rows, max_positions: 16, memory_len: 4, masked: true, prefix_len: 0 },
            bytes: mib << 20,
            self_kv: Vec::new(),
            memory: None,
            fixed: FixedBuffers { inputs: t(), positions: t(), arange: t(), open: t(), closed: t(), logits: t() },
            graph: StepGraph::new(false),
        }
    }

    fn parked_rows() -> Vec<usize> {
        PARKED.with(|parked| parked.borrow().iter().map(|p| p.shape.rows).collect())
    }

    #[test]
    fn a_parked_state_serves_only_its_own_shape_and_one_request() {
        park(state(1, 2, 1));
        assert!(take(&state(2, 2, 1).shape).is_none(), "another decoder's weights");
        assert!(take(&state(1, 4, 1).shape).is_none(), "another row count");
        assert!(take(&state(1, 2, 1).shape).is_some());
        assert!(take(&state(1, 2, 1).shape).is_none(), "taken: the next request records its own");
    }

    #[test]
    fn the_oldest_states_go_past_the_count_or_the_bytes() {
        for rows in 1..=6 {
            park(state(7, rows, 1));
        }
        assert_eq!(parked_rows(), [6, 5, 4, 3]);
        park(state(7, 9, DEFAULT_MIB + 1));
        assert_eq!(parked_rows(), [6, 5, 4, 3], "a state over the whole bound is not kept");
        park(state(7, 10, DEFAULT_MIB - 1));
        assert_eq!(parked_rows(), [10, 6], "the oldest went until the bytes fit");
        forget(7);
        assert!(parked_rows().is_empty());
    }
}
