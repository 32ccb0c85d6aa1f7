//! SEANet, EnCodec's two halves, time-major: the decoder (transformers' `EncodecDecoder`) turns
//! latent frames `(B, T, hidden)` into a waveform `(B, T * hop_length, audio_channels)`; the
//! encoder (`EncodecEncoder`) does the reverse, `(B, S, audio_channels)` to
//! `(B, ceil(S / hop_length), hidden)`.
//!
//! Checkpoint layouts, `{decoder,encoder}.layers.N` numbered as transformers' `nn.ModuleList`
//! (ELUs take an index but hold no weights):
//! - decoder: `0` conv(hidden -> 2^R * filters, kernel_size), `1` LSTM, then per upsampling
//!   ratio r: ELU, transposed conv(kernel 2r, stride r) halving the channels,
//!   `num_residual_layers` residual blocks; finally ELU and conv(filters -> audio_channels,
//!   last_kernel_size).
//! - encoder: `0` conv(audio_channels -> filters, kernel_size), then per ratio r in reverse
//!   order: `num_residual_layers` residual blocks, ELU, conv(kernel 2r, stride r) doubling the
//!   channels; then LSTM, ELU and conv(2^R * filters -> hidden, last_kernel_size).

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::conv::{Conv1d, ConvStyle, ConvTranspose1d};
use super::lstm::{Lstm, LstmState};
use crate::config::EncodecConfig;
use crate::error::{Error, Result};

/// The dilation of residual block `j`: `dilation_growth_rate^j`.
fn dilation(cfg: &EncodecConfig, j: usize) -> Result<usize> {
    cfg.dilation_growth_rate.checked_pow(j as u32).ok_or_else(|| {
        Error::Unsupported(format!(
            "EnCodec dilation_growth_rate {} to the power {j} overflows",
            cfg.dilation_growth_rate
        ))
    })
}

/// transformers' `EncodecResnetBlock`: ELU, conv(k, dilation) to `dim / compress`, ELU,
/// conv(1) back to `dim`, plus a shortcut (a 1x1 conv when `use_conv_shortcut`).
#[derive(Debug, Clone)]
struct ResnetBlock {
    conv_in: Conv1d,
    conv_out: Conv1d,
    shortcut: Option<Conv1d>,
}

impl ResnetBlock {
    fn load(vb: &VarBuilder, cfg: &EncodecConfig, dim: usize, dilation: usize, style: ConvStyle) -> Result<Self> {
        let hidden = dim / cfg.compress;
        let block = vb.pp("block");
        let conv_in = Conv1d::load(&block.pp(1), (dim, hidden), cfg.residual_kernel_size, (1, dilation), style)?;
        let conv_out = Conv1d::load(&block.pp(3), (hidden, dim), 1, (1, 1), style)?;
        let shortcut = if cfg.use_conv_shortcut {
            Some(Conv1d::load(&vb.pp("shortcut"), (dim, dim), 1, (1, 1), style)?)
        } else {
            None
        };
        Ok(Self { conv_in, conv_out, shortcut })
    }

    /// Samples each side one output reads: the 1x1 convolutions read none.
    fn context(&self) -> (usize, usize) {
        self.conv_in.context()
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.conv_in.forward(&x.elu(1.0)?)?;
        let y = self.conv_out.forward(&y.elu(1.0)?)?;
        let residual = match &self.shortcut {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        Ok((residual + y)?)
    }
}

#[derive(Debug, Clone)]
struct Upsample {
    conv: ConvTranspose1d,
    residuals: Vec<ResnetBlock>,
}

#[derive(Debug, Clone)]
pub(super) struct SeanetDecoder {
    conv_in: Conv1d,
    lstm: Lstm,
    upsamples: Vec<Upsample>,
    conv_out: Conv1d,
}

impl SeanetDecoder {
    /// `vb` is at `decoder`; `cfg` has been checked by the caller.
    pub fn load(vb: &VarBuilder, cfg: &EncodecConfig, style: ConvStyle) -> Result<Self> {
        let layers = vb.pp("layers");
        let mut channels = cfg.num_filters << cfg.upsampling_ratios.len();
        let conv_in = Conv1d::load(&layers.pp(0), (cfg.hidden_size, channels), cfg.kernel_size, (1, 1), style)?;
        let lstm = Lstm::load(&layers.pp(1), channels, cfg.num_lstm_layers)?;
        let mut index = 2;
        let mut upsamples = Vec::with_capacity(cfg.upsampling_ratios.len());
        for &ratio in &cfg.upsampling_ratios {
            // `index` is the ELU before the transposed convolution.
            let conv = ConvTranspose1d::load(&layers.pp(index + 1), (channels, channels / 2), 2 * ratio, ratio, style)?;
            channels /= 2;
            let residuals = (0..cfg.num_residual_layers)
                .map(|j| ResnetBlock::load(&layers.pp(index + 2 + j), cfg, channels, dilation(cfg, j)?, style))
                .collect::<Result<Vec<_>>>()?;
            upsamples.push(Upsample { conv, residuals });
            index += 2 + cfg.num_residual_layers;
        }
        let conv_out = Conv1d::load(
            &layers.pp(index + 1),
            (cfg.num_filters, cfg.audio_channels),
            cfg.last_kernel_size,
            (1, 1),
            style,
        )?;
        Ok(Self { conv_in, lstm, upsamples, conv_out })
    }

