//! The element formats the CPU kernels read: f32, and bf16, f16 and int8 widened to f32 as read
//! (int8 weights carry a scale per output feature that the caller applies to the sums).

use half::{bf16, f16};

/// The element formats, for kernels that load several elements at once by format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    F32,
    Bf16,
    F16,
    I8,
}

/// What weights, caches and memories hold: f32 (cross-attention keys and values, f32 weights)
/// or a half format (projection weights, self-attention caches of a half-precision decoder).
pub(crate) trait Element: Copy + Default + Send + Sync + 'static {
    const FORMAT: Format;
    fn to_f32(self) -> f32;
    fn from_f32(value: f32) -> Self;
}

impl Element for f32 {
    const FORMAT: Format = Format::F32;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(value: f32) -> Self {
        value
    }
}

impl Element for bf16 {
    const FORMAT: Format = Format::Bf16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        widen_bf16(self.to_bits())
    }
    fn from_f32(value: f32) -> Self {
        bf16::from_f32(value)
    }
}

impl Element for f16 {
    const FORMAT: Format = Format::F16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        widen_f16(self.to_bits())
    }
    fn from_f32(value: f32) -> Self {
        f16::from_f32(value)
    }
}

/// int8 weight codes (`crate::linear`'s quantisation): exact in f32.
impl Element for i8 {
    const FORMAT: Format = Format::I8;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn from_f32(value: f32) -> Self {
        value.round().clamp(-127.0, 127.0) as i8
    }
}

/// bf16 bits to f32: bf16 is the top half of an f32.
#[inline(always)]
fn widen_bf16(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// f16 bits to f32, exactly and without branches, so that it vectorises (`half`'s conversion
/// does not): exponent and mantissa moved into f32's fields, the exponent bias corrected by a
/// multiplication by 2^112 (which also normalises subnormals exactly), and infinities and NaNs
/// (exponent all ones) given f32's all-ones exponent back.
#[inline(always)]
fn widen_f16(bits: u16) -> f32 {
    let h = bits as u32;
    let magnitude = f32::from_bits((h & 0x7fff) << 13) * f32::from_bits(0x7780_0000);
    let special = if h & 0x7c00 == 0x7c00 { 0x7f80_0000 } else { 0 };
    f32::from_bits(magnitude.to_bits() | special | ((h & 0x8000) << 16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_is_exact_for_every_half_value() {
        for bits in 0..=u16::MAX {
            let (got_b, want_b) = (widen_bf16(bits), bf16::from_bits(bits).to_f32());
            let (got_h, want_h) = (widen_f16(bits), f16::from_bits(bits).to_f32());
            if want_b.is_nan() {
                assert!(got_b.is_nan(), "bf16 {bits:#06x}");
            } else {
                assert_eq!(got_b.to_bits(), want_b.to_bits(), "bf16 {bits:#06x}");
            }
            if want_h.is_nan() {
                assert!(got_h.is_nan(), "f16 {bits:#06x}");
            } else {
                assert_eq!(got_h.to_bits(), want_h.to_bits(), "f16 {bits:#06x}");
            }
        }
    }
}
