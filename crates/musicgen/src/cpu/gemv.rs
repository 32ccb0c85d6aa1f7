//! Few-row matrix products `xs (rows, in) · weight (out, in)ᵀ`: a decoder step's projections.
//!
//! A step multiplies 2 to 8 activation rows by each weight matrix, so its cost is reading the
//! weights once from memory: every weight row is streamed once and dotted with all activation
//! rows, the output features split over rayon's threads in blocks. f32 weights are dotted as
//! they are; half-precision weights are widened to f32 as read and summed in f32. AVX2 on x86-64
//! CPUs that have it, NEON on aarch64 (f32 weights too: the portable `dot` is what x86 runs for
//! them), the portable loops elsewhere.

use rayon::prelude::*;

use super::elem::Element;

/// Up to this many activation rows the streaming products pay; beyond it gemm's tiling reuses
/// each weight load across enough rows to win.
pub(crate) const MAX_ROWS: usize = 8;

/// Output features per rayon task: large enough to amortise scheduling, small enough to split
/// the narrowest projection (hidden 1024) over the cores.
const OUTPUTS_PER_TASK: usize = 64;

/// Independent partial sums per dot product, so the adds vectorise and pipeline.
const LANES: usize = 16;

/// Weights widened at a time: a separate conversion loop over a fixed-size buffer is what the
/// compiler vectorises well (converting inside the product loop it does element by element).
const WIDEN_CHUNK: usize = 64;

/// `xs (rows, in) · weight (out, in)ᵀ` as a row-major `(rows, out)` buffer, f32 weights.
pub(crate) fn product_f32(weight: &[f32], xs: &[f32], rows: usize, in_dim: usize) -> Vec<f32> {
    #[cfg(target_arch = "aarch64")]
    if super::has_neon() {
        return product_widened(weight, xs, rows, in_dim);
    }
    by_output_blocks(weight.len() / in_dim, rows, |first, out| {
        for (o, sums) in out.chunks_exact_mut(rows).enumerate() {
            let w = &weight[(first + o) * in_dim..(first + o + 1) * in_dim];
            for (r, sum) in sums.iter_mut().enumerate() {
                *sum = dot(w, &xs[r * in_dim..(r + 1) * in_dim]);
            }
        }
    })
}

/// [`product_f32`] for half-precision weights, each widened to f32 once as it is read.
pub(crate) fn product_widened<E: Element>(weight: &[E], xs: &[f32], rows: usize, in_dim: usize) -> Vec<f32> {
    by_output_blocks(weight.len() / in_dim, rows, |first, out| {
        let outputs = out.len() / rows;
        widened_block(&weight[first * in_dim..(first + outputs) * in_dim], xs, rows, in_dim, out);
    })
}

/// Runs `block(first_output, sums)` over blocks of [`OUTPUTS_PER_TASK`] outputs in parallel,
/// each writing `rows` sums per output (feature-major, so that tasks own disjoint slices), and
/// transposes the sums into a row-major `(rows, out_dim)` buffer.
fn by_output_blocks(out_dim: usize, rows: usize, block: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut by_feature = vec![0f32; out_dim * rows];
    by_feature
        .par_chunks_mut(OUTPUTS_PER_TASK * rows)
        .enumerate()
        .for_each(|(index, out)| block(index * OUTPUTS_PER_TASK, out));
    let mut out = vec![0f32; rows * out_dim];
    for (o, sums) in by_feature.chunks_exact(rows).enumerate() {
        for (r, &s) in sums.iter().enumerate() {
            out[r * out_dim + o] = s;
        }
    }
    out
}

