// Attention of one new decoder position, fused into one kernel per attention.
//
// A decoder step attends with a single query per (row, head). Done with library calls that is
// ~9 kernels per attention (head splits, cache writes, two batched matrix-vector products, a
// mask add, a softmax); launches and tiny kernels dominate a step. Here one block per
// (head, row) does it all: it appends the new key and value to the cache (self-attention),
// then streams the keys and values once, keeping running maxima, sums and weighted sums of
// values (the "online softmax"), all in f32 whatever the storage type.
//
// The self-attention reads the position from device memory: a CUDA graph replays this kernel
// with the arguments it was recorded with, and the position is what changes between steps.

#include <stdint.h>

#include "convert.cuh"

#define THREADS 256
// Keys (and values) each thread loads before using any: independent loads in flight hide the
// memory latency a one-query attention is otherwise bound by.
#define UNROLL 4

// Elements of T in one 16-byte load.
template <typename T> struct Width { static constexpr int value = 16 / sizeof(T); };

template <typename T> __device__ __forceinline__ void unpack(const uint4 &raw, float *out) {
    const T *elements = reinterpret_cast<const T *>(&raw);
#pragma unroll
    for (int i = 0; i < Width<T>::value; i++) out[i] = to_float(elements[i]);
}

// softmax(q·Kᵀ + mask)·V over `len` keys for one (row, head), written to `out[0..head_dim]`.
// `q` is already scaled; `mask` (additive, may be null) has one value per key.
//
// A key row is read by `lanes` = head_dim / Width consecutive threads, 16 bytes each, so the
// block covers `slots` = THREADS / lanes keys at once. Each slot keeps its own running maximum,
// sum and weighted sum of values over its keys (online softmax, one pass over K and V); the
// slots are merged at the end. Requires 16-byte aligned rows and lanes a power of two <= 32.
template <typename T>
__device__ void attend(const T *q, const T *keys, const T *values, const T *mask, int len, int head_dim, T *out) {
    constexpr int V = Width<T>::value;
    __shared__ float slot_max[THREADS];
    __shared__ float slot_sum[THREADS];
    __shared__ float slot_acc[THREADS * V];
    const int lanes = head_dim / V;
    const int slots = THREADS / lanes;
    const int t = threadIdx.x, lane = t % lanes, slot = t / lanes;

    float qv[V];
    unpack<T>(*reinterpret_cast<const uint4 *>(q + lane * V), qv);
    float running_max = -INFINITY, running_sum = 0.f, acc[V];
#pragma unroll
    for (int i = 0; i < V; i++) acc[i] = 0.f;

    // The trip count is the same for every thread: the shuffles below need the whole warp.
    for (int start = 0; start < len; start += slots * UNROLL) {
        uint4 k_raw[UNROLL], v_raw[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const int j = start + slot + u * slots;
            if (j < len) {
                k_raw[u] = *reinterpret_cast<const uint4 *>(keys + (size_t)j * head_dim + lane * V);
                v_raw[u] = *reinterpret_cast<const uint4 *>(values + (size_t)j * head_dim + lane * V);
            } else {
                k_raw[u] = make_uint4(0, 0, 0, 0);
                v_raw[u] = make_uint4(0, 0, 0, 0);
            }
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const int j = start + slot + u * slots;
            float kv[V];
            unpack<T>(k_raw[u], kv);
            float score = 0.f;
#pragma unroll
            for (int i = 0; i < V; i++) score += qv[i] * kv[i];
            // Every lane of the warp takes part in the shuffles; a row's lanes are adjacent.
            for (int offset = lanes / 2; offset > 0; offset >>= 1) score += __shfl_xor_sync(0xffffffff, score, offset);
            if (j < len) {
                if (mask != nullptr) score += to_float(mask[j]);
                const float new_max = fmaxf(running_max, score);
                const float rescale = expf(running_max - new_max);  // 0 for the first key
                const float weight = expf(score - new_max);
                running_sum = running_sum * rescale + weight;
                float vv[V];
                unpack<T>(v_raw[u], vv);
#pragma unroll
                for (int i = 0; i < V; i++) acc[i] = acc[i] * rescale + weight * vv[i];
                running_max = new_max;
            }
        }
    }

    if (lane == 0) {
        slot_max[slot] = running_max;
        slot_sum[slot] = running_sum;
    }
#pragma unroll
    for (int i = 0; i < V; i++) slot_acc[slot * head_dim + lane * V + i] = acc[i];
    __syncthreads();
    for (int d = t; d < head_dim; d += THREADS) {
        float top = -INFINITY;
        for (int s = 0; s < slots; s++) top = fmaxf(top, slot_max[s]);
        float total = 0.f, value = 0.f;
        for (int s = 0; s < slots; s++) {
            const float w = expf(slot_max[s] - top);  // 0 for a slot that saw no key
            total += slot_sum[s] * w;
            value += slot_acc[s * head_dim + d] * w;
        }
        out[d] = from_float<T>(value / total);
    }
}

