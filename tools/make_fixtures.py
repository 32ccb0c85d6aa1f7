#!/usr/bin/env python3
"""Build tiny random MusicGen checkpoints in the Hugging Face layout and record
reference outputs from transformers, for the Rust engine's tests.

Usage:  python3 tools/make_fixtures.py --out crates/musicgen/tests/fixtures
        (tools/make_fixtures.sh creates a venv from tools/requirements-fixtures.txt and runs this)

No network access is needed: the T5 tokenizer is built from scratch with the
`tokenizers` library and every weight is drawn from seeded generators, so a
re-run with the same package versions reproduces the files byte for byte on CPU.

Layout written under --out:

  tiny-mono/           4 codebooks, 1 channel, T5 d_model 32 -> decoder hidden 64 (has enc_to_dec_proj)
  tiny-stereo/         8 codebooks interleaved L,R, 2 channels, d_model == hidden == 32 (no enc_to_dec_proj)
  tiny-mono-legacy/    tiny-mono's weights: weight_g/weight_v names, both T5 embedding names,
                       2 safetensors shards + model.safetensors.index.json, transformers-4.31-style config.json
  tiny-mono-bin/       tiny-mono's weights: pytorch_model.bin (torch.save of a state dict), weight_g/weight_v names,
                       T5 embedding only as text_encoder.encoder.embed_tokens.weight, 5.x config.json
  each <name>/checkpoint/ holds config.json, generation_config.json, tokenizer.json, tokenizer_config.json,
  special_tokens_map.json and the weights; tiny-mono and tiny-stereo also hold reference.safetensors and
  reference.json; the variants hold reference.json with "same_weights_as": "tiny-mono" and their tensor names.
  tiny-mono/tensors.txt lists every tensor of tiny-mono's model.safetensors (name, shape, dtype).

How each reference tensor is produced (B prompts, K = decoder num_codebooks, V = decoder vocab_size,
S = max_new_tokens greedy steps, F = frames, hop = 640 samples, C = audio channels):

  input_ids (B,L) i64, attention_mask (B,L) i64
      tokenizer(prompts, padding=True, return_tensors="pt"): right padding with <pad>=0, "</s>"=1 appended.
  encoder_hidden_states (B,L,d_model) f32
      model.text_encoder(input_ids=..., attention_mask=...).last_hidden_state (no masking applied).
  projected_encoder_hidden_states (B,L,hidden) f32
      model.enc_to_dec_proj(encoder_hidden_states) when the model has it (tiny-mono), else encoder_hidden_states,
      then multiplied by attention_mask[..., None]; this is exactly what the decoder cross-attends to for the
      conditional half. The unconditional half is all zeros with an all-zero encoder attention mask.
  generate call (all references):
      model.generate(input_ids=..., attention_mask=..., do_sample=False, guidance_scale=3.0,
                     max_new_tokens=S, return_dict_in_generate=True, output_scores=True, output_logits=True)
      with generation_config decoder_start_token_id = pad_token_id = bos_token_id = V.
  logits (S, 2*B*K, V) f32
      torch.stack(out.logits): raw decoder logits of each step, rows [cond b0k0..b0k(K-1), b1k0, ...,
      then uncond in the same order]; unconditional rows use zero encoder states + zero encoder mask.
  scores (S, B*K, V) f32
      torch.stack(out.scores): uncond + (cond - uncond) * guidance_scale (ClassifierFreeGuidanceLogitsProcessor,
      no other processor is active for greedy decoding); greedy picks argmax over V (lowest index on ties).
  sequences (B, K, S+1) i64
      the token grid returned by GenerationMixin._sample (captured by wrapping model._sample), with
      model.decoder.apply_delay_pattern_mask applied, i.e. column 0 is the start token V and the delay-pattern
      positions hold V (pad); this is the grid the decoder was fed (it re-applies the mask every step).
  delay_pattern_mask (B*K, S+1) i64
      model.decoder.build_delay_pattern_mask(start_ids, pad_token_id=V, max_length=S+1)[1]: -1 where a token
      is predicted, V where the pattern forces pad/start.
  codes (B, K, F) i64
      sequences with every V removed (what generate does), F = S + 1 - K/C.
  audio (B, C, F*hop) f32
      the waveform returned by generate (out.sequences after generate): mono: model.audio_encoder.decode(codes[None],
      [None]).audio_values; stereo: even codebooks (0,2,4,6) decoded as the left channel and odd codebooks as
      the right channel through the same mono EnCodec, concatenated on dim 1.
  encodec_codes (1, K, T) i64, encodec_audio (1, C, T*hop) f32
      random codes (torch.Generator seeded) decoded the same way as `audio` (stereo: even/odd split).
  encodec_quantized (C, codebook_dim, T) f32
      model.audio_encoder.quantizer.decode(channel_codes.transpose(0, 1)) per channel c (codebooks c::C):
      the summed codebook embeddings that enter the SEANet decoder, to localise an encodec mismatch.
  *_single tensors (input_ids_single, attention_mask_single, logits_single, scores_single, sequences_single,
      codes_single, audio_single)
      the same generate call with only prompts[0] (B=1, no padding) so batch-vs-single can be compared;
      transformers itself matches the batch row to ~1e-6, not bit-exactly (T5 padding changes reductions).

  prompt_audio (1, C, 9920) f32
      a synthetic continuation prompt (0.31 s: 15.5 frames, so the encoder pads a partial frame), 16-bit values;
      <name>/prompt.wav holds exactly these samples (PCM16). Picked among seeds so every nearest-code search
      below is decisive (reference.json: min_nearest_code_gap, relative to the largest squared embedding norm).
  prompt_embeddings (C, hidden, 16) f32, prompt_codes (1, K, 16) i64
      model.audio_encoder.encoder(channel c) per channel, and EncodecModel.encode(channel c).audio_codes[0]
      interleaved L, R (codebook j of channel c at j*C + c), as _prepare_audio_encoder_kwargs_for_generation.
  continuation_codes (2, K, 33) i64, continuation_audio (2, C, 33*hop) f32
      model.generate(input_ids=prompts[:2], input_values=prompt_audio repeated twice, do_sample=False,
      guidance_scale=3.0, max_new_tokens=33 + K/C - 1 - 16): the undelayed codes (prompt codes first, checked
      unchanged) and the waveform generate returned (the prompt re-synthesised, then the continuation).
  long_codes (1, 4, 1750), long_audio_slices (3, 1, 16000)             [tiny-mono only]
  long_continued_codes (1, 4, 1650), long_continued_audio_slices (3, 1, 16000)
      audiocraft's BaseGenModel._generate_tokens loop (30 s windows; after each, the codes from `stride` on are
      the next window's decoder_input_ids) over transformers' greedy guided generate, for prompts[0]:
      long = 35 s at stride 18 from nothing, long_continued = 33 s at stride 25 continuing prompt_audio. All
      kept codes decoded once; slices of 16000 samples at the start, around each window's first new frame
      and at the end (reference.json long_tracks: windows, slice_starts, margins).

EnCodec's codebooks are fitted (fit_codebooks): the encoder's last convolution is scaled by
ENCODER_OUTPUT_GAIN, then each residual codebook is k-means of the encoder's outputs on synthetic clips,
so encoding is meaningful (random codebooks map every frame to one code) and the decoded audio changes
clearly with every codebook (reference.json codebook_sensitivity: the peak change when one codebook's codes
change, relative to the peak, asserted > 0.05).

reference.json records prompts, guidance_scale, max_new_tokens, frames, steps, min_top1_margin (smallest
top-1 minus top-2 of `scores` over all steps and rows, batch and single run, including positions the
delay pattern overwrites), min_top1_margin_relative (divided by the largest |score|),
min_top1_margin_kept_positions (batch run, only positions whose token is kept), versions and a config summary.
"""

