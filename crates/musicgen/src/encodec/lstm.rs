//! transformers' `EncodecLSTM`: a stacked unidirectional `torch.nn.LSTM` over time, whose
//! output is added back to its input.

use candle_core::{Tensor, D};
use candle_nn::VarBuilder;

use crate::error::Result;

/// One layer of `torch.nn.LSTM`; gate rows in torch's order: input, forget, cell, output.
#[derive(Debug, Clone)]
struct LstmLayer {
    /// `(dim, 4*dim)`: `weight_ih` transposed, so the input projection of every frame is one
    /// matrix product.
    w_ih_t: Tensor,
    /// `(dim, 4*dim)`: `weight_hh` transposed.
    w_hh_t: Tensor,
    /// `bias_ih + bias_hh`, `(4*dim)`.
    bias: Tensor,
}

/// Each layer's hidden and cell state `(B, dim)` after the frames seen so far; empty before
/// the first (torch's zero initial states).
#[derive(Debug, Clone, Default)]
pub(super) struct LstmState {
    layers: Vec<(Tensor, Tensor)>,
}

#[derive(Debug, Clone)]
pub(super) struct Lstm {
    layers: Vec<LstmLayer>,
    dim: usize,
}

impl Lstm {
    /// `vb` is at the wrapper (`...layers.N`); torch's parameters live under its `lstm`.
    pub fn load(vb: &VarBuilder, dim: usize, num_layers: usize) -> Result<Self> {
        let vb = vb.pp("lstm");
        let layers = (0..num_layers)
            .map(|l| -> Result<LstmLayer> {
                let w_ih = vb.get((4 * dim, dim), &format!("weight_ih_l{l}"))?;
                let w_hh = vb.get((4 * dim, dim), &format!("weight_hh_l{l}"))?;
                let b_ih = vb.get(4 * dim, &format!("bias_ih_l{l}"))?;
                let b_hh = vb.get(4 * dim, &format!("bias_hh_l{l}"))?;
                Ok(LstmLayer { w_ih_t: w_ih.t()?.contiguous()?, w_hh_t: w_hh.t()?.contiguous()?, bias: (b_ih + b_hh)? })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers, dim })
    }

    /// `(B, T, dim)` -> `(B, T, dim)`: `lstm(x) + x` with zero initial states.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_from(x, &mut LstmState::default())
    }

    /// `forward` over frames that follow the ones `state` has seen, leaving it after the last
    /// of them: running a signal in pieces gives what running it whole gives.
    pub fn forward_from(&self, x: &Tensor, state: &mut LstmState) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        if state.layers.is_empty() {
            let zeros = Tensor::zeros((b, self.dim), x.dtype(), x.device())?;
            state.layers = vec![(zeros.clone(), zeros); self.layers.len()];
        }
        // Steps outermost, so each step reads one contiguous (B, 4*dim) slab.
        let input = x.transpose(0, 1)?.contiguous()?;
        let mut hidden = input.clone();
        for (layer, (h, c)) in self.layers.iter().zip(&mut state.layers) {
            hidden = self.run_layer(layer, &hidden, b, t, h, c)?;
        }
        Ok((hidden + input)?.transpose(0, 1)?.contiguous()?)
    }

    fn run_layer(
        &self,
        layer: &LstmLayer,
        xs: &Tensor,
        b: usize,
        t: usize,
        h: &mut Tensor,
        c: &mut Tensor,
    ) -> Result<Tensor> {
        let dim = self.dim;
        let projected =
            xs.reshape((t * b, dim))?.matmul(&layer.w_ih_t)?.broadcast_add(&layer.bias)?.reshape((t, b, 4 * dim))?;
        let mut outputs = Vec::with_capacity(t);
        for step in 0..t {
            let h_gates = h.matmul(&layer.w_hh_t)?;
            (*h, *c) = self.cell(&projected.get(step)?, &h_gates, c)?;
            outputs.push(h.clone());
        }
        Ok(Tensor::stack(&outputs, 0)?)
    }

    /// The new hidden and cell states `(B, dim)` from a step's input gates `x_gates` (biases
    /// included), the hidden state's `h_gates` (both `(B, 4*dim)`) and the cell `c`: one kernel
    /// on a GPU (the same floats), candle's ops elsewhere.
    fn cell(&self, x_gates: &Tensor, h_gates: &Tensor, c: &Tensor) -> Result<(Tensor, Tensor)> {
        if let Some(states) = super::cuda_lstm::cell(x_gates, h_gates, c)? {
            return Ok(states);
        }
        let dim = self.dim;
        let gates = (x_gates + h_gates)?;
        // Sigmoid over all four gates and tanh over the cell gate costs a few wasted
        // exponentials but half the tensor operations of splitting first.
        let sig = candle_nn::ops::sigmoid(&gates)?;
        let i = sig.narrow(D::Minus1, 0, dim)?;
        let f = sig.narrow(D::Minus1, dim, dim)?;
        let o = sig.narrow(D::Minus1, 3 * dim, dim)?;
        let g = gates.narrow(D::Minus1, 2 * dim, dim)?.tanh()?;
        let c = ((f * c)? + (i * g)?)?;
        let h = (o * c.tanh()?)?;
        Ok((h, c))
    }
}
