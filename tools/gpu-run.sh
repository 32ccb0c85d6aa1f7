#!/usr/bin/env bash
# The one script run on a GPU machine that has no Rust: validate, the GPU tests, `dgx-music bench`
# and transformers' MusicGen side by side, then a short table. Built binaries come in BIN_DIR
# (xz-compressed or plain), made here by tools/build-cuda.sh; see docs/PERFORMANCE.md.
#
#   tools/gpu-run.sh BIN_DIR OUT_DIR STAGE...
#
# BIN_DIR holds dgx-music[.xz], optionally gpu-tests[.xz], and the tools/ files the stages need
# (bench_transformers.py, musicgen-arch/). Stages, run in the order given:
#   env           nvidia-smi, the CUDA libraries found, the PTX targets inside the binary
#   validate      dgx-music validate, human and --json
#   tests         the GPU integration tests (crates/musicgen/tests/gpu.rs), run from the repo root
#   bench         dgx-music bench: small, 16 s; f32 and bf16 batch 1, bf16 batch 8 (BENCH_CASES;
#                 a case like bf16x1-eager runs with --eager, without CUDA graphs)
#   transformers  tools/bench_transformers.py on the same cases (TF_CASES)
#   profile       Nsight Compute's per-kernel summary of a few decoder steps (launches per step)
#   stream        bench --stream (time to first audio, lead over real time) for small, medium and large
#                 bf16 (STREAM_MODELS, STREAM_DURATION default 60 s), and generate --stream - read back
#   speed         issue 15's matrix: for each of SPEED_MODELS (default "small medium large") and each batch of
#                 SPEED_BATCHES (default "1 8"), bf16 with the tokens picked on the host (DGX_DEVICE_SAMPLING=0,
#                 "before"), on the GPU ("after"), and int8 weights ("int8"), one after the other
#   smoke         one short bench and one short transformers case: proves the scripts run
#   long          dgx-music bench small bf16 batch 1 at each of LONG_DURATIONS (default "16 120 300") seconds,
#                 LONG_ROUNDS rounds (default 1) alternating the durations: tracks over 30 s run in windows,
#                 and their cost per audio second should stay flat
#   compare       this build against an earlier one (BASE_BIN_DIR holds its dgx-music[.xz]) on the same
#                 card: the BENCH_CASES benches alternated base, new, base, new (COMPARE_ROUNDS, default 2),
#                 and the same seeded generation on the fixture checkpoint (f32, bf16), whose WAVs
#                 must be byte-identical (same codes, same samples)
# Everything goes to OUT_DIR: results.jsonl (one JSON object per measurement), log.txt, validate.txt.
set -uo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="$(cd "${1:?usage: gpu-run.sh BIN_DIR OUT_DIR STAGE...}" && pwd)"
OUT_DIR="${2:?usage: gpu-run.sh BIN_DIR OUT_DIR STAGE...}"
shift 2
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
LOG="$OUT_DIR/log.txt"
RESULTS="$OUT_DIR/results.jsonl"
MODEL="${MODEL:-small}"
DURATION="${DURATION:-16}"
RUNS="${RUNS:-3}"
BENCH_CASES="${BENCH_CASES:-f32x1 bf16x1 bf16x8}"
TF_CASES="${TF_CASES:-fp32x1,bf16x1,bf16x8}"

for dir in /usr/local/cuda-13.0/targets/"$(uname -m)"-linux/lib /usr/local/cuda/lib64; do
  [ -d "$dir" ] && export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export PYTHONUNBUFFERED=1

WORK="$(mktemp -d)"
unpack() { # DIR NAME DEST: DIR/NAME.xz or DIR/NAME, executable at DEST
  if [ -f "$1/$2.xz" ]; then xz -dc "$1/$2.xz" > "$3"; elif [ -f "$1/$2" ]; then cp "$1/$2" "$3"; fi
  if [ -f "$3" ]; then chmod +x "$3"; fi
}
for name in dgx-music gpu-tests; do unpack "$BIN_DIR" "$name" "$WORK/$name"; done
DGX="$WORK/dgx-music"

say() { echo "== $*" | tee -a "$LOG"; }
# Appends a JSON object (one line) to results.jsonl with a label.
record() { python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); d["label"]=sys.argv[1]; print(json.dumps(d))' "$1" >> "$RESULTS"; }

stage_env() {
  say "env $(date -u +%FT%TZ)"
  { nvidia-smi; nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total,clocks.sm,clocks.max.sm --format=csv
    uname -m; ldd "$DGX" | grep -E 'cuda|cublas|curand|nvrtc'
    echo "PTX targets in the binary:"; grep -a -o '\.target sm_[0-9]*[af]*' "$DGX" | sort | uniq -c
  } >> "$LOG" 2>&1
}

