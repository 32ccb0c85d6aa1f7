//! The host: CPU architecture, OS and memory, read from the standard library and /proc.
//!
//! Two architectures are told apart: the one this binary was built for (`arch`) and the one the
//! kernel runs on (`machine_arch`, from /proc, which qemu-user and similar emulators pass through
//! from the real host). They differ when the binary runs emulated, e.g. an x86_64 build on a DGX
//! Spark: it starts, slowly, and cannot load the aarch64 NVIDIA driver's libraries.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct SystemInfo {
    /// What this binary was built for: `x86_64`, `aarch64`, ...
    pub arch: &'static str,
    /// What the machine is, as the kernel says; `None` where /proc does not tell.
    pub machine_arch: Option<String>,
    /// The binary runs under emulation: `machine_arch` is known and differs from `arch`.
    pub emulated: bool,
    pub cpu_model: Option<String>,
    pub cpus: usize,
    /// `PRETTY_NAME` of /etc/os-release, else the OS family.
    pub os: String,
    pub kernel: Option<String>,
    pub memory_total_bytes: Option<u64>,
    pub memory_available_bytes: Option<u64>,
}

impl SystemInfo {
    pub fn probe() -> Self {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let machine_arch = machine_arch(std::fs::read_to_string("/proc/sys/kernel/arch").ok().as_deref(), &cpuinfo);
        let arch = std::env::consts::ARCH;
        Self {
            arch,
            emulated: machine_arch.as_deref().is_some_and(|m| m != arch),
            machine_arch,
            cpu_model: cpu_model(&cpuinfo),
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            os: std::fs::read_to_string("/etc/os-release")
                .ok()
                .and_then(|text| os_release_name(&text))
                .unwrap_or_else(|| std::env::consts::OS.to_string()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_string()),
            memory_total_bytes: meminfo_kib(&meminfo, "MemTotal").map(|k| k * 1024),
            memory_available_bytes: meminfo_kib(&meminfo, "MemAvailable").map(|k| k * 1024),
        }
    }
}

fn os_release_name(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

/// The machine's architecture: the kernel's own word (/proc/sys/kernel/arch, Linux 6.1 and
/// later), else what /proc/cpuinfo looks like (x86 lists `flags`, Arm a `CPU implementer`).
fn machine_arch(kernel_arch: Option<&str>, cpuinfo: &str) -> Option<String> {
    if let Some(arch) = kernel_arch.map(str::trim).filter(|a| !a.is_empty()) {
        return Some(arch.to_string());
    }
    let has = |key: &str| cpuinfo.lines().any(|l| l.split(':').next().is_some_and(|k| k.trim() == key));
    if has("CPU implementer") {
        Some("aarch64".into())
    } else if has("vendor_id") && has("flags") {
        Some("x86_64".into())
    } else {
        None
    }
}

/// x86 names the model per core; Arm cores carry only part numbers, named here for the cores of
/// the machines we target (the GB10's Cortex-X925 and A725, Neoverse servers), counted:
/// `10x Cortex-X925 + 10x Cortex-A725`.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    let value = |l: &str, key: &str| {
        l.split_once(':').filter(|(k, _)| k.trim() == key).map(|(_, v)| v.trim().to_string()).filter(|v| !v.is_empty())
    };
    if let Some(name) = cpuinfo.lines().find_map(|l| value(l, "model name")) {
        return Some(name);
    }
    let mut parts: Vec<(String, usize)> = Vec::new();
    for (implementer, part) in cpuinfo.split("\n\n").filter_map(|core| {
        let implementer = core.lines().find_map(|l| value(l, "CPU implementer"))?;
        Some((implementer, core.lines().find_map(|l| value(l, "CPU part"))?))
    }) {
        let name = arm_core_name(&implementer, &part).map(str::to_string).unwrap_or_else(|| format!("Arm part {part}"));
        match parts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, count)) => *count += 1,
            None => parts.push((name, 1)),
        }
    }
    (!parts.is_empty()).then(|| parts.iter().map(|(name, n)| format!("{n}x {name}")).collect::<Vec<_>>().join(" + "))
}

/// Arm Ltd's (implementer 0x41) part numbers, from Arm's technical reference manuals.
fn arm_core_name(implementer: &str, part: &str) -> Option<&'static str> {
    if implementer != "0x41" {
        return None;
    }
    Some(match part {
        "0xd0c" => "Neoverse-N1",
        "0xd40" => "Neoverse-V1",
        "0xd49" => "Neoverse-N2",
        "0xd4f" => "Neoverse-V2",
        "0xd81" => "Cortex-A720",
        "0xd82" => "Cortex-X4",
        "0xd85" => "Cortex-X925",
        "0xd87" => "Cortex-A725",
        _ => return None,
    })
}

/// A `Key:   123 kB` line of /proc/meminfo (or /proc/self/status), in KiB.
pub fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix(':')))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_formats() {
        let meminfo = "MemTotal:       24576000 kB\nMemFree:  1 kB\nMemAvailable:   22000000 kB\n";
        assert_eq!(meminfo_kib(meminfo, "MemTotal"), Some(24_576_000));
        assert_eq!(meminfo_kib(meminfo, "MemAvailable"), Some(22_000_000));
        assert_eq!(meminfo_kib(meminfo, "Mem"), None);
        assert_eq!(meminfo_kib("VmHWM:\t  5120 kB\n", "VmHWM"), Some(5120));
        let os = "NAME=\"Ubuntu\"\nPRETTY_NAME=\"Ubuntu 24.04.3 LTS\"\n";
        assert_eq!(os_release_name(os).as_deref(), Some("Ubuntu 24.04.3 LTS"));
        assert_eq!(cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 9454\n").as_deref(), Some("AMD EPYC 9454"));
        assert_eq!(cpu_model("CPU part\t: 0xd85\n"), None);
    }

    /// Two of a GB10's 20 cores as its /proc/cpuinfo lists them (an X925 and an A725).
    const GB10_CPUINFO: &str = "processor\t: 0\nBogoMIPS\t: 2000.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 \
        sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve \
        asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 \
        flagm2 frint svei8mm svebf16 i8mm bf16 dgh bti\nCPU implementer\t: 0x41\nCPU architecture: 8\n\
        CPU variant\t: 0x0\nCPU part\t: 0xd85\nCPU revision\t: 1\n\nprocessor\t: 1\nBogoMIPS\t: 2000.00\n\
        CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd87\nCPU revision\t: 1\n";

    #[test]
    fn names_arm_cores_and_tells_the_machine_from_the_binary() {
        assert_eq!(cpu_model(GB10_CPUINFO).as_deref(), Some("1x Cortex-X925 + 1x Cortex-A725"));
        assert_eq!(machine_arch(None, GB10_CPUINFO).as_deref(), Some("aarch64"));
        assert_eq!(machine_arch(Some("aarch64\n"), "").as_deref(), Some("aarch64"));
        let x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9454\nflags\t\t: fpu avx2\n";
        assert_eq!(machine_arch(None, x86).as_deref(), Some("x86_64"));
        // The kernel's word wins over what the text looks like.
        assert_eq!(machine_arch(Some("x86_64"), GB10_CPUINFO).as_deref(), Some("x86_64"));
        assert_eq!(machine_arch(None, "processor\t: 0\n"), None);
    }
}
