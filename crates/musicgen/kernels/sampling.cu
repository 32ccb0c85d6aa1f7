// A step's token choice on the GPU: classifier-free guidance, temperature, top-k, top-p and the
// draw, one block per (item, codebook), the same rules as `sampling::Sampler` on the host so that
// a seed gives the same music on either (up to float ties: the sums here are summed in another
// order, and exp may differ by an ulp).
//
// The host keeps each item's ChaCha stream and passes the step's uniform numbers in; the GPU keeps
// the logits, and only the chosen tokens go back.
//
// params, per item, `PARAM_STRIDE + K` doubles: guidance coefficient, top-k, top-p, temperature,
// the row of the unconditional logits (-1 for none), then one uniform number per codebook.

#include <math.h>
#include <stdint.h>

#define THREADS 1024
// Entries of the sort: the vocabulary rounded up to a power of two must fit (MusicGen's is 2048).
#define CAPACITY 2048
#define PARAM_STRIDE 5

// Sort order of (weight, index) pairs: larger weights first, equal weights by lower index, as
// the host's top-p order.
__device__ __forceinline__ bool before(double wa, int ia, double wb, int ib) {
    return wa > wb || (wa == wb && ia < ib);
}

// Block-wide reductions through one shared slot per warp.
__device__ float block_max(float v, float *scratch) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < (blockDim.x >> 5) ? scratch[lane] : -INFINITY;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    return v;
}

// Best (value, index): the larger value, on ties the lower index (torch.argmax).
__device__ void block_argmax(float &v, int &i, float *scratch_v, int *scratch_i) {
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffff, v, o);
        const int oi = __shfl_xor_sync(0xffffffff, i, o);
        if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) { scratch_v[warp] = v; scratch_i[warp] = i; }
    __syncthreads();
    v = lane < (blockDim.x >> 5) ? scratch_v[lane] : -INFINITY;
    i = lane < (blockDim.x >> 5) ? scratch_i[lane] : INT32_MAX;
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffff, v, o);
        const int oi = __shfl_xor_sync(0xffffffff, i, o);
        if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
    }
}

__device__ int block_min_int(int v, int *scratch) {
    for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(0xffffffff, v, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < (blockDim.x >> 5) ? scratch[lane] : INT32_MAX;
    for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(0xffffffff, v, o));
    return v;
}

__device__ int block_max_int(int v, int *scratch) {
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffff, v, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < (blockDim.x >> 5) ? scratch[lane] : -1;
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffff, v, o));
    return v;
}

// `sums[0..n)` becomes the inclusive prefix sums of `values`; returns the total. Each thread sums
// its own run of consecutive entries, then the runs' totals are scanned across the block.
__device__ double block_inclusive_scan(const double *values, double *sums, int n, double *scratch) {
    const int per = (n + THREADS - 1) / THREADS;
    const int first = threadIdx.x * per, last = min(first + per, n);
    double run = 0.0;
    for (int i = first; i < last; i++) run += values[i];
    // Exclusive scan of the runs: within each warp, then over the warps' totals.
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    double incl = run;
    for (int o = 1; o < 32; o <<= 1) {
        const double up = __shfl_up_sync(0xffffffff, incl, o);
        if (lane >= o) incl += up;
    }
    __syncthreads();
    if (lane == 31) scratch[warp] = incl;
    __syncthreads();
    if (warp == 0) {
        double w = lane < (THREADS >> 5) ? scratch[lane] : 0.0;
        for (int o = 1; o < 32; o <<= 1) {
            const double up = __shfl_up_sync(0xffffffff, w, o);
            if (lane >= o) w += up;
        }
        if (lane < (THREADS >> 5)) scratch[lane] = w;
    }
    __syncthreads();
    double acc = (warp > 0 ? scratch[warp - 1] : 0.0) + incl - run;
    for (int i = first; i < last; i++) {
        acc += values[i];
        sums[i] = acc;
    }
    const double total = scratch[(THREADS >> 5) - 1];
    __syncthreads();
    return total;
}

