//! `dgx-music generate`: one or more prompts to audio files (WAV, FLAC, MP3, Ogg/Vorbis), with a
//! progress bar; or one prompt streamed while it is made (`--stream`, `--play`), endlessly with
//! `--duration 0`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use musicgen::audio::{self, Format, Normalize, SampleFormat, StreamNormalizer, Tags};
use musicgen::request::{
    validate_continuation, validate_duration, validate_extend_stride, validate_prompt, DEFAULT_EXTEND_STRIDE_SECS,
    ENDLESS, MAX_MELODY_SECS, WINDOW_SECS,
};
use musicgen::{
    Audio, CancelToken, DType, GenerationItem, GenerationRequest, LoadOptions, MusicGen, SamplingParams, StreamOptions,
    Weights, DEFAULT_CHUNK_SECS,
};

use crate::device::DeviceChoice;

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  dgx-music generate \"ambient piano music\" --duration 16 -o piano.wav\n  \
    dgx-music generate \"lo-fi beat\" \"epic orchestra\" --seed 7   (one file per prompt)\n  \
    dgx-music generate \"jazzy piano solo\" --continue intro.wav --duration 60 -o long.wav\n  \
    dgx-music generate \"80s synth pop\" --model melody --melody hum.wav --duration 20\n  \
    dgx-music generate \"warm synth pads\" -o pads.flac   (the format follows the extension)\n  \
    dgx-music generate \"warm synth pads\" --format mp3   (warm-synth-pads.mp3, 320 kbps)\n  \
    dgx-music generate \"ambient piano\" --duration 60 --stream - | aplay   (hear it while it is made)\n  \
    dgx-music generate \"deep house radio\" --duration 0 --play   (endless, until Ctrl-C)\n\n\
    Tracks longer than 30 s are made in 30 s windows, each starting from the last 30 - stride \
    seconds of the one before (audiocraft's extend_stride).\n\
    The first run downloads facebook/musicgen-small (about 2.4 GB) into the Hugging Face cache.")]
pub struct Args {
    /// Text describing the music; several prompts are generated together as one batch.
    #[arg(required = true)]
    prompts: Vec<String>,

    /// Seconds of audio to generate: the whole track, the continued audio included. Over 30 s
    /// the track is made in windows (see --extend-stride). 0 with --stream or --play: an endless
    /// track, window after window until stopped (Ctrl-C, or the reader of --stream leaving).
    #[arg(short, long, default_value_t = 10.0, allow_negative_numbers = true)]
    duration: f64,

    /// Continue this audio file (WAV, FLAC, MP3 or OGG/Vorbis, at most 30 s): the track starts
    /// with it, re-synthesised by the model's codec, and goes on from it to --duration.
    #[arg(long = "continue", value_name = "FILE")]
    continue_from: Option<PathBuf>,

    /// A tune for a melody checkpoint (facebook/musicgen-melody, -melody-large, -stereo-melody,
    /// -stereo-melody-large) to follow: any file --continue reads, mixed to mono. Up to 30 s
    /// conditions the whole track; longer tracks take the 30 s from each window's start, looping.
    #[arg(long, value_name = "FILE")]
    melody: Option<PathBuf>,

    /// Seconds each 30 s window moves on from the last, for tracks over 30 s: every window after
    /// the first continues the last 30 - stride seconds of the one before. Below 30.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_EXTEND_STRIDE_SECS, allow_negative_numbers = true)]
    extend_stride: f64,

    /// Hub id (facebook/musicgen-small, -medium, -large, -stereo-*), short name (small, medium,
    /// large, stereo-small...) or a local checkpoint directory in the Hugging Face layout.
    #[arg(short, long, default_value = "facebook/musicgen-small", env = "DGX_MUSIC_MODEL")]
    model: String,

    /// Sample only from the k most likely tokens; 1 is greedy decoding.
    /// [default: 250, or the vocabulary size if smaller]
    #[arg(long)]
    top_k: Option<usize>,

    /// Nucleus sampling threshold in [0, 1]; 0 turns it off.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    top_p: f64,

    /// Softmax temperature (> 0); lower is more conservative.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    temperature: f64,

