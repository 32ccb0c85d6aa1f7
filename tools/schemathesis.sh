#!/usr/bin/env bash
# Fuzzes the HTTP API from its own OpenAPI document (/api/v1/openapi.json) with schemathesis:
# generated valid and invalid requests against `dgx-music serve` running the tiny fixture model
# on the CPU, with an API key. Fails on any 5xx, on responses that contradict the document, and on
# crashes.
#
# Usage: tools/schemathesis.sh            (builds the binary with cargo unless DGX_MUSIC_BIN is set)
# Env:   DGX_MUSIC_BIN          path to a built dgx-music binary
#        SCHEMATHESIS_VENV      where to create the Python venv (default: $TMPDIR/dgx-music-schemathesis)
#        SCHEMATHESIS_EXAMPLES  examples per operation (default 20: about 5 minutes on 2 cores)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv=${SCHEMATHESIS_VENV:-${TMPDIR:-/tmp}/dgx-music-schemathesis}
examples=${SCHEMATHESIS_EXAMPLES:-20}
model="$root/crates/musicgen/tests/fixtures/tiny-mono/checkpoint"

if [[ -z "${DGX_MUSIC_BIN:-}" ]]; then
    cargo build --quiet -p dgx-music --manifest-path "$root/Cargo.toml"
    DGX_MUSIC_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/dgx-music"
fi

if [[ ! -x "$venv/bin/schemathesis" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==4.32.5"
fi

data=$(mktemp -d)
log="$data/server.log"
# The server needs a key once one exists: schemathesis sends it with every request.
token=$("$DGX_MUSIC_BIN" keys create --name schemathesis --data-dir "$data" 2>/dev/null)
# A small queue keeps the generated POSTs from piling up minutes of work: the rest get 429.
"$DGX_MUSIC_BIN" serve --host 127.0.0.1 --port 0 --data-dir "$data" --model "$model" --device cpu \
    --max-queue 3 --max-batch 4 2>"$log" &
server=$!
cleanup() {
    kill -TERM "$server" 2>/dev/null && wait "$server" || true
    rm -rf "$data"
}
trap cleanup EXIT

addr=""
for _ in $(seq 1 600); do
    addr=$(grep -o 'listening on http://[0-9.:]*' "$log" | head -n1 | sed 's|listening on http://||' || true)
    [[ -n "$addr" ]] && break
    kill -0 "$server" 2>/dev/null || { cat "$log"; echo "dgx-music serve exited before listening" >&2; exit 1; }
    sleep 0.2
done
[[ -n "$addr" ]] || { cat "$log"; echo "dgx-music serve did not start within 120 s" >&2; exit 1; }

status=0
# GET /radio is left out: its answer never ends while read (an endless track), which a fuzzer that
# reads whole bodies can only time out on; the serve tests cover it (tests/serve/radio.rs).
"$venv/bin/schemathesis" run "http://$addr/api/v1/openapi.json" \
    --exclude-path-regex '^/api/v1/radio$' \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
    --max-examples "$examples" \
    --header "Authorization: Bearer $token" \
    --workers 1 \
    --request-timeout 30 \
    --max-response-time 30 \
    --generation-deterministic \
    --no-color || status=$?

if grep -q ' ERROR ' "$log"; then
    echo "--- server errors logged during the run:" >&2
    grep ' ERROR ' "$log" >&2
    status=1
fi
exit "$status"
