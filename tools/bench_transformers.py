#!/usr/bin/env python3
"""Times transformers' MusicGen on the architectures `dgx-music bench --random-weights` uses.

Same work as our bench: random weights of the published architecture (tools/musicgen-arch/*.json),
classifier-free guidance 3, top-k 250 sampling, 16 s of audio (800 frames = 803 decoder steps
with the 4-codebook delay pattern), text encoding and EnCodec decoding included. Each case gets a
short warm-up generation, then `--runs` timed ones bracketed by torch.cuda.synchronize() (on the GPU); the
median is reported. Prints one JSON object per case as it finishes (prefixed `case:`) and one JSON
object with everything last.

    python3 tools/bench_transformers.py --model small --cases fp32x1,bf16x1,bf16x8 --runs 3
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FRAME_RATE = 50  # EnCodec 32 kHz frames per second
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def parse_cases(text):
    cases = []
    for item in text.split(","):
        dtype, _, batch = item.strip().partition("x")
        if dtype not in DTYPES or not batch.isdigit() or int(batch) < 1:
            sys.exit(f"bad case {item!r}: write DTYPExBATCH with DTYPE in {sorted(DTYPES)}, e.g. bf16x8")
        cases.append((dtype, int(batch)))
    return cases


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="small", choices=["small", "medium", "large", "melody", "melody-large"])
    ap.add_argument("--duration", type=float, default=16.0, help="seconds of audio (default 16)")
    ap.add_argument("--cases", default="fp32x1,bf16x1,bf16x8", help="DTYPExBATCH list, e.g. fp32x1,fp16x1,bf16x8")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per case (median reported)")
    ap.add_argument("--prompt-tokens", type=int, default=12, help="length of the (random) text prompt")
    ap.add_argument("--budget", type=float, default=0.0, help="stop starting cases after this many seconds (0: no limit)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu, for the CPU side by side")
    args = ap.parse_args()

    import torch
    import transformers
    from transformers import MusicgenConfig, MusicgenForConditionalGeneration
    from transformers import MusicgenMelodyConfig, MusicgenMelodyForConditionalGeneration

    on_gpu = args.device != "cpu"
    if on_gpu and not torch.cuda.is_available():
        sys.exit("bench_transformers: torch sees no CUDA GPU (use --device cpu for the CPU)")

    def synchronize():
        if on_gpu:
            torch.cuda.synchronize()

    cases = parse_cases(args.cases)
    melody = args.model.startswith("melody")
    config_class, model_class = (
        (MusicgenMelodyConfig, MusicgenMelodyForConditionalGeneration) if melody
        else (MusicgenConfig, MusicgenForConditionalGeneration)
    )
    with open(os.path.join(HERE, "musicgen-arch", f"{args.model}.json")) as f:
        config = config_class.from_dict(json.load(f))
    torch.manual_seed(args.seed)
    base = model_class(config).eval()
    codebooks = config.decoder.num_codebooks
    frames = round(args.duration * FRAME_RATE)
    steps = frames + codebooks - 1
    device = torch.device("cuda" if on_gpu else "cpu")
    started = time.monotonic()
    results = []

    for dtype_name, batch in cases:
        if args.budget and time.monotonic() - started > args.budget:
            results.append({"dtype": dtype_name, "batch": batch, "skipped": "time budget spent"})
            continue
        if on_gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        # Module.to casts in place: later cases start from the previous case's rounding of the same
        # random weights, which changes no timing.
        model = base.to(device=device, dtype=getattr(torch, DTYPES[dtype_name]))
        synchronize()
        load_s = time.perf_counter() - t0
        ids = torch.randint(2, config.text_encoder.vocab_size, (batch, args.prompt_tokens), device=device)
        mask = torch.ones_like(ids)
        # musicgen-melody: a one-hot chroma of 30 s (235 frames), as its feature extractor makes; transformers
        # >= 4.57 ignores it (transformers#45647) but still does the same decoder work on the prefix.
        extra = {}
        if melody:
            bins = torch.randint(0, config.num_chroma, (batch, config.chroma_length), device=device)
            extra["input_features"] = torch.nn.functional.one_hot(bins, config.num_chroma).to(model.dtype)

        def generate(new_tokens):
            with torch.inference_mode():
                return model.generate(
                    input_ids=ids, attention_mask=mask, do_sample=True, top_k=250, guidance_scale=3.0,
                    max_new_tokens=new_tokens, min_new_tokens=new_tokens, **extra,
                )

        generate(16)  # warm-up: cuBLAS handles, kernel loads, allocator pools
        synchronize()
        times = []
        audio_shape = None
        for _ in range(args.runs):
            synchronize()
            t = time.perf_counter()
            audio = generate(steps)
            synchronize()
            times.append(time.perf_counter() - t)
            audio_shape = list(audio.shape)
        median = statistics.median(times)
        audio_s = audio_shape[-1] / config.audio_encoder.sampling_rate
        result = {
            "dtype": dtype_name,
            "batch": batch,
            "runs": args.runs,
            "seconds": times,
            "median_s": median,
            "ms_per_step": median / steps * 1e3,
            "steps": steps,
            "audio_shape": audio_shape,
            "audio_seconds": audio_s,
            "real_time_factor": audio_s / median,
            "aggregate_real_time_factor": batch * audio_s / median,
            "peak_gpu_bytes": torch.cuda.max_memory_allocated() if on_gpu else None,
            "to_device_s": load_s,
        }
        results.append(result)
        print("case: " + json.dumps(result), flush=True)

    out = {
        "engine": "transformers",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if on_gpu else None,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "model": args.model,
        "architecture": f"tools/musicgen-arch/{args.model}.json (random weights)",
        "duration_s": args.duration,
        "frames": frames,
        "steps": steps,
        "sampling": {"top_k": 250, "guidance_scale": 3.0, "do_sample": True},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": results,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
