//! Times decoder steps of a published architecture with random weights on the CPU, and one
//! `(2x1024)·(4096x1024)ᵀ` projection as the decoder does it, against a memory-copy bandwidth.
//!
//! `cargo run -p musicgen --release --example step_bench -- [architecture] [steps]`

use std::time::Instant;

use candle_core::{Device, Module, Tensor};
use musicgen::{GenerationItem, GenerationRequest, LoadOptions, MusicGen, SamplingParams};

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> musicgen::Result<()> {
    let mut args = std::env::args().skip(1);
    let architecture = args.next().unwrap_or_else(|| "small".into());
    let steps: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(20);

    // Bandwidth: read 256 MiB and write 256 MiB per copy.
    let src = vec![1f32; 64 << 20];
    let mut dst = vec![0f32; 64 << 20];
    let copies: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            dst.copy_from_slice(&src);
            std::hint::black_box(&dst);
            t.elapsed().as_secs_f64()
        })
        .collect();
    let bytes = 2.0 * (src.len() * 4) as f64;
    println!(
        "memory copy: {:.2} GB/s (read+write, median of 5)",
        bytes / median(copies) / 1e9
    );
    drop((src, dst));

    // The decoder's projection shapes (musicgen-small), 2 rows as batch 1 with guidance:
    // candle's Linear (gemm) against musicgen::linear::Linear, alternating, same inputs.
    let time = |f: &dyn Fn() -> Tensor| {
        median(
            (0..15)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(f());
                    t.elapsed().as_secs_f64()
                })
                .collect(),
        )
    };
    for (out_dim, in_dim) in [
        (4096, 1024),
        (1024, 4096),
        (3072, 1024),
        (1024, 1024),
        (8192, 1024),
    ] {
        let weight = Tensor::randn(0f32, 0.02, (out_dim, in_dim), &Device::Cpu)?;
        let xs = Tensor::randn(0f32, 1.0, (2, 1, in_dim), &Device::Cpu)?;
        let candle = candle_nn::Linear::new(weight.clone(), None);
        let ours = musicgen::linear::Linear::new(weight);
        let (a, b) = (
            time(&|| candle.forward(&xs).unwrap()),
            time(&|| ours.forward(&xs).unwrap()),
        );
        let gb = (out_dim * in_dim * 4) as f64 / 1e9;
        println!(
            "(2x{in_dim})x({out_dim}x{in_dim})^T f32: candle Linear {:.2} ms ({:.1} GB/s), musicgen Linear {:.2} ms ({:.1} GB/s)",
            a * 1e3, gb / a, b * 1e3, gb / b
        );
    }

    let model = MusicGen::random(&architecture, &LoadOptions::default())?;
    let request = GenerationRequest {
        items: vec![GenerationItem {
            prompt: "bench".into(),
            sampling: SamplingParams::default(),
            seed: 1,
        }],
        duration_secs: (steps + 10) as f64 / 50.0,
    };
    let mut generation = model.start(&request)?;
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t = Instant::now();
        generation.step()?;
        times.push(t.elapsed().as_secs_f64());
    }
    println!(
        "{architecture}: {} params, {steps} steps, median {:.1} ms/step, min {:.1} ms",
        model.info().parameters,
        median(times.clone()) * 1e3,
        times.iter().cloned().fold(f64::MAX, f64::min) * 1e3
    );
    Ok(())
}
