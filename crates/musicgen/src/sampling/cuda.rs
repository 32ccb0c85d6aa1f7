//! Picking a step's tokens on the GPU with `kernels/sampling.cu`: the logits stay on the device,
//! the host passes each item's settings and the uniform numbers its ChaCha stream gives (the ones
//! [`Sampler::pick`] would draw), and only the chosen tokens come back, in one small copy.

use std::sync::OnceLock;

use candle_core::cuda::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use candle_core::{DType, Device, Storage, Tensor};

use super::Sampler;
use crate::error::{Error, Result};

/// Settings per item before its uniform numbers, as `PARAM_STRIDE` in the kernel.
const PARAM_STRIDE: usize = 5;
/// The largest vocabulary the kernel sorts in one block (`CAPACITY`; MusicGen's is 2048).
const CAPACITY: usize = 2048;
const THREADS: u32 = 1024;

/// Whether tokens may be picked on the GPU: on unless `DGX_DEVICE_SAMPLING=0` (for comparisons
/// with the host's sampling, which every build keeps).
fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("DGX_DEVICE_SAMPLING").map_or(true, |v| v.trim() != "0"))
}

/// One request's buffers for picking on the GPU.
pub(crate) struct DeviceSampler {
    cuda: candle_core::CudaDevice,
    /// Per item: coefficient, top-k, top-p, temperature, unconditional row (-1: none), then one
    /// uniform number per codebook, rewritten every step.
    host: Vec<f64>,
    params: CudaSlice<f64>,
    tokens: CudaSlice<u32>,
    items: usize,
    codebooks: usize,
    vocab: usize,
}

impl DeviceSampler {
    /// `None` where the host picks: not a CUDA device, a vocabulary the kernel cannot sort in one
    /// block, or device sampling turned off.
    pub(crate) fn new(
        device: &Device,
        samplers: &[Sampler],
        uncond_rows: &[Option<usize>],
        codebooks: usize,
        vocab: usize,
    ) -> Result<Option<Self>> {
        let Device::Cuda(cuda) = device else { return Ok(None) };
        if !enabled() || vocab > CAPACITY || vocab == 0 || samplers.is_empty() {
            return Ok(None);
        }
        let stride = PARAM_STRIDE + codebooks;
        let mut host = vec![0f64; samplers.len() * stride];
        for ((item, sampler), uncond) in host.chunks_mut(stride).zip(samplers).zip(uncond_rows) {
            let p = sampler.params();
            // The kernel reads the coefficient as f32, as the host's guidance does.
            item[0] = p.cfg_coef as f32 as f64;
            item[1] = p.top_k.min(u32::MAX as usize) as f64;
            item[2] = p.top_p;
            item[3] = p.temperature;
            item[4] = uncond.map_or(-1.0, |row| row as f64);
        }
        Ok(Some(Self {
            params: cuda.alloc_zeros::<f64>(host.len())?,
            tokens: cuda.alloc_zeros::<u32>(samplers.len() * codebooks)?,
            cuda: cuda.clone(),
            host,
            items: samplers.len(),
            codebooks,
            vocab,
        }))
    }

    /// Every item's tokens `(items, K)` from `logits` `(rows, K, vocab)` f32 on the device, each
    /// item drawing from its own stream exactly what [`Sampler::pick`] draws.
    pub(crate) fn pick(&mut self, logits: &Tensor, samplers: &mut [Sampler]) -> Result<Vec<u32>> {
        let (rows, k, vocab) = logits.dims3()?;
        if k != self.codebooks || vocab != self.vocab || rows < self.items || samplers.len() != self.items {
            return Err(Error::Tensor(candle_core::Error::Msg(format!(
                "device sampling of {} items got logits {:?}",
                self.items,
                logits.dims()
            ))));
        }
        if logits.dtype() != DType::F32 {
            return Err(Error::Unsupported("device sampling needs f32 logits".into()));
        }
        let stride = PARAM_STRIDE + self.codebooks;
        for (item, sampler) in self.host.chunks_mut(stride).zip(samplers.iter_mut()) {
            let draws = sampler.draws(vocab);
            for unit in &mut item[PARAM_STRIDE..] {
                *unit = if draws { sampler.next_unit() } else { 0.0 };
            }
        }
        self.cuda.memcpy_htod(&self.host, &mut self.params)?;
        let (storage, layout) = logits.storage_and_layout();
        let (Storage::Cuda(storage), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
            return Err(Error::Unsupported("device sampling needs contiguous CUDA logits".into()));
        };
        let logits = storage.as_cuda_slice::<f32>()?.slice(start..end);
        let func = self.cuda.get_or_load_custom_func("guided_sample", "musicgen_sampling", crate::ptx::SAMPLING)?;
        let (k_i, vocab_i) = (self.codebooks as i32, self.vocab as i32);
        let mut launch = func.builder();
        launch.arg(&logits).arg(&self.params).arg(&mut self.tokens).arg(&k_i).arg(&vocab_i);
        let config = LaunchConfig {
            grid_dim: (self.codebooks as u32, self.items as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match `guided_sample`; the kernel reads items rows of logits (and
        // the unconditional rows, below `rows`, set in `new`), `items · (PARAM_STRIDE + K)`
        // params and writes `items · K` tokens, the sizes allocated and checked above; the
        // vocabulary fits its sort (`CAPACITY`).
        unsafe { launch.launch(config) }.map_err(|e| candle_core::Error::Cuda(Box::new(e)))?;
        Ok(self.cuda.clone_dtoh(&self.tokens)?)
    }
}
