//! Times decoder steps of a published architecture with random weights on the CPU, the
//! decoder's projection shapes (2 rows, f32 and bf16 weights, candle's `Linear` against
//! `musicgen::linear`) and a step's worth of distinct weights streamed, against a memory-copy
//! bandwidth.
//!
//! The decoder steps run once per dtype listed (default `f32,bf16`), one after the other in
//! the same process, so the figures share the machine's state.
//!
//! `skip` steps run untimed first, to time steps at a later position (a longer cache).
//!
//! `cargo run -p musicgen --release --example step_bench -- [architecture] [steps] [dtypes] [skip]`

use std::time::Instant;

use candle_core::{DType as TensorDType, Device, Module, Tensor};
use musicgen::{DType, GenerationItem, GenerationRequest, LoadOptions, MusicGen, SamplingParams};

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> musicgen::Result<()> {
    let mut args = std::env::args().skip(1);
    let architecture = args.next().unwrap_or_else(|| "small".into());
    let steps: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(20);
    let dtypes = args
        .next()
        .unwrap_or_else(|| "f32,bf16".into())
        .split(',')
        .map(str::parse)
        .collect::<musicgen::Result<Vec<DType>>>()?;
    let skip: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(0);

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
    println!("memory copy: {:.2} GB/s (read+write, median of 5)", bytes / median(copies) / 1e9);
    drop((src, dst));

    // The decoder's projection shapes (musicgen-small), 2 rows as batch 1 with guidance:
    // candle's Linear (gemm) against musicgen::internals::Linear, alternating, same inputs.
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
    for dtype in [TensorDType::F32, TensorDType::BF16] {
        for (out_dim, in_dim) in [(4096, 1024), (1024, 4096), (3072, 1024), (1024, 1024), (8192, 1024)] {
            let weight = Tensor::randn(0f32, 0.02, (out_dim, in_dim), &Device::Cpu)?.to_dtype(dtype)?;
            let xs = Tensor::randn(0f32, 1.0, (2, 1, in_dim), &Device::Cpu)?.to_dtype(dtype)?;
            let candle = candle_nn::Linear::new(weight.clone(), None);
            let ours = musicgen::internals::Linear::new(weight);
            let (a, b) = (time(&|| candle.forward(&xs).unwrap()), time(&|| ours.forward(&xs).unwrap()));
            let gb = (out_dim * in_dim * dtype.size_in_bytes()) as f64 / 1e9;
            println!(
                "(2x{in_dim})x({out_dim}x{in_dim})^T {dtype:?}: candle Linear {:.2} ms ({:.1} GB/s), musicgen Linear {:.2} ms ({:.1} GB/s)",
                a * 1e3, gb / a, b * 1e3, gb / b
            );
        }
    }

    // A step's weight bytes (musicgen-small: 360.7 M weights, 86 matrices of 4096x1024), each
    // read once per pass as a step does: more than the last-level cache holds, unlike the
    // repeated single projections above.
    for dtype in [TensorDType::F32, TensorDType::BF16] {
        let xs = Tensor::randn(0f32, 1.0, (2, 1, 1024), &Device::Cpu)?.to_dtype(dtype)?;
        let layers = (0..86)
            .map(|_| {
                Ok(musicgen::internals::Linear::new(
                    Tensor::full(0.01f32, (4096, 1024), &Device::Cpu)?.to_dtype(dtype)?,
                ))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let pass = median(
            (0..3)
                .map(|_| {
                    let t = Instant::now();
                    for layer in &layers {
                        std::hint::black_box(layer.forward(&xs).unwrap());
                    }
                    t.elapsed().as_secs_f64()
                })
                .collect(),
        );
        let gb = (86 * 4096 * 1024 * dtype.size_in_bytes()) as f64 / 1e9;
        println!(
            "a step's weights ({gb:.2} GB {dtype:?}) through musicgen Linear, 2 rows: {:.1} ms ({:.1} GB/s)",
            pass * 1e3,
            gb / pass
        );
    }

    for dtype in dtypes {
        let options = LoadOptions { dtype, ..LoadOptions::default() };
        let model = MusicGen::random(&architecture, &options)?;
        let request = GenerationRequest::new(
            vec![GenerationItem { prompt: "bench".into(), sampling: SamplingParams::default(), seed: 1 }],
            (skip + steps + 10) as f64 / 50.0,
        );
        let mut generation = model.start(&request)?;
        for _ in 0..skip {
            generation.step()?;
        }
        let mut times = Vec::with_capacity(steps);
        for _ in 0..steps {
            let t = Instant::now();
            generation.step()?;
            times.push(t.elapsed().as_secs_f64());
        }
        println!(
            "{architecture} {dtype:?}: {} params, {steps} steps after {skip}, median {:.1} ms/step, min {:.1} ms",
            model.info().parameters,
            median(times.clone()) * 1e3,
            times.iter().cloned().fold(f64::MAX, f64::min) * 1e3
        );
    }
    Ok(())
}
