//! What this binary was built for, and which GPUs its kernels can run on.
//!
//! candle compiles its CUDA kernels to PTX for one target, chosen at build time by
//! `CUDA_COMPUTE_CAP` (see build.rs), and the driver compiles that PTX for the card at first use.
//! Whether a card can run it follows the PTX rules: a plain target (`compute_80`) runs on every card
//! of that capability or newer; an architecture-specific one (`sm_90a`, what candle makes of 90)
//! only on exactly that capability; a family one (`sm_121f`, what candle makes of 121 and up) on
//! the same major version at that minor or later.

use serde::Serialize;

/// Compute capability written as major·10 + minor (9.0 is 90, 12.1 is 121).
pub type Cap = u32;

/// How far a kernel target carries to other cards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Portability {
    /// Plain PTX: this capability and every later one.
    Forward,
    /// `a` suffix: this exact capability only.
    ArchSpecific,
    /// `f` suffix: this major version, this minor or later.
    Family,
}

/// The target candle's kernels were compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelArch {
    pub cap: Cap,
    pub portability: Portability,
}

impl KernelArch {
    /// Reads a `CUDA_COMPUTE_CAP` value the way candle's kernel build does: `80`, `8.0`, `sm_90a`,
    /// `121f`; without a suffix, 90 to 120 become architecture-specific and above 120 family targets.
    pub fn parse(value: &str) -> Option<Self> {
        let v = value.trim().to_ascii_lowercase();
        let v = v.strip_prefix("sm_").or_else(|| v.strip_prefix("compute_")).unwrap_or(&v);
        let (digits, suffix) = match v.as_bytes().last()? {
            b'a' => (&v[..v.len() - 1], Some(Portability::ArchSpecific)),
            b'f' => (&v[..v.len() - 1], Some(Portability::Family)),
            _ => (v, None),
        };
        let cap: Cap = if let Some((major, minor)) = digits.split_once('.') {
            major.parse::<Cap>().ok()? * 10 + minor.parse::<Cap>().ok()?
        } else {
            let n: Cap = digits.parse().ok()?;
            if n < 20 {
                n * 10
            } else {
                n
            }
        };
        let portability = suffix.unwrap_or(match cap {
            c if c > 120 => Portability::Family,
            c if c >= 90 => Portability::ArchSpecific,
            _ => Portability::Forward,
        });
        Some(Self { cap, portability })
    }

    /// The name nvcc and the PTX header use for this target.
    pub fn name(&self) -> String {
        match self.portability {
            Portability::Forward => format!("compute_{}", self.cap),
            Portability::ArchSpecific => format!("sm_{}a", self.cap),
            Portability::Family => format!("sm_{}f", self.cap),
        }
    }

    pub fn runs_on(&self, gpu: Cap) -> bool {
        match self.portability {
            Portability::Forward => gpu >= self.cap,
            Portability::ArchSpecific => gpu == self.cap,
            Portability::Family => gpu / 10 == self.cap / 10 && gpu >= self.cap,
        }
    }

    /// One sentence on which cards this target serves.
    pub fn reach(&self) -> String {
        let c = format_cap(self.cap);
        match self.portability {
            Portability::Forward => format!("PTX the driver compiles for any GPU of compute capability {c} or newer"),
            Portability::ArchSpecific => format!("PTX for compute capability {c} only (architecture-specific)"),
            Portability::Family => {
                format!("PTX for compute capability {c} and later {}.x cards (family-specific)", self.cap / 10)
            }
        }
    }
}

/// `90` → `9.0`, `121` → `12.1`.
pub fn format_cap(cap: Cap) -> String {
    format!("{}.{}", cap / 10, cap % 10)
}

/// What this binary is, as recorded by build.rs.
#[derive(Debug, Clone, Serialize)]
pub struct BuildTarget {
    pub version: &'static str,
    /// Rust target triple (CPU architecture and OS the binary runs on).
    pub target: &'static str,
    pub profile: &'static str,
    /// Whether the `cuda` feature was on.
    pub cuda: bool,
    /// `CUDA_COMPUTE_CAP` as given at build time, if any.
    pub compute_cap: Option<&'static str>,
    /// nvcc's name for the kernels' target, e.g. `compute_80` or `sm_90a`.
    pub kernel_target: Option<String>,
    pub kernel_portability: Option<Portability>,
    /// candle's kernels are PTX, compiled by the driver at first use; only candle's MoE and quantized
    /// kernels (unused by MusicGen) are machine code.
    pub kernel_code: Option<&'static str>,
}

impl BuildTarget {
    pub fn current() -> Self {
        let cuda = cfg!(feature = "cuda");
        let raw = env!("DGX_BUILD_COMPUTE_CAP");
        let compute_cap = (cuda && !raw.is_empty()).then_some(raw);
        let arch = compute_cap.and_then(KernelArch::parse);
        Self {
            version: env!("CARGO_PKG_VERSION"),
            target: env!("DGX_BUILD_TARGET"),
            profile: env!("DGX_BUILD_PROFILE"),
            cuda,
            compute_cap,
            kernel_target: arch.map(|a| a.name()),
            kernel_portability: arch.map(|a| a.portability),
            kernel_code: cuda.then_some("ptx"),
        }
    }

    pub fn kernel_arch(&self) -> Option<KernelArch> {
        self.compute_cap.and_then(KernelArch::parse)
    }

    /// One line for reports: `CUDA, kernels compute_80 (PTX ...)` or `CPU only`.
    pub fn describe(&self) -> String {
        if !self.cuda {
            return "CPU only (built without the `cuda` feature)".into();
        }
        match self.kernel_arch() {
            Some(arch) => format!("CUDA, kernels for {}: {}", arch.name(), arch.reach()),
            None => format!(
                "CUDA, kernel target unknown (CUDA_COMPUTE_CAP was {:?} at build time)",
                self.compute_cap.unwrap_or("")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_candles_kernel_build() {
        let t = |s: &str| KernelArch::parse(s).map(|a| a.name());
        assert_eq!(t("80").as_deref(), Some("compute_80"));
        assert_eq!(t("8.0").as_deref(), Some("compute_80"));
        assert_eq!(t("90").as_deref(), Some("sm_90a"));
        assert_eq!(t("120").as_deref(), Some("sm_120a"));
        assert_eq!(t("121").as_deref(), Some("sm_121f"));
        assert_eq!(t("sm_100a").as_deref(), Some("sm_100a"));
        assert_eq!(t("86").as_deref(), Some("compute_86"));
        assert_eq!(t(""), None);
        assert_eq!(t("sm_"), None);
        assert_eq!(t("nine"), None);
    }

    #[test]
    fn plain_ptx_runs_forward_and_suffixed_ptx_does_not() {
        let ptx80 = KernelArch::parse("80").unwrap();
        assert!(ptx80.runs_on(80) && ptx80.runs_on(90) && ptx80.runs_on(121));
        assert!(!ptx80.runs_on(75));
        let h100 = KernelArch::parse("90").unwrap();
        assert!(h100.runs_on(90) && !h100.runs_on(121) && !h100.runs_on(100));
        let gb10 = KernelArch::parse("121").unwrap();
        assert!(gb10.runs_on(121) && !gb10.runs_on(120) && !gb10.runs_on(90) && !gb10.runs_on(130));
    }
}