import os

# deterministic cuBLAS when --device cuda; must be set before CUDA initialises
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import argparse
import collections
import contextlib
import copy
import json
import shutil
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file
from tokenizers import __version__ as tokenizers_version
from transformers import (
    EncodecConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    T5Config,
    T5Tokenizer,
)

PROMPTS = [
    "80s pop track with bassy drums and synth",
    "lofi beat",
    "calm ambient piano with soft rain, slow tempo and warm strings",
]
GUIDANCE_SCALE = 3.0
FRAMES = 10
ENCODEC_CHECK_FRAMES = 12
# A greedy step is decisive when its top-1/top-2 gap is this fraction of the score scale or more.
MIN_RELATIVE_MARGIN = 1e-3
SEED_CANDIDATES = 200
MIN_DIVERSITY = 0.4

# EnCodec's codebooks are fitted to the tiny encoder's own outputs (see fit_codebooks); the encoder's
# last convolution is scaled by this gain first, so its embeddings (and the codebook vectors fitted to
# them) sit at the scale random codebooks had: the decoded audio then depends clearly on every codebook.
ENCODER_OUTPUT_GAIN = 6.0
CODEBOOK_FIT_CLIPS = 32
CODEBOOK_FIT_ITERATIONS = 20
# A nearest-code search is decisive when its best and second-best squared distances differ by this
# fraction of the largest squared embedding norm or more (f32 rounding of the distances is ~1e-7 of it).
MIN_RELATIVE_CODE_GAP = 2e-5
# The continuation prompt: 0.31 s at 32 kHz, 15.5 frames, so the encoder also pads a partial frame.
PROMPT_SAMPLES = 9920
PROMPT_CANDIDATES = 50
CONTINUATION_FRAMES = 33
# audiocraft's window loop (BaseGenModel._generate_tokens) run over transformers' continuation.
WINDOW_SECS = 30
LONG_TRACKS = {
    "long": dict(duration=35, stride=18, continue_prompt=False),
    "long_continued": dict(duration=33, stride=25, continue_prompt=True),
}
LONG_SLICE_SAMPLES = 16000

WORDS = """
a an the and or with without of in on at for to from by as into over under very more less
music song track beat beats tune melody melodies harmony rhythm groove loop loops sample samples
pop rock jazz blues funk soul disco house techno trance ambient classical orchestral cinematic epic
folk country reggae metal punk indie electronic acoustic hip hop rap trap dubstep drum bass lofi
drums kick snare hihat cymbal percussion guitar guitars piano keys organ synth synths synthesizer
violin violins cello strings string brass horn horns trumpet saxophone sax flute clarinet harp bell bells
choir vocal vocals voice voices pad pads arpeggio chords chord riff riffs solo lead bassline
slow fast quick upbeat downbeat tempo bpm loud quiet soft hard heavy light warm cold bright dark
calm happy sad angry peaceful relaxing energetic dreamy chill mellow intense powerful gentle smooth
rough clean dirty distorted deep high low big small long short old new modern retro vintage classic
80s 90s 70s 60s summer winter night day morning evening rain sun ocean sea city forest space
dance party club festival cafe study sleep focus work travel road drive driving walk walking
major minor key melodic rhythmic catchy simple complex minimal lush sparse full rich thin
intro outro verse chorus bridge drop build buildup break breakdown fade ending start
play playing played plays sound sounds sounding like feel feeling mood style genre vibe vibes
is are was be been has have had it its this that these those some any all no not
one two three four five six seven eight nine ten 100 120 128 140
""".split()


