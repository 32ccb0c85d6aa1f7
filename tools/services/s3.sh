# An S3 server for tests: moto's server mode on 127.0.0.1, with a bucket `dgx-test`.
# Sourced, not run:
#     source tools/services/s3.sh
#     start_s3 "$workdir"      # venv (unless a cached one has moto), server, bucket, AWS_* exported
#     cargo test -p dgx-music-server -- --ignored s3
#     stop_s3
# start_s3 exports what S3AudioStore::open reads (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
# AWS_REGION, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP) and DGX_TEST_S3_URL, the URL the S3 tests use.
# Env: DGX_VENV_DIR  a venv to reuse when it already has moto (default ~/.cache/dgx-music/venv-moto);
#                    otherwise moto is installed from PyPI into DIR/venv-moto.
# moto keeps everything in memory: stopping it forgets the bucket.

S3_MOTO_VERSION="5.*"
S3_BUCKET="dgx-test"

# Creates (or finds) a Python venv with moto's server; prints its directory.
_s3_venv() {
    local dir=$1
    local cached=${DGX_VENV_DIR:-$HOME/.cache/dgx-music/venv-moto}
    if [[ -x "$cached/bin/moto_server" ]] && "$cached/bin/python" -c "import moto, boto3" 2>/dev/null; then
        echo "$cached"
        return
    fi
    local venv="$dir/venv-moto"
    if [[ -x "$venv/bin/moto_server" ]]; then
        echo "$venv"
        return
    fi
    # Debian splits venv support (ensurepip) into python3-venv; installed as tools/test.sh installs
    # its packages, when apt is there.
    if ! python3 -c "import ensurepip" 2>/dev/null && command -v apt-get >/dev/null; then
        as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv >&2 \
            || { as_root apt-get update >&2 && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y \
                --no-install-recommends python3-venv >&2; } || true
    fi
    python3 -m venv "$venv" >&2 || { echo "s3.sh: python3 -m venv failed: install python3-venv" >&2; return 1; }
    "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$S3_MOTO_VERSION" >&2 \
        || { echo "s3.sh: pip could not install moto[server]==$S3_MOTO_VERSION (is PyPI reachable?)" >&2; return 1; }
    echo "$venv"
}

# start_s3 DIR: moto on a free port, its log in DIR/moto.log, the bucket made, the env exported.
start_s3() {
    local dir=${1:?start_s3 needs a directory for the venv and the log}
    mkdir -p "$dir"
    local venv
    venv=$(_s3_venv "$dir") || return 1
    local port
    port=$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 &
    S3_PID=$!
    local endpoint="http://127.0.0.1:$port"
    local up=""
    for _ in $(seq 1 150); do
        if "$venv/bin/python" -c "import urllib.request; urllib.request.urlopen('$endpoint/moto-api/')" 2>/dev/null; then
            up=yes
            break
        fi
        kill -0 "$S3_PID" 2>/dev/null || break
        sleep 0.2
    done
    if [[ -z "$up" ]]; then
        cat "$dir/moto.log" >&2
        echo "s3.sh: moto_server did not answer on $endpoint within 30 s (log above)" >&2
        stop_s3
        return 1
    fi
    export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
    export AWS_ENDPOINT_URL="$endpoint"
    # object_store refuses plain http unless told; S3AudioStore also allows it for an http:// endpoint.
    export AWS_ALLOW_HTTP=true
    "$venv/bin/python" - <<EOF || { echo "s3.sh: could not create the bucket $S3_BUCKET" >&2; stop_s3; return 1; }
import boto3
boto3.client("s3", endpoint_url="$endpoint", region_name="us-east-1").create_bucket(Bucket="$S3_BUCKET")
EOF
    export DGX_TEST_S3_URL="s3://$S3_BUCKET/tests-$$"
    echo "s3.sh: moto on $endpoint (pid $S3_PID), $DGX_TEST_S3_URL" >&2
}

stop_s3() {
    if [[ -n "${S3_PID:-}" ]]; then
        kill "$S3_PID" 2>/dev/null && wait "$S3_PID" 2>/dev/null
        S3_PID=""
    fi
    return 0
}