// grid (K, items), THREADS threads. logits (rows, K, vocab) f32; tokens (items, K).
extern "C" __global__ void __launch_bounds__(THREADS)
guided_sample(const float *__restrict__ logits, const double *__restrict__ params, uint32_t *__restrict__ tokens,
              int k_books, int vocab) {
    __shared__ double weight[CAPACITY];
    __shared__ double sums[CAPACITY];
    __shared__ int index[CAPACITY];
    __shared__ float scratch_f[32];
    __shared__ int scratch_i[32];
    __shared__ double scratch_d[32];

    const int c = blockIdx.x, item = blockIdx.y;
    const double *p = params + (size_t)item * (PARAM_STRIDE + k_books);
    const float coef = (float)p[0];
    const int top_k = (int)p[1];
    const double top_p = p[2], temperature = p[3];
    const int uncond_row = (int)p[4];
    const double unit = p[PARAM_STRIDE + c];
    const float *cond = logits + ((size_t)item * k_books + c) * vocab;
    const float *uncond = uncond_row >= 0 ? logits + ((size_t)uncond_row * k_books + c) * vocab : nullptr;

    // Guided scores, `u + (c - u)·s` rounded at every operation as the host computes it (no fused
    // multiply-add), so greedy picks are the host's bit for bit. Kept in `weight` for now.
    for (int i = threadIdx.x; i < vocab; i += THREADS) {
        const float s = uncond ? __fadd_rn(uncond[i], __fmul_rn(__fsub_rn(cond[i], uncond[i]), coef)) : cond[i];
        weight[i] = (double)s;
    }
    __syncthreads();

    if (top_k <= 1 || vocab <= 1) {
        float best = -INFINITY;
        int at = INT32_MAX;
        for (int i = threadIdx.x; i < vocab; i += THREADS) {
            const float s = (float)weight[i];
            if (s > best || (s == best && i < at) || at == INT32_MAX) { best = s; at = i; }
        }
        block_argmax(best, at, scratch_f, scratch_i);
        if (threadIdx.x == 0) tokens[item * k_books + c] = (uint32_t)at;
        return;
    }

    // Unnormalised softmax of scores / temperature, in f64 as on the host.
    float local_max = -INFINITY;
    for (int i = threadIdx.x; i < vocab; i += THREADS) local_max = fmaxf(local_max, (float)weight[i]);
    const double top = (double)block_max(local_max, scratch_f);
    int n = 1;
    while (n < vocab) n <<= 1;
    for (int i = threadIdx.x; i < n; i += THREADS) {
        if (i < vocab) {
            weight[i] = exp((weight[i] - top) / temperature);
            index[i] = i;
        } else {
            weight[i] = -1.0;  // padding sorts last
            index[i] = INT32_MAX;
        }
    }
    __syncthreads();

    // Bitonic sort into `before` order.
    for (int size = 2; size <= n; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int pair = threadIdx.x; pair < (n >> 1); pair += THREADS) {
                const int i = 2 * stride * (pair / stride) + (pair % stride), j = i + stride;
                const bool forward = (i & size) == 0;
                const bool swap = forward ? before(weight[j], index[j], weight[i], index[i])
                                          : before(weight[i], index[i], weight[j], index[j]);
                if (swap) {
                    const double w = weight[i];
                    weight[i] = weight[j];
                    weight[j] = w;
                    const int x = index[i];
                    index[i] = index[j];
                    index[j] = x;
                }
            }
            __syncthreads();
        }
    }

    // audiocraft's top-k: every weight below the k-th largest goes (ties stay), a prefix of the
    // sorted order.
    const double threshold = top_k < vocab ? weight[top_k - 1] : 0.0;
    for (int r = threadIdx.x; r < n; r += THREADS)
        if (r >= vocab || (top_k < vocab && weight[r] < threshold)) weight[r] = 0.0;
    __syncthreads();

    // audiocraft's top-p: in sorted order, a token goes when the mass before it exceeds p.
    // `kept` is the sorted prefix that stays.
    if (top_p > 0.0) {
        const double total = block_inclusive_scan(weight, sums, n, scratch_d);
        int first_dropped = INT32_MAX;
        for (int r = threadIdx.x; r < vocab; r += THREADS) {
            const double mass_before = r > 0 ? sums[r - 1] : 0.0;
            if (mass_before / total > top_p) first_dropped = min(first_dropped, r);
        }
        const int kept = block_min_int(first_dropped, scratch_i);
        for (int r = threadIdx.x; r < n; r += THREADS)
            if (r >= kept) weight[r] = 0.0;
        __syncthreads();
    }

    // Back to vocabulary order for the draw (in `sums`, free again). The padding's indices are
    // past the vocabulary.
    for (int r = threadIdx.x; r < n; r += THREADS)
        if (index[r] < vocab) sums[index[r]] = weight[r];
    __syncthreads();
    for (int i = threadIdx.x; i < vocab; i += THREADS) weight[i] = sums[i];
    __syncthreads();

    // Inverse-CDF draw: the first kept token whose running sum passes unit · total.
    int last_kept = -1;
    for (int i = threadIdx.x; i < vocab; i += THREADS)
        if (weight[i] > 0.0) last_kept = max(last_kept, i);
    last_kept = block_max_int(last_kept, scratch_i);
    const double total = block_inclusive_scan(weight, sums, vocab, scratch_d);
    const double target = unit * total;
    int chosen = INT32_MAX;
    for (int i = threadIdx.x; i < vocab; i += THREADS)
        if (weight[i] > 0.0 && sums[i] > target) chosen = min(chosen, i);
    chosen = block_min_int(chosen, scratch_i);
    // Rounding can leave the target a hair above the last sum, as on the host.
    if (threadIdx.x == 0) tokens[item * k_books + c] = (uint32_t)(chosen == INT32_MAX ? max(last_kept, 0) : chosen);
}
