#!/usr/bin/env bash
# The multi-machine mode against the real parts: PostgreSQL (Debian's package, tools/services/postgres.sh)
# and an S3 server (moto's server mode from PyPI, tools/services/s3.sh), both started here in a
# temporary directory and torn down after. Runs:
#   - the PostgreSQL job store's and the S3 audio store's own tests (ignored by plain `cargo test`);
#   - crates/dgx-music/tests/cluster.rs: API nodes and workers as separate processes (200 jobs on
#     3 workers and 2 API nodes, a worker killed with -9, the database restarted and an API node
#     killed under load, a worker of an unwanted model staying idle, a cancel crossing processes,
#     a key in the shared database).
# DGX_SCALE_FIGURES=1 also prints the scale figures of docs/PERFORMANCE.md (jobs/s with 1, 2, 4
# workers; claim latency).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=services/postgres.sh
source tools/services/postgres.sh
# shellcheck source=services/s3.sh
source tools/services/s3.sh

work=$(mktemp -d)
# initdb runs as the `postgres` user when this script runs as root: it must reach its directory.
chmod 755 "$work"
cleanup() {
    stop_postgres || true
    stop_s3 || true
    rm -rf "$work"
}
trap cleanup EXIT

start_postgres "$work/postgres"
start_s3 "$work/s3"

cargo test --locked -p dgx-music-server --lib -- --ignored store::
skip=(--skip scale_figures)
[[ "${DGX_SCALE_FIGURES:-0}" == 1 ]] && skip=()
# One scenario at a time: each starts several processes on the machine's two cores.
cargo test --locked -p dgx-music --test cluster -- --ignored --test-threads=1 --nocapture "${skip[@]}"
