#!/usr/bin/env bash
# Durability / catch-up / heal / put-rate benchmark (issue 3).
# Builds the release binaries and runs bench/src/bin/durability.rs; extra arguments go
# to it (see `--help`). Full run: M = 1,000,000 keys, N = 10,000 changes. Smoke run:
#   bench/durability.sh --keys 20000 --changes 500 --heal-keys 2000 --rate-secs 2
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p meshkv-node --bin meshkv -p meshkv-bench --bin durability
exec target/release/durability "$@"
