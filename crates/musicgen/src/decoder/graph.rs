//! Recording one decoder step as a CUDA graph and replaying it.
//!
//! A step of musicgen-small launches ~900 kernels of a few microseconds each; issued one by one
//! from the host, the launches, not the GPU, set the pace. A CUDA graph records them once and
//! replays them with one launch. Replay repeats the recorded kernels with the recorded
//! arguments, which is why a fixed-mode step reads everything that changes (tokens, position)
//! from device buffers written before the launch, and writes its results in place.
//!
//! Recording goes through candle 0.11's capture support: with its host-to-device cache enabled,
//! the small shape/stride tables its kernels upload are kept on the device by content, so the
//! first (eager, real) step fills the cache and the capture that follows finds every table there
//! instead of copying from the host, which a capture forbids.

use candle_core::cuda::cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use candle_core::cuda::cudarc::driver::{result, CudaGraph, DevicePtr};
use candle_core::{Device, Storage, Tensor};

use crate::error::{Error, Result};

/// The recorded step of one request.
pub(super) enum StepGraph {
    /// Record after the next eager step.
    Pending,
    /// The graph and the kernels in it: a step's launches, the figure kernel fusion lowers.
    Ready(CudaGraph, usize),
    /// Not recording: graphs were not asked for, or recording failed and steps run eagerly.
    Off,
}

impl std::fmt::Debug for StepGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pending => "Pending",
            Self::Ready(..) => "Ready",
            Self::Off => "Off",
        })
    }
}

impl StepGraph {
    pub(super) fn new(enabled: bool) -> Self {
        if enabled {
            Self::Pending
        } else {
            Self::Off
        }
    }

    pub(super) fn is_ready(&self) -> bool {
        matches!(self, Self::Ready(..))
    }

    /// Kernels per replayed step, once recorded.
    pub(super) fn kernels(&self) -> Option<usize> {
        match self {
            Self::Ready(_, kernels) => Some(*kernels),
            _ => None,
        }
    }

    /// Runs one step: replays the graph, or runs `forward` eagerly and, the first time, records
    /// it. A recording that fails is logged and the request goes on eagerly: same results, slower.
    pub(super) fn run(&mut self, device: &Device, forward: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        let Device::Cuda(cuda) = device else {
            return forward();
        };
        match self {
            Self::Ready(graph, _) => Ok(graph.launch().map_err(driver_error)?),
            Self::Off => forward(),
            Self::Pending => {
                let _cache = cuda.enable_cuda_graph_htod_cache();
                forward()?;
                *self = match record(cuda, forward) {
                    Ok(graph) => {
                        let kernels = kernel_count(&graph);
                        tracing::debug!("decoder step recorded as a CUDA graph of {kernels} kernels");
                        Self::Ready(graph, kernels)
                    }
                    Err(e) => {
                        tracing::warn!(
                            "could not record the decoder step as a CUDA graph ({e}); running kernels one by one"
                        );
                        Self::Off
                    }
                };
                Ok(())
            }
        }
    }
}

/// Records `forward` on the device's stream without running it.
fn record(cuda: &candle_core::CudaDevice, forward: &mut dyn FnMut() -> Result<()>) -> Result<CudaGraph> {
    let stream = cuda.cuda_stream();
    stream.synchronize().map_err(driver_error)?;
    // Thread-local: CUDA calls of other threads (another model, the server) stay legal meanwhile.
    stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).map_err(driver_error)?;
    let recorded = forward();
    // The capture must end whatever happened, or the stream stays unusable.
    let graph = stream.end_capture(CUgraphInstantiate_flags(0));
    recorded?;
    let graph = graph.map_err(driver_error)?.ok_or_else(|| Error::Unsupported("the recorded step is empty".into()))?;
    // Uploading now moves the one-time setup out of the first replay.
    graph.upload().map_err(driver_error)?;
    Ok(graph)
}

/// The kernel nodes of `graph` (0 if the driver will not say).
fn kernel_count(graph: &CudaGraph) -> usize {
    use candle_core::cuda::cudarc::driver::sys;
    let mut count = 0usize;
    // SAFETY: the graph is alive; the first call only reports the node count, the second fills
    // exactly that many handles, and each handle is only asked its type.
    unsafe {
        if sys::cuGraphGetNodes(graph.cu_graph(), std::ptr::null_mut(), &mut count) != sys::CUresult::CUDA_SUCCESS {
            return 0;
        }
        let mut nodes = vec![std::ptr::null_mut(); count];
        if sys::cuGraphGetNodes(graph.cu_graph(), nodes.as_mut_ptr(), &mut count) != sys::CUresult::CUDA_SUCCESS {
            return 0;
        }
        nodes
            .iter()
            .take(count)
            .filter(|&&node| {
                let mut kind = sys::CUgraphNodeType::CU_GRAPH_NODE_TYPE_EMPTY;
                sys::cuGraphNodeGetType(node, &mut kind) == sys::CUresult::CUDA_SUCCESS
                    && kind == sys::CUgraphNodeType::CU_GRAPH_NODE_TYPE_KERNEL
            })
            .count()
    }
}

/// Copies `values` into the CUDA buffer of the contiguous u32 tensor `dst`, in stream order.
pub(super) fn upload_u32(dst: &Tensor, values: &[u32]) -> Result<()> {
    let Device::Cuda(cuda) = dst.device() else {
        return Err(Error::Unsupported("upload_u32 needs a CUDA tensor".into()));
    };
    let stream = cuda.cuda_stream();
    let (storage, layout) = dst.storage_and_layout();
    let Storage::Cuda(storage) = &*storage else {
        return Err(Error::Unsupported("upload_u32 needs a CUDA tensor".into()));
    };
    let slice = storage.as_cuda_slice::<u32>()?;
    let offset = layout.start_offset();
    if offset + values.len() > slice.len() {
        return Err(Error::Tensor(candle_core::Error::Msg("upload_u32 beyond the buffer".into())));
    }
    let (ptr, _sync) = slice.device_ptr(&stream);
    // SAFETY: the destination range lies inside `slice`, which `storage` keeps alive for the
    // call; the copy is ordered on the stream every kernel uses, and from pageable host memory
    // the driver has staged `values` before returning, so the borrow may end right after.
    unsafe {
        result::memcpy_htod_async(ptr + (offset * std::mem::size_of::<u32>()) as u64, values, stream.cu_stream())
            .map_err(driver_error)?;
    }
    Ok(())
}

fn driver_error(e: candle_core::cuda::cudarc::driver::DriverError) -> Error {
    Error::Tensor(candle_core::Error::Msg(format!("CUDA: {e}")))
}
