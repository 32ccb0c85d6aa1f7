//! Attention in f32 for the CPU steps and prefills of a half-precision decoder.
//!
//! On the CPU a bf16 or f16 decoder keeps its projection weights and its self-attention cache in
//! half precision (half the bytes a step reads) and everything else in f32: candle's CPU kernels
//! convert every half-precision element on its own, so a bf16 step spent more time in residual
//! adds, GELU and the two attention products (gemm on tiny bf16 matrices) than in reading its
//! weights. Here each (row, query, head) attends on one core: scores, softmax and the weighted
//! sum in f32 over keys and values widened as read, the tasks split over rayon.

use rayon::prelude::*;

use super::elem::Element;
use super::gemv::dot;

/// Below this many multiply-adds (query · keys and probabilities · values of every head) an
/// attention runs on the calling thread: cheaper than waking the pool (the cross-attention over
/// a short prompt, the first self-attention steps).
const PARALLEL_WORK: usize = 1 << 16;

/// One layer's self-attention keys and values, `[row][head][position][head_dim]` each, rounded
/// to `E` as they are appended (as a cache in the decoder dtype would be). Capacity doubles when
/// a request runs past the positions it was started with.
#[derive(Debug, Clone)]
pub(crate) struct Cache<E> {
    keys: Vec<E>,
    values: Vec<E>,
    rows: usize,
    heads: usize,
    head_dim: usize,
    capacity: usize,
    len: usize,
}

