//! The human report, laid out like the hardware validation reports users write by hand.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use super::checks::Status;
use super::target::format_cap;
use super::Report;

pub fn human(r: &Report) -> String {
    let mut s = String::new();
    let na = || "-".to_string();
    let _ = writeln!(s, "# DGX Music hardware validation\n");
    let _ = writeln!(s, "Date:    {}", r.date.replace('T', " ").replace('Z', " UTC"));
    let _ = writeln!(s, "Binary:  dgx-music {} ({}, {})", r.build.version, r.build.target, r.build.profile);
    let _ = writeln!(s, "Build:   {}", r.build.describe());

    let _ = writeln!(s, "\n## System");
    let machine = r.system.machine_arch.as_deref().unwrap_or(r.system.arch);
    let cpu = match &r.system.cpu_model {
        Some(m) => format!("{machine}, {} cores ({m})", r.system.cpus),
        None => format!("{machine}, {} cores", r.system.cpus),
    };
    row(&mut s, "CPU architecture", &cpu);
    let os = match &r.system.kernel {
        Some(k) => format!("{}, kernel {k}", r.system.os),
        None => r.system.os.clone(),
    };
    row(&mut s, "OS", &os);
    row(
        &mut s,
        "Memory",
        &match (r.system.memory_total_bytes, r.system.memory_available_bytes) {
            (Some(t), Some(a)) => format!("{} total, {} available", gib(t), gib(a)),
            (Some(t), None) => format!("{} total", gib(t)),
            _ => na(),
        },
    );

    let _ = writeln!(s, "\n## NVIDIA driver");
    match (&r.driver.version, &r.driver.error) {
        (Some(v), _) => row(&mut s, "Driver version", v),
        (None, Some(e)) => row(&mut s, "Driver version", &format!("not found ({e})")),
        (None, None) => row(&mut s, "Driver version", "not reported"),
    }
    row(&mut s, "CUDA driver API", &r.driver.cuda_driver_api_string().unwrap_or_else(na));

    let _ = writeln!(s, "\n## GPUs");
    if r.driver.gpus.is_empty() && r.kernel_checks.is_empty() {
        let _ = writeln!(s, "  none found");
    }
    for g in &r.driver.gpus {
        let cuda_mem = g.cuda_ordinal.and_then(|o| r.kernel_checks.iter().find(|k| k.cuda_ordinal == o));
        let total = g.memory_total_bytes.or(cuda_mem.and_then(|k| k.memory_total_bytes));
        let free = g.memory_free_bytes.or(cuda_mem.and_then(|k| k.memory_free_bytes));
        let _ = writeln!(
            s,
            "  GPU {}  {}{}, compute {}, memory {}, {}",
            g.index,
            g.name.as_deref().unwrap_or("(name not reported)"),
            if g.dgx_spark { " (DGX Spark)" } else { "" },
            g.compute_capability.map(format_cap).unwrap_or_else(na),
            match (total, free) {
                (Some(t), Some(f)) if g.unified_memory => {
                    format!("{} total / {} available, unified (the host's memory)", gib(t), gib(f))
                }
                (Some(t), Some(f)) => format!("{} total / {} free", gib(t), gib(f)),
                _ => "not reported (shared with the host?)".into(),
            },
            match g.cuda_ordinal {
                Some(o) => format!("CUDA device {o}"),
                None if r.build.cuda => "not visible to CUDA (CUDA_VISIBLE_DEVICES?)".into(),
                None => "no CUDA in this build".into(),
            }
        );
    }
    // GPUs CUDA sees but NVML did not list (NVML missing or failing).
    for k in r.kernel_checks.iter().filter(|k| !r.driver.gpus.iter().any(|g| g.cuda_ordinal == Some(k.cuda_ordinal))) {
        let _ = writeln!(
            s,
            "  CUDA device {}  {}, compute {}",
            k.cuda_ordinal,
            k.name.as_deref().unwrap_or("(name not reported)"),
            k.compute_capability.map(format_cap).unwrap_or_else(na)
        );
    }

    let _ = writeln!(s, "\n## Checks");
    let width = r.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in &r.checks {
        let _ = writeln!(s, "  {}  {:width$}  {}", c.status.label(), c.name, c.detail);
        if let Some(fix) = &c.fix {
            let _ = writeln!(s, "        {:width$}  fix: {fix}", "");
        }
    }

    let failed = r.checks.iter().filter(|c| c.status == Status::Fail).count();
    let _ = writeln!(s);
    if r.passed() {
        let _ = writeln!(s, "Verdict: PASS - this binary runs on this machine's GPU");
    } else if failed == 0 {
        let _ = writeln!(s, "Verdict: FAIL - no GPU ran the kernel check");
    } else {
        let _ = writeln!(
            s,
            "Verdict: FAIL - {failed} check{} failed; apply the fixes above, then run `dgx-music validate` again",
            if failed == 1 { "" } else { "s" }
        );
    }
    s
}

fn row(s: &mut String, key: &str, value: &str) {
    let _ = writeln!(s, "  {key:<18} {value}");
}

pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// `2026-11-26T09:41:07Z`, without a date crate.
pub fn utc_now_rfc3339() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    rfc3339(secs)
}

fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_dates_and_sizes() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_686_067), "2026-11-26T09:41:07Z");
        assert_eq!(gib(81_559 * 1024 * 1024), "79.6 GiB");
    }
}
