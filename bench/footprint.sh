#!/usr/bin/env bash
# Footprint benchmark: bytes on disk, resident memory and restart-to-ready time of one
# meshkv server holding N keys with 100-byte values (default N = 1,000,000), against
# the payload N × (key bytes + 100) and the targets (RSS ≤ 3×, disk ≤ 2×, ready ≤ 1 s
# after a restart). Builds the release binaries and runs bench/src/bin/footprint.rs;
# extra arguments go to it (see `--help`):
#   bench/footprint.sh                          # 1,000,000 keys, ~2 min once built
#   bench/footprint.sh --keys 100000            # quick run, ~20 s
#   NO_BUILD=1 bench/footprint.sh --keep        # use target/release as it is; keep the run dir
# The figures also go to target/bench-footprint.json (--json FILE to change).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${NO_BUILD:-0}" != 1 ]; then
    cargo build --release -p meshkv-node --bin meshkv -p meshkv-bench --bin footprint
fi
json=(--json target/bench-footprint.json)
for a in "$@"; do
    case $a in --json | --json=*) json=() ;; esac
done
exec target/release/footprint --bin-dir target/release "${json[@]}" "$@"