// Self-attention of the position inputs[0]. `qkv` (rows, 3·hidden) holds q | k | v of the new
// position; `cache` (2, rows, heads, max_len, head_dim) holds keys then values and receives
// this position's; `out` is (rows, hidden). Grid (heads, rows), THREADS threads.
template <typename T>
__device__ void self_attention_step(const T *qkv, T *cache, const uint32_t *inputs, T *out, int rows, int heads,
                                    int head_dim, int max_len) {
    const int head = blockIdx.x, row = blockIdx.y;
    const int hidden = heads * head_dim;
    const int position = (int)inputs[0];
    const T *q = qkv + (size_t)row * 3 * hidden + head * head_dim;
    T *keys = cache + ((size_t)row * heads + head) * max_len * head_dim;
    T *values = cache + (((size_t)rows + row) * heads + head) * max_len * head_dim;
    for (int e = threadIdx.x; e < head_dim; e += THREADS) {
        keys[(size_t)position * head_dim + e] = q[hidden + e];
        values[(size_t)position * head_dim + e] = q[2 * hidden + e];
    }
    __syncthreads();
    attend(q, keys, values, (const T *)nullptr, position + 1, head_dim, out + (size_t)row * hidden + head * head_dim);
}

// Cross-attention over the text memory. `q` (rows, hidden); `kv` (2, rows, heads, len,
// head_dim); `mask` (rows, len) additive or null; `out` (rows, hidden).
template <typename T>
__device__ void cross_attention_step(const T *q, const T *kv, const T *mask, T *out, int rows, int heads,
                                     int head_dim, int len) {
    const int head = blockIdx.x, row = blockIdx.y;
    const int hidden = heads * head_dim;
    const T *keys = kv + ((size_t)row * heads + head) * len * head_dim;
    const T *values = kv + (((size_t)rows + row) * heads + head) * len * head_dim;
    attend(q + (size_t)row * hidden + head * head_dim, keys, values, mask == nullptr ? mask : mask + (size_t)row * len,
           len, head_dim, out + (size_t)row * hidden + head * head_dim);
}

#define INSTANTIATE(T, SUFFIX)                                                                                  \
    extern "C" __global__ void __launch_bounds__(THREADS) self_attention_step_##SUFFIX(                          \
        const T *qkv, T *cache, const uint32_t *inputs, T *out, int rows, int heads, int head_dim, int max_len) { \
        self_attention_step<T>(qkv, cache, inputs, out, rows, heads, head_dim, max_len);                        \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(THREADS) cross_attention_step_##SUFFIX(                         \
        const T *q, const T *kv, const T *mask, T *out, int rows, int heads, int head_dim, int len) {           \
        cross_attention_step<T>(q, kv, mask, out, rows, heads, head_dim, len);                                  \
    }

INSTANTIATE(float, f32)
INSTANTIATE(__half, f16)
INSTANTIATE(__nv_bfloat16, bf16)
