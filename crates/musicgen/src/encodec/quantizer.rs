//! The residual vector quantizer: codes to the sum of their codebook vectors (decoding), and
//! embeddings to the codes of their nearest vectors, residual by residual (encoding).

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub(super) struct ResidualVectorQuantizer {
    /// One `(codebook_size, dim)` table per codebook, in order.
    codebooks: Vec<Tensor>,
    codebook_size: usize,
}

impl ResidualVectorQuantizer {
    /// Reads `layers.{k}.codebook.embed` for the first `num_codebooks` codebooks; `vb` is at
    /// `quantizer`.
    pub fn load(vb: &VarBuilder, num_codebooks: usize, codebook_size: usize, dim: usize) -> Result<Self> {
        let codebooks = (0..num_codebooks)
            .map(|k| Ok(vb.pp(format!("layers.{k}.codebook")).get((codebook_size, dim), "embed")?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { codebooks, codebook_size })
    }

    pub fn num_codebooks(&self) -> usize {
        self.codebooks.len()
    }

    /// Whether `other` holds the very same tables (a clone), not an equal copy.
    pub fn same_tensors(&self, other: &Self) -> bool {
        self.codebooks.first().map(Tensor::id) == other.codebooks.first().map(Tensor::id)
    }

    /// Time-major embeddings `(B, T, dim)` -> codes `(B, K, T)` u32, as transformers'
    /// `EncodecResidualVectorQuantizer.encode`: codebook `k` picks the vector nearest the
    /// residual left by codebooks `0..k` (squared distance computed as
    /// `|x|^2 - 2 x.e + |e|^2`, the lowest index on ties), which is then subtracted.
    pub fn encode(&self, embeddings: &Tensor) -> Result<Tensor> {
        let (b, t, dim) = embeddings.dims3()?;
        let mut residual = embeddings.reshape((b * t, dim))?;
        let mut codes = Vec::with_capacity(self.codebooks.len());
        for codebook in &self.codebooks {
            let squares = residual.sqr()?.sum_keepdim(1)?;
            let dots = residual.matmul(&codebook.t()?)?;
            let norms = codebook.sqr()?.sum_keepdim(1)?.t()?;
            let distances = squares.broadcast_sub(&(dots * 2.0)?)?.broadcast_add(&norms)?;
            let nearest = distances.argmin(1)?;
            residual = (residual - codebook.index_select(&nearest, 0)?)?;
            codes.push(nearest.reshape((b, 1, t))?);
        }
        Ok(Tensor::cat(&codes, 1)?)
    }

    /// `(B, K, T)` integer codes -> time-major `(B, T, dim)`: codebook `k` looks up row `codes[:, k, :]`
    /// and the K vectors are summed in codebook order, as transformers does.
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        let (b, k, t) = codes.dims3()?;
        let codes = self.checked_codes(codes)?;
        let mut sum: Option<Tensor> = None;
        for (index, codebook) in self.codebooks.iter().take(k).enumerate() {
            let ids = codes.narrow(1, index, 1)?.flatten_all()?;
            let vectors = codebook.index_select(&ids, 0)?.reshape((b, t, ()))?;
            sum = Some(match sum {
                None => vectors,
                Some(acc) => (acc + vectors)?,
            });
        }
        sum.ok_or_else(|| codes_error("no codebooks to decode".into()))
    }

    /// The codes as u32 after checking every one indexes its codebook, so that a stray pad
    /// token (2048 in MusicGen) is an error rather than a read out of bounds.
    fn checked_codes(&self, codes: &Tensor) -> Result<Tensor> {
        let (_, k, t) = codes.dims3()?;
        if k == 0 || k > self.codebooks.len() {
            return Err(codes_error(format!("{k} codebooks given, this decoder holds 1 to {}", self.codebooks.len())));
        }
        if t == 0 {
            return Err(codes_error("no frames to decode".into()));
        }
        let as_i64 = match codes.dtype() {
            DType::U8 | DType::U32 | DType::I64 => codes.to_dtype(DType::I64)?,
            other => return Err(codes_error(format!("dtype {other:?}; expected u32 or i64 indices"))),
        };
        let flat = as_i64.flatten_all()?.to_vec1::<i64>()?;
        if let Some(position) = flat.iter().position(|&c| c < 0 || c as u64 >= self.codebook_size as u64) {
            let (frame, row) = (position % t, position / t);
            return Err(codes_error(format!(
                "code {} at batch {}, codebook {}, frame {frame} is outside the codebook (0..{}); \
                 undo the delay pattern and drop pad tokens before decoding",
                flat[position],
                row / k,
                row % k,
                self.codebook_size
            )));
        }
        Ok(as_i64.to_dtype(DType::U32)?)
    }
}

fn codes_error(message: String) -> Error {
    Error::Tensor(candle_core::Error::Msg(format!("EnCodec codes: {message}")))
}
