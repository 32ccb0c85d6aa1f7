# A throwaway PostgreSQL for tests, from Debian's `postgresql` package (installed when missing).
# Source it, then:  start_postgres DIR   ...   stop_postgres
# start_postgres makes a cluster in DIR/pg (trust auth, fsync off: test data only), listening on a
# free loopback port, and exports:
#   DGX_TEST_POSTGRES_URL  postgres://dgx@127.0.0.1:PORT/postgres (tests create their own databases)
#   DGX_TEST_PG_RESTART    a script that restarts the server in place (same port, same data)
#   DGX_TEST_PG_CA         the test CA (openssl) that signed the certificate the server offers TLS with, for
#                          sslmode=verify-full&sslrootcert=... (plain connections stay allowed)
# initdb refuses to run as root: then the cluster belongs to the `postgres` user the package makes.

_pg_bin() {
    local dir
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
        return
    fi
    for dir in /usr/lib/postgresql/*/bin; do
        [[ -x $dir/initdb ]] && { echo "$dir"; return; }
    done
    return 1
}

start_postgres() {
    local dir=$1 bin port runas=()
    local packages=()
    bin=$(_pg_bin) || packages+=(postgresql)
    command -v openssl >/dev/null 2>&1 || packages+=(openssl)
    if [[ ${#packages[@]} -gt 0 ]]; then
        echo "postgres.sh: installing Debian's ${packages[*]}" >&2
        local sudo=()
        [[ $(id -u) == 0 ]] || sudo=(sudo)
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}" \
            || { "${sudo[@]}" apt-get update && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
                apt-get install -y --no-install-recommends "${packages[@]}"; }
        bin=$(_pg_bin) || { echo "postgres.sh: no initdb after installing postgresql" >&2; return 1; }
    fi
    mkdir -p "$dir"
    if [[ $(id -u) == 0 ]]; then
        id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
        chown postgres "$dir"
        runas=(runuser -u postgres --)
    fi
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "${runas[@]}" "$bin/initdb" -D "$dir/pg" -U dgx --auth=trust -E UTF8 --no-instructions >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; return 1; }
    local options="-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
    # A test CA and a server certificate it signed (rustls refuses a CA certificate as the server's own).
    {
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=dgx-music test CA" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
            -keyout "$dir/ca.key" -out "$dir/ca.crt" \
            && openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$dir/server.key" -out "$dir/server.csr" \
            && printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$dir/ext" \
            && openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
                -days 2 -extfile "$dir/ext" -out "$dir/server.crt"
    } >/dev/null 2>&1 || { echo "postgres.sh: openssl could not make the test certificates" >&2; return 1; }
    chmod 600 "$dir/server.key"
    [[ ${#runas[@]} -gt 0 ]] && chown postgres "$dir/server.key" "$dir/server.crt"
    options="$options -c ssl=on -c ssl_cert_file=$dir/server.crt -c ssl_key_file=$dir/server.key"
    cat >"$dir/restart.sh" <<RESTART
#!/usr/bin/env bash
exec ${runas[*]} "$bin/pg_ctl" -D "$dir/pg" -o "$options" -l "$dir/pg.log" -m fast -w restart
RESTART
    chmod +x "$dir/restart.sh"
    "${runas[@]}" "$bin/pg_ctl" -D "$dir/pg" -o "$options" -l "$dir/pg.log" -w start >/dev/null \
        || { cat "$dir/pg.log" >&2; return 1; }
    _PG_STOP=("${runas[@]}" "$bin/pg_ctl" -D "$dir/pg" -m immediate -w stop)
    export DGX_TEST_POSTGRES_URL="postgres://dgx@127.0.0.1:$port/postgres"
    export DGX_TEST_PG_RESTART="$dir/restart.sh"
    export DGX_TEST_PG_CA="$dir/ca.crt"
    echo "postgres.sh: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port" >&2
}

stop_postgres() {
    [[ ${#_PG_STOP[@]} -gt 0 ]] && "${_PG_STOP[@]}" >/dev/null 2>&1
    _PG_STOP=()
}
