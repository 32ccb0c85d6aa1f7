//! The CPU kernels of decoding, one implementation of each: element widening ([`elem`]), the
//! few-row projections ([`gemv`]) and attention over f32 or half-precision caches
//! ([`attention`]). Each has a portable path; the intrinsics are picked at run time here, in one
//! place: on x86-64 [`avx2`] where [`has_avx2`] (the portable build targets plain x86-64), on
//! aarch64 [`neon`] where [`has_neon`] (always, on Linux: Advanced SIMD is part of the aarch64
//! ABI; the check keeps the portable path reachable and the pattern the same).

pub(crate) mod attention;
#[cfg(target_arch = "x86_64")]
mod avx2;
pub(crate) mod elem;
pub(crate) mod gemv;
#[cfg(target_arch = "aarch64")]
mod neon;

/// Whether the CPU runs the [`avx2`] kernels: AVX2, FMA and F16C (std caches the answer).
#[cfg(target_arch = "x86_64")]
#[inline]
fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

/// Whether the CPU runs the [`neon`] kernels: Advanced SIMD (std caches the answer).
#[cfg(target_arch = "aarch64")]
#[inline]
fn has_neon() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
}