    /// The latent part (first conv and LSTM), cheap per sample but sequential over frames, so
    /// worth batching.
    pub fn forward_latent(&self, latent: &Tensor) -> Result<Tensor> {
        self.lstm.forward(&self.conv_in.forward(latent)?)
    }

    /// The first convolution over a piece of the latent frames: `ends` says which sides are
    /// the track's true ends (padded there; elsewhere `latent` carries [`Self::latent_context`]
    /// frames of real context, which the output leaves out).
    pub fn conv_in_piece(&self, latent: &Tensor, ends: (bool, bool)) -> Result<Tensor> {
        self.conv_in.forward_piece(latent, ends)
    }

    /// The LSTM over frames that follow those `state` has seen.
    pub fn lstm_carry(&self, x: &Tensor, state: &mut LstmState) -> Result<Tensor> {
        self.lstm.forward_from(x, state)
    }

    /// Latent frames each side that the first convolution reads, `(left, right)`; the LSTM after
    /// it looks back through its state and never ahead.
    pub fn latent_context(&self) -> (usize, usize) {
        self.conv_in.context()
    }

    /// Frames of `forward_latent`'s output each side that the upsampling stack reads to compute
    /// one frame's samples, `(left, right)`: its receptive field, walked back from the last
    /// convolution through every residual block and transposed convolution. A piece of frames
    /// with this much real context on each side upsamples to exactly the samples the whole
    /// track gives there.
    pub fn upsample_context(&self) -> (usize, usize) {
        let (mut left, mut right) = self.conv_out.context();
        for stage in self.upsamples.iter().rev() {
            for block in stage.residuals.iter().rev() {
                let (l, r) = block.context();
                (left, right) = (left + l, right + r);
            }
            (left, right) = stage.conv.input_context((left, right));
        }
        (left, right)
    }

    /// The upsampling part, from `forward_latent`'s output to the waveform.
    pub fn forward_upsample(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for stage in &self.upsamples {
            x = stage.conv.forward(&x.elu(1.0)?)?;
            for block in &stage.residuals {
                x = block.forward(&x)?;
            }
        }
        self.conv_out.forward(&x.elu(1.0)?)
    }
}

#[derive(Debug, Clone)]
struct Downsample {
    residuals: Vec<ResnetBlock>,
    conv: Conv1d,
}

#[derive(Debug, Clone)]
pub(super) struct SeanetEncoder {
    conv_in: Conv1d,
    downsamples: Vec<Downsample>,
    lstm: Lstm,
    conv_out: Conv1d,
}

impl SeanetEncoder {
    /// `vb` is at `encoder`; `cfg` has been checked by the caller.
    pub fn load(vb: &VarBuilder, cfg: &EncodecConfig, style: ConvStyle) -> Result<Self> {
        let layers = vb.pp("layers");
        let mut channels = cfg.num_filters;
        let conv_in = Conv1d::load(&layers.pp(0), (cfg.audio_channels, channels), cfg.kernel_size, (1, 1), style)?;
        let mut index = 1;
        let mut downsamples = Vec::with_capacity(cfg.upsampling_ratios.len());
        for &ratio in cfg.upsampling_ratios.iter().rev() {
            let residuals = (0..cfg.num_residual_layers)
                .map(|j| ResnetBlock::load(&layers.pp(index + j), cfg, channels, dilation(cfg, j)?, style))
                .collect::<Result<Vec<_>>>()?;
            // `index + num_residual_layers` is the ELU before the strided convolution.
            let conv = Conv1d::load(
                &layers.pp(index + cfg.num_residual_layers + 1),
                (channels, 2 * channels),
                2 * ratio,
                (ratio, 1),
                style,
            )?;
            channels *= 2;
            downsamples.push(Downsample { residuals, conv });
            index += cfg.num_residual_layers + 2;
        }
        let lstm = Lstm::load(&layers.pp(index), channels, cfg.num_lstm_layers)?;
        let conv_out =
            Conv1d::load(&layers.pp(index + 2), (channels, cfg.hidden_size), cfg.last_kernel_size, (1, 1), style)?;
        Ok(Self { conv_in, downsamples, lstm, conv_out })
    }

    /// The waveform part (first conv and the downsampling stages), `(B, S, audio_channels)` to
    /// `(B, ceil(S / hop), 2^R * filters)`: most of the work, done one item at a time by the caller.
    pub fn forward_downsample(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.conv_in.forward(x)?;
        for stage in &self.downsamples {
            for block in &stage.residuals {
                x = block.forward(&x)?;
            }
            x = stage.conv.forward(&x.elu(1.0)?)?;
        }
        Ok(x)
    }

    /// The latent part (LSTM, ELU, last conv), sequential over frames, so worth batching.
    pub fn forward_latent(&self, x: &Tensor) -> Result<Tensor> {
        self.conv_out.forward(&self.lstm.forward(x)?.elu(1.0)?)
    }
}
