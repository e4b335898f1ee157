#!/usr/bin/env bash
# Listing, watch and expiry benchmark (bench/feed.py): starts a fresh 3-server meshkv
# cluster (loopback, OS-picked ports, a temp dir), runs bench/feed.py against it, then
# stops the servers by pid and removes the temp dir. What is measured: see the
# docstring of bench/feed.py.
#
#   bash bench/feed.sh                     # the defaults: 10,000 keys, 300 watched puts, 50 TTLs
#   bash bench/feed.sh --keys 2000         # extra arguments go to bench/feed.py
#
# Uses target/release/meshkv as built (it does not build it: run
# `cargo build --release --bins -p meshkv-node` first). Needs python3. Not run by the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

if [ ! -x target/release/meshkv ]; then
    echo "target/release/meshkv is missing: cargo build --release --bins -p meshkv-node" >&2
    exit 2
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/meshkv-feed.XXXXXX")
cleanup() {
    bench_stop_all
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

bench_start_meshkv "$tmp" target/release
echo "cluster: $BENCH_ENDPOINTS (target/release/meshkv, built $(date -u -r target/release/meshkv +%Y-%m-%dT%H:%M:%SZ); tree $(git describe --always --dirty 2>/dev/null || echo unknown))"
echo

python3 bench/feed.py --endpoints "$BENCH_ENDPOINTS" --started-by "bash bench/feed.sh${*:+ $*}" "$@"