    /// Classifier-free guidance: how strongly the prompt steers the music (1 turns it off).
    #[arg(long, default_value_t = 3.0, allow_negative_numbers = true)]
    cfg_coef: f64,

    /// Random seed; the same seed, prompt and settings give the same music on the same device.
    /// Omitted: a fresh seed, printed so the track can be made again.
    #[arg(long)]
    seed: Option<u64>,

    /// auto, cpu, cuda or cuda:N; auto is the first GPU that passes `validate`'s kernel check,
    /// else the CPU (saying why).
    #[arg(long, default_value = "auto", env = "DGX_MUSIC_DEVICE")]
    device: DeviceChoice,

    /// Precision of the decoder: f32, f16 or bf16 [default: bf16 on a GPU, f32 on the CPU]. On the
    /// CPU bf16 keeps the weights in bf16 and computes in f32, about 2.8x faster than f32.
    #[arg(long, value_parser = crate::device::parse_dtype)]
    dtype: Option<DType>,

    /// How the decoder's weights are stored: dtype (in --dtype) or int8 (per output channel,
    /// weight-only: half the bytes of bf16 per step, so faster where memory bandwidth binds, at a
    /// small cost in accuracy measured in docs/PERFORMANCE.md). On the CPU int8 makes the default
    /// --dtype bf16 (the cache; the sums are f32 either way), which is faster there.
    #[arg(long, default_value = "dtype", value_parser = crate::device::parse_weights)]
    weights: Weights,

    /// Loudness normalisation before writing: none, peak (−1 dBFS) or loudness (−14 LUFS, EBU R128).
    #[arg(long, default_value = "loudness", value_parser = parse_normalize)]
    normalize: Normalize,

    /// Output file; its extension picks the format (.wav, .flac, .mp3, .ogg) unless --format
    /// names one. With several prompts, -1, -2... are appended to its name.
    /// Default: a name made from the prompt, with the format's extension.
    #[arg(short, long)]
    output: Option<PathBuf>,

    /// Output format, whatever the extension of -o: wav16 (16-bit WAV; `wav` is the same),
    /// wav24, wav-f32 (32-bit float WAV), flac (16-bit, lossless), mp3 (320 kbps) or ogg
    /// (Ogg/Vorbis). [default: from -o's extension, else wav16]
    #[arg(long, value_parser = parse_format)]
    format: Option<Format>,

    /// WAV sample format, the older spelling of --format for WAV output: pcm16, pcm24 or f32.
    #[arg(long, value_parser = parse_sample_format)]
    sample_format: Option<SampleFormat>,

    /// Write the track while it is made to FILE, or to stdout with `-`: a 16-bit WAV whose
    /// header already holds the track's length (open-ended with --duration 0), so a player can
    /// start at once: `--stream - | aplay`, `--stream - | ffplay -nodisp -`. The level is fixed
    /// from the first audible piece (--normalize), where a file is normalised as a whole.
    /// Files are then written only when -o or --format asks for one.
    #[arg(long, value_name = "FILE|-")]
    stream: Option<PathBuf>,

    /// With --stream: raw interleaved 16-bit little-endian PCM at 32 kHz instead of WAV, e.g.
    /// `--stream - --raw | aplay -f S16_LE -r 32000 -c 1` (-c 2 for stereo models).
    #[arg(long, requires = "stream")]
    raw: bool,

    /// Play the track through the default audio output while it is made (builds with the
    /// `play` feature; says so when the machine has no output device).
    #[arg(long)]
    play: bool,

    /// Seconds of audio per streamed piece: the first audio comes once this much music (plus
    /// EnCodec's 80 ms of look-ahead) is generated.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_CHUNK_SECS)]
    chunk: f64,

    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
}

impl Args {
    fn streams(&self) -> bool {
        self.stream.is_some() || self.play
    }

    fn endless(&self) -> bool {
        self.duration == 0.0 && self.streams()
    }

    /// Whether finished tracks go to files: always, unless the track is streamed and no file
    /// was asked for.
    fn writes_files(&self) -> bool {
        !self.streams() || self.output.is_some() || self.format.is_some() || self.sample_format.is_some()
    }
}