def build_tokenizer():
    """A small T5-style Unigram tokenizer: known words are single pieces, anything else falls back to
    '▁' plus single characters, so prompts of different lengths tokenize to different token counts."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -6.0)]
    seen = {piece for piece, _ in vocab}
    for i, word in enumerate(dict.fromkeys(WORDS)):
        piece = "▁" + word
        if piece not in seen:
            vocab.append((piece, -5.0 - 0.001 * i))
            seen.add(piece)
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"()-&/+#%"
    for i, ch in enumerate(chars):
        for piece in (ch, "▁" + ch):
            if piece not in seen:
                vocab.append((piece, -9.0 - 0.001 * i))
                seen.add(piece)
    tok = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)
    assert tok.pad_token_id == 0 and tok.eos_token_id == 1 and tok.unk_token_id == 2, (
        tok.pad_token_id,
        tok.eos_token_id,
        tok.unk_token_id,
    )
    return tok


def encodec_config(codebook_size):
    # 32 kHz EnCodec shape (facebook/encodec_32khz) shrunk: hop 8*5*4*4 = 640, 50 frames/s.
    # num_quantizers = 1000 * bandwidth // (frame_rate * log2(codebook_size)) = 1200 // (50 * 6) = 4.
    return EncodecConfig(
        sampling_rate=32000,
        audio_channels=1,
        target_bandwidths=[1.2],
        upsampling_ratios=[8, 5, 4, 4],
        use_causal_conv=False,
        pad_mode="reflect",
        norm_type="weight_norm",
        num_lstm_layers=2,
        hidden_size=16,
        num_filters=2,
        codebook_size=codebook_size,
        use_conv_shortcut=False,
        compress=2,
        num_residual_layers=1,
        residual_kernel_size=3,
        kernel_size=7,
        last_kernel_size=7,
        dilation_growth_rate=2,
        normalize=False,
        chunk_length_s=None,
        overlap=None,
        trim_right_ratio=1.0,
    )


VARIANTS = {
    "tiny-mono": dict(d_model=32, hidden=64, num_codebooks=4, audio_channels=1, ffn=128),
    "tiny-stereo": dict(d_model=32, hidden=32, num_codebooks=8, audio_channels=2, ffn=64),
}
DECODER_VOCAB = 64


def build_config(spec, text_vocab_size):
    t5 = T5Config(
        vocab_size=text_vocab_size,
        d_model=spec["d_model"],
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="relu",
        dropout_rate=0.1,
        layer_norm_epsilon=1e-6,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        is_encoder_decoder=False,
        use_cache=False,
        architectures=["T5EncoderModel"],
    )
    codec = encodec_config(DECODER_VOCAB)
    assert codec.num_quantizers == 4 and codec.hop_length == 640 and codec.frame_rate == 50
    dec = MusicgenDecoderConfig(
        vocab_size=DECODER_VOCAB,
        max_position_embeddings=2048,
        num_hidden_layers=2,
        ffn_dim=spec["ffn"],
        num_attention_heads=4,
        hidden_size=spec["hidden"],
        activation_function="gelu",
        dropout=0.1,
        attention_dropout=0.0,
        activation_dropout=0.0,
        scale_embedding=False,
        num_codebooks=spec["num_codebooks"],
        audio_channels=spec["audio_channels"],
        pad_token_id=DECODER_VOCAB,
        bos_token_id=DECODER_VOCAB,
        decoder_start_token_id=DECODER_VOCAB,
        tie_word_embeddings=False,
    )
    return MusicgenConfig(text_encoder=t5, audio_encoder=codec, decoder=dec)


def set_generation_config(model):
    gc = model.generation_config
    gc.decoder_start_token_id = DECODER_VOCAB
    gc.pad_token_id = DECODER_VOCAB
    gc.bos_token_id = DECODER_VOCAB
    gc.eos_token_id = None
    # Same sampling defaults as facebook/musicgen-* (top_k larger than the tiny vocab on purpose).
    gc.do_sample = True
    gc.guidance_scale = GUIDANCE_SCALE
    gc.top_k = 250
    gc.max_length = 1500
    gc._from_model_config = False
    # transformers leaves dtype unset for a config built in code; checkpoints on the hub say float32
    for c in (model.config, model.config.text_encoder, model.config.audio_encoder, model.config.decoder):
        c.dtype = torch.float32


def randomize(model, seed):
    """Overwrite every parameter and EnCodec codebook buffer with seeded values large enough that
    greedy decoding is decisive (the default std 0.02 gives nearly tied logits)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(shape):
        return torch.randn(shape, generator=gen, dtype=torch.float32)

    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                if "norm" in name and name.endswith("weight"):
                    p.copy_(1.0 + 0.1 * randn(p.shape))
                else:
                    p.copy_(0.1 * randn(p.shape))
            elif name.startswith("decoder.") and "embed_tokens" in name:
                # K codebook embeddings are summed; keep the sum comparable to the sinusoidal positions
                # so that greedy decoding does not lock onto one repeated code
                p.copy_(randn(p.shape) * 0.5)
            elif "embed_tokens" in name or "shared" in name or "relative_attention_bias" in name:
                p.copy_(randn(p.shape))
            elif "lm_heads" in name:
                p.copy_(randn(p.shape) * (2.0 / p.shape[1] ** 0.5))
            else:
                fan_in = p[0].numel()
                p.copy_(randn(p.shape) / fan_in**0.5)
        # Weight norm: weight = g * v / ||v|| (norm over every dim but 0). Make g close to ||v||
        # but not equal, so a loader that ignores g is caught.
        for name, module in model.named_modules():
            par = getattr(module, "parametrizations", None)
            if par is not None and "weight" in par:
                v = par.weight.original1
                g = par.weight.original0
                norm = v.flatten(1).norm(dim=1).reshape(g.shape)
                g.copy_(norm * (1.0 + 0.2 * randn(g.shape)))
        for layer in model.audio_encoder.quantizer.layers:
            cb = layer.codebook
            cb.embed.copy_(randn(cb.embed.shape))
            cb.embed_avg.copy_(cb.embed)
            cb.cluster_size.fill_(1.0)
            cb.inited.fill_(1.0)


def synthetic_clips(gen, count, samples):
    """Seeded test signals of `samples` samples each, shape (count, 1, samples): sines, square waves,
    clipped noise and chirps at random pitches and levels under a slow random envelope."""
    t = torch.arange(samples, dtype=torch.float32) / 32000
    clips = []
    for i in range(count):
        pitch = 60 * 2 ** (6 * torch.rand(1, generator=gen).item())
        level = 0.1 + 0.8 * torch.rand(1, generator=gen).item()
        kind = i % 4
        if kind == 0:
            x = torch.sin(2 * torch.pi * pitch * t)
        elif kind == 1:
            x = torch.sign(torch.sin(2 * torch.pi * pitch * t))
        elif kind == 2:
            x = torch.randn(t.shape, generator=gen).clamp(-3, 3) / 3
        else:
            x = torch.sin(2 * torch.pi * (pitch * t + 200 * t * t))
        envelope = 0.5 + 0.5 * torch.sin(2 * torch.pi * 3 * torch.rand(1, generator=gen).item() * t)
        clips.append((level * x * envelope)[None])
    return torch.stack(clips)


def fit_codebooks(model, seed):
    """Fit EnCodec's residual codebooks to the tiny encoder's outputs on synthetic audio (k-means on
    each residual in turn). transformers' codebook buffers are zeros and random ones give an encoder
    whose outputs all map to one code; fitted ones make encoding meaningful and keep the decoder's
    audio sensitive to every codebook."""
    gen = torch.Generator().manual_seed(seed + 2000)
    codec = model.audio_encoder
    with torch.no_grad():
        last = codec.encoder.layers[-1].conv
        last.parametrizations.weight.original0.mul_(ENCODER_OUTPUT_GAIN)
        last.bias.mul_(ENCODER_OUTPUT_GAIN)
        data = codec.encoder(synthetic_clips(gen, CODEBOOK_FIT_CLIPS, 32000))
        residual = data.transpose(1, 2).reshape(-1, data.shape[1])
        for layer in codec.quantizer.layers:
            cb = layer.codebook
            size = cb.embed.shape[0]
            centroids = residual[torch.randperm(residual.shape[0], generator=gen)[:size]].clone()
            for _ in range(CODEBOOK_FIT_ITERATIONS):
                nearest = torch.cdist(residual, centroids).argmin(dim=1)
                for j in range(size):
                    members = residual[nearest == j]
                    if len(members):
                        centroids[j] = members.mean(dim=0)
            cb.embed.copy_(centroids)
            cb.embed_avg.copy_(centroids)
            residual = residual - centroids[torch.cdist(residual, centroids).argmin(dim=1)]


