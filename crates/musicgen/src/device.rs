//! Choosing where and in which precision the model runs.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::error::{Error, Result};

/// `cpu`, `cuda` (GPU 0) or `cuda:N`, as given on a command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Device {
            device: s.to_string(),
            message: "unknown device; use cpu, cuda or cuda:N (N is the GPU index)".into(),
        };
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => other.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(Self::Cuda).ok_or_else(bad),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device, explaining how to get CUDA when this build or machine lacks it.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(ordinal) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(Error::Device {
                        device: self.to_string(),
                        message: "this binary was built without CUDA; rebuild with `--features cuda` \
                                  (see README, GPU section) or use --device cpu"
                            .into(),
                    });
                }
                Device::new_cuda(ordinal).map_err(|e| Error::Device {
                    device: self.to_string(),
                    message: format!("cannot open the GPU ({e}); run `dgx-music validate` for a diagnosis"),
                })
            }
        }
    }
}

/// Precision of the decoder weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DType {
    #[default]
    F32,
    F16,
    BF16,
}

impl FromStr for DType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "f16" | "fp16" | "float16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::BF16),
            _ => Err(Error::invalid("dtype", format!("unknown dtype {s:?}; use f32, f16 or bf16"))),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
        })
    }
}

impl From<DType> for candle_core::DType {
    fn from(d: DType) -> Self {
        match d {
            DType::F32 => candle_core::DType::F32,
            DType::F16 => candle_core::DType::F16,
            DType::BF16 => candle_core::DType::BF16,
        }
    }
}

/// How the decoder's projection weights are stored (`--weights`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Weights {
    /// In the decoder's [`DType`].
    #[default]
    Dtype,
    /// int8 with one scale per output feature, weight-only: half the bytes of bf16 for each
    /// step to read, at a small cost in accuracy (docs/PERFORMANCE.md measures it). The
    /// activations, layer norms and caches stay in the decoder's dtype.
    Int8,
}

impl FromStr for Weights {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "dtype" => Ok(Self::Dtype),
            "int8" | "i8" => Ok(Self::Int8),
            _ => Err(Error::invalid("weights", format!("unknown weight format {s:?}; use dtype or int8"))),
        }
    }
}

impl fmt::Display for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Dtype => "dtype",
            Self::Int8 => "int8",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        let err = "tpu".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(err.contains("tpu") && err.contains("cuda:N"), "{err}");
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn parses_dtypes() {
        assert_eq!("bf16".parse::<DType>().unwrap(), DType::BF16);
        assert!("f64".parse::<DType>().is_err());
    }
}
