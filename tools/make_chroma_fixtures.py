#!/usr/bin/env python3
"""Record transformers' musicgen-melody chroma features for the Rust `ChromaExtractor` tests.

Usage:  /work/main/.venv/melody/bin/python tools/make_chroma_fixtures.py \
            --out crates/musicgen/tests/fixtures/chroma
        (any venv made from tools/requirements-melody.txt: torch 2.11.0, torchaudio 2.11.0,
        transformers 4.48.3). Runs on the CPU (torch on one thread) in seconds, needs no network,
        and a re-run with the same versions writes the same files byte for byte.

The reference is transformers 4.48.3's MusicgenMelodyFeatureExtractor, which ports audiocraft's
ChromaExtractor: librosa's chroma filter bank (transformers.audio_utils.chroma_filter_bank) over
torchaudio's Spectrogram(n_fft, win_length=n_fft, hop_length, power=2, center=True,
normalized=True), each frame divided by its max, then one-hot at the argmax.

Files written under --out:

  preprocessor_config.json
      MusicgenMelodyFeatureExtractor().save_pretrained(out): the default extractor's config, as the
      facebook/musicgen-melody checkpoints ship it (the Rust test reads it back into ChromaConfig).
  tone_a4.wav
      the `tone_a4` signal below as 16-bit PCM, mono, 32 kHz (its samples are k/32768, so the file
      holds them exactly): the test reads it through musicgen::audio::read_audio.
  reference.safetensors (all f32)
      chroma_filters (12, 8193)
          MusicgenMelodyFeatureExtractor().chroma_filters: chroma_filter_bank(sampling_rate=32000,
          num_frequency_bins=16384, tuning=0, num_chroma=12) computed by numpy in float64, then
          `.float()`.
      samples.<name> (T,)
          the input signal of each stored signal below but tone_a4 (in its WAV) and the formula
          ones: values k/32768.
      input_features.<name> (frames, 12)
          extractor(samples, sampling_rate=32000, return_tensors="pt")["input_features"][0]: the
          one-hot frames. One signal alone, so `pad(padding=True)` pads to the longest of a batch of
          one, i.e. not at all, and truncates to chunk_length * sampling_rate = 960000 samples.
      chroma.<name> (frames, 12)
          the normalised chroma before the one-hot: the steps of
          MusicgenMelodyFeatureExtractor._torch_extract_fbank_features (zero-pad to n_fft when
          shorter, extractor.spectrogram, einsum with chroma_filters, normalize p=inf eps=1e-6)
          applied to the truncated signal; this script checks that its argmax equals the one-hot
          frames above, frame by frame.
      alt.chroma_filters (24, 1025), alt.input_features.chord_c_major (32, 24),
      alt.chroma.chord_c_major (32, 24)
          the same for MusicgenMelodyFeatureExtractor(**ALT_CONFIG) (16 kHz, n_fft 2048, hop 512,
          24 chroma bins), fed the chord_c_major samples.
  reference.json
      versions, the configs, and for every signal: how it is made, sample count, frame count,
      `silent_frames` (frames whose raw chroma is exactly zero: all-zero input under the window;
      their normalised chroma is all zeros and the argmax is bin 0, torch's first-max rule), and
      `min_gap`: the smallest difference between the largest and second-largest normalised chroma
      value over the other frames. Every signal's min_gap is far above float error (> 1e-3), so an
      argmax that agrees with transformers means the implementation agrees; no frame is skipped.
      Formula signals (too long to store) also hold their formula and `fnv1a64`, the 64-bit FNV-1a
      hash of their int16 samples (little-endian bytes), so a test can prove it rebuilt them exactly.

The signals (32 kHz; every sample quantised as q(x) = clip(round_half_even(x * 32768), -32768,
32767) / 32768; note frequencies f(m) = 440 * 2 ** ((m - 69) / 12) for MIDI note m):

  notes signals: x[n] = sum over the partials (m, a) of segment s = n // segment_samples, in order,
      of a * sin(2 * pi * f(m) * (n - s * segment_samples) / 32000), the partials of segment s being
      segments[s % len(segments)]; evaluated in float64 with Python's math.sin and `**` (the C
      library's sin and pow, as Rust's f64::sin and powf), left to right as written.
  tone_a4          0.75 s of A4 (440 Hz) at 0.5: bin 9 (A, counting from C) in every frame
  chord_c_major    0.5 s of C4 0.4 + E4 0.25 + G4 0.15: bin 0 (C)
  melody           C4 E4 D4 A4 at 0.5, 12800 samples (0.4 s, not a whole number of hops) each
  noise            0.5 s of white Gaussian noise, numpy default_rng(7).standard_normal * 0.2
  short_odd        8001 samples of E4 at 0.5: shorter than n_fft, padded 4191 left and 4192 right
  silence_tone     12288 zeros then 12288 samples of B4 at 0.5: frames 0 and 1 see only zeros
  long_31s         formula only: 31 s, 14 notes cycling at 0.5, 12800 samples each; truncated to 30 s
  chords_10s       formula only: 10 s of C, F, G, Am triads (root 0.35, third 0.2, fifth 0.12),
                   25600 samples each
"""

