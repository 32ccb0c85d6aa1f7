//! Single-query attention for CPU steps of a half-precision decoder.
//!
//! On the CPU a bf16 or f16 decoder keeps its projection weights and its self-attention cache in
//! half precision (half the bytes a step reads) and everything else in f32: candle's CPU kernels
//! convert every half-precision element on its own, so a bf16 step spent more time in residual
//! adds, GELU and the two attention products (gemm on tiny bf16 matrices) than in reading its
//! weights. Here each (row, head) attends on one core: keys and values widened to f32 into a
//! scratch buffer, scores, softmax and the weighted sum in f32, rows × heads split over rayon.

use half::{bf16, f16};
use rayon::prelude::*;

use crate::linear::{widen_bf16, widen_f16};

/// Below this many multiply-adds (query · keys and probabilities · values of every head) an
/// attention runs on the calling thread: cheaper than waking the pool (the cross-attention over
/// a short prompt, the first self-attention steps).
const PARALLEL_WORK: usize = 1 << 16;

/// The element formats, for code that loads several at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    F32,
    Bf16,
    F16,
}

/// What caches and memories hold: f32 (cross-attention keys and values) or a half format
/// (self-attention caches).
pub(super) trait Element: Copy + Default + Send + Sync + 'static {
    const FORMAT: Format;
    fn to_f32(self) -> f32;
    fn from_f32(value: f32) -> Self;
}

impl Element for f32 {
    const FORMAT: Format = Format::F32;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(value: f32) -> Self {
        value
    }
}

impl Element for bf16 {
    const FORMAT: Format = Format::Bf16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        widen_bf16(self.to_bits())
    }
    fn from_f32(value: f32) -> Self {
        bf16::from_f32(value)
    }
}

impl Element for f16 {
    const FORMAT: Format = Format::F16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        widen_f16(self.to_bits())
    }
    fn from_f32(value: f32) -> Self {
        f16::from_f32(value)
    }
}

/// One layer's self-attention keys and values, `[row][head][position][head_dim]` each, rounded
/// to `E` as they are appended (as a cache in the decoder dtype would be). Capacity doubles when
/// a request runs past the steps it was started with.
#[derive(Debug, Clone)]
pub(super) struct Cache<E> {
    keys: Vec<E>,
    values: Vec<E>,
    rows: usize,
    heads: usize,
    head_dim: usize,
    capacity: usize,
    len: usize,
}

impl<E: Element> Cache<E> {
    pub(super) fn new(rows: usize, heads: usize, head_dim: usize, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let size = rows * heads * capacity * head_dim;
        Self {
            keys: vec![E::default(); size],
            values: vec![E::default(); size],
            rows,
            heads,
            head_dim,
            capacity,
            len: 0,
        }
    }

    /// Appends one position from the stacked projection `qkv` `(rows, 3·hidden)` (q, k, v)
    /// and returns the attention of its queries over every position so far, `(rows, hidden)`.
    pub(super) fn step(&mut self, qkv: &[f32]) -> Vec<f32> {
        let (rows, hidden) = (self.rows, self.heads * self.head_dim);
        assert_eq!(qkv.len(), rows * 3 * hidden, "one position of stacked q, k, v per row");
        if self.len == self.capacity {
            self.grow();
        }
        let (capacity, head_dim, len) = (self.capacity, self.head_dim, self.len);
        for (r, row) in qkv.chunks_exact(3 * hidden).enumerate() {
            for h in 0..self.heads {
                let at = ((r * self.heads + h) * capacity + len) * head_dim;
                let k = &row[hidden + h * head_dim..hidden + (h + 1) * head_dim];
                let v = &row[2 * hidden + h * head_dim..2 * hidden + (h + 1) * head_dim];
                for (dst, &src) in self.keys[at..at + head_dim].iter_mut().zip(k) {
                    *dst = E::from_f32(src);
                }
                for (dst, &src) in self.values[at..at + head_dim].iter_mut().zip(v) {
                    *dst = E::from_f32(src);
                }
            }
        }
        self.len += 1;
        Heads {
            rows,
            heads: self.heads,
            head_dim,
            len: self.len,
            queries: qkv,
            query_stride: 3 * hidden,
            keys: &self.keys,
            values: &self.values,
            block_stride: capacity * head_dim,
            mask: None,
        }
        .attend()
    }