impl<E: Element> Cache<E> {
    pub(crate) fn new(rows: usize, heads: usize, head_dim: usize, capacity: usize) -> Self {
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

    /// Positions held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Appends `n` positions from the stacked projection `qkv` `(rows, n, 3·hidden)` (q, k, v)
    /// and returns the attention of each new query over the positions up to its own (causal),
    /// `(rows, n, hidden)`.
    pub(crate) fn append_and_attend(&mut self, qkv: &[f32], n: usize) -> Vec<f32> {
        let (rows, hidden) = (self.rows, self.heads * self.head_dim);
        assert_eq!(qkv.len(), rows * n * 3 * hidden, "n positions of stacked q, k, v per row");
        while self.len + n > self.capacity {
            self.grow();
        }
        let (capacity, head_dim, len) = (self.capacity, self.head_dim, self.len);
        for (index, position) in qkv.chunks_exact(3 * hidden).enumerate() {
            let (r, i) = (index / n, index % n);
            for h in 0..self.heads {
                let at = ((r * self.heads + h) * capacity + len + i) * head_dim;
                let k = &position[hidden + h * head_dim..hidden + (h + 1) * head_dim];
                let v = &position[2 * hidden + h * head_dim..2 * hidden + (h + 1) * head_dim];
                for (dst, &src) in self.keys[at..at + head_dim].iter_mut().zip(k) {
                    *dst = E::from_f32(src);
                }
                for (dst, &src) in self.values[at..at + head_dim].iter_mut().zip(v) {
                    *dst = E::from_f32(src);
                }
            }
        }
        self.len += n;
        Heads {
            rows,
            heads: self.heads,
            head_dim,
            queries_per_row: n,
            len: self.len,
            causal: true,
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

/// Cross-attention of the queries `q` `(rows, queries_per_row, heads·head_dim)` over a memory's
/// keys and values `kv` `(2, rows, heads, len, head_dim)`, with an additive `mask` `(rows, len)`
/// where given; `(rows, queries_per_row, heads·head_dim)`.
pub(crate) fn cross_attention(
    q: &[f32],
    kv: &[f32],
    mask: Option<&[f32]>,
    rows: usize,
    queries_per_row: usize,
    heads: usize,
    len: usize,
) -> Vec<f32> {
    let hidden = q.len() / (rows * queries_per_row);
    let head_dim = hidden / heads;
    let (keys, values) = kv.split_at(rows * heads * len * head_dim);
    Heads {
        rows,
        heads,
        head_dim,
        queries_per_row,
        len,
        causal: false,
        queries: q,
        query_stride: hidden,
        keys,
        values,
        block_stride: len * head_dim,
        mask,
    }
    .attend()
}

/// Where one attention's operands are: the query `i` of row `r`, head `h` at
/// `(r·queries_per_row + i)·query_stride + h·head_dim`; the keys and values of row `r`, head `h`
/// at `(r·heads + h)·block_stride`, `len` of them, of which a causal query `i` sees the first
/// `len − queries_per_row + 1 + i`; row `r`'s additive mask, if any, at `r·len`.
struct Heads<'a, E> {
    rows: usize,
    heads: usize,
    head_dim: usize,
    queries_per_row: usize,
    len: usize,
    causal: bool,
    queries: &'a [f32],
    query_stride: usize,
    keys: &'a [E],
    values: &'a [E],
    block_stride: usize,
    mask: Option<&'a [f32]>,
}

impl<E: Element> Heads<'_, E> {
    /// `(rows, queries_per_row, heads·head_dim)`: each head's output in its slice of the
    /// position, as transformers' transpose and reshape back lay it out.
    fn attend(&self) -> Vec<f32> {
        let (heads, head_dim, len, queries) = (self.heads, self.head_dim, self.len, self.queries_per_row);
        let mut out = vec![0f32; self.rows * queries * heads * head_dim];
        let run = |(index, out): (usize, &mut [f32]), scratch: &mut Scratch| {
            let (position, h) = (index / heads, index % heads);
            let (r, i) = (position / queries, position % queries);
            let seen = if self.causal { len + 1 + i - queries } else { len };
            let query = &self.queries[position * self.query_stride + h * head_dim..][..head_dim];
            let block = (r * heads + h) * self.block_stride;
            let keys = &self.keys[block..block + seen * head_dim];
            let values = &self.values[block..block + seen * head_dim];
            let mask = self.mask.map(|m| &m[r * len..r * len + seen]);
            scratch.attend(query, keys, values, mask, out);
        };
        let work = 2 * self.rows * queries * heads * len * head_dim;
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
    /// softmax(q·Kᵀ + mask)·V for one query, `out` `(head_dim)`: AVX2 or NEON for 64-wide heads
    /// where the CPU has it, else the portable loops.
    fn attend<E: Element>(&mut self, q: &[f32], keys: &[E], values: &[E], mask: Option<&[f32]>, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if q.len() == super::avx2::HEAD_DIM && super::has_avx2() {
            // SAFETY: the CPU has the features the kernel is compiled for.
            unsafe { super::avx2::attend(q, keys, values, mask, &mut self.scores, out) };
            return;
        }
        #[cfg(target_arch = "aarch64")]
        if q.len() == super::neon::HEAD_DIM && super::has_neon() {
            // SAFETY: the CPU has the features the kernel is compiled for.
            unsafe { super::neon::attend(q, keys, values, mask, &mut self.scores, out) };
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
pub(super) fn softmax(scores: &mut [f32]) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};
    use half::{bf16, f16};

    use crate::cpu::elem::Element;

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
            let got = cross_attention(&values(&q), &values(&kv), Some(&mask), rows, 1, heads, len);
            let gap = max_gap(&got, &reference(&q, &k, &v, Some(&mask_t)));
            assert!(gap < 1e-5, "{rows}x{heads}x{len}x{d} masked: {gap}");
            let got = cross_attention(&values(&q), &values(&kv), None, rows, 1, heads, len);
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
            let got = cache.append_and_attend(&values(&qkv), 1);
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
        // On an AVX2 machine or on aarch64 (NEON) a 64-wide head takes the intrinsics;
        // elsewhere both are portable.
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

    #[test]
    fn several_positions_at_once_attend_causally() {
        // Appending 1, then 4, then 3 positions gives what appending them one by one gives:
        // each query sees the positions up to its own.
        fn check<E: Element>(heads: usize, d: usize) {
            let (rows, hidden) = (2, heads * d);
            let blocks = [1, 4, 3];
            let total: usize = blocks.iter().sum();
            let qkv = random(&[rows, total, 3 * hidden]);
            let mut one_by_one = Cache::<E>::new(rows, heads, d, 2);
            let mut expected = vec![Vec::new(); rows];
            for p in 0..total {
                let position = values(&qkv.narrow(1, p, 1).unwrap());
                let out = one_by_one.append_and_attend(&position, 1);
                for (r, out) in out.chunks_exact(hidden).enumerate() {
                    expected[r].extend_from_slice(out);
                }
            }
            let mut at_once = Cache::<E>::new(rows, heads, d, 2);
            let mut got = vec![Vec::new(); rows];
            let mut start = 0;
            for n in blocks {
                let block = values(&qkv.narrow(1, start, n).unwrap());
                let out = at_once.append_and_attend(&block, n);
                for (r, out) in out.chunks_exact(n * hidden).enumerate() {
                    got[r].extend_from_slice(out);
                }
                start += n;
            }
            assert_eq!(at_once.len(), total);
            let gap = max_gap(&got.concat(), &expected.concat());
            assert!(gap < 1e-6, "{:?} {heads}x{d}: {gap}", E::FORMAT);
        }
        check::<f32>(2, 4);
        check::<bf16>(2, 64);
        check::<f16>(3, 8);
    }

    #[test]
    fn cross_attention_takes_several_queries_per_row() {
        let (rows, queries, heads, len, d) = (2, 3, 2, 5, 4);
        let q = random(&[rows, queries, heads * d]);
        let kv = random(&[2, rows, heads, len, d]);
        let mask: Vec<f32> = (0..rows * len).map(|i| if i % len < 2 { 0.0 } else { f32::MIN }).collect();
        let got = cross_attention(&values(&q), &values(&kv), Some(&mask), rows, queries, heads, len);
        for i in 0..queries {
            let one = values(&q.narrow(1, i, 1).unwrap());
            let expected = cross_attention(&one, &values(&kv), Some(&mask), rows, 1, heads, len);
            let got: Vec<f32> = got
                .chunks_exact(heads * d)
                .enumerate()
                .filter(|(p, _)| p % queries == i)
                .flat_map(|(_, v)| v.to_vec())
                .collect();
            assert_eq!(got, expected, "query {i}");
        }
    }
}
