//! The CUDA buffer behind a contiguous tensor, as this crate's kernels (candle ops over
//! `kernels/*.cu`) take their arguments.

use candle_core::cuda::cudarc::driver::CudaView;
use candle_core::cuda::{CudaDType, CudaStorage};
use candle_core::Layout;

/// `storage`'s elements from `layout`'s first to its last; an error naming the kernel `op` and
/// the argument `what` when the layout is not contiguous.
pub(crate) fn contiguous<'a, T: CudaDType>(
    storage: &'a CudaStorage,
    layout: &Layout,
    op: &str,
    what: &str,
) -> candle_core::Result<CudaView<'a, T>> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(storage.as_cuda_slice::<T>()?.slice(start..end)),
        None => candle_core::bail!("{op}: {what} must be contiguous"),
    }
}