fn parse_normalize(s: &str) -> Result<Normalize, String> {
    s.parse().map_err(|e: musicgen::Error| e.to_string())
}

fn parse_sample_format(s: &str) -> Result<SampleFormat, String> {
    s.parse().map_err(|e: musicgen::Error| e.to_string())
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse().map_err(|e: musicgen::Error| e.to_string())
}

/// The format of the output: --format, else -o's extension, else 16-bit WAV; --sample-format
/// picks the WAV depth when the output is a WAV of unstated depth.
fn output_format(args: &Args) -> anyhow::Result<Format> {
    let format = match (args.format, &args.output) {
        (Some(format), _) => format,
        (None, Some(path)) => Format::from_path(path)?,
        (None, None) => Format::Wav16,
    };
    let Some(sample) = args.sample_format else { return Ok(format) };
    let wav = match sample {
        SampleFormat::Pcm16 => Format::Wav16,
        SampleFormat::Pcm24 => Format::Wav24,
        SampleFormat::F32 => Format::WavF32,
    };
    match format {
        Format::Wav16 if args.format.is_none() => Ok(wav),
        same if same == wav => Ok(same),
        other => anyhow::bail!(
            "--sample-format is for WAV output, and the output is {other}; leave it out, or use --format wav16, \
             wav24 or wav-f32 alone"
        ),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let format = output_format(&args)?;
    let mut request = build_request(&args)?;
    let outputs = if args.writes_files() { output_paths(&args, format) } else { Vec::new() };
    if args.streams() && args.prompts.len() > 1 {
        anyhow::bail!(
            "--stream and --play take one prompt, and {} were given: stream them one after the other, or leave \
             out --stream/--play to make them as one batch of files",
            args.prompts.len()
        );
    }
    if args.endless() && args.writes_files() {
        anyhow::bail!(
            "an endless track (--duration 0) never ends, so it cannot be written to a file: leave out -o/--format"
        );
    }
    // Opened before the (slow) model load, so a missing device or an unwritable path is said first.
    let mut sink = args.stream.as_deref().map(StreamSink::open).transpose()?;
    let player = if args.play { Some(crate::play::Player::open(MUSICGEN_SAMPLE_RATE, 1)?) } else { None };

    let started = Instant::now();
    let resolved = crate::device::resolve(args.device, args.dtype, args.weights);
    if let Some(note) = resolved.note().filter(|_| !args.quiet) {
        eprintln!("{note}");
    }
    let options = LoadOptions {
        device: resolved.device,
        dtype: resolved.dtype,
        weights: args.weights,
        on_download: (!args.quiet).then(crate::progress::download_bars),
        ..LoadOptions::default()
    };
    let model = MusicGen::load(&args.model, &options).with_context(|| format!("loading model {}", args.model))?;
    if let Some(path) = &args.continue_from {
        let info = model.info();
        request.continuation = Some(audio::read_audio(path, info.sample_rate, info.audio_channels, WINDOW_SECS)?);
    }
    match (&request.melody, model.info().melody) {
        (Some(_), false) => anyhow::bail!(
            "--melody needs a melody checkpoint, and {} is text-to-music: add --model facebook/musicgen-melody \
             (or -melody-large, -stereo-melody, -stereo-melody-large), or leave --melody out",
            args.model
        ),
        (None, true) if !args.quiet => eprintln!(
            "{} follows a melody: without --melody FILE it follows the text alone (transformers' null melody)",
            args.model
        ),
        _ => {}
    }
    if args.top_k.is_none() {
        let vocab = model.info().vocab_size;
        request.items.iter_mut().for_each(|item| item.sampling.top_k = item.sampling.top_k.min(vocab));
    }
    let load_secs = started.elapsed().as_secs_f64();
    if !args.quiet {
        let info = model.info();
        let weights = if info.weights == "int8" { ", int8 weights" } else { "" };
        eprintln!("Loaded {} on {} ({}{weights}) in {load_secs:.1} s", info.source, info.device, info.dtype);
    }

    let bar = crate::progress::generation_bar(args.quiet);
    let generation_started = Instant::now();
    let mut on_progress = |p: &musicgen::Progress| {
        if args.endless() {
            bar.set_message(format!("{:.0} s", p.elapsed.as_secs_f64()));
            bar.tick();
        } else {
            bar.set_length(p.total_steps as u64);
            bar.set_position(p.step as u64);
        }
    };
    let cancel = CancelToken::default();
    let result = if args.streams() {
        let info = model.info();
        let samples = request.samples(info.sample_rate);
        // The model's channels are known only now: a stereo model's player reopens for two.
        let player = match player {
            Some(_) if info.audio_channels != 1 => {
                Some(crate::play::Player::open(info.sample_rate, info.audio_channels)?)
            }
            other => other,
        };
        if let Some(sink) = &mut sink {
            sink.start(info.sample_rate, info.audio_channels, samples, args.raw)?;
        }
        let mut level = StreamNormalizer::new(args.normalize);
        let mut on_audio = |pieces: &[Audio]| -> musicgen::Result<()> {
            let mut piece = pieces[0].clone();
            level.apply(&mut piece)?;
            if let Some(player) = &player {
                player.push(&piece);
            }
            match &mut sink {
                Some(sink) => sink.write(&piece),
                None => Ok(()),
            }
        };
        let options = StreamOptions { chunk_secs: args.chunk };
        let tracks = model.generate_streaming(&request, options, &mut on_progress, &mut on_audio, &cancel);
        bar.finish_and_clear();
        if let Some(player) = player {
            player.finish()?;
        }
        tracks
    } else {
        model.generate(&request, &mut on_progress, &cancel)
    };
    bar.finish_and_clear();
    let tracks = match result {
        Err(musicgen::Error::Io(err)) if err.kind() == std::io::ErrorKind::BrokenPipe => {
            // Whoever read the stream has gone (a player closed, `| head`): nothing is wrong.
            eprintln!(
                "The stream's reader closed it after {:.1} s; stopped.",
                generation_started.elapsed().as_secs_f64()
            );
            return Ok(ExitCode::SUCCESS);
        }
        other => other?,
    };
    let generation_secs = generation_started.elapsed().as_secs_f64();

    for ((mut track, path), item) in tracks.into_iter().zip(&outputs).zip(&request.items) {
        audio::normalize(&mut track, args.normalize)?;
        let tags = Tags::for_track(&item.prompt, item.seed, &args.model);
        let bytes = audio::encode(&track, format, &tags)?;
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    let audio_secs = request.duration_secs * request.items.len() as f64;
    let listing: String = outputs.iter().map(|path| format!("{}\n", path.display())).collect();
    if sink.as_ref().is_some_and(StreamSink::is_stdout) {
        eprint!("{listing}");
    } else {
        crate::print_out(&listing)?;
    }
    eprintln!(
        "Generated {audio_secs:.1} s of audio in {generation_secs:.1} s (real-time factor {:.2}x; {:.1} s in total with loading), seed {}",
        audio_secs / generation_secs,
        started.elapsed().as_secs_f64(),
        request.items[0].seed,
    );
    Ok(ExitCode::SUCCESS)
}

/// Where `--stream` writes: stdout or a file, WAV or raw PCM.
struct StreamSink {
    out: Box<dyn Write>,
    stdout: bool,
}

impl StreamSink {
    fn open(path: &Path) -> anyhow::Result<Self> {
        if path == Path::new("-") {
            return Ok(Self { out: Box::new(std::io::stdout().lock()), stdout: true });
        }
        let file =
            std::fs::File::create(path).with_context(|| format!("--stream: cannot create {}", path.display()))?;
        Ok(Self { out: Box::new(file), stdout: false })
    }

    fn is_stdout(&self) -> bool {
        self.stdout
    }

    /// The WAV header, at once, so a player opens the stream before the first piece.
    fn start(&mut self, sample_rate: u32, channels: usize, samples: Option<usize>, raw: bool) -> musicgen::Result<()> {
        if !raw {
            self.out.write_all(&audio::wav_stream_header(sample_rate, channels as u16, samples))?;
        }
        Ok(self.out.flush()?)
    }

    fn write(&mut self, piece: &Audio) -> musicgen::Result<()> {
        self.out.write_all(&audio::pcm16_bytes(piece))?;
        Ok(self.out.flush()?)
    }
}

/// Checks everything that can be checked before the (slow) model load.
fn build_request(args: &Args) -> anyhow::Result<GenerationRequest> {
    for prompt in &args.prompts {
        validate_prompt(prompt)?;
    }
    if !args.endless() {
        validate_duration(args.duration).map_err(|err| {
            if args.duration == 0.0 {
                anyhow::anyhow!("{err}; --duration 0 (an endless track) needs --stream or --play")
            } else {
                err.into()
            }
        })?;
    }
    if !(args.chunk > 0.0 && args.chunk <= WINDOW_SECS) {
        anyhow::bail!("--chunk {} must be above 0 and at most {WINDOW_SECS} seconds", args.chunk);
    }
    let sampling = SamplingParams {
        top_k: args.top_k.unwrap_or(DEFAULT_TOP_K),
        top_p: args.top_p,
        temperature: args.temperature,
        cfg_coef: args.cfg_coef,
    };
    // The vocabulary is not known before loading; the model checks top_k against it again.
    sampling.validate(usize::MAX)?;
    let seed = args.seed.unwrap_or_else(fresh_seed);
    validate_extend_stride(args.extend_stride)?;
    if let Some(path) = &args.continue_from {
        // Read now, so a bad file is refused before the (slow) model load; every MusicGen codec
        // runs at 32 kHz. The model's own channel count is applied once it is loaded.
        let audio = audio::read_audio(path, MUSICGEN_SAMPLE_RATE, 1, WINDOW_SECS)?;
        validate_continuation(audio.len(), audio.sample_rate, if args.endless() { ENDLESS } else { args.duration })?;
    }
    let melody = match &args.melody {
        Some(path) => Some(audio::read_audio(path, MUSICGEN_SAMPLE_RATE, 1, MAX_MELODY_SECS)?),
        None => None,
    };
    let items = args.prompts.iter().map(|prompt| GenerationItem { prompt: prompt.clone(), sampling, seed }).collect();
    let mut request = GenerationRequest::new(items, if args.endless() { ENDLESS } else { args.duration });
    request.extend_stride_secs = args.extend_stride;
    request.melody = melody;
    Ok(request)
}

const MUSICGEN_SAMPLE_RATE: u32 = 32_000;

/// audiocraft's default.
const DEFAULT_TOP_K: usize = 250;

fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    (nanos as u64 ^ (u64::from(std::process::id()) << 32)) % 1_000_000_000
}

fn output_paths(args: &Args, format: Format) -> Vec<PathBuf> {
    let base = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.{}", slug(&args.prompts[0]), format.extension())));
    if args.prompts.len() == 1 {
        return vec![base];
    }
    (1..=args.prompts.len()).map(|i| numbered(&base, i, format)).collect()
}

fn numbered(base: &Path, i: usize, format: Format) -> PathBuf {
    let stem = base.file_stem().map_or_else(|| "track".into(), |s| s.to_string_lossy().into_owned());
    let ext = base.extension().map_or_else(|| format.extension().into(), |s| s.to_string_lossy().into_owned());
    base.with_file_name(format!("{stem}-{i}.{ext}"))
}

/// A file name from a prompt: "Ambient piano, 16 s!" -> "ambient-piano-16-s".
fn slug(prompt: &str) -> String {
    let words: Vec<String> =
        prompt.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect();
    let mut slug = String::new();
    for word in words {
        if slug.len() + word.len() > 60 {
            break;
        }
        if !slug.is_empty() {
            slug.push('-');
        }
        slug.push_str(&word);
    }
    if slug.is_empty() {
        "music".into()
    } else {
        slug
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_safe_file_names() {
        assert_eq!(slug("Ambient piano, 16 s!"), "ambient-piano-16-s");
        assert_eq!(slug("../../etc/passwd"), "etc-passwd");
        assert_eq!(slug("!!!"), "music");
    }

    #[test]
    fn several_prompts_get_numbered_files() {
        assert_eq!(numbered(Path::new("out/x.wav"), 2, Format::Wav16), PathBuf::from("out/x-2.wav"));
        assert_eq!(numbered(Path::new("out/x"), 1, Format::Flac), PathBuf::from("out/x-1.flac"));
    }
}