    fn grow(&mut self) {
        let (old, capacity) = (self.capacity, self.capacity * 2);
        let blocks = self.rows * self.heads;
        let regrow = |data: &[E]| {
            let mut grown = vec![E::default(); blocks * capacity * self.head_dim];
            for (dst, src) in
                grown.chunks_exact_mut(capacity * self.head_dim).zip(data.chunks_exact(old * self.head_dim))
            {
                dst[..src.len()].copy_from_slice(src);
            }
            grown
        };
        self.keys = regrow(&self.keys);
        self.values = regrow(&self.values);
        self.capacity = capacity;
    }
}

/// Cross-attention of the queries `q` `(rows, heads·head_dim)` over a memory's keys and values
/// `kv` `(2, rows, heads, len, head_dim)`, with an additive `mask` `(rows, len)` where given.
pub(super) fn cross_attention(
    q: &[f32],
    kv: &[f32],
    mask: Option<&[f32]>,
    rows: usize,
    heads: usize,
    len: usize,
) -> Vec<f32> {
    let hidden = q.len() / rows;
    let head_dim = hidden / heads;
    let (keys, values) = kv.split_at(rows * heads * len * head_dim);
    Heads {
        rows,
        heads,
        head_dim,
        len,
        queries: q,
        query_stride: hidden,
        keys,
        values,
        block_stride: len * head_dim,
        mask,
    }
    .attend()
}

/// Where one attention's operands are: the query of row `r`, head `h` at
/// `r·query_stride + h·head_dim`; its `len` keys and values at `(r·heads + h)·block_stride`;
/// row `r`'s additive mask, if any, at `r·len`.
struct Heads<'a, E> {
    rows: usize,
    heads: usize,
    head_dim: usize,
    len: usize,
    queries: &'a [f32],
    query_stride: usize,
    keys: &'a [E],
    values: &'a [E],
    block_stride: usize,
    mask: Option<&'a [f32]>,
}

impl<E: Element> Heads<'_, E> {
    /// `(rows, heads·head_dim)`: each head's output in its slice of the row, as transformers'
    /// transpose and reshape back lay it out.
    fn attend(&self) -> Vec<f32> {
        let (heads, head_dim, len) = (self.heads, self.head_dim, self.len);
        let mut out = vec![0f32; self.rows * heads * head_dim];
        let run = |(index, out): (usize, &mut [f32]), scratch: &mut Scratch| {
            let (r, h) = (index / heads, index % heads);
            let query = &self.queries[r * self.query_stride + h * head_dim..][..head_dim];
            let block = index * self.block_stride;
            let keys = &self.keys[block..block + len * head_dim];
            let values = &self.values[block..block + len * head_dim];
            let mask = self.mask.map(|m| &m[r * len..(r + 1) * len]);
            scratch.attend(query, keys, values, mask, out);
        };
        let work = 2 * self.rows * heads * len * head_dim;
        if work < PARALLEL_WORK {
            let mut scratch = Scratch::default();
            out.chunks_exact_mut(head_dim).enumerate().for_each(|task| run(task, &mut scratch));
        } else {
            out.par_chunks_mut(head_dim)
                .enumerate()
                .for_each_init(Scratch::default, |scratch, task| run(task, scratch));
        }
        out
    }
}

/// A task's reusable buffers: the widened keys or values, and the scores.
#[derive(Default)]
struct Scratch {
    wide: Vec<f32>,
    scores: Vec<f32>,
}

impl Scratch {
    /// softmax(q·Kᵀ + mask)·V for one query, `out` `(head_dim)`.
    fn attend<E: Element>(&mut self, q: &[f32], keys: &[E], values: &[E], mask: Option<&[f32]>, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if q.len() == avx2::HEAD_DIM && avx2::available() {
            // SAFETY: the CPU has the features the kernel is compiled for.
            unsafe { avx2::attend(q, keys, values, mask, &mut self.scores, out) };
            return;
        }
        self.attend_portable(q, keys, values, mask, out);
    }

    fn attend_portable<E: Element>(
        &mut self,
        q: &[f32],
        keys: &[E],
        values: &[E],
        mask: Option<&[f32]>,
        out: &mut [f32],
    ) {
        let head_dim = q.len();
        // Widening in a loop of its own vectorises; inside the dot products it would not.
        self.wide.clear();
        self.wide.extend(keys.iter().map(|k| k.to_f32()));
        self.scores.clear();
        self.scores.extend(self.wide.chunks_exact(head_dim).map(|k| dot(q, k)));
        if let Some(mask) = mask {
            for (s, m) in self.scores.iter_mut().zip(mask) {
                *s += m;
            }
        }
        softmax(&mut self.scores);
        self.wide.clear();
        self.wide.extend(values.iter().map(|v| v.to_f32()));
        out.fill(0.0);
        for (&p, v) in self.scores.iter().zip(self.wide.chunks_exact(head_dim)) {
            for (o, &v) in out.iter_mut().zip(v) {
                *o += p * v;
            }
        }
    }
}

