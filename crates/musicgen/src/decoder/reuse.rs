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
