#!/usr/bin/env bash
# CI smoke run of bench/compare.sh: every part (seed benchmark through ./master, HTTP
# load on meshkv and on etcd/redis when they are installed, heal, catch-up) at a tiny
# size, one round. Installs nothing: etcd or redis missing are skipped, with a note.
# Exits non-zero if any part fails. Takes about a minute once the binaries are built.
#   bench/smoke.sh [extra compare.sh arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
exec bench/compare.sh --smoke --no-install --rounds 1 --seed-n 200 --seed-runs 1 \
    --seconds 1 --http-keys 200 --connections 1,8 --catchup-keys 2000 --changes 200 \
    --heal-keys 200 --out target/bench/smoke.json "$@"
