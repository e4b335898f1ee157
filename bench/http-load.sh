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
# shellcheck source=bench/lib.sh
. bench/lib.sh

SECONDS_PER_PHASE=${SECONDS_PER_PHASE:-5}
CONNECTIONS=${CONNECTIONS:-1,64}
KEYS=${KEYS:-1000}
VALUE_SIZE=${VALUE_SIZE:-100}

cargo build --release -q -p meshkv-node --bin meshkv
cargo build --release -q -p meshkv-bench --bin http_load
BIN=target/release

TMP=$(mktemp -d "${TMPDIR:-/tmp}/meshkv-http-load.XXXXXX")
cleanup() {
    bench_stop_all
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT INT TERM

bench_start_meshkv "$TMP" "$BIN"
echo "cluster: $BENCH_ENDPOINTS (temp dir $TMP)"

"$BIN/http_load" --endpoints "$BENCH_ENDPOINTS" --connections "$CONNECTIONS" \
    --seconds "$SECONDS_PER_PHASE" --keys "$KEYS" --value-size "$VALUE_SIZE"

echo
"$BIN/meshkv" status --endpoints "$BENCH_ENDPOINTS"
