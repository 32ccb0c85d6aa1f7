//! The aarch64 kernels (Advanced SIMD, [`super::has_neon`]): each element format widened 4 at a
//! time into fused multiply-adds, the same sums as the AVX2 kernels and the portable loops (up to
//! summation order). Only base Advanced SIMD instructions are used: bf16 widens by a shift and
//! f16 by `FCVTL`, both exact, so no optional extension needs a run-time check (FEAT_BF16's
//! `BFDOT` would round its products, unlike the other paths). Unlike the AVX2 kernels these do
//! not prefetch: that was measured on x86 and nothing has been measured on an Arm core yet.

use std::arch::aarch64::*;
use std::arch::asm;

use super::attention::softmax;
use super::elem::{Element, Format};

/// The head size [`attend`] is written for: every published MusicGen's (1024/16, 1536/24,
/// 2048/32); the query and the output each fit in 16 of the 32 registers.
pub(super) const HEAD_DIM: usize = 64;

/// 4 elements from `at` as f32: f32 loaded, bf16 bits shifted into the top half of each lane,
/// f16 converted by `FCVTL` (Rust's f16 vector types are not stable, so through `asm!`), int8
/// sign-extended and converted.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn load4<E: Element>(at: *const E) -> float32x4_t {
    match E::FORMAT {
        Format::F32 => vld1q_f32(at as *const f32),
        Format::Bf16 => vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(at as *const u16))),
        Format::F16 => {
            let half = vld1_u16(at as *const u16);
            let wide: float32x4_t;
            asm!("fcvtl {wide:v}.4s, {half:v}.4h", half = in(vreg) half, wide = lateout(vreg) wide,
                 options(pure, nomem, nostack, preserves_flags));
            wide
        }
        Format::I8 => {
            // Four bytes, sign-extended twice (8 to 16 to 32 bits) and converted: exact.
            let bytes = (at as *const u32).read_unaligned();
            let wide = vmovl_s8(vcreate_s8(bytes as u64));
            vcvtq_f32_s32(vmovl_s16(vget_low_s16(wide)))
        }
    }
}

/// [`super::gemv`]'s block of outputs, `rows` sums per weight row, feature-major: four 4-float
/// accumulators per row up to 4 rows (independent chains hide the FMA latency), two beyond
/// (16 of the 32 registers in all).
///
/// # Safety
/// The CPU must have Advanced SIMD ([`super::has_neon`]).
#[target_feature(enable = "neon")]
pub(super) unsafe fn gemv_block<E: Element>(weights: &[E], xs: &[f32], rows: usize, in_dim: usize, out: &mut [f32]) {
    match rows {
        1 => gemv_rows::<E, 1, 4>(weights, xs, in_dim, out),
        2 => gemv_rows::<E, 2, 4>(weights, xs, in_dim, out),
        3 => gemv_rows::<E, 3, 4>(weights, xs, in_dim, out),
        4 => gemv_rows::<E, 4, 4>(weights, xs, in_dim, out),
        5 => gemv_rows::<E, 5, 2>(weights, xs, in_dim, out),
        6 => gemv_rows::<E, 6, 2>(weights, xs, in_dim, out),
        7 => gemv_rows::<E, 7, 2>(weights, xs, in_dim, out),
        8 => gemv_rows::<E, 8, 2>(weights, xs, in_dim, out),
        _ => unreachable!("at most MAX_FAST_ROWS rows take the streaming path"),
    }
}

