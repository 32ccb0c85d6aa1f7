//! The x86-64 kernels for CPUs with AVX2, FMA and F16C ([`super::has_avx2`]): each element
//! format (int8 weights included) widened 8 at a time into the fused multiply-adds. Callers check the CPU first; the
//! portable loops beside each caller compute the same sums (up to summation order).

use std::arch::x86_64::*;

use super::attention::softmax;
use super::elem::{Element, Format};

/// The head size [`attend`] is written for: every published MusicGen's (1024/16, 1536/24,
/// 2048/32); the query and the output each fit in 8 registers.
pub(super) const HEAD_DIM: usize = 64;

/// Bytes ahead of the loads to prefetch: the hardware prefetchers stop at page boundaries, and
/// asking for the next page early keeps enough reads in flight to stream at ~21 GB/s on two
/// cores here instead of ~13 (docs/PERFORMANCE.md).
const PREFETCH_AHEAD: usize = 4096;

/// 8 elements from `at` as f32: f32 loaded, bf16 bits shifted into the top half of each lane,
/// f16 by F16C's conversion, int8 sign-extended to 32 bits and converted (exact).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load8<E: Element>(at: *const E) -> __m256 {
    match E::FORMAT {
        Format::F32 => _mm256_loadu_ps(at as *const f32),
        Format::Bf16 => {
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(at as *const __m128i))))
        }
        Format::F16 => _mm256_cvtph_ps(_mm_loadu_si128(at as *const __m128i)),
        Format::I8 => _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(at as *const __m128i))),
    }
}

/// The sum of the 8 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn sum8(v: __m256) -> f32 {
    let sum = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
    _mm_cvtss_f32(_mm_add_ss(sum, _mm_shuffle_ps::<1>(sum, sum)))
}

/// Prefetches the `bytes` after `PREFETCH_AHEAD` bytes past `at`, a cache line at a time (a
/// hint: addresses past the data are never dereferenced).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn prefetch_ahead<E>(at: *const E, bytes: usize) {
    let at = (at as *const i8).wrapping_add(PREFETCH_AHEAD);
    for line in (0..bytes).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(line));
    }
}

/// [`super::gemv`]'s block of outputs, `rows` sums per weight row, feature-major: two 8-float
/// accumulators per row up to 4 rows (independent chains hide the FMA latency), one beyond
/// (16 registers in all).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C ([`super::has_avx2`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn gemv_block<E: Element>(weights: &[E], xs: &[f32], rows: usize, in_dim: usize, out: &mut [f32]) {
    match rows {
        1 => gemv_rows::<E, 1, 2>(weights, xs, in_dim, out),
        2 => gemv_rows::<E, 2, 2>(weights, xs, in_dim, out),
        3 => gemv_rows::<E, 3, 2>(weights, xs, in_dim, out),
        4 => gemv_rows::<E, 4, 2>(weights, xs, in_dim, out),
        5 => gemv_rows::<E, 5, 1>(weights, xs, in_dim, out),
        6 => gemv_rows::<E, 6, 1>(weights, xs, in_dim, out),
        7 => gemv_rows::<E, 7, 1>(weights, xs, in_dim, out),
        8 => gemv_rows::<E, 8, 1>(weights, xs, in_dim, out),
        _ => unreachable!("at most MAX_FAST_ROWS rows take the streaming path"),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn gemv_rows<E: Element, const ROWS: usize, const VECS: usize>(
    weights: &[E],
    xs: &[f32],
    in_dim: usize,
    out: &mut [f32],
) {
    assert!(xs.len() >= ROWS * in_dim && out.len() * in_dim == weights.len() * ROWS);
    let step = 8 * VECS;
    let body = in_dim - in_dim % step;
    for (w, sums) in weights.chunks_exact(in_dim).zip(out.chunks_exact_mut(ROWS)) {
        let mut acc = [[_mm256_setzero_ps(); VECS]; ROWS];
        for i in (0..body).step_by(step) {
            prefetch_ahead(w.as_ptr().wrapping_add(i), 1);
            for (v, lane) in (i..i + step).step_by(8).enumerate() {
                // In bounds: lane + 8 <= body <= in_dim, the length of `w` and of each row of `xs`.
                let wide = load8(w.as_ptr().add(lane));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_loadu_ps(xs.as_ptr().add(r * in_dim + lane));
                    acc[v] = _mm256_fmadd_ps(wide, x, acc[v]);
                }
            }
        }
        for (r, (sum, acc)) in sums.iter_mut().zip(&acc).enumerate() {
            let total = acc[1..].iter().fold(acc[0], |t, &a| _mm256_add_ps(t, a));
            let x = &xs[r * in_dim..(r + 1) * in_dim];
            let tail: f32 = w[body..].iter().zip(&x[body..]).map(|(&w, x)| w.to_f32() * x).sum();
            *sum = sum8(total) + tail;
        }
    }
}

/// softmax(q·Kᵀ + mask)·V for one 64-wide query over `keys.len() / 64` positions, into `out`:
/// keys and values widened 8 at a time and fused into the products, nothing staged in memory
/// but the scores.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C ([`super::has_avx2`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn attend<E: Element>(
    q: &[f32],
    keys: &[E],
    values: &[E],
    mask: Option<&[f32]>,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    assert!(q.len() == HEAD_DIM && out.len() == HEAD_DIM && keys.len() == values.len() && keys.len() % HEAD_DIM == 0);
    let len = keys.len() / HEAD_DIM;
    assert!(mask.is_none_or(|m| m.len() == len));
    let row_bytes = HEAD_DIM * std::mem::size_of::<E>();
    let query: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(q.as_ptr().add(8 * i)));
    scores.clear();
    for j in 0..len {
        // In bounds: position j's HEAD_DIM elements end at (j + 1)·HEAD_DIM <= keys.len().
        let key = keys.as_ptr().add(j * HEAD_DIM);
        prefetch_ahead(key, row_bytes);
        let (mut a, mut b) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for i in (0..8).step_by(2) {
            a = _mm256_fmadd_ps(query[i], load8(key.add(8 * i)), a);
            b = _mm256_fmadd_ps(query[i + 1], load8(key.add(8 * i + 8)), b);
        }
        scores.push(sum8(_mm256_add_ps(a, b)) + mask.map_or(0.0, |m| m[j]));
    }
    softmax(scores);
    let mut acc = [_mm256_setzero_ps(); 8];
    for (j, &p) in scores.iter().enumerate() {
        let value = values.as_ptr().add(j * HEAD_DIM);
        prefetch_ahead(value, row_bytes);
        let p = _mm256_set1_ps(p);
        for (i, acc) in acc.iter_mut().enumerate() {
            *acc = _mm256_fmadd_ps(p, load8(value.add(8 * i)), *acc);
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.as_mut_ptr().add(8 * i), *acc);
    }
}
