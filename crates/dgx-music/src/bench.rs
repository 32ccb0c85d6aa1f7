//! `dgx-music bench`: how fast does this machine generate? Load time, text encoder, time per
//! decoder step, EnCodec, peak memory and the verdict against the users' bar (16 s of audio in
//! under 30 s), as a table or one JSON object.
//!
//! Only the engine's public API is used: phases are timed around `MusicGen::start`,
//! `Generation::step` and `Generation::finish` (see `timing`), GPU memory read off NVML (see `memory`).

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use musicgen::{
    CancelToken, DType, DeviceSpec, GenerationItem, GenerationRequest, LoadOptions, MusicGen, SamplingParams, Weights,
};
use serde::Serialize;

use crate::device::DeviceChoice;
use crate::validate::target::BuildTarget;

pub mod memory;
pub mod report;
pub mod timing;

use memory::{GpuPeak, GpuSampler};
use timing::Phases;

/// The users' requirement: 16 s of audio generated in under 30 s.
pub const BAR_AUDIO_S: f64 = 16.0;
pub const BAR_WALL_S: f64 = 30.0;

#[derive(clap::Args)]
pub struct Args {
    /// small, medium or large (facebook/musicgen-*), a hub id, or a checkpoint directory.
    #[arg(long, default_value = "small")]
    model: String,
    /// Build the architecture with random weights instead of loading a checkpoint: no download,
    /// same computation (small, medium, large, stereo-small, stereo-medium, stereo-large, melody,
    /// melody-large, stereo-melody, stereo-melody-large).
    #[arg(long)]
    random_weights: bool,
    /// Seconds of audio per item; over 30 s the track runs in windows, as `generate` makes it.
    #[arg(long, default_value_t = 16.0)]
    duration: f64,
    /// Prompts generated together.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// auto, cpu, cuda or cuda:N; auto is the first GPU that passes `validate`'s kernel check,
    /// else the CPU (saying why).
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// f32, f16 or bf16 for the decoder [default: bf16 on a GPU, f32 on the CPU].
    #[arg(long, value_parser = crate::device::parse_dtype)]
    dtype: Option<DType>,
    /// How the decoder's weights are stored: dtype (in --dtype) or int8 (per output channel,
    /// weight-only: half the bytes of bf16 per step, so faster where memory bandwidth binds, at a
    /// small cost in accuracy measured in docs/PERFORMANCE.md). On the CPU int8 makes the default
    /// --dtype bf16 (the cache; the sums are f32 either way), which is faster there.
    #[arg(long, default_value = "dtype", value_parser = crate::device::parse_weights)]
    weights: Weights,
    /// On a GPU, launch each kernel of a decoder step from the host instead of replaying the
    /// step as a CUDA graph: shows what the graph saves.
    #[arg(long)]
    eager: bool,
    /// Timed runs after the warm-up; the report gives their median.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds of audio generated once, untimed, before the timed runs (kernel loading, cuBLAS
    /// handles and allocator pools stay out of the figures).
    #[arg(long, default_value_t = 1.0)]
    warmup_duration: f64,
    #[arg(long, default_value = "an upbeat synth-pop track with a driving bassline and bright pads")]
    prompt: String,
    /// Stream the audio in pieces of this many seconds while it is generated, as `generate
    /// --stream` does, and report the time to the first audio and whether the stream keeps
    /// ahead of real time. [default when given without a value: 0.5]
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "0.5")]
    stream: Option<f64>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// One timed generation.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    #[serde(flatten)]
    pub phases: Phases,
    pub gpu_peak: Option<GpuPeak>,
}