#[target_feature(enable = "neon")]
#[inline]
unsafe fn gemv_rows<E: Element, const ROWS: usize, const VECS: usize>(
    weights: &[E],
    xs: &[f32],
    in_dim: usize,
    out: &mut [f32],
) {
    assert!(xs.len() >= ROWS * in_dim && out.len() * in_dim == weights.len() * ROWS);
    let step = 4 * VECS;
    let body = in_dim - in_dim % step;
    for (w, sums) in weights.chunks_exact(in_dim).zip(out.chunks_exact_mut(ROWS)) {
        let mut acc = [[vdupq_n_f32(0.0); VECS]; ROWS];
        for i in (0..body).step_by(step) {
            for (v, lane) in (i..i + step).step_by(4).enumerate() {
                // In bounds: lane + 4 <= body <= in_dim, the length of `w` and of each row of `xs`.
                let wide = load4(w.as_ptr().add(lane));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = vld1q_f32(xs.as_ptr().add(r * in_dim + lane));
                    acc[v] = vfmaq_f32(acc[v], wide, x);
                }
            }
        }
        for (r, (sum, acc)) in sums.iter_mut().zip(&acc).enumerate() {
            let total = acc[1..].iter().fold(acc[0], |t, &a| vaddq_f32(t, a));
            let x = &xs[r * in_dim..(r + 1) * in_dim];
            let tail: f32 = w[body..].iter().zip(&x[body..]).map(|(&w, x)| w.to_f32() * x).sum();
            *sum = vaddvq_f32(total) + tail;
        }
    }
}

/// softmax(q·Kᵀ + mask)·V for one 64-wide query over `keys.len() / 64` positions, into `out`:
/// keys and values widened 4 at a time and fused into the products, nothing staged in memory
/// but the scores.
///
/// # Safety
/// The CPU must have Advanced SIMD ([`super::has_neon`]).
#[target_feature(enable = "neon")]
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
    let query: [float32x4_t; 16] = std::array::from_fn(|i| vld1q_f32(q.as_ptr().add(4 * i)));
    scores.clear();
    for j in 0..len {
        // In bounds: position j's HEAD_DIM elements end at (j + 1)·HEAD_DIM <= keys.len().
        let key = keys.as_ptr().add(j * HEAD_DIM);
        let mut acc = [vdupq_n_f32(0.0); 4];
        for i in (0..16).step_by(4) {
            for (c, acc) in acc.iter_mut().enumerate() {
                *acc = vfmaq_f32(*acc, query[i + c], load4(key.add(4 * (i + c))));
            }
        }
        let total = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
        scores.push(vaddvq_f32(total) + mask.map_or(0.0, |m| m[j]));
    }
    softmax(scores);
    let mut acc = [vdupq_n_f32(0.0); 16];
    for (j, &p) in scores.iter().enumerate() {
        let value = values.as_ptr().add(j * HEAD_DIM);
        let p = vdupq_n_f32(p);
        for (i, acc) in acc.iter_mut().enumerate() {
            *acc = vfmaq_f32(*acc, p, load4(value.add(4 * i)));
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        vst1q_f32(out.as_mut_ptr().add(4 * i), *acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    /// Every half value through [`load4`] against the portable widening ([`Element::to_f32`],
    /// itself checked against `half` for every value).
    fn widens_every_value<E: Element>(from_bits: fn(u16) -> E) {
        assert!(super::super::has_neon());
        let all: Vec<E> = (0..=u16::MAX).map(from_bits).collect();
        for (chunk, start) in all.chunks_exact(4).zip((0u32..).step_by(4)) {
            let mut got = [0f32; 4];
            // SAFETY: the CPU has Advanced SIMD (asserted); the chunk holds 4 elements.
            unsafe { vst1q_f32(got.as_mut_ptr(), load4(chunk.as_ptr())) };
            for (i, (&got, &element)) in got.iter().zip(chunk).enumerate() {
                let want = element.to_f32();
                let bits = start + i as u32;
                if want.is_nan() {
                    assert!(got.is_nan(), "{:?} {bits:#06x}", E::FORMAT);
                } else {
                    assert_eq!(got.to_bits(), want.to_bits(), "{:?} {bits:#06x}", E::FORMAT);
                }
            }
        }
    }

    #[test]
    fn loads_widen_every_half_value_exactly() {
        widens_every_value(bf16::from_bits);
        widens_every_value(f16::from_bits);
    }
}
