//! How much int8 weights (`--weights int8`) change a published architecture's decoder, with
//! random weights (no checkpoint can be downloaded here): the f32 decoder decodes greedily,
//! with guidance 3, from a random text memory (or a melody prefix), then the same decoder,
//! quantised in place, is teacher-forced on the f32 tokens. Printed per architecture: the
//! largest relative error of the int8 logits against f32 over all steps, and the share of
//! guided greedy picks equal to f32's. Memory: the f32 decoder once (13 GB for large).
//!
//!     cargo run --release -p musicgen --example int8_quality -- small medium large melody [STEPS]

use candle_core::{DType, Device, Tensor};
use musicgen::internals::{argmax, guide, Conditioning, Decoder};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const GUIDANCE: f32 = 3.0;
/// A typical prompt's length in T5 tokens (the bench's synthetic prompt has 12).
const MEMORY_LEN: usize = 12;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let steps = args.iter().find_map(|a| a.parse::<usize>().ok()).unwrap_or(50);
    let names: Vec<&str> = args.iter().map(String::as_str).filter(|a| a.parse::<usize>().is_err()).collect();
    for name in if names.is_empty() { vec!["small"] } else { names } {
        let figures = measure(name, steps)?;
        println!("{}", serde_json::to_string(&figures)?);
    }
    Ok(())
}

fn measure(name: &str, steps: usize) -> Result<serde_json::Value> {
    let config = musicgen::internals::architecture(name)?;
    let cfg = &config.decoder;
    let device = Device::Cpu;
    let mut decoder = Decoder::load(cfg, musicgen::internals::random_weights(DType::F32, &device).pp("decoder"))?;
    let (k, vocab, hidden) = (cfg.num_codebooks, cfg.vocab_size, cfg.hidden_size);
    // One item with guidance: a conditional row, then the unconditional (zero) one.
    let cond = (Tensor::randn(0f32, 1.0, (1, MEMORY_LEN, hidden), &device)? * 0.3)?;
    let memory = Tensor::cat(&[&cond, &cond.zeros_like()?], 0)?;
    let mask = Tensor::ones((2, MEMORY_LEN), DType::U32, &device)?;
    let conditioning = if decoder.has_cross_attention() {
        Conditioning::CrossAttention { memory: &memory, mask: &mask }
    } else {
        Conditioning::Prefix(&memory)
    };
    let bos = cfg.bos_token_id;

    // f32: greedy decoding (no delay pattern: every codebook predicts every step, which
    // exercises the same products), keeping the logits and picks.
    let mut state = decoder.start(conditioning, steps)?;
    let mut tokens = vec![vec![bos; k]];
    let mut reference = Vec::with_capacity(steps);
    let started = std::time::Instant::now();
    for step in 0..steps {
        let (logits, picks) = step_once(&decoder, &mut state, &tokens[step], k, vocab)?;
        reference.push(logits);
        tokens.push(picks);
    }
    let f32_step_s = started.elapsed().as_secs_f64() / steps as f64;

    decoder.quantize_int8()?;
    let mut state = decoder.start(conditioning, steps)?;
    let (mut worst, mut same) = (0f32, 0usize);
    let started = std::time::Instant::now();
    for step in 0..steps {
        let (logits, picks) = step_once(&decoder, &mut state, &tokens[step], k, vocab)?;
        let scale = reference[step].iter().fold(0f32, |m, v| m.max(v.abs()));
        let gap = logits.iter().zip(&reference[step]).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        worst = worst.max(gap / scale);
        same += picks.iter().zip(&tokens[step + 1]).filter(|(a, b)| a == b).count();
    }
    let int8_step_s = started.elapsed().as_secs_f64() / steps as f64;
    Ok(serde_json::json!({
        "architecture": name,
        "steps": steps,
        "codebooks": k,
        "max_relative_logit_error": worst,
        "greedy_picks_equal_to_f32": same as f64 / (steps * k) as f64,
        "f32_step_ms": f32_step_s * 1e3,
        "int8_step_ms": int8_step_s * 1e3,
        "int8_step_weight_bytes": decoder.step_weight_bytes(),
    }))
}

/// One step from `tokens` (one per codebook, both rows): the logits of both rows and the
/// guided greedy pick per codebook.
fn step_once(
    decoder: &Decoder,
    state: &mut musicgen::internals::DecoderState,
    tokens: &[u32],
    k: usize,
    vocab: usize,
) -> Result<(Vec<f32>, Vec<u32>)> {
    let input = Tensor::from_vec([tokens, tokens].concat(), (2, k), &Device::Cpu)?;
    let logits = decoder.step(&input, state)?.flatten_all()?.to_vec1::<f32>()?;
    let (c, u) = logits.split_at(k * vocab);
    let mut scores = vec![0f32; k * vocab];
    guide(c, u, GUIDANCE, &mut scores);
    let picks = scores.chunks(vocab).map(argmax).collect();
    Ok((logits, picks))
}