import argparse
import json
import math
import os
import re
import wave

import numpy as np
import safetensors.torch
import torch
import torchaudio
import transformers
from transformers import MusicgenMelodyFeatureExtractor

SR = 32000
ALT_CONFIG = {"sampling_rate": 16000, "n_fft": 2048, "hop_length": 512, "num_chroma": 24, "feature_size": 24}
GAP_FLOOR = 1e-3


def quantise(x):
    """float64 samples -> int16 codes (round half to even, as Python's round and numpy's)."""
    return np.clip(np.round(np.asarray(x, dtype=np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def notes(length, segment_samples, segments):
    """The notes formula of the docstring, one sample at a time with math.sin."""
    freqs = [[(440.0 * 2.0 ** ((m - 69) / 12.0), a) for m, a in chord] for chord in segments]
    out = np.empty(length, dtype=np.float64)
    for n in range(length):
        s = n // segment_samples
        k = n - s * segment_samples
        x = 0.0
        for f, a in freqs[s % len(freqs)]:
            x += a * math.sin(2.0 * math.pi * f * k / SR)
        out[n] = x
    return quantise(out)


def fnv1a64(codes):
    h = 0xCBF29CE484222325
    for byte in codes.astype("<i2").tobytes():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def normalised_chroma(extractor, samples):
    """The steps of _torch_extract_fbank_features before the one-hot, for one truncated signal."""
    wav = torch.from_numpy(samples)[None]
    if wav.shape[-1] < extractor.n_fft:
        pad = extractor.n_fft - wav.shape[-1]
        wav = torch.nn.functional.pad(wav, (pad // 2, pad // 2 + pad % 2), "constant", 0)
    spec = extractor.spectrogram(wav)
    raw = torch.einsum("cf,...ft->...ct", extractor.chroma_filters, spec)
    norm = torch.nn.functional.normalize(raw, p=float("inf"), dim=-2, eps=1e-6)
    return raw[0].T, norm[0].T


def record(extractor, samples, tensors, prefix, name):
    """One signal through the extractor: its tensors into `tensors`, its facts returned."""
    features = extractor(samples, sampling_rate=extractor.sampling_rate, return_tensors="pt")["input_features"][0]
    truncated = samples[: extractor.n_samples]
    raw, norm = normalised_chroma(extractor, truncated)
    assert torch.equal(norm.argmax(-1), features.argmax(-1)), name
    assert torch.equal(features.sum(-1), torch.ones(features.shape[0])), name
    silent = (raw == 0).all(-1)
    top2 = torch.topk(norm[~silent], 2, dim=-1).values
    gap = (top2[:, 0] - top2[:, 1]).min().item() if top2.shape[0] else None
    assert gap is None or gap > GAP_FLOOR, f"{name}: gap {gap} is too close to float error"
    tensors[f"{prefix}input_features.{name}"] = features.contiguous()
    tensors[f"{prefix}chroma.{name}"] = norm.contiguous()
    return {
        "samples": len(samples),
        "frames": features.shape[0],
        "bins": features.argmax(-1).tolist(),
        "silent_frames": torch.nonzero(silent).flatten().tolist(),
        "min_gap": gap,
    }


def write_wav(path, codes):
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(codes.astype("<i2").tobytes())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    out = parser.parse_args().out
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)

    extractor = MusicgenMelodyFeatureExtractor()
    extractor.save_pretrained(out)

    stored = {
        "tone_a4": (24000, 24000, [[[69, 0.5]]]),
        "chord_c_major": (16000, 16000, [[[60, 0.4], [64, 0.25], [67, 0.15]]]),
        "melody": (51200, 12800, [[[60, 0.5]], [[64, 0.5]], [[62, 0.5]], [[69, 0.5]]]),
        "short_odd": (8001, 8001, [[[64, 0.5]]]),
    }
    long_notes = [60, 62, 64, 65, 67, 69, 71, 72, 71, 69, 67, 65, 64, 62]
    triads = [[60, 64, 67], [65, 69, 72], [67, 71, 74], [69, 72, 76]]
    formulas = {
        "long_31s": (31 * SR, 12800, [[[m, 0.5]] for m in long_notes]),
        "chords_10s": (10 * SR, 25600, [[[r, 0.35], [t, 0.2], [f, 0.12]] for r, t, f in triads]),
    }

    tensors = {"chroma_filters": extractor.chroma_filters.contiguous()}
    signals = {}
    codes = {}
    for name, (length, segment, segments) in stored.items():
        codes[name] = notes(length, segment, segments)
        signals[name] = {"made": f"notes: segment_samples {segment}, segments {segments}"}
    codes["noise"] = quantise(np.random.default_rng(7).standard_normal(16000) * 0.2)
    signals["noise"] = {"made": "numpy default_rng(7).standard_normal(16000) * 0.2"}
    codes["silence_tone"] = np.concatenate([np.zeros(12288, np.int16), notes(12288, 12288, [[[71, 0.5]]])])
    signals["silence_tone"] = {"made": "12288 zeros, then notes: segment_samples 12288, segments [[[71, 0.5]]]"}

    for name, c in codes.items():
        samples = (c.astype(np.float32) / np.float32(32768.0)).astype(np.float32)
        if name != "tone_a4":
            tensors[f"samples.{name}"] = torch.from_numpy(samples)
        signals[name].update(record(extractor, samples, tensors, "", name))
    write_wav(os.path.join(out, "tone_a4.wav"), codes["tone_a4"])

    for name, (length, segment, segments) in formulas.items():
        c = notes(length, segment, segments)
        samples = (c.astype(np.float32) / np.float32(32768.0)).astype(np.float32)
        signals[name] = {
            "formula": {"length": length, "segment_samples": segment, "segments": segments},
            "fnv1a64": fnv1a64(c),
        }
        signals[name].update(record(extractor, samples, tensors, "", name))

    alt = MusicgenMelodyFeatureExtractor(**ALT_CONFIG)
    tensors["alt.chroma_filters"] = alt.chroma_filters.contiguous()
    chord = tensors["samples.chord_c_major"].numpy()
    alt_chord = record(alt, chord, tensors, "alt.", "chord_c_major")

    safetensors.torch.save_file(tensors, os.path.join(out, "reference.safetensors"))
    reference = {
        "versions": {
            "torch": torch.__version__,
            "torchaudio": torchaudio.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
        },
        "config": {k: getattr(extractor, k) for k in ["sampling_rate", "n_fft", "hop_length", "chunk_length"]}
        | {"num_chroma": extractor.chroma_filters.shape[0]},
        "gap_floor": GAP_FLOOR,
        "signals": signals,
        "alt_config": ALT_CONFIG,
        "alt_signals": {"chord_c_major": alt_chord},
    }
    text = json.dumps(reference, indent=1)
    # Lists of numbers on one line each: the frames' bins read as a sequence.
    text = re.sub(r"\[[-0-9.,\s]*\]", lambda m: re.sub(r"\s+", " ", m.group(0)).replace("[ ", "[").replace(" ]", "]"), text)
    with open(os.path.join(out, "reference.json"), "w") as f:
        f.write(text + "\n")
    for name, s in signals.items():
        print(f"{name:14} {s['samples']:7} samples {s['frames']:4} frames  min gap {s['min_gap']:.4g}")
    print(f"alt chord      {alt_chord['frames']:4} frames  min gap {alt_chord['min_gap']:.4g}")


if __name__ == "__main__":
    main()