/// Independent partial sums, so the adds vectorise and pipeline.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
    for (ca, cb) in a_chunks.zip(b_chunks) {
        for i in 0..LANES {
            acc[i] += ca[i] * cb[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// One task's outputs, `rows` sums per weight row, feature-major: AVX2 or NEON where the CPU has
/// it, else the portable loops.
fn widened_block<E: Element>(weights: &[E], xs: &[f32], rows: usize, in_dim: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() {
        // SAFETY: the CPU has the features the kernel is compiled for.
        unsafe { super::avx2::gemv_block(weights, xs, rows, in_dim, out) };
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if super::has_neon() {
        // SAFETY: the CPU has the features the kernel is compiled for.
        unsafe { super::neon::gemv_block(weights, xs, rows, in_dim, out) };
        return;
    }
    portable_block(weights, xs, rows, in_dim, out);
}

/// Dispatches on the row count so that each case's accumulators are a fixed-size array the
/// compiler keeps in registers: 16 lanes per row up to 4 rows, 8 beyond (at most 64 floats).
fn portable_block<E: Element>(weights: &[E], xs: &[f32], rows: usize, in_dim: usize, out: &mut [f32]) {
    match rows {
        1 => portable_rows::<E, 1, 16>(weights, xs, in_dim, out),
        2 => portable_rows::<E, 2, 16>(weights, xs, in_dim, out),
        3 => portable_rows::<E, 3, 16>(weights, xs, in_dim, out),
        4 => portable_rows::<E, 4, 16>(weights, xs, in_dim, out),
        5 => portable_rows::<E, 5, 8>(weights, xs, in_dim, out),
        6 => portable_rows::<E, 6, 8>(weights, xs, in_dim, out),
        7 => portable_rows::<E, 7, 8>(weights, xs, in_dim, out),
        8 => portable_rows::<E, 8, 8>(weights, xs, in_dim, out),
        _ => unreachable!("at most MAX_ROWS rows take the streaming path"),
    }
}

#[inline(always)]
fn portable_rows<E: Element, const ROWS: usize, const LANES_PER_ROW: usize>(
    weights: &[E],
    xs: &[f32],
    in_dim: usize,
    out: &mut [f32],
) {
    let xs: [&[f32]; ROWS] = std::array::from_fn(|r| &xs[r * in_dim..(r + 1) * in_dim]);
    let body = in_dim - in_dim % WIDEN_CHUNK;
    let mut wide = [0f32; WIDEN_CHUNK];
    for (w, sums) in weights.chunks_exact(in_dim).zip(out.chunks_exact_mut(ROWS)) {
        let mut acc = [[0f32; LANES_PER_ROW]; ROWS];
        for (chunk, start) in w[..body].chunks_exact(WIDEN_CHUNK).zip((0..).step_by(WIDEN_CHUNK)) {
            for (wide, &element) in wide.iter_mut().zip(chunk) {
                *wide = element.to_f32();
            }
            for (acc, x) in acc.iter_mut().zip(&xs) {
                let x = &x[start..start + WIDEN_CHUNK];
                for (w, x) in wide.chunks_exact(LANES_PER_ROW).zip(x.chunks_exact(LANES_PER_ROW)) {
                    for i in 0..LANES_PER_ROW {
                        acc[i] += w[i] * x[i];
                    }
                }
            }
        }
        for ((sum, acc), x) in sums.iter_mut().zip(&acc).zip(&xs) {
            let tail: f32 = w[body..].iter().zip(&x[body..]).map(|(&w, x)| w.to_f32() * x).sum();
            *sum = acc.iter().sum::<f32>() + tail;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    fn random(len: usize, seed: u32) -> Vec<f32> {
        (0..len).map(|i| ((i as f32 * 0.618 + seed as f32) * 12.9898).sin()).collect()
    }

    /// The weights' magnitude: int8 codes spread over their whole range, floats within ±1.
    fn spread<E: Element>() -> f32 {
        if E::FORMAT == crate::cpu::elem::Format::I8 {
            127.0
        } else {
            1.0
        }
    }

    fn weights<E: Element>(len: usize, seed: u32) -> Vec<E> {
        random(len, seed).into_iter().map(|v| E::from_f32(v * spread::<E>())).collect()
    }

    #[test]
    fn portable_loops_match_the_dispatched_ones() {
        // On an AVX2 machine or on aarch64 (NEON; CI runs it under qemu) the dispatched loops
        // are the intrinsics; elsewhere both are the portable ones and this compares them with
        // themselves.
        fn check<E: Element>() {
            let (out_dim, in_dim) = (10, 1000);
            let weight: Vec<E> = weights(out_dim * in_dim, 1);
            for rows in 1..=MAX_ROWS {
                let xs = random(rows * in_dim, rows as u32 + 2);
                let (mut a, mut b) = (vec![0f32; rows * out_dim], vec![0f32; rows * out_dim]);
                widened_block(&weight, &xs, rows, in_dim, &mut a);
                portable_block(&weight, &xs, rows, in_dim, &mut b);
                for (x, y) in a.iter().zip(&b) {
                    assert!(
                        (x - y).abs() <= 1e-4 * y.abs().max(spread::<E>()),
                        "{:?} {rows} rows: {x} vs {y}",
                        E::FORMAT
                    );
                }
            }
        }
        check::<bf16>();
        check::<f16>();
        check::<f32>();
        check::<i8>();
    }

    #[test]
    fn products_match_sums_in_f64() {
        // The public entry points, dispatch and the transpose included: several rayon blocks
        // and a tail that no vector width divides (in_dim 1000).
        fn check<E: Element>(product: fn(&[E], &[f32], usize, usize) -> Vec<f32>) {
            let (out_dim, in_dim) = (3 * OUTPUTS_PER_TASK + 5, 1000);
            let weight: Vec<E> = weights(out_dim * in_dim, 7);
            for rows in [1, 4, 5, MAX_ROWS] {
                let xs = random(rows * in_dim, rows as u32);
                let got = product(&weight, &xs, rows, in_dim);
                assert_eq!(got.len(), rows * out_dim);
                for (index, &got) in got.iter().enumerate() {
                    let (r, o) = (index / out_dim, index % out_dim);
                    let want: f64 =
                        (0..in_dim).map(|i| weight[o * in_dim + i].to_f32() as f64 * xs[r * in_dim + i] as f64).sum();
                    let gap = (got as f64 - want).abs();
                    assert!(
                        gap <= 1e-4 * want.abs().max(spread::<E>() as f64),
                        "{:?} {rows} rows, ({r}, {o}): {got} vs {want}",
                        E::FORMAT
                    );
                }
            }
        }
        check::<f32>(product_f32);
        check::<bf16>(product_widened);
        check::<f16>(product_widened);
        check::<i8>(product_widened);
    }
}