stage_validate() {
  say "validate"
  "$DGX" validate | tee "$OUT_DIR/validate.txt" | tee -a "$LOG"
  echo "validate exit: ${PIPESTATUS[0]}" | tee -a "$LOG"
  "$DGX" validate --json > "$WORK/validate.json" 2>>"$LOG" || true
  record validate < "$WORK/validate.json"
}

stage_tests() {
  say "GPU tests"
  if [ ! -x "$WORK/gpu-tests" ]; then echo "no gpu-tests binary in $BIN_DIR" | tee -a "$LOG"; return; fi
  timeout "${TEST_TIMEOUT:-600}" "$WORK/gpu-tests" --test-threads=1 --nocapture 2>&1 | tee -a "$LOG"
  echo "gpu-tests exit: ${PIPESTATUS[0]}" | tee -a "$LOG"
}

bench_case() { # DTYPExBATCH[-eager] [extra args]; -eager: kernel by kernel, no CUDA graph
  local spec="$1" mode=""; shift
  case "$spec" in *-eager) spec="${spec%-eager}"; mode=" eager"; set -- --eager "$@" ;; esac
  local dtype="${spec%x*}" batch="${spec#*x}" bin="${BENCH_BIN:-$DGX}" tag="${BENCH_TAG:-dgx-music}"
  say "bench $tag $MODEL $dtype batch $batch ${DURATION}s$mode"
  if timeout "${BENCH_TIMEOUT:-600}" "$bin" bench --random-weights --model "$MODEL" --duration "$DURATION" --batch "$batch" --dtype "$dtype" \
      --device cuda --runs "$RUNS" --json "$@" > "$WORK/bench.json" 2>>"$LOG"; then
    record "$tag $dtype x$batch$mode" < "$WORK/bench.json"
  else
    echo "bench $dtype x$batch$mode failed" | tee -a "$LOG"
  fi
}

stage_bench() { for c in $BENCH_CASES; do bench_case "$c"; done; }

stage_long() {
  for round in $(seq "${LONG_ROUNDS:-1}"); do
    for d in ${LONG_DURATIONS:-16 120 300}; do DURATION="$d" BENCH_TAG="long ${d}s" bench_case bf16x1; done
  done
}

stage_stream() {
  # Time to first audio and the stream's lead over real time, per model (STREAM_MODELS), bf16 batch 1,
  # 60 s tracks (two windows); then `generate --stream -` on the fixture checkpoint into a WAV reader.
  for m in ${STREAM_MODELS:-small medium large}; do
    MODEL="$m" DURATION="${STREAM_DURATION:-60}" BENCH_TAG="stream $m" bench_case bf16x1 --stream "${STREAM_CHUNK:-0.5}"
  done
  say "generate --stream - on the GPU (tiny fixture)"
  local fixture="$REPO_ROOT/crates/musicgen/tests/fixtures/tiny-mono/checkpoint"
  if "$DGX" generate "ambient piano" --model "$fixture" --device cuda --duration 40 --seed 1 --normalize none \
      --stream - -o "$WORK/stream-file.wav" --quiet > "$WORK/stream.wav" 2>>"$LOG"; then
    python3 - "$WORK/stream.wav" "$WORK/stream-file.wav" <<'PY' 2>&1 | tee -a "$LOG"
import sys, wave
a, b = (open(p, "rb").read() for p in sys.argv[1:3])
w = wave.open(sys.argv[1])
print(f"stream: {w.getnframes()} frames at {w.getframerate()} Hz, {w.getnchannels()} channel(s); "
      f"{'identical to' if a == b else 'DIFFERENT from'} the file -o wrote ({len(a)} bytes)")
PY
  else
    echo "generate --stream failed" | tee -a "$LOG"
  fi
}

stage_transformers() {
  say "transformers $TF_CASES"
  python3 "$BIN_DIR/bench_transformers.py" --model "$MODEL" --duration "$DURATION" --runs "$RUNS" \
    --cases "$TF_CASES" ${TF_BUDGET:+--budget "$TF_BUDGET"} 2>>"$LOG" | tee -a "$LOG" | tail -n 1 > "$WORK/tf.json"
  record transformers < "$WORK/tf.json"
}

stage_profile() {
  local batch="${PROFILE_BATCH:-1}"
  say "profile: kernels of a 0.2 s bf16 batch $batch generation (13 steps) under ncu"
  local ncu; ncu="$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n1)"
  if [ -z "$ncu" ]; then echo "no ncu" | tee -a "$LOG"; return; fi
  timeout "${PROFILE_TIMEOUT:-180}" "$ncu" --metrics gpu__time_duration.sum --print-summary per-kernel --csv --log-file "$OUT_DIR/ncu-b$batch.csv" \
    "$DGX" bench --random-weights --model "$MODEL" --duration 0.2 --batch "$batch" --dtype bf16 --device cuda \
    --runs 1 --warmup-duration 0 --json > /dev/null 2>>"$LOG" || echo "ncu failed" | tee -a "$LOG"
}

