#!/usr/bin/env python3
"""Build tiny random musicgen-melody checkpoints and record reference outputs from transformers 4.48,
the last release whose melody generation uses the melody (transformers#45647: from 4.57 on,
MusicgenMelodyForConditionalGeneration.generate ignores every condition).

Usage:  tools/make_melody_fixtures.sh   (a venv from tools/requirements-melody.txt, then this script)
        python3 tools/make_melody_fixtures.py --out crates/musicgen/tests/fixtures

Run tools/make_fixtures.py first: each melody checkpoint takes the T5 encoder, the EnCodec codec (with
its fitted codebooks) and the tokenizer of its text-to-music sibling (tiny-mono, tiny-stereo), so only
the decoder and the two projections are new. Every new weight is drawn from seeded generators with
make_fixtures.randomize's scheme; a re-run with the same package versions reproduces the files.

Layout written under --out:

  tiny-melody/         mono, 4 codebooks, T5 d_model 32 -> decoder hidden 64 (enc_to_dec_proj), chroma 12 -> 64
                       (audio_enc_to_dec_proj); transformers 4.48's config dialect, one model.safetensors
  tiny-stereo-melody/  stereo, 8 codebooks interleaved L, R, d_model == hidden == 32; weights in 2 safetensors
                       shards + model.safetensors.index.json
  tiny-melody-v5/      tiny-melody's weights re-saved by transformers 5.x (run by tools/make_melody_fixtures.sh with
                       the text-to-music venv): the 5.x config dialect; reference.json says "same_weights_as"
  each <name>/checkpoint/ holds config.json, generation_config.json, preprocessor_config.json (transformers'
  MusicgenMelodyFeatureExtractor defaults: n_fft 16384, hop 4096, 12 chroma, 30 s), the tokenizer files and
  the weights; <name>/melody.wav and <name>/melody2.wav are two different synthetic tunes (PCM16, mono 32 kHz).

Reference tensors (reference.safetensors; B = 2 prompts, K codebooks, S greedy steps, P = 235 + L prefix):

  melody_audio (1, 64000) f32, melody2_audio (1, 48000) f32
      the two tunes as 16-bit values (melody.wav / melody2.wav hold exactly these samples): notes of a few
      harmonics at equal-tempered pitches, each lasting a quarter or a third of a second.
  input_features (1, 16, 12) f32, input_features2 (1, 12, 12) f32
      MusicgenMelodyFeatureExtractor()(audio, sampling_rate=32000, return_tensors="pt").input_features:
      the one-hot chroma frames.
  prefix (2B, P, hidden) f32
      the encoder_hidden_states the decoder got for the melody run: rows [cond b0, cond b1, uncond b0, uncond b1],
      each the projected chroma repeated and cut to chroma_length (235), then the projected text states times
      the attention mask (zeros for the unconditional rows, whose chroma is the null one-hot on bin 0).
  logits (S, 2B*K, V), scores (S, B*K, V), sequences (B, K, S+1), codes (B, K, F), audio (B, C, F*640)
      model.generate(input_ids, attention_mask, input_features=input_features repeated B times,
      do_sample=False, guidance_scale=3.0, max_new_tokens=S, return_dict_in_generate=True, output_scores=True,
      output_logits=True), as make_fixtures.py records them (the token grid with the delay pattern applied).
  codes_melody2 (B, K, F), audio_melody2 (B, C, F*640)
      the same with the second tune: must differ from codes (two melodies give different music).
  codes_null (B, K, F), audio_null (B, C, F*640)
      the same call without input_features: transformers' null melody (one-hot on bin 0) for every row.

reference.json: prompts, frames, steps, min_top1_margin(_relative) of each run over the positions kept,
the seed, versions, and a config summary.
"""

