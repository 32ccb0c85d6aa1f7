//! Medians over the timed runs, the verdict against the users' bar, and the table.

use std::fmt::Write;

use musicgen::{DType, DeviceSpec, ModelInfo};

use super::memory::host_peak_bytes;
use super::timing::median;
use super::{Args, BenchReport, Run, BAR_AUDIO_S, BAR_WALL_S};
use crate::validate::render::{gib, utc_now_rfc3339};
use crate::validate::target::BuildTarget;

pub fn summarise(
    args: &Args,
    device: DeviceSpec,
    dtype: DType,
    info: ModelInfo,
    load_s: f64,
    runs: Vec<Run>,
) -> BenchReport {
    let m = |f: fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let total_s = m(|r| r.phases.total_s);
    let decoder_s = m(|r| r.phases.decoder_s);
    let steps = runs.first().map_or(0, |r| r.phases.steps);
    let ms_per_step = m(|r| r.phases.ms_per_step());
    let real_time_factor = args.duration / total_s;
    let bar_seconds_for_16s = BAR_AUDIO_S / real_time_factor;
    BenchReport {
        date: utc_now_rfc3339(),
        model: args.model.clone(),
        random_weights: args.random_weights,
        device: info.device.clone(),
        dtype: dtype.to_string(),
        batch: args.batch,
        duration_s: args.duration,
        frames: musicgen::request::frames_for(args.duration, musicgen::request::FRAME_RATE),
        steps,
        runs: runs.len(),
        build: BuildTarget::current(),
        load_s,
        text_encoder_s: m(|r| r.phases.text_encoder_s),
        decoder_s,
        ms_per_step,
        median_step_ms: m(|r| r.phases.median_step_ms),
        steps_per_s: if ms_per_step > 0.0 { 1e3 / ms_per_step } else { 0.0 },
        encodec_s: m(|r| r.phases.encodec_s),
        total_s,
        weights: info.weights.clone(),
        graph_kernels_per_step: runs.iter().find_map(|r| r.phases.graph_kernels),
        sampling: if runs.iter().any(|r| r.phases.picks_on_device) { "device" } else { "host" }.into(),
        weight_read_gb_s: {
            let step_s = m(|r| r.phases.median_step_ms) / 1e3;
            if step_s > 0.0 {
                info.step_weight_bytes as f64 / step_s / 1e9
            } else {
                0.0
            }
        },
        gemv_max_rows: match device {
            DeviceSpec::Cpu => [0, 0],
            DeviceSpec::Cuda(_) => {
                [musicgen::internals::gpu_gemv_max_rows(false), musicgen::internals::gpu_gemv_max_rows(true)]
            }
        },
        first_audio_s: args.stream.map(|_| m(|r| r.phases.first_audio_s.unwrap_or(f64::NAN))),
        stream_lead_s: args
            .stream
            .map(|_| runs.iter().filter_map(|r| r.phases.stream_lead_s).fold(f64::INFINITY, f64::min)),
        real_time_factor,
        aggregate_real_time_factor: real_time_factor * args.batch as f64,
        peak_host_bytes: host_peak_bytes(),
        peak_gpu_bytes: match device {
            DeviceSpec::Cpu => None,
            DeviceSpec::Cuda(_) => runs.iter().filter_map(|r| r.gpu_peak.and_then(|p| p.best())).max(),
        },
        bar_seconds_for_16s,
        verdict: if bar_seconds_for_16s < BAR_WALL_S { "PASS" } else { "FAIL" },
        model_info: info,
        timed_runs: runs,
    }
}

pub fn human(r: &BenchReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "dgx-music bench: {}{}, {} {}{}, batch {}, {} s of audio ({} frames, {} steps), median of {} run{}",
        r.model,
        if r.random_weights { " (random weights)" } else { "" },
        r.device,
        r.dtype,
        if r.weights == "int8" { " (int8 weights)" } else { "" },
        r.batch,
        r.duration_s,
        r.frames,
        r.steps,
        r.runs,
        if r.runs == 1 { "" } else { "s" }
    );
    let mut row = |k: &str, v: String| {
        let _ = writeln!(s, "  {k:<16} {v}");
    };
    row("build", r.build.describe());
    row(
        "decoder steps",
        match r.model_info.step_mode.as_str() {
            "graph" => match r.graph_kernels_per_step {
                Some(kernels) => format!("replayed as a CUDA graph of {kernels} kernels (--eager: kernel by kernel)"),
                None => "replayed as a CUDA graph (--eager: kernel by kernel)".to_string(),
            },
            other => format!("{other} cache, kernel by kernel"),
        },
    );
    row(
        "sampling",
        match r.sampling.as_str() {
            "device" => "on the GPU, the tokens copied back (DGX_DEVICE_SAMPLING=0: on the host)".to_string(),
            other => format!("on the {other}"),
        },
    );
    row("load", format!("{:.2} s", r.load_s));
    row("text encoder", format!("{:.3} s", r.text_encoder_s));
    row(
        "decoder",
        format!(
            "{:.2} s: {:.2} ms/step, {:.0} steps/s (median step {:.2} ms, weights read at {:.0} GB/s)",
            r.decoder_s, r.ms_per_step, r.steps_per_s, r.median_step_ms, r.weight_read_gb_s
        ),
    );
    row("EnCodec", format!("{:.3} s", r.encodec_s));
    row(
        "total",
        format!(
            "{:.2} s; real-time factor {:.2}x{}",
            r.total_s,
            r.real_time_factor,
            if r.batch > 1 {
                format!(" per track, {:.1}x for the batch", r.aggregate_real_time_factor)
            } else {
                String::new()
            }
        ),
    );
    if let (Some(first), Some(lead)) = (r.first_audio_s, r.stream_lead_s) {
        row(
            "stream",
            format!(
                "first audio {:.3} s after the request; {}",
                first,
                if lead >= 0.0 {
                    format!("keeps ahead of real time (every piece at least {lead:.2} s early)")
                } else {
                    format!("falls behind real time (a piece {:.2} s late)", -lead)
                }
            ),
        );
    }
    let mem = |b: Option<u64>| b.map(gib).unwrap_or_else(|| "-".into());
    row("peak memory", format!("GPU {}, host {}", mem(r.peak_gpu_bytes), mem(r.peak_host_bytes)));
    row(
        "verdict",
        format!(
            "{}: 16 s of audio in {:.1} s at this speed (users' bar: under {BAR_WALL_S:.0} s)",
            r.verdict, r.bar_seconds_for_16s
        ),
    );
    s
}
