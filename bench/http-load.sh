#!/usr/bin/env bash
# HTTP load run: starts a 3-server meshkv cluster from config files in a temp dir
# (loopback only, OS-picked ports), runs bench/src/bin/http_load against it (GET and
# PUT throughput, p50/p99, at 1 and 64 connections), then stops the servers by pid.
#
#   bench/http-load.sh                 # 5 s per phase
#   SECONDS_PER_PHASE=10 CONNECTIONS=1,16,64 bench/http-load.sh
#   KEEP=1 bench/http-load.sh          # keep the temp dir (configs, logs)
#
# Needs python3 (to reserve free UDP ports for the QUIC mesh). Not run by the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_PHASE=${SECONDS_PER_PHASE:-5}
CONNECTIONS=${CONNECTIONS:-1,64}
KEYS=${KEYS:-1000}
VALUE_SIZE=${VALUE_SIZE:-100}

cargo build --release -q -p meshkv-node --bin meshkv
cargo build --release -q -p meshkv-bench --bin http_load
BIN=target/release

TMP=$(mktemp -d "${TMPDIR:-/tmp}/meshkv-http-load.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT INT TERM

"$BIN/meshkv" certs init --dir "$TMP/certs" --servers 0,1,2 2>/dev/null

# Three distinct free UDP ports on 127.0.0.1 for QUIC (held together, then released).
read -r Q0 Q1 Q2 < <(python3 -c '
import socket
s = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])
')
QUIC=("$Q0" "$Q1" "$Q2")

for i in 0 1 2; do
    {
        echo "id = $i"
        echo "data_dir = \"data$i\""
        echo "quic_listen = \"127.0.0.1:${QUIC[$i]}\""
        echo "http_listen = \"127.0.0.1:0\""
        echo "[certs]"
        echo "dir = \"certs\""
        for p in 0 1 2; do
            echo "[[peers]]"
            echo "id = $p"
            echo "addr = \"127.0.0.1:${QUIC[$p]}\""
        done
    } > "$TMP/node$i.toml"
done

for i in 0 1 2; do
    MESHKV_LOG=warn "$BIN/meshkv" serve --config "$TMP/node$i.toml" \
        > "$TMP/node$i.out" 2> "$TMP/node$i.log" &
    PIDS+=("$!")
done

ENDPOINTS=()
for i in 0 1 2; do
    url=""
    for _ in $(seq 1 100); do
        url=$(sed -n 's/.* http=\([^ ]*\).*/\1/p' "$TMP/node$i.out" | head -n 1)
        [ -n "$url" ] && break
        sleep 0.1
    done
    if [ -z "$url" ]; then
        echo "node $i did not start:" >&2
        cat "$TMP/node$i.log" >&2
        exit 1
    fi
    ENDPOINTS+=("$url")
done
EPS=$(IFS=,; echo "${ENDPOINTS[*]}")
echo "cluster: $EPS (temp dir $TMP)"

# Wait until every server has both links up.
for url in "${ENDPOINTS[@]}"; do
    for _ in $(seq 1 100); do
        "$BIN/meshkv" status --endpoints "$url" 2>/dev/null | grep -q 'peers_up=2/2' && break
        sleep 0.1
    done
done

"$BIN/http_load" --endpoints "$EPS" --connections "$CONNECTIONS" \
    --seconds "$SECONDS_PER_PHASE" --keys "$KEYS" --value-size "$VALUE_SIZE"

echo
"$BIN/meshkv" status --endpoints "$EPS"