/// In place, in f32.
fn softmax(scores: &mut [f32]) {
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    for s in scores.iter_mut() {
        *s /= sum;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{softmax, Element, Format};

    /// The head size the kernel is written for: every published MusicGen's (1024/16, 1536/24,
    /// 2048/32); the query and the output each fit in 8 registers.
    pub(super) const HEAD_DIM: usize = 64;

    /// Bytes ahead of the loads to prefetch: as for the projections (`crate::linear`), asking
    /// for the next page early keeps a long cache streaming at the memory's speed.
    const PREFETCH_AHEAD: usize = 4096;

    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
    }

    /// 8 elements from `at` as f32.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load8<E: Element>(at: *const E) -> __m256 {
        match E::FORMAT {
            Format::F32 => _mm256_loadu_ps(at as *const f32),
            Format::Bf16 => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(
                at as *const __m128i,
            )))),
            Format::F16 => _mm256_cvtph_ps(_mm_loadu_si128(at as *const __m128i)),
        }
    }

    /// Prefetches the cache lines of the position `PREFETCH_AHEAD` bytes after `at` (a hint:
    /// addresses past the data are never dereferenced).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn prefetch_ahead<E: Element>(at: *const E) {
        let at = (at as *const i8).wrapping_add(PREFETCH_AHEAD);
        for line in (0..HEAD_DIM * std::mem::size_of::<E>()).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(line));
        }
    }

    /// [`super::Scratch::attend_portable`] for a 64-wide head: keys and values widened 8 at a
    /// time and fused into the products, nothing staged in memory but the scores.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C ([`available`]).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn attend<E: Element>(
        q: &[f32],
        keys: &[E],
        values: &[E],
        mask: Option<&[f32]>,
        scores: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        assert!(
            q.len() == HEAD_DIM && out.len() == HEAD_DIM && keys.len() == values.len() && keys.len() % HEAD_DIM == 0
        );
        let len = keys.len() / HEAD_DIM;
        assert!(mask.is_none_or(|m| m.len() == len));
        let query: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(q.as_ptr().add(8 * i)));
        scores.clear();
        for j in 0..len {
            // In bounds: position j's HEAD_DIM elements end at (j + 1)·HEAD_DIM <= keys.len().
            let key = keys.as_ptr().add(j * HEAD_DIM);
            prefetch_ahead(key);
            let (mut a, mut b) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for i in (0..8).step_by(2) {
                a = _mm256_fmadd_ps(query[i], load8(key.add(8 * i)), a);
                b = _mm256_fmadd_ps(query[i + 1], load8(key.add(8 * i + 8)), b);
            }
            let sum = _mm256_add_ps(a, b);
            let sum = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps::<1>(sum));
            let sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
            let sum = _mm_add_ss(sum, _mm_shuffle_ps::<1>(sum, sum));
            scores.push(_mm_cvtss_f32(sum) + mask.map_or(0.0, |m| m[j]));
        }
        softmax(scores);
        let mut acc = [_mm256_setzero_ps(); 8];
        for (j, &p) in scores.iter().enumerate() {
            let value = values.as_ptr().add(j * HEAD_DIM);
            prefetch_ahead(value);
            let p = _mm256_set1_ps(p);
            for (i, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(p, load8(value.add(8 * i)), *acc);
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.as_mut_ptr().add(8 * i), *acc);
        }
    }
}