stage_compare() {
  local base="$WORK/dgx-music-base"
  unpack "${BASE_BIN_DIR:?compare needs BASE_BIN_DIR}" dgx-music "$base"
  if [ ! -x "$base" ]; then echo "no dgx-music in $BASE_BIN_DIR" | tee -a "$LOG"; return; fi
  for round in $(seq "${COMPARE_ROUNDS:-2}"); do
    for c in $BENCH_CASES; do
      BENCH_BIN="$base" BENCH_TAG="base" bench_case "$c"
      BENCH_BIN="$DGX" BENCH_TAG="new" bench_case "$c"
    done
  done
  local fixture="$REPO_ROOT/crates/musicgen/tests/fixtures/tiny-mono/checkpoint"
  for dtype in f32 bf16; do
    for tag in base new; do
      local bin="$DGX"; [ "$tag" = base ] && bin="$base"
      "$bin" generate "lofi beat" "calm piano" --model "$fixture" --device cuda --dtype "$dtype" --duration 2 \
        --seed 7 --quiet -o "$WORK/$tag-$dtype.wav" >> "$LOG" 2>&1 || echo "generate $tag $dtype failed" | tee -a "$LOG"
    done
    for n in 1 2; do
      if cmp -s "$WORK/base-$dtype-$n.wav" "$WORK/new-$dtype-$n.wav"; then
        say "same audio: $dtype prompt $n, base and new byte-identical ($(md5sum < "$WORK/new-$dtype-$n.wav" | cut -c1-12))"
      else
        say "DIFFERENT audio: $dtype prompt $n, base and new differ"
      fi
    done
  done
}

stage_speed() {
  for m in ${SPEED_MODELS:-small medium large}; do
    for b in ${SPEED_BATCHES:-1 8}; do
      MODEL="$m" DGX_DEVICE_SAMPLING=0 BENCH_TAG="dgx-music before $m" bench_case "bf16x$b"
      MODEL="$m" BENCH_TAG="dgx-music after $m" bench_case "bf16x$b"
      MODEL="$m" BENCH_TAG="dgx-music int8 $m" bench_case "bf16x$b" --weights int8
    done
  done
}

stage_smoke() {
  DURATION=1 RUNS=1 bench_case bf16x1
  say "transformers smoke"
  python3 "$BIN_DIR/bench_transformers.py" --model "$MODEL" --duration 1 --runs 1 --cases fp32x1 2>>"$LOG" \
    | tee -a "$LOG" | tail -n 1 > "$WORK/tf.json"
  record "transformers smoke" < "$WORK/tf.json"
}

for stage in "$@"; do
  case "$stage" in
    env|validate|tests|bench|long|stream|transformers|profile|speed|smoke|compare) "stage_$stage" ;;
    *) echo "unknown stage $stage" | tee -a "$LOG" ;;
  esac
done

say "summary"
python3 - "$RESULTS" <<'PY' | tee -a "$LOG"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])] if __import__("os").path.exists(sys.argv[1]) else []
for r in rows:
    if r["label"] == "validate":
        print(f"validate: {r['verdict']}  " + "; ".join(f"{c['status']} {c['name']}" for c in r["checks"]))
    elif r["label"].startswith("long"):
        print(f"{r['label']:<22} {r['total_s']:7.2f} s  {r['total_s'] / r['duration_s']:.4f} s per audio second  "
              f"{r['steps']} steps  {r['ms_per_step']:6.2f} ms/step  encodec {r['encodec_s']:.3f} s  "
              f"gpu {(r['peak_gpu_bytes'] or 0)/2**30:.2f} GiB")
    elif r["label"].startswith(("dgx-music", "base", "new")):
        print(f"{r['label']:<22} {r['total_s']:7.2f} s  {r['ms_per_step']:6.2f} ms/step  RTF {r['real_time_factor']:6.2f}x  "
              f"aggregate {r['aggregate_real_time_factor']:6.1f}x  text {r['text_encoder_s']:.3f} s  encodec {r['encodec_s']:.3f} s  "
              f"gpu {(r['peak_gpu_bytes'] or 0)/2**30:.2f} GiB  kernels/step {r.get('graph_kernels_per_step')}  "
              f"weights {r.get('weight_read_gb_s', 0):.0f} GB/s  sampling {r.get('sampling', 'host')}  {r['verdict']}")
    else:
        for c in r.get("results", []):
            if "median_s" in c:
                print(f"{r['label'] + ' ' + c['dtype'] + ' x' + str(c['batch']):<22} {c['median_s']:7.2f} s  "
                      f"{c['ms_per_step']:6.2f} ms/step  RTF {c['real_time_factor']:6.2f}x  aggregate {c['aggregate_real_time_factor']:6.1f}x")
            else:
                print(f"{r['label']} {c['dtype']} x{c['batch']}: {c.get('skipped')}")
PY
rm -rf "$WORK"
