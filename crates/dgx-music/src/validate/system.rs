//! The host: CPU architecture, OS and memory, read from the standard library and /proc.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct SystemInfo {
    /// `x86_64`, `aarch64`, ...
    pub arch: &'static str,
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
        Self {
            arch: std::env::consts::ARCH,
            cpu_model: cpu_model(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default()),
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

/// x86 names the model per core; Arm cores carry no name in /proc/cpuinfo, only part numbers.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|rest| rest.split_once(':')).map(|(_, v)| v.trim()))
        .filter(|v| !v.is_empty())
        .map(str::to_string)
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
}