def nearest_code_gaps(model, audio):
    """Smallest gap between the best and second-best squared distance of every nearest-code search
    `model.audio_encoder.encode(audio)` makes, absolute and relative to the largest squared norm of
    the embeddings searched (the scale of the numbers the distances are computed from)."""
    codec = model.audio_encoder
    with torch.no_grad():
        emb = codec.encoder(audio.to(model.device)).cpu()
    residual = emb.transpose(1, 2).reshape(-1, emb.shape[1])
    gap, scale = float("inf"), residual.pow(2).sum(1).max().item()
    for layer in codec.quantizer.layers[: codec.quantizer.get_num_quantizers_for_bandwidth(None)]:
        embed = layer.codebook.embed.cpu()
        d = residual.pow(2).sum(1, keepdim=True) - 2 * residual @ embed.t() + embed.pow(2).sum(1)[None]
        top = d.topk(2, dim=1, largest=False).values
        gap = min(gap, (top[:, 1] - top[:, 0]).min().item())
        residual = residual - embed[d.argmin(dim=1)]
    return gap, gap / scale


def prompt_audio(seed, channels):
    """A continuation prompt (1, channels, PROMPT_SAMPLES): a chord under a decay plus a little noise,
    each channel its own, quantised to 16-bit so that the WAV written next to the fixture holds
    exactly these samples."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(PROMPT_SAMPLES, dtype=torch.float32) / 32000
    out = []
    for _ in range(channels):
        x = torch.zeros_like(t)
        for _ in range(3):
            f = 110 * 2 ** (4 * torch.rand(1, generator=gen).item())
            x += torch.sin(2 * torch.pi * f * t + 6.28 * torch.rand(1, generator=gen).item())
        x = 0.25 * x * torch.exp(-3 * t) + 0.02 * torch.randn(t.shape, generator=gen)
        out.append(x)
    audio = torch.stack(out)[None].clamp(-1, 32767 / 32768)
    return torch.round(audio * 32768) / 32768


def write_wav(path, audio):
    """audio (1, C, S) of 16-bit values -> a PCM16 WAV file."""
    import wave
    pcm = torch.round(audio[0].T * 32768).to(torch.int16).contiguous()
    with wave.open(path, "wb") as f:
        f.setnchannels(audio.shape[1])
        f.setsampwidth(2)
        f.setframerate(32000)
        f.writeframes(pcm.numpy().tobytes())


def build_model(name, seed, text_vocab_size):
    torch.manual_seed(seed)
    config = build_config(VARIANTS[name], text_vocab_size)
    model = MusicgenForConditionalGeneration(config)
    model.eval()
    randomize(model, seed)
    set_generation_config(model)
    return model


@contextlib.contextmanager
def sequences_of(model):
    """While the block runs, keeps the token grid GenerationMixin._sample returns (the delayed codes,
    before generate decodes them to audio) as captured["sequences"]."""
    captured = {}
    original_sample = model._sample

    def sample_and_capture(*args, **kwargs):
        out = original_sample(*args, **kwargs)
        captured["sequences"] = out.sequences.cpu()
        return out

    model._sample = sample_and_capture
    try:
        yield captured
    finally:
        del model._sample


def run_generate(model, tok, prompts, steps):
    inputs = tok(prompts, padding=True, return_tensors="pt")
    device_inputs = inputs.to(model.device)
    with sequences_of(model) as captured, torch.no_grad():
        out = model.generate(
            input_ids=device_inputs.input_ids,
            attention_mask=device_inputs.attention_mask,
            do_sample=False,
            guidance_scale=GUIDANCE_SCALE,
            max_new_tokens=steps,
            return_dict_in_generate=True,
            output_scores=True,
            output_logits=True,
        )

    inputs = inputs.to("cpu")
    b = inputs.input_ids.shape[0]
    k = model.decoder.num_codebooks
    raw = captured["sequences"]
    assert raw.shape == (b * k, steps + 1), raw.shape
    start = torch.full((b * k, 1), DECODER_VOCAB, dtype=torch.long)
    _, pattern = model.decoder.build_delay_pattern_mask(start, pad_token_id=DECODER_VOCAB, max_length=steps + 1)
    grid = model.decoder.apply_delay_pattern_mask(raw, pattern)
    logits = torch.stack(out.logits).cpu()
    scores = torch.stack(out.scores).cpu()
    # greedy consistency: each raw token is the argmax of that step's CFG scores
    assert torch.equal(raw[:, 1:].T, scores.argmax(dim=-1)), "greedy tokens differ from argmax(scores)"
    codes = grid[grid != DECODER_VOCAB].reshape(b, k, -1)
    audio = out.sequences.cpu()
    assert torch.isfinite(logits).all() and torch.isfinite(audio).all()
    return dict(
        input_ids=inputs.input_ids,
        attention_mask=inputs.attention_mask,
        logits=logits,
        scores=scores,
        sequences=grid.reshape(b, k, steps + 1),
        delay_pattern_mask=pattern,
        codes=codes,
        audio=audio,
    )


def generate_codes(model, inputs, steps, prompt_codes=None, **extra):
    """Greedy guided generate (as run_generate) of `steps` new tokens after the start token and the
    `prompt_codes` (b, K, n) the decoder is given (through `extra`: input_values or decoder_input_ids).
    Returns the undelayed codes (b, K, frames), prompt included, the waveform generate returned, and
    the smallest top-1 margin over the positions whose token was kept (absolute, relative)."""
    with sequences_of(model) as captured, torch.no_grad():
        out = model.generate(
            input_ids=inputs.input_ids.to(model.device),
            attention_mask=inputs.attention_mask.to(model.device),
            do_sample=False,
            guidance_scale=GUIDANCE_SCALE,
            max_new_tokens=steps,
            return_dict_in_generate=True,
            output_scores=True,
            **{k: v.to(model.device) for k, v in extra.items()},
        )
    b = inputs.input_ids.shape[0]
    k = model.decoder.num_codebooks
    raw = captured["sequences"]
    n = 0 if prompt_codes is None else prompt_codes.shape[-1]
    assert raw.shape == (b * k, n + 1 + steps), (raw.shape, n, steps)
    start = torch.full((b * k, 1), DECODER_VOCAB, dtype=torch.long)
    given = start if prompt_codes is None else torch.cat([start, prompt_codes.reshape(b * k, n)], dim=1)
    _, pattern = model.decoder.build_delay_pattern_mask(given, pad_token_id=DECODER_VOCAB, max_length=n + 1 + steps)
    grid = model.decoder.apply_delay_pattern_mask(raw, pattern)
    codes = grid[grid != DECODER_VOCAB].reshape(b, k, -1)
    scores = torch.stack(out.scores).cpu()
    kept = pattern[:, n + 1:].T.reshape(-1) == -1
    margin, rel = top1_margin(scores.flatten(0, 1)[kept])
    if n:
        assert torch.equal(codes[..., :n], prompt_codes), "generate changed the prompt's codes"
    return codes, out.sequences.cpu(), margin, rel


def encode_audio(model, audio):
    """transformers' encoding of a continuation prompt (1, C, S): each channel alone through
    EncodecModel.encode, codebooks interleaved L, R for stereo (_prepare_audio_encoder_kwargs_for_generation)."""
    codec = model.audio_encoder
    with torch.no_grad():
        per_channel = [codec.encode(audio[:, c : c + 1].to(model.device)).audio_codes[0].cpu()
                       for c in range(audio.shape[1])]
        embeddings = torch.cat([codec.encoder(audio[:, c : c + 1].to(model.device)).cpu()
                                for c in range(audio.shape[1])])
    codes = torch.stack(per_channel, dim=2).flatten(1, 2)  # (1, Kc, C, T) -> (1, Kc*C, T): L, R, L, R...
    return codes, embeddings


def pick_prompt(model, channels):
    """The first prompt seed whose every nearest-code search is decisive and whose codes vary."""
    for seed in range(PROMPT_CANDIDATES):
        audio = prompt_audio(seed, channels)
        gaps = [nearest_code_gaps(model, audio[:, c : c + 1]) for c in range(channels)]
        codes, _ = encode_audio(model, audio)
        if min(g[1] for g in gaps) >= MIN_RELATIVE_CODE_GAP and diversity(codes) >= MIN_DIVERSITY:
            return seed, audio, min(g[0] for g in gaps), min(g[1] for g in gaps)
    raise SystemExit(f"no prompt seed in 0..{PROMPT_CANDIDATES} gives nearest-code gaps above {MIN_RELATIVE_CODE_GAP}")


def run_long(model, tok, text, duration, stride, prompt_codes=None):
    """audiocraft's BaseGenModel._generate_tokens window loop, each window transformers' greedy
    continuation (decoder_input_ids = the previous window's codes from `stride` on)."""
    frame_rate = 50
    total = int(duration * frame_rate)
    stride_frames = int(stride * frame_rate)
    inputs = tok([text], return_tensors="pt")
    k_per_channel = model.decoder.num_codebooks // model.decoder.config.audio_channels
    kept = [] if prompt_codes is None else [prompt_codes]
    prompt = prompt_codes
    prompt_length = 0 if prompt is None else prompt.shape[-1]
    offset, windows, margins = 0, [], []
    while offset + prompt_length < total:
        frames = int(min(duration - offset / frame_rate, WINDOW_SECS) * frame_rate)
        steps = frames + k_per_channel - 1 - prompt_length
        extra = {} if prompt is None else {"decoder_input_ids": prompt.reshape(-1, prompt_length)}
        codes, _, margin, rel = generate_codes(model, inputs, steps, prompt, **extra)
        assert codes.shape[-1] == frames, (codes.shape, frames)
        kept.append(codes[..., prompt_length:])
        windows.append({"offset": offset, "prompt": prompt_length, "frames": frames})
        margins.append((margin, rel))
        prompt = codes[..., stride_frames:]
        prompt_length = prompt.shape[-1]
        offset += stride_frames
    codes = torch.cat(kept, dim=-1)
    assert codes.shape[-1] == total, codes.shape
    return codes, decode_codes(model, codes), windows, min(m[0] for m in margins), min(m[1] for m in margins)


def decode_codes(model, codes):
    """Decode (B, K, F) codes as MusicgenForConditionalGeneration.generate does."""
    codes = codes.to(model.device)
    with torch.no_grad():
        if model.decoder.config.audio_channels == 1:
            return model.audio_encoder.decode(codes[None], [None]).audio_values.cpu()
        left = model.audio_encoder.decode(codes[None, :, 0::2], [None]).audio_values
        right = model.audio_encoder.decode(codes[None, :, 1::2], [None]).audio_values
        return torch.cat([left, right], dim=1).cpu()


def top1_margin(scores):
    top2 = scores.topk(2, dim=-1).values
    gap = (top2[..., 0] - top2[..., 1]).min().item()
    return gap, gap / scores.abs().max().item()


def make_references(name, model, tok, seed):
    spec = VARIANTS[name]
    channels = spec["audio_channels"]
    k_per_channel = spec["num_codebooks"] // channels
    steps = FRAMES + k_per_channel - 1
    ref = run_generate(model, tok, PROMPTS, steps)
    single = run_generate(model, tok, PROMPTS[:1], steps)
    hop = model.config.audio_encoder.hop_length
    b = len(PROMPTS)
    assert ref["codes"].shape == (b, spec["num_codebooks"], FRAMES), ref["codes"].shape
    assert ref["audio"].shape == (b, channels, FRAMES * hop), ref["audio"].shape
    # generate's waveform equals decoding the recorded codes ourselves
    assert torch.allclose(decode_codes(model, ref["codes"]), ref["audio"], atol=1e-5)

    with torch.no_grad():
        ids = ref["input_ids"].to(model.device)
        mask = ref["attention_mask"].to(model.device)
        enc = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        proj = model.enc_to_dec_proj(enc) if hasattr(model, "enc_to_dec_proj") else enc
        proj = (proj * mask[..., None]).cpu()
        enc = enc.cpu()

    gen = torch.Generator().manual_seed(seed + 1000)
    encodec_codes = torch.randint(
        0, DECODER_VOCAB, (1, spec["num_codebooks"], ENCODEC_CHECK_FRAMES), generator=gen, dtype=torch.long
    )
    encodec_audio = decode_codes(model, encodec_codes)
    with torch.no_grad():
        channels_codes = [encodec_codes[:, c::channels] for c in range(channels)]
        encodec_quantized = torch.cat(
            [model.audio_encoder.quantizer.decode(cc.transpose(0, 1).to(model.device)) for cc in channels_codes],
            dim=0,
        ).cpu()

    # Encoding and continuation: a synthetic prompt, its codes as transformers makes them, and greedy
    # guided continuations of it (the first two prompts, the same audio for both).
    prompt_seed, audio_prompt, code_gap, code_gap_rel = pick_prompt(model, channels)
    prompt_codes, prompt_embeddings = encode_audio(model, audio_prompt)
    n = prompt_codes.shape[-1]
    assert n == -(-PROMPT_SAMPLES // hop)
    cont_prompts = PROMPTS[:2]
    cont_inputs = tok(cont_prompts, padding=True, return_tensors="pt")
    cont_steps = CONTINUATION_FRAMES + k_per_channel - 1 - n
    cont_codes, cont_audio, cont_margin, cont_rel = generate_codes(
        model, cont_inputs, cont_steps, prompt_codes.repeat(len(cont_prompts), 1, 1),
        input_values=audio_prompt.repeat(len(cont_prompts), 1, 1),
    )
    assert cont_codes.shape == (2, spec["num_codebooks"], CONTINUATION_FRAMES), cont_codes.shape
    assert torch.allclose(decode_codes(model, cont_codes), cont_audio, atol=1e-5)
    # Different codes must give clearly different audio, in every codebook.
    base = torch.randint(0, DECODER_VOCAB, (1, spec["num_codebooks"], 25), generator=gen, dtype=torch.long)
    base_audio = decode_codes(model, base)
    sensitivity = []
    for kk in range(spec["num_codebooks"]):
        other = base.clone()
        other[0, kk] = (other[0, kk] + 1 + torch.randint(0, DECODER_VOCAB - 1, (25,), generator=gen)) % DECODER_VOCAB
        change = (decode_codes(model, other) - base_audio).abs().max() / base_audio.abs().max()
        sensitivity.append(change.item())
    assert min(sensitivity) > 0.05, f"decoded audio barely depends on some codebook: {sensitivity}"

    long_tensors, long_meta = {}, {}
    if channels == 1:
        for case, opts in LONG_TRACKS.items():
            print(f"  {name}: {case} ({opts['duration']} s, stride {opts['stride']})", flush=True)
            codes, audio, windows, margin, rel = run_long(
                model, tok, PROMPTS[0], opts["duration"], opts["stride"],
                prompt_codes if opts["continue_prompt"] else None,
            )
            length = audio.shape[-1]
            seams = [w["offset"] * hop for w in windows[1:]]
            starts = [0] + [max(0, (w["offset"] + w["prompt"]) * hop - LONG_SLICE_SAMPLES // 2) for w in windows[1:]]
            starts.append(length - LONG_SLICE_SAMPLES)
            long_tensors[f"{case}_codes"] = codes
            long_tensors[f"{case}_audio_slices"] = torch.stack([audio[0, :, s:s + LONG_SLICE_SAMPLES] for s in starts])
            long_meta[case] = opts | {"prompt": PROMPTS[0], "frames": codes.shape[-1], "samples": length,
                                      "windows": windows, "window_secs": WINDOW_SECS, "window_starts": seams,
                                      "slice_starts": starts, "slice_samples": LONG_SLICE_SAMPLES,
                                      "min_top1_margin_kept_positions": margin, "min_top1_margin_relative": rel}

    tensors = {
        "prompt_audio": audio_prompt,
        "prompt_codes": prompt_codes,
        "prompt_embeddings": prompt_embeddings,
        "continuation_codes": cont_codes,
        "continuation_audio": cont_audio,
        **long_tensors,
        "input_ids": ref["input_ids"],
        "attention_mask": ref["attention_mask"],
        "encoder_hidden_states": enc,
        "projected_encoder_hidden_states": proj,
        "logits": ref["logits"],
        "scores": ref["scores"],
        "sequences": ref["sequences"],
        "delay_pattern_mask": ref["delay_pattern_mask"],
        "codes": ref["codes"],
        "audio": ref["audio"],
        "encodec_codes": encodec_codes,
        "encodec_audio": encodec_audio,
        "encodec_quantized": encodec_quantized,
    }
    for key in ("input_ids", "attention_mask", "logits", "scores", "sequences", "codes", "audio"):
        tensors[key + "_single"] = single[key]
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    for key in ("input_ids", "attention_mask", "sequences", "codes", "encodec_codes", "delay_pattern_mask",
                "prompt_codes", "continuation_codes"):
        assert tensors[key].dtype == torch.int64, key

    margin, rel = top1_margin(torch.cat([ref["scores"].flatten(0, 1), single["scores"].flatten(0, 1)]))
    kept = ref["delay_pattern_mask"][:, 1:].T.reshape(-1) == -1
    kept_margin, _ = top1_margin(ref["scores"].flatten(0, 1)[kept])
    batch_vs_single = (ref["audio"][0] - single["audio"][0]).abs().max().item()
    codes_match = bool(torch.equal(ref["codes"][0], single["codes"][0]))
    meta = {
        "prompts": PROMPTS,
        "prompts_single": PROMPTS[:1],
        "guidance_scale": GUIDANCE_SCALE,
        "do_sample": False,
        "max_new_tokens": steps,
        "steps": steps,
        "frames": FRAMES,
        "hop_length": hop,
        "sample_rate": model.config.audio_encoder.sampling_rate,
        "audio_channels": channels,
        "num_codebooks": spec["num_codebooks"],
        "decoder_start_token_id": DECODER_VOCAB,
        "pad_token_id": DECODER_VOCAB,
        "min_top1_margin": margin,
        "min_top1_margin_relative": rel,
        "min_top1_margin_kept_positions": kept_margin,
        "max_abs_score": ref["scores"].abs().max().item(),
        "batch_vs_single_audio_max_abs_diff": batch_vs_single,
        "batch_vs_single_codes_equal": codes_match,
        "encodec_check_frames": ENCODEC_CHECK_FRAMES,
        "audio_max_abs": ref["audio"].abs().max().item(),
        "seed": seed,
        "prompt_seed": prompt_seed,
        "prompt_samples": PROMPT_SAMPLES,
        "prompt_frames": n,
        "min_nearest_code_gap": code_gap,
        "min_nearest_code_gap_relative": code_gap_rel,
        "codebook_sensitivity": sensitivity,
        "continuation": {
            "prompts": cont_prompts,
            "frames": CONTINUATION_FRAMES,
            "max_new_tokens": cont_steps,
            "generate_kwargs": "input_values=prompt_audio (repeated per prompt), do_sample=False, guidance_scale=3.0",
            "min_top1_margin_kept_positions": cont_margin,
            "min_top1_margin_relative": cont_rel,
        },
        "long_tracks": long_meta,
        "generate_kwargs": {
            "do_sample": False,
            "guidance_scale": GUIDANCE_SCALE,
            "max_new_tokens": steps,
            "return_dict_in_generate": True,
            "output_scores": True,
            "output_logits": True,
        },
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in tensors.items()},
    }
    return tensors, meta, margin, rel


def versions():
    return {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "tokenizers": tokenizers_version,
        "python": sys.version.split()[0],
    }


def config_summary(model):
    c = model.config
    return {
        "text_encoder": {
            k: getattr(c.text_encoder, k)
            for k in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "feed_forward_proj",
                      "relative_attention_num_buckets", "relative_attention_max_distance", "layer_norm_epsilon")
        },
        "audio_encoder": {
            k: getattr(c.audio_encoder, k)
            for k in ("sampling_rate", "audio_channels", "upsampling_ratios", "hidden_size", "num_filters",
                      "codebook_size", "num_lstm_layers", "use_causal_conv", "pad_mode", "norm_type",
                      "use_conv_shortcut", "compress", "num_residual_layers", "target_bandwidths")
        }
        | {"num_quantizers": c.audio_encoder.num_quantizers, "hop_length": c.audio_encoder.hop_length},
        "decoder": {
            k: getattr(c.decoder, k)
            for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "ffn_dim",
                      "num_codebooks", "audio_channels", "activation_function", "pad_token_id", "bos_token_id")
        },
        "has_enc_to_dec_proj": hasattr(model, "enc_to_dec_proj"),
    }


def tensor_listing(path):
    sd = load_file(path)
    lines = [f"{k}\t{list(v.shape)}\t{str(v.dtype).replace('torch.', '')}" for k, v in sorted(sd.items())]
    return "\n".join(lines) + "\n"


def save_checkpoint(model, tok, directory):
    if os.path.exists(directory):
        shutil.rmtree(directory)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    write_special_tokens_map(tok, directory)
    # drop files that carry no weights or config the engine needs and that change between runs
    for extra in ("chat_template.jinja",):
        p = os.path.join(directory, extra)
        if os.path.exists(p):
            os.remove(p)


def write_special_tokens_map(tok, directory):
    path = os.path.join(directory, "special_tokens_map.json")
    if not os.path.exists(path):
        data = {"eos_token": tok.eos_token, "pad_token": tok.pad_token, "unk_token": tok.unk_token}
        with open(path, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")


def legacy_names(sd):
    out = {}
    for k, v in sd.items():
        k = k.replace(".parametrizations.weight.original0", ".weight_g").replace(
            ".parametrizations.weight.original1", ".weight_v"
        )
        out[k] = v
    return out


def with_t5_embedding(sd, names):
    """Store T5's tied input embedding under the given names only."""
    emb = sd.get("text_encoder.shared.weight", sd.get("text_encoder.encoder.embed_tokens.weight"))
    out = {k: v for k, v in sd.items() if k not in ("text_encoder.shared.weight", "text_encoder.encoder.embed_tokens.weight")}
    for n in names:
        out[n] = emb.clone()
    return out


LEGACY_GENERIC_KEYS = {
    "return_dict": True, "output_hidden_states": False, "output_attentions": False, "torchscript": False,
    "torch_dtype": None, "use_bfloat16": False, "tf_legacy_loss": False, "pruned_heads": {},
    "tie_word_embeddings": True, "is_encoder_decoder": False, "is_decoder": False,
    "cross_attention_hidden_size": None, "add_cross_attention": False, "tie_encoder_decoder": False,
    "max_length": 20, "min_length": 0, "do_sample": False, "early_stopping": False, "num_beams": 1,
    "num_beam_groups": 1, "diversity_penalty": 0.0, "temperature": 1.0, "top_k": 50, "top_p": 1.0,
    "typical_p": 1.0, "repetition_penalty": 1.0, "length_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "num_return_sequences": 1,
    "chunk_size_feed_forward": 0, "output_scores": False, "return_dict_in_generate": False,
    "forced_bos_token_id": None, "forced_eos_token_id": None, "remove_invalid_values": False,
    "exponential_decay_length_penalty": None, "suppress_tokens": None, "begin_suppress_tokens": None,
    "finetuning_task": None, "id2label": {"0": "LABEL_0", "1": "LABEL_1"}, "label2id": {"LABEL_0": 0, "LABEL_1": 1},
    "tokenizer_class": None, "prefix": None, "sep_token_id": None, "task_specific_params": None,
    "problem_type": None, "_name_or_path": "",
}


def legacy_config(cfg5):
    """Rewrite a transformers 5.x config.json dict in the dialect transformers 4.31 wrote:
    `torch_dtype` instead of `dtype`, every generic PretrainedConfig key spelled out in each sub-config,
    `transformers_version` 4.31.0."""
    cfg = copy.deepcopy(cfg5)

    def rename_dtype(d):
        if "dtype" in d:
            d["torch_dtype"] = d.pop("dtype")
        d.setdefault("torch_dtype", "float32")

    for sub in ("text_encoder", "audio_encoder", "decoder"):
        d = cfg[sub]
        rename_dtype(d)
        for key, value in LEGACY_GENERIC_KEYS.items():
            d.setdefault(key, copy.deepcopy(value))
        if d.get("torch_dtype") is None:
            d["torch_dtype"] = "float32"
        d["transformers_version"] = "4.31.0"
    cfg["decoder"]["tie_word_embeddings"] = False
    cfg["decoder"]["is_decoder"] = False
    cfg["text_encoder"]["architectures"] = ["T5EncoderModel"]
    cfg["audio_encoder"]["architectures"] = ["EncodecModel"]
    cfg["decoder"]["architectures"] = ["MusicgenForCausalLM"]
    rename_dtype(cfg)
    cfg["transformers_version"] = "4.31.0"
    cfg["_name_or_path"] = ""
    return dict(sorted(cfg.items()))


def save_sharded(sd, directory, n_shards=2):
    keys = sorted(sd)
    half = (len(keys) + 1) // 2
    groups = [keys[:half], keys[half:]]
    weight_map = {}
    total = 0
    for i, group in enumerate(groups, start=1):
        fname = f"model-{i:05d}-of-{n_shards:05d}.safetensors"
        part = {k: sd[k].contiguous().clone() for k in group}
        save_file(part, os.path.join(directory, fname), metadata={"format": "pt"})
        for k in group:
            weight_map[k] = fname
            total += part[k].numel() * part[k].element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")


def copy_non_weight_files(src, dst):
    os.makedirs(dst, exist_ok=True)
    for fname in os.listdir(src):
        if fname.endswith(".safetensors") or fname.endswith(".bin") or fname.endswith(".index.json"):
            continue
        shutil.copy(os.path.join(src, fname), os.path.join(dst, fname))


def check_loads_like(reference_model, directory, tok):
    """Load a variant with transformers and check its weights equal the reference model's."""
    loaded = MusicgenForConditionalGeneration.from_pretrained(directory)
    ref_sd = reference_model.state_dict()
    got_sd = loaded.state_dict()
    assert set(ref_sd) == set(got_sd), set(ref_sd) ^ set(got_sd)
    for k, v in ref_sd.items():
        assert torch.equal(v, got_sd[k]), f"{directory}: {k} differs after loading"


def write_json(path, data):
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")


def diversity(codes):
    """Mean fraction of distinct codes per (item, codebook) row: low values mean greedy decoding
    repeats one code, which would let position or cache bugs in the engine go unnoticed."""
    rows = codes.flatten(0, 1)
    return sum(row.unique().numel() for row in rows) / rows.numel()


def pick_seed(name, tok, vocab_size):
    """The candidate seed whose greedy run (batch and single) has the largest relative top-1 margin."""
    best = (None, 0.0)
    for seed in range(SEED_CANDIDATES):
        model = build_model(name, seed, vocab_size)
        spec = VARIANTS[name]
        steps = FRAMES + spec["num_codebooks"] // spec["audio_channels"] - 1
        a = run_generate(model, tok, PROMPTS, steps)
        s = run_generate(model, tok, PROMPTS[:1], steps)
        _, rel = top1_margin(torch.cat([a["scores"].flatten(0, 1), s["scores"].flatten(0, 1)]))
        variety = diversity(a["codes"])
        print(f"  {name} seed {seed}: relative margin {rel:.2e}, diversity {variety:.2f}", flush=True)
        if rel > best[1] and variety >= MIN_DIVERSITY:
            best = (seed, rel)
    if best[1] <= MIN_RELATIVE_MARGIN:
        raise SystemExit(f"{name}: no seed in 0..{SEED_CANDIDATES} gives a relative top-1 margin above "
                         f"{MIN_RELATIVE_MARGIN}; best {best}")
    return best[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="crates/musicgen/tests/fixtures", help="fixtures directory")
    parser.add_argument("--only", choices=sorted(VARIANTS), action="append", help="build only these models")
    parser.add_argument("--device", default="cpu",
                        help="torch device for the reference run, e.g. cuda (weights and seeds are always made on "
                             "CPU, so the checkpoints are identical; the committed references come from cpu)")
    parser.add_argument("--seeds-from", metavar="DIR",
                        help="take each model's seed from DIR/<name>/reference.json instead of searching "
                             f"{SEED_CANDIDATES} candidates (the search is deterministic; this only saves time)")
    args = parser.parse_args()

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()

    tok = build_tokenizer()
    text_vocab = (len(tok) + 7) // 8 * 8  # like T5 (32128 > 32100): the embedding may exceed the tokenizer
    names = args.only or ["tiny-mono", "tiny-stereo"]
    for name in names:
        if args.seeds_from:
            with open(os.path.join(args.seeds_from, name, "reference.json")) as f:
                seed = json.load(f)["seed"]
        else:
            seed = pick_seed(name, tok, text_vocab)
        model = build_model(name, seed, text_vocab)
        fit_codebooks(model, seed)
        root = os.path.join(args.out, name)
        ckpt = os.path.join(root, "checkpoint")
        # The tokenizer keeps the padding of its last call and save_pretrained writes it into
        # tokenizer.json: pad once here, so the file is the same whether or not the seed search ran.
        tok(PROMPTS, padding=True)
        save_checkpoint(model, tok, ckpt)
        # references come from the model as loaded back from disk, like a user would run it
        loaded = MusicgenForConditionalGeneration.from_pretrained(ckpt)
        loaded.eval()
        runner = loaded
        if args.device != "cpu":
            runner = MusicgenForConditionalGeneration.from_pretrained(ckpt).to(args.device).eval()
        tensors, meta, margin, rel = make_references(name, runner, tok, seed)
        meta["device"] = str(runner.device)
        save_file(tensors, os.path.join(root, "reference.safetensors"), metadata={"format": "pt"})
        meta["versions"] = versions()
        meta["config"] = config_summary(loaded)
        meta["checkpoint_files"] = sorted(os.listdir(ckpt))
        meta["weights_naming"] = ("transformers 5.x: EnCodec convs as *.conv.parametrizations.weight.original0 (g) "
                                  "/ original1 (v); T5 embedding as text_encoder.shared.weight only")
        write_json(os.path.join(root, "reference.json"), meta)
        write_wav(os.path.join(root, "prompt.wav"), tensors["prompt_audio"])
        with open(os.path.join(root, "tensors.txt"), "w") as f:
            f.write(tensor_listing(os.path.join(ckpt, "model.safetensors")))
        print(f"{name}: seed {seed}, min top-1 margin {margin:.4g} (relative {rel:.3g})", flush=True)

        if name == "tiny-mono":
            make_mono_variants(args.out, loaded, ckpt, tok)


def make_mono_variants(out, model, ckpt, tok):
    sd = load_file(os.path.join(ckpt, "model.safetensors"))
    with open(os.path.join(ckpt, "config.json")) as f:
        cfg5 = json.load(f)

    # tiny-mono-legacy: old weight-norm names, both T5 embedding names, 2 shards, 4.31 config dialect
    root = os.path.join(out, "tiny-mono-legacy")
    legacy_ckpt = os.path.join(root, "checkpoint")
    if os.path.exists(legacy_ckpt):
        shutil.rmtree(legacy_ckpt)
    copy_non_weight_files(ckpt, legacy_ckpt)
    legacy_sd = with_t5_embedding(legacy_names(sd), ["text_encoder.shared.weight",
                                                     "text_encoder.encoder.embed_tokens.weight"])
    save_sharded(legacy_sd, legacy_ckpt)
    write_json(os.path.join(legacy_ckpt, "config.json"), legacy_config(cfg5))
    check_loads_like(model, legacy_ckpt, tok)
    write_json(os.path.join(root, "reference.json"), {
        "same_weights_as": "tiny-mono",
        "weights_naming": "EnCodec convs as *.conv.weight_g / *.conv.weight_v; T5 embedding under both "
                          "text_encoder.shared.weight and text_encoder.encoder.embed_tokens.weight; 2 safetensors "
                          "shards + model.safetensors.index.json",
        "config_dialect": "transformers 4.31: torch_dtype instead of dtype, transformers_version 4.31.0, generic "
                          "PretrainedConfig keys (max_length, num_beams, id2label, ...) in every sub-config",
        "tensor_names": sorted(legacy_sd),
        "checkpoint_files": sorted(os.listdir(legacy_ckpt)),
        "versions": versions(),
    })

    # tiny-mono-bin: pytorch_model.bin only, old weight-norm names, T5 embedding only under encoder.embed_tokens
    root = os.path.join(out, "tiny-mono-bin")
    bin_ckpt = os.path.join(root, "checkpoint")
    if os.path.exists(bin_ckpt):
        shutil.rmtree(bin_ckpt)
    copy_non_weight_files(ckpt, bin_ckpt)
    bin_sd = with_t5_embedding(legacy_names(sd), ["text_encoder.encoder.embed_tokens.weight"])
    # an OrderedDict with one storage per tensor, as torch.save(model.state_dict()) wrote in transformers 4.x
    bin_sd = collections.OrderedDict((k, v.contiguous().clone()) for k, v in sorted(bin_sd.items()))
    torch.save(bin_sd, os.path.join(bin_ckpt, "pytorch_model.bin"))
    check_loads_like(model, bin_ckpt, tok)
    write_json(os.path.join(root, "reference.json"), {
        "same_weights_as": "tiny-mono",
        "weights_naming": "pytorch_model.bin (torch.save zip pickle of an ordered dict of f32 tensors); EnCodec "
                          "convs as *.conv.weight_g / *.conv.weight_v; T5 embedding only as "
                          "text_encoder.encoder.embed_tokens.weight (no text_encoder.shared.weight)",
        "config_dialect": "transformers 5.x (same config.json as tiny-mono)",
        "tensor_names": sorted(bin_sd),
        "checkpoint_files": sorted(os.listdir(bin_ckpt)),
        "versions": versions(),
    })


if __name__ == "__main__":
    main()