/// Everything `bench` measured, as printed by `--json`.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub date: String,
    pub model: String,
    pub random_weights: bool,
    pub device: String,
    pub dtype: String,
    pub batch: usize,
    pub duration_s: f64,
    pub frames: usize,
    pub steps: usize,
    pub runs: usize,
    pub build: BuildTarget,
    pub model_info: musicgen::ModelInfo,
    pub load_s: f64,
    /// Medians over the timed runs.
    pub text_encoder_s: f64,
    pub decoder_s: f64,
    pub ms_per_step: f64,
    pub median_step_ms: f64,
    pub steps_per_s: f64,
    pub encodec_s: f64,
    pub total_s: f64,
    /// The decoder weights' storage (`--weights`): the dtype's name or int8.
    pub weights: String,
    /// Kernels one replayed decoder step launches (CUDA graphs only).
    pub graph_kernels_per_step: Option<usize>,
    /// Where the tokens were picked: "device" (the GPU's sampling kernel, only the tokens
    /// copied back) or "host" (the logits copied back; `DGX_DEVICE_SAMPLING=0` asks for it).
    pub sampling: String,
    /// Weight bytes one step reads over the median step: the bandwidth the decoder draws from
    /// weights alone (the KV cache and activations come on top).
    pub weight_read_gb_s: f64,
    /// Rows up to which GPU products take the few-row kernel, dense and int8 weights
    /// (`DGX_GEMV_MAX_ROWS` overrides both; 0 on the CPU).
    pub gemv_max_rows: [usize; 2],
    /// `--stream`: seconds from the request to the first audio, and the least time by which a
    /// piece came before playback needed it (negative: a listener hears a gap).
    pub first_audio_s: Option<f64>,
    pub stream_lead_s: Option<f64>,
    /// Seconds of audio per second of wall time for one item (> 1 is faster than real time).
    pub real_time_factor: f64,
    /// The same for the whole batch.
    pub aggregate_real_time_factor: f64,
    pub peak_host_bytes: Option<u64>,
    pub peak_gpu_bytes: Option<u64>,
    /// Time to generate 16 s of audio at this speed, and whether it beats 30 s.
    pub bar_seconds_for_16s: f64,
    pub verdict: &'static str,
    pub timed_runs: Vec<Run>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.batch >= 1, "--batch {} must be at least 1", args.batch);
    anyhow::ensure!(args.runs >= 1, "--runs {} must be at least 1", args.runs);
    anyhow::ensure!(
        args.duration > 0.0 && args.duration.is_finite(),
        "--duration {} must be a positive number of seconds",
        args.duration
    );
    anyhow::ensure!(
        args.warmup_duration >= 0.0 && args.warmup_duration.is_finite(),
        "--warmup-duration {} must be zero or a positive number of seconds",
        args.warmup_duration
    );
    let resolved = crate::device::resolve(args.device, args.dtype, args.weights);
    if let Some(note) = resolved.note().filter(|_| !args.json) {
        eprintln!("bench: {note}");
    }
    let (device, dtype) = (resolved.device, resolved.dtype);
    let options = LoadOptions {
        device,
        dtype,
        weights: args.weights,
        eager: args.eager,
        on_download: (!args.json).then(crate::progress::download_bars),
    };
    let nvml_index = match device {
        DeviceSpec::Cuda(ordinal) => {
            crate::validate::kernel::cuda_uuid(ordinal).and_then(|uuid| crate::validate::driver::nvml_index_of(&uuid))
        }
        DeviceSpec::Cpu => None,
    };

    if !args.json {
        eprintln!(
            "bench: loading {}{} on {device} ({dtype})...",
            args.model,
            if args.random_weights { " (random weights)" } else { "" }
        );
    }
    let load_started = Instant::now();
    let model = if args.random_weights {
        MusicGen::random(&args.model, &options)
    } else {
        MusicGen::load(&args.model, &options)
    }
    .with_context(|| format!("cannot load model {:?}", args.model))?;
    let load_s = load_started.elapsed().as_secs_f64();

    // A melody checkpoint follows a 30 s tune, so its chroma extraction is timed too.
    let melody = model.info().melody.then(|| bench_tune(model.info().sample_rate));
    let request = |duration_secs: f64| {
        let items = (0..args.batch)
            .map(|i| GenerationItem {
                prompt: args.prompt.clone(),
                sampling: SamplingParams::default(),
                seed: i as u64,
            })
            .collect();
        let mut request = GenerationRequest::new(items, duration_secs);
        request.melody = melody.clone();
        request
    };
    let cancel = CancelToken::default();
    if args.warmup_duration > 0.0 {
        if !args.json {
            eprintln!("bench: warm-up ({} s of audio)...", args.warmup_duration);
        }
        model.generate(&request(args.warmup_duration), &mut |_| {}, &cancel).context("warm-up generation failed")?;
    }

    let sync = || -> anyhow::Result<()> {
        match device {
            DeviceSpec::Cuda(ordinal) => crate::validate::kernel::synchronize(ordinal).map_err(anyhow::Error::msg),
            DeviceSpec::Cpu => Ok(()),
        }
    };
    let timed = request(args.duration);
    let mut runs = Vec::with_capacity(args.runs);
    for i in 0..args.runs {
        if !args.json {
            eprintln!("bench: run {}/{}...", i + 1, args.runs);
        }
        let sampler = nvml_index.and_then(GpuSampler::start);
        let stream = args.stream.map(|chunk_secs| musicgen::StreamOptions { chunk_secs });
        let (phases, audio) = timing::timed_generation(&model, &timed, stream, &sync).context("generation failed")?;
        let gpu_peak = sampler.map(GpuSampler::finish);
        anyhow::ensure!(
            audio.len() == args.batch,
            "the engine returned {} tracks for a batch of {}",
            audio.len(),
            args.batch
        );
        runs.push(Run { phases, gpu_peak });
    }

    let report = report::summarise(&args, device, dtype, model.info().clone(), load_s, runs);
    if args.json {
        crate::print_out(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        crate::print_out(&report::human(&report))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// 30 s of a rising scale, one note every half second: what a melody checkpoint follows in `bench`.
fn bench_tune(sample_rate: u32) -> musicgen::Audio {
    let rate = sample_rate as f32;
    let samples = (0..30 * sample_rate as usize)
        .map(|i| {
            let t = i as f32 / rate;
            let note = (t * 2.0).floor() % 12.0;
            let f = 220.0 * 2f32.powf(note / 12.0);
            0.3 * (2.0 * std::f32::consts::PI * f * t).sin()
        })
        .collect();
    musicgen::Audio { sample_rate, channels: vec![samples] }
}
