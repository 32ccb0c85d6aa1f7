// Few-row products of a decoder step: out[r][o] = epilogue(scale[o] · Σ_i x[r][i] · w[o][i]).
//
// A step multiplies 2 to 64 activation rows by each weight matrix, so its cost is reading the
// weights once. cuBLAS picks kernels for these shapes that tile for reuse and run on a few
// SMs; here each warp owns one output feature and streams its weight row with 16-byte loads
// that bypass L1 (every weight is read once; the activations, read by every warp, stay in L1),
// so one matrix spreads over every SM. Sums accumulate in f32 whatever the storage types.
//
// Weights are f32, f16, bf16, or int8 with one f32 scale per output feature (weight-only
// quantisation: the activations keep their own type). The epilogue applies the FFN activation
// or adds the residual, saving the separate elementwise kernel and its round trip to memory.
//
// Rows come in tiles of R per block (grid.x; the caller picks R, 1 to 8), the tiles of one block
// of outputs launched side by side (grid.x varies fastest) so that the weights a second tile
// reads are still in L2. Requires 16-byte aligned rows: in_dim a multiple of the elements per load of
// both the weights and the activations.

#include <stdint.h>

#include "convert.cuh"

#define WARPS 8
// Weight loads each lane issues before using any: independent loads in flight hide the latency
// a matrix-vector product is otherwise bound by.
#define UNROLL 4

__device__ __forceinline__ float to_float(int8_t x) { return (float)x; }

// A weight row is read once: keep it out of L1, where the activations are reused.
__device__ __forceinline__ uint4 load_streaming(const uint4 *at) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(at));
    return v;
}

// N elements of T from 16-byte aligned `at`, as floats.
template <typename T, int N> __device__ __forceinline__ void load_floats(const T *at, float *out) {
    constexpr int PER_LOAD = 16 / sizeof(T);
    static_assert(N % PER_LOAD == 0, "whole 16-byte loads");
#pragma unroll
    for (int l = 0; l < N / PER_LOAD; l++) {
        const uint4 raw = __ldg(reinterpret_cast<const uint4 *>(at) + l);
        const T *elements = reinterpret_cast<const T *>(&raw);
#pragma unroll
        for (int i = 0; i < PER_LOAD; i++) out[l * PER_LOAD + i] = to_float(elements[i]);
    }
}

// Activation codes, as `linear::Activation`'s kernel codes.
__device__ __forceinline__ float activate(float v, int activation) {
    switch (activation) {
    case 1: return 0.5f * v * (1.f + erff(v * 0.70710678118654752f));
    case 2: return 0.5f * v * (1.f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));
    case 3: return fmaxf(v, 0.f);
    case 4: return v / (1.f + expf(-v));
    default: return v;
    }
}

// R rows per block (the tile); a last tile of fewer rows repeats its last row in the spare
// slots, computing sums nobody writes, rather than branching in the inner loop.
template <typename W, typename X, int R>
__device__ void gemv(const W *__restrict__ w, const float *__restrict__ scales, const X *__restrict__ x,
                     const X *__restrict__ residual, X *__restrict__ out, int rows, int out_dim, int in_dim,
                     int activation) {
    constexpr int N = 16 / sizeof(W);
    const int lane = threadIdx.x % 32;
    const int o = blockIdx.y * WARPS + threadIdx.x / 32;
    const int row0 = blockIdx.x * R;
    if (o >= out_dim) return;
    const int chunks = in_dim / N;
    const uint4 *row = reinterpret_cast<const uint4 *>(w + (size_t)o * in_dim);
    const X *xs[R];
#pragma unroll
    for (int r = 0; r < R; r++) xs[r] = x + (size_t)min(row0 + r, rows - 1) * in_dim;

    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.f;
    for (int base = lane; base < chunks; base += 32 * UNROLL) {
        uint4 raw[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const int c = base + u * 32;
            raw[u] = c < chunks ? load_streaming(row + c) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const int c = base + u * 32;
            if (c >= chunks) break;
            float wf[N];
            const W *elements = reinterpret_cast<const W *>(&raw[u]);
#pragma unroll
            for (int i = 0; i < N; i++) wf[i] = to_float(elements[i]);
#pragma unroll
            for (int r = 0; r < R; r++) {
                float xf[N];
                load_floats<X, N>(xs[r] + c * N, xf);
#pragma unroll
                for (int i = 0; i < N; i++) acc[r] = fmaf(wf[i], xf[i], acc[r]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
#pragma unroll
        for (int offset = 16; offset > 0; offset /= 2) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], offset);
    }
    const float scale = scales ? scales[o] : 1.f;
#pragma unroll
    for (int r = 0; r < R; r++) {
        // Lane r writes row r: a register index known at compile time, no local memory.
        if (lane == r && row0 + r < rows) {
            const size_t at = (size_t)(row0 + r) * out_dim + o;
            float v = activate(acc[r] * scale, activation);
            if (residual) v += to_float(residual[at]);
            out[at] = from_float<X>(v);
        }
    }
}

#define GEMV(NAME, W, X, R)                                                                                      \
    extern "C" __global__ void __launch_bounds__(WARPS * 32)                                                      \
        gemv_##NAME##_r##R(const W *w, const float *scales, const X *x, const X *residual, X *out, int rows,   \
                           int out_dim, int in_dim, int activation) {                                            \
        gemv<W, X, R>(w, scales, x, residual, out, rows, out_dim, in_dim, activation);                           \
    }

#define GEMV_TILES(NAME, W, X)                                                                                   \
    GEMV(NAME, W, X, 1)                                                                                          \
    GEMV(NAME, W, X, 2)                                                                                          \
    GEMV(NAME, W, X, 3)                                                                                          \
    GEMV(NAME, W, X, 4)                                                                                          \
    GEMV(NAME, W, X, 5)                                                                                          \
    GEMV(NAME, W, X, 6)                                                                                          \
    GEMV(NAME, W, X, 7)                                                                                          \
    GEMV(NAME, W, X, 8)

// Dense weights compute in their own type; int8 weights in any activation type.
GEMV_TILES(f32_f32, float, float)
GEMV_TILES(f16_f16, __half, __half)
GEMV_TILES(bf16_bf16, __nv_bfloat16, __nv_bfloat16)
GEMV_TILES(i8_f32, int8_t, float)
GEMV_TILES(i8_f16, int8_t, __half)
GEMV_TILES(i8_bf16, int8_t, __nv_bfloat16)
