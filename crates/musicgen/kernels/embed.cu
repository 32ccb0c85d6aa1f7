// A fixed-mode step's input embedding in one kernel: for each row, the sum of its K codebook
// tokens' embeddings plus the sinusoidal embedding of the step's position, read from the
// step's inputs buffer (position first, then rows×K tokens), as the CUDA graph replays it.
//
// With candle's ops the same sum is K index_selects (each after a copy of its strided column of
// tokens), K−1 adds, one more index_select and one add: ~13 kernels of a few microseconds each
// per step. The sum is taken in the order and with the roundings of those ops (each add rounded
// to the activations' type), so it gives the same values.

#include <stdint.h>

#include "convert.cuh"

#define THREADS 256

// tables: K tables of `entries` rows of `hidden`, one after the other; positions: rows of
// `hidden`, `positions_len` of them; out: rows×hidden. One block per row. Indices past a table
// (which the host never writes) are clamped to its last entry rather than read out of bounds.
template <typename T>
__device__ void embed_step(const T *__restrict__ tables, const uint32_t *__restrict__ inputs,
                           const T *__restrict__ positions, T *__restrict__ out, int codebooks, int entries,
                           int hidden, int positions_len) {
    const int row = blockIdx.x;
    const uint32_t position = min(inputs[0], (uint32_t)(positions_len - 1));
    const uint32_t *tokens = inputs + 1 + (size_t)row * codebooks;
    for (int h = threadIdx.x; h < hidden; h += THREADS) {
        float sum = 0.f;
        for (int k = 0; k < codebooks; k++) {
            const uint32_t token = min(tokens[k], (uint32_t)(entries - 1));
            const float e = to_float(tables[((size_t)k * entries + token) * hidden + h]);
            sum = k == 0 ? e : to_float(from_float<T>(sum + e));
        }
        out[(size_t)row * hidden + h] = from_float<T>(sum + to_float(positions[(size_t)position * hidden + h]));
    }
}

#define EMBED(NAME, T)                                                                                           \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                         \
        embed_step_##NAME(const T *tables, const uint32_t *inputs, const T *positions, T *out, int codebooks,   \
                          int entries, int hidden, int positions_len) {                                         \
        embed_step<T>(tables, inputs, positions, out, codebooks, entries, hidden, positions_len);                \
    }

EMBED(f32, float)
EMBED(f16, __half)
EMBED(bf16, __nv_bfloat16)