/// Independent partial sums, so the adds vectorise and pipeline.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    fn random(shape: &[usize]) -> Tensor {
        Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// softmax(q·kᵀ + mask)·v with candle's f32 ops: q `(rows, heads, 1, d)`, k and v
    /// `(rows, heads, len, d)`, mask `(rows, 1, 1, len)`; `(rows, heads·d)` flat.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Vec<f32> {
        let scores = q.matmul(&k.t().unwrap()).unwrap();
        let scores = match mask {
            Some(mask) => scores.broadcast_add(mask).unwrap(),
            None => scores,
        };
        values(&candle_nn::ops::softmax_last_dim(&scores).unwrap().matmul(v).unwrap())
    }

    fn max_gap(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
    }

    #[test]
    fn cross_attention_matches_candle() {
        // Serial (short memory) and split over threads (long enough for the pool).
        for (rows, heads, len, d) in [(3, 2, 5, 4), (3, 4, 64, 64)] {
            let q = random(&[rows, heads, 1, d]);
            let kv = random(&[2, rows, heads, len, d]);
            // Row 0 attends to all, row 1 to the first two positions, row 2 to none.
            let mask: Vec<f32> = (0..rows * len)
                .map(|i| match (i / len, i % len) {
                    (0, _) => 0.0,
                    (1, p) if p < 2 => 0.0,
                    _ => f32::MIN,
                })
                .collect();
            let mask_t = Tensor::from_vec(mask.clone(), (rows, 1, 1, len), &Device::Cpu).unwrap();
            let (k, v) = (kv.get(0).unwrap(), kv.get(1).unwrap());
            let got = cross_attention(&values(&q), &values(&kv), Some(&mask), rows, heads, len);
            let gap = max_gap(&got, &reference(&q, &k, &v, Some(&mask_t)));
            assert!(gap < 1e-5, "{rows}x{heads}x{len}x{d} masked: {gap}");
            let got = cross_attention(&values(&q), &values(&kv), None, rows, heads, len);
            let gap = max_gap(&got, &reference(&q, &k, &v, None));
            assert!(gap < 1e-5, "{rows}x{heads}x{len}x{d}: {gap}");
        }
    }

    /// Runs `steps` positions through a cache started for one, against candle over the keys
    /// and values so far as the cache holds them (`round` to its element type).
    fn check_cache<E: Element>(rows: usize, heads: usize, d: usize, steps: usize, round: DType, bound: f32) {
        let hidden = heads * d;
        let mut cache = Cache::<E>::new(rows, heads, d, 1);
        let (mut keys, mut values_so_far) = (Vec::new(), Vec::new());
        for step in 0..steps {
            let qkv = random(&[rows, 1, 3 * hidden]);
            let got = cache.step(&values(&qkv));
            let split = |at: usize| {
                qkv.narrow(2, at * hidden, hidden)
                    .unwrap()
                    .reshape((rows, 1, heads, d))
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
            };
            let held = |t: Tensor| t.to_dtype(round).unwrap().to_dtype(DType::F32).unwrap();
            keys.push(held(split(1)));
            values_so_far.push(held(split(2)));
            let k = Tensor::cat(&keys, 2).unwrap();
            let v = Tensor::cat(&values_so_far, 2).unwrap();
            let gap = max_gap(
                &got,
                &reference(&split(0).contiguous().unwrap(), &k.contiguous().unwrap(), &v.contiguous().unwrap(), None),
            );
            assert!(gap < bound, "{round:?} {rows}x{heads}x{d}, position {step}: {gap}");
        }
        assert!(cache.capacity >= steps);
    }

    #[test]
    fn self_attention_cache_matches_candle_as_it_grows() {
        check_cache::<f32>(2, 2, 4, 9, DType::F32, 1e-5);
        check_cache::<bf16>(2, 2, 4, 9, DType::BF16, 1e-5);
        check_cache::<f16>(2, 2, 4, 9, DType::F16, 1e-5);
        // Enough positions for the pool.
        check_cache::<bf16>(2, 4, 64, 70, DType::BF16, 1e-5);
    }

    #[test]
    fn portable_attention_matches_the_dispatched_one() {
        // On an AVX2 machine a 64-wide head takes the intrinsics; elsewhere both are portable.
        fn check<E: Element>() {
            let len = 300;
            let q = values(&random(&[64]));
            let keys: Vec<E> = values(&random(&[len * 64])).into_iter().map(E::from_f32).collect();
            let vals: Vec<E> = values(&random(&[len * 64])).into_iter().map(E::from_f32).collect();
            let mask: Vec<f32> = (0..len).map(|j| if j % 3 == 0 { f32::MIN } else { 0.0 }).collect();
            for mask in [None, Some(&mask[..])] {
                let (mut a, mut b) = (vec![0f32; 64], vec![0f32; 64]);
                Scratch::default().attend(&q, &keys, &vals, mask, &mut a);
                Scratch::default().attend_portable(&q, &keys, &vals, mask, &mut b);
                assert!(max_gap(&a, &b) < 1e-5, "{:?}: {}", E::FORMAT, max_gap(&a, &b));
            }
        }
        check::<f32>();
        check::<bf16>();
        check::<f16>();
    }
}