import argparse
import json
import os
import shutil
import sys
import wave

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import (
    MusicgenMelodyConfig,
    MusicgenMelodyFeatureExtractor,
    MusicgenMelodyForConditionalGeneration,
    T5TokenizerFast,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (the shared seeded-weight scheme and constants)

VARIANTS = {"tiny-melody": "tiny-mono", "tiny-stereo-melody": "tiny-stereo"}
PROMPTS = mf.PROMPTS[:2]
FRAMES = 10
SEED_CANDIDATES = 60
# Looser than make_fixtures.py's 1e-3: the best of 60 stereo seeds reaches 9e-4, still ~1e4 times f32 rounding.
MIN_RELATIVE_MARGIN = 5e-4
# Equal-tempered MIDI notes of the two tunes and how long each lasts, in samples at 32 kHz.
TUNES = {
    "melody": ([60, 64, 67, 72, 71, 67, 64, 62], 8000),  # 8 quarter-second notes: 2 s
    "melody2": ([69, 66, 62, 57, 62, 66], 8000),  # 6 quarter-second notes: 1.5 s
}


def tune(notes, note_samples):
    """A mono tune (1, len) of notes with a few decaying harmonics, quantised to 16-bit values."""
    t = torch.arange(note_samples, dtype=torch.float64) / 32000
    pieces = []
    for note in notes:
        f = 440.0 * 2 ** ((note - 69) / 12)
        x = sum((0.5 ** h) * torch.sin(2 * torch.pi * f * (h + 1) * t) for h in range(3))
        envelope = torch.clamp(t * 200, max=1.0) * torch.exp(-2 * t)
        pieces.append(0.4 * x * envelope)
    audio = torch.cat(pieces).float()[None].clamp(-1, 32767 / 32768)
    return torch.round(audio * 32768) / 32768


def write_wav(path, audio):
    pcm = torch.round(audio[0] * 32768).to(torch.int16).contiguous()
    with wave.open(path, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(32000)
        f.writeframes(pcm.numpy().tobytes())


def tokenizer(sibling):
    return T5TokenizerFast(
        tokenizer_file=os.path.join(sibling, "tokenizer.json"),
        eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0,
    )


def build_model(sibling, seed):
    """A melody model whose T5 and EnCodec are the sibling checkpoint's and whose decoder and
    projections are seeded random weights."""
    with open(os.path.join(sibling, "config.json")) as f:
        base = json.load(f)
    # transformers 4.48 counts quantizers as 1000 * bandwidth // (frame_rate * 10) (5.x divides by
    # frame_rate * log2(codebook_size)): 2.0 kbps keeps the sibling's 4 codebooks under 4.48.
    base["audio_encoder"]["target_bandwidths"] = [2.0]
    decoder = dict(base["decoder"])
    decoder["model_type"] = "musicgen_melody_decoder"
    config = MusicgenMelodyConfig(
        text_encoder=base["text_encoder"], audio_encoder=base["audio_encoder"], decoder=decoder,
        num_chroma=12, chroma_length=235,
    )
    torch.manual_seed(seed)
    model = MusicgenMelodyForConditionalGeneration(config).eval()
    mf.randomize(model, seed)
    # 4.48 keeps the melody decoder's sinusoidal positions as a (frozen) parameter, which randomize
    # overwrote: put the sinusoids back, as every published checkpoint holds them.
    positions = model.decoder.model.decoder.embed_positions
    with torch.no_grad():
        positions.weights.copy_(positions.get_embedding(*positions.weights.shape))
    shared = load_file(os.path.join(sibling, "model.safetensors"))
    own = model.state_dict()
    assert model.audio_encoder.quantizer.get_num_quantizers_for_bandwidth(None) == config.decoder.num_codebooks // (
        config.decoder.audio_channels)
    with torch.no_grad():
        for name, value in shared.items():
            if name.startswith(("text_encoder.", "audio_encoder.")):
                own[name].copy_(value)
    gc = model.generation_config
    for key in ("decoder_start_token_id", "pad_token_id", "bos_token_id"):
        setattr(gc, key, mf.DECODER_VOCAB)
    gc.eos_token_id = None
    gc.do_sample = True
    gc.guidance_scale = mf.GUIDANCE_SCALE
    gc.top_k = 250
    gc.max_length = 1500
    return model


def run(model, tok, steps, features=None):
    inputs = tok(PROMPTS, padding=True, return_tensors="pt", return_token_type_ids=False)
    original_forward = model.decoder.forward
    prefix = {}

    def forward_and_capture(*args, **kwargs):
        prefix.setdefault("states", kwargs.get("encoder_hidden_states"))
        return original_forward(*args, **kwargs)

    model.decoder.forward = forward_and_capture
    extra = {} if features is None else {"input_features": features.repeat(len(PROMPTS), 1, 1)}
    try:
        with mf.sequences_of(model) as captured, torch.no_grad():
            out = model.generate(
                **inputs, do_sample=False, guidance_scale=mf.GUIDANCE_SCALE, max_new_tokens=steps,
                return_dict_in_generate=True, output_scores=True, output_logits=True, **extra,
            )
    finally:
        del model.decoder.forward
    b, k = len(PROMPTS), model.decoder.num_codebooks
    raw = captured["sequences"]
    start = torch.full((b * k, 1), mf.DECODER_VOCAB, dtype=torch.long)
    _, pattern = model.decoder.build_delay_pattern_mask(start, pad_token_id=mf.DECODER_VOCAB, max_length=steps + 1)
    grid = model.decoder.apply_delay_pattern_mask(raw, pattern)
    scores = torch.stack(out.scores)
    assert torch.equal(raw[:, 1:].T, scores.argmax(dim=-1)), "greedy tokens differ from argmax(scores)"
    kept = pattern[:, 1:].T.reshape(-1) == -1
    margin, rel = mf.top1_margin(scores.flatten(0, 1)[kept])
    return {
        "input_ids": inputs.input_ids,
        "attention_mask": inputs.attention_mask,
        "prefix": prefix["states"],
        "logits": torch.stack(out.logits),
        "scores": scores,
        "sequences": grid.reshape(b, k, steps + 1),
        "codes": grid[grid != mf.DECODER_VOCAB].reshape(b, k, -1),
        "audio": out.sequences,
        "margin": margin,
        "relative_margin": rel,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="crates/musicgen/tests/fixtures")
    parser.add_argument("--seeds-from", metavar="DIR", help="reuse DIR/<name>/reference.json's seed")
    parser.add_argument("--only", choices=sorted(VARIANTS), action="append", help="build only these models")
    args = parser.parse_args()
    assert transformers.__version__.startswith("4.48"), "melody references need transformers 4.48"
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()

    extractor = MusicgenMelodyFeatureExtractor()
    tunes = {name: tune(*spec) for name, spec in TUNES.items()}
    features = {name: extractor(a[0].numpy(), sampling_rate=32000, return_tensors="pt").input_features
                for name, a in tunes.items()}
    for name, sibling_name in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        sibling = os.path.join(args.out, sibling_name, "checkpoint")
        tok = tokenizer(sibling)
        channels = json.load(open(os.path.join(sibling, "config.json")))["decoder"]["audio_channels"]
        k_per_channel = json.load(open(os.path.join(sibling, "config.json")))["decoder"]["num_codebooks"] // channels
        steps = FRAMES + k_per_channel - 1
        if args.seeds_from:
            seed = json.load(open(os.path.join(args.seeds_from, name, "reference.json")))["seed"]
        else:
            best = (None, 0.0)
            for seed in range(SEED_CANDIDATES):
                model = build_model(sibling, seed)
                runs = [run(model, tok, steps, features["melody"]), run(model, tok, steps, features["melody2"]),
                        run(model, tok, steps)]
                rel = min(r["relative_margin"] for r in runs)
                variety = mf.diversity(runs[0]["codes"])
                differ = not torch.equal(runs[0]["codes"], runs[1]["codes"])
                print(f"  {name} seed {seed}: relative margin {rel:.2e}, diversity {variety:.2f}, melodies differ "
                      f"{differ}", flush=True)
                if rel > best[1] and variety >= mf.MIN_DIVERSITY and differ:
                    best = (seed, rel)
            if best[1] <= MIN_RELATIVE_MARGIN:
                raise SystemExit(f"{name}: no seed gives a relative margin above {MIN_RELATIVE_MARGIN}: {best}")
            seed = best[0]

        model = build_model(sibling, seed)
        root = os.path.join(args.out, name)
        ckpt = os.path.join(root, "checkpoint")
        if os.path.exists(ckpt):
            shutil.rmtree(ckpt)
        shard = "200KB" if name == "tiny-stereo-melody" else "50GB"
        model.save_pretrained(ckpt, max_shard_size=shard)
        extractor.save_pretrained(ckpt)
        for extra in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(os.path.join(sibling, extra), os.path.join(ckpt, extra))
        loaded = MusicgenMelodyForConditionalGeneration.from_pretrained(ckpt).eval()
        melody = run(loaded, tok, steps, features["melody"])
        melody2 = run(loaded, tok, steps, features["melody2"])
        null = run(loaded, tok, steps)
        assert not torch.equal(melody["codes"], melody2["codes"]), "two melodies gave the same codes"
        tensors = {
            "melody_audio": tunes["melody"],
            "melody2_audio": tunes["melody2"],
            "input_features": features["melody"],
            "input_features2": features["melody2"],
            "input_ids": melody["input_ids"],
            "attention_mask": melody["attention_mask"],
            "prefix": melody["prefix"],
            "logits": melody["logits"],
            "scores": melody["scores"],
            "sequences": melody["sequences"],
            "codes": melody["codes"],
            "audio": melody["audio"],
            "codes_melody2": melody2["codes"],
            "audio_melody2": melody2["audio"],
            "codes_null": null["codes"],
            "audio_null": null["audio"],
        }
        tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
        save_file(tensors, os.path.join(root, "reference.safetensors"), metadata={"format": "pt"})
        for key in ("melody", "melody2"):
            write_wav(os.path.join(root, f"{key}.wav"), tunes[key])
        meta = {
            "prompts": PROMPTS,
            "guidance_scale": mf.GUIDANCE_SCALE,
            "do_sample": False,
            "frames": FRAMES,
            "steps": steps,
            "max_new_tokens": steps,
            "audio_channels": channels,
            "seed": seed,
            "chroma_length": 235,
            "prefix_length": tensors["prefix"].shape[1],
            "min_top1_margin_kept_positions": {"melody": melody["margin"], "melody2": melody2["margin"],
                                               "null": null["margin"]},
            "min_top1_margin_relative": min(r["relative_margin"] for r in (melody, melody2, null)),
            "melodies_give_different_codes": True,
            "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                         "python": sys.version.split()[0]},
            "checkpoint_files": sorted(os.listdir(ckpt)),
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                        for k, v in tensors.items()},
        }
        mf.write_json(os.path.join(root, "reference.json"), meta)
        print(f"{name}: seed {seed}, relative margin {meta['min_top1_margin_relative']:.3g}", flush=True)


if __name__ == "__main__":
    main()
