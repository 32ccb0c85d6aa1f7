// One step of an LSTM layer's cell on a batch: the gates' two projections summed, the
// activations, the new cell and hidden state, in one kernel. With candle's ops the same step is
// ~9 elementwise kernels after the product with the hidden state, and EnCodec's LSTM steps
// 2 layers × 50 frames a second one after the other, so a 16 s track launched ~16 000 kernels of
// a few microseconds each.
//
// Each value is computed with the operations and roundings of those candle kernels (f32; sums
// and products rounded separately, no fused multiply-add; sigmoid as 1 / (1 + e^-x) with the
// division in double), so the fused step gives the same floats.

#include <stdint.h>

__device__ __forceinline__ float sigmoid(float x) { return (float)(1.0 / (double)__fadd_rn(1.0f, expf(-x))); }

// x_gates, h_gates: rows×4·dim (input then forget, cell and output gates, torch's order), the
// input projection with both biases and the hidden state's projection; cell: rows×dim.
// out: the new hidden state (rows×dim), then the new cell state (rows×dim).
extern "C" __global__ void lstm_cell_f32(const float *__restrict__ x_gates, const float *__restrict__ h_gates,
                                         const float *__restrict__ cell, float *__restrict__ out, int rows,
                                         int dim) {
    const int at = blockIdx.x * blockDim.x + threadIdx.x;
    if (at >= rows * dim) return;
    const int row = at / dim, j = at % dim;
    const size_t gates = (size_t)row * 4 * dim + j;
    const float i = sigmoid(__fadd_rn(x_gates[gates], h_gates[gates]));
    const float f = sigmoid(__fadd_rn(x_gates[gates + dim], h_gates[gates + dim]));
    const float g = tanhf(__fadd_rn(x_gates[gates + 2 * dim], h_gates[gates + 2 * dim]));
    const float o = sigmoid(__fadd_rn(x_gates[gates + 3 * dim], h_gates[gates + 3 * dim]));
    const float c = __fadd_rn(__fmul_rn(f, cell[at]), __fmul_rn(i, g));
    out[at] = __fmul_rn(o, tanhf(c));
    out[(size_t)rows * dim + at] = c;
}
