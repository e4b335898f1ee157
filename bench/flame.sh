#!/usr/bin/env bash
# Flame graphs of one meshkv server's PUT and GET paths under HTTP load: starts a
# 3-server cluster (bench/lib.sh), runs http_load (64 connections, 100-byte values,
# session level) against all three, and samples server 0 with `perf record` (DWARF
# call graphs) for the middle of the run. Writes SVGs with inferno.
#
#   bench/flame.sh [OUT_DIR=docs/flame]     # put-strict.svg, put.svg, get.svg
#   FOLDED=1 bench/flame.sh /tmp/f          # also the folded stacks (inferno's input)
#
# put-strict.svg is the same PUT load with replicas fsyncing every batch
# (replica_fsync_ms = 0): the "before" of the late replica fsync. Needs perf and
# inferno (`cargo install inferno`); not run by the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
OUT=${1:-docs/flame}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-12}
for t in perf inferno-collapse-perf inferno-flamegraph; do
    command -v "$t" >/dev/null || { echo "bench/flame.sh: $t not found" >&2; exit 1; }
done
cargo build --release -q -p meshkv-node --bin meshkv -p meshkv-bench --bin http_load
BIN=target/release
mkdir -p "$OUT"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/meshkv-flame.XXXXXX")
trap 'bench_stop_all; rm -rf "$TMP"' EXIT INT TERM

# profile NAME OP FSYNC_MS: one cluster, one load, one SVG.
profile() {
    local name=$1 op=$2 ms=$3 dir="$TMP/$1"
    REPLICA_FSYNC_MS=$ms bench_start_meshkv "$dir" "$BIN"
    local pid=${BENCH_PIDS[0]}
    if [ "$op" = get ]; then # the keys exist first
        "$BIN/http_load" --endpoints "$BENCH_ENDPOINTS" --connections 64 \
            --seconds 3 --keys 10000 --value-size 100 --ops put > /dev/null
    fi
    "$BIN/http_load" --endpoints "$BENCH_ENDPOINTS" --connections 64 \
        --seconds "$SECONDS_PER_RUN" --keys 10000 --value-size 100 --ops "$op" \
        > "$dir/load.txt" &
    local load=$!
    sleep 2 # past the warm-up
    perf record -q -F 299 --call-graph dwarf,16384 -p "$pid" -o "$dir/perf.data" \
        -- sleep $((SECONDS_PER_RUN - 4)) 2> "$dir/perf.log"
    wait "$load"
    perf script -i "$dir/perf.data" 2> /dev/null | inferno-collapse-perf > "$dir/folded"
    inferno-flamegraph --minwidth 0.2 \
        --title "meshkv server 0: HTTP $op, 64 connections (replica_fsync_ms=$ms)" \
        < "$dir/folded" > "$OUT/$name.svg"
    echo "$name: $(grep -E "PUT|GET" "$dir/load.txt" | head -1) -> $OUT/$name.svg"
    if [ "${FOLDED:-0}" = 1 ]; then cp "$dir/folded" "$OUT/$name.folded"; fi
    # Where the samples are: the share of stacks through each part (inclusive).
    python3 - "$dir/folded" <<'PY'
import re, sys
parts = [
    ("fsync (fsync/fdatasync syscalls)", r"(^|;)(__)?(fsync|fdatasync)"),
    ("sled flush", r"sled::.*flush"),
    ("commit thread (commit_loop)", r"commit_loop"),
    ("replica stage/commit", r"Replica::(stage|commit)"),
    ("HTTP (hyper)", r"hyper::"),
    ("QUIC (quinn)", r"quinn"),
    ("TLS / crypto (rustls, ring)", r"rustls|ring::"),
    ("futex (lock waits, wake-ups)", r"futex"),
    ("epoll / idle", r"epoll_wait"),
]
total, hits = 0, [0] * len(parts)
for line in open(sys.argv[1]):
    stack, _, n = line.rstrip().rpartition(" ")
    n = int(n)
    total += n
    for i, (_, pat) in enumerate(parts):
        if re.search(pat, stack):
            hits[i] += n
for (name, _), h in zip(parts, hits):
    print(f"  {100 * h / max(total, 1):5.1f} %  {name}")
PY
    bench_stop_all
}

for p in ${PROFILES:-put-strict:put:0 put:put:50 get:get:50}; do
    IFS=: read -r name op ms <<< "$p"
    profile "$name" "$op" "$ms"
done
