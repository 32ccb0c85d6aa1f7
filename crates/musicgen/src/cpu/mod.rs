//! The CPU kernels of decoding, one implementation of each: element widening ([`elem`]), the
//! few-row projections ([`gemv`]) and attention over f32 or half-precision caches
//! ([`attention`]). Each has a portable path; on x86-64 [`has_avx2`] picks the intrinsics of
//! [`avx2`] at run time (the portable build targets plain x86-64).

pub(crate) mod attention;
#[cfg(target_arch = "x86_64")]
mod avx2;
pub(crate) mod elem;
pub(crate) mod gemv;

/// Whether the CPU runs the [`avx2`] kernels: AVX2, FMA and F16C (std caches the answer).
#[cfg(target_arch = "x86_64")]
#[inline]
fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}
