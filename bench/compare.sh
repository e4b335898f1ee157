#!/usr/bin/env bash
# meshkv side by side with etcd and redis (issue 6): ONE command that runs every
# benchmark, prints a table with meshkv/peer ratios and writes JSON.
#
#   bench/compare.sh                  # 3 rounds, catch-up on a 100,000-key store (~12 min)
#   bench/compare.sh --full           # catch-up on the full 1,000,000-key store (+~6 min)
#   bench/compare.sh --rounds 5 --seconds 10 --no-peers --out FILE --keep
#   bench/smoke.sh                    # every part at tiny size (CI)
#
# Parts: (1) the seed benchmark through ./master (5 servers, 5 clients, N rotating
# puts, then stabilize; puts/s and stabilize time, median of --seed-runs runs);
# (2) HTTP PUT/GET at 1 and 64 connections, 100-byte values over 10,000 keys, on a
# 3-server meshkv cluster (at the session level, and as meshkv-lin at the linearizable
# level), a 3-member etcd cluster (JSON gateway) and redis (default,
# and `appendfsync always`), all on loopback, same load generator (bench/src/bin/
# http_load.rs); (3) heal of a partition with 10,000 divergent writes per side on 5
# servers, and catch-up of a server that missed 10,000 writes (bench/src/bin/
# durability.rs). Seed runs, HTTP runs and heal runs are interleaved over --rounds
# rounds (the machine is noisy) and medians are reported.
#
# Installs `etcd-server`, `redis-server` and `python3` with apt-get when missing
# (--no-install to skip; peers that are still missing are skipped, with a note).
# Every process it starts runs on 127.0.0.1 with a temporary data directory and is
# stopped by pid at the end. Results: target/bench/compare.json (--out).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

ROUNDS=3
SEED_N=10000
SEED_RUNS=5
SECONDS_PER_PHASE=5
HTTP_KEYS=10000
CONNS=1,64
CATCHUP_KEYS=100000
CHANGES=10000
HEAL_KEYS=10000
PEERS=1
INSTALL=1
KEEP=0
OUT=target/bench/compare.json
SMOKE=0
usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) ROUNDS=$2; shift ;;
        --seed-n) SEED_N=$2; shift ;;
        --seed-runs) SEED_RUNS=$2; shift ;;
        --seconds) SECONDS_PER_PHASE=$2; shift ;;
        --http-keys) HTTP_KEYS=$2; shift ;;
        --connections) CONNS=$2; shift ;;
        --catchup-keys) CATCHUP_KEYS=$2; shift ;;
        --full) CATCHUP_KEYS=1000000 ;;
        --changes) CHANGES=$2; shift ;;
        --heal-keys) HEAL_KEYS=$2; shift ;;
        --no-peers) PEERS=0 ;;
        --no-install) INSTALL=0 ;;
        --keep) KEEP=1 ;;
        --out) OUT=$2; shift ;;
        --smoke) SMOKE=1 ;;
        -h|--help) usage 0 ;;
        *) echo "unknown argument $1" >&2; usage 2 ;;
    esac
    shift
done

START=$(date +%s)
log() { printf '[%4ds] %s\n' "$(( $(date +%s) - START ))" "$*" >&2; }

# ---- packages ------------------------------------------------------------------------
need=()
command -v python3 >/dev/null || need+=(python3)
if [ "$PEERS" = 1 ]; then
    command -v etcd >/dev/null || need+=(etcd-server)
    command -v redis-server >/dev/null || need+=(redis-server)
fi
if [ ${#need[@]} -gt 0 ] && [ "$INSTALL" = 1 ]; then
    log "installing ${need[*]} (apt-get)"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >&2
    # Debian starts the packaged services; ours run on their own ports, so they do
    # not conflict, and we leave the system services alone.
fi
command -v python3 >/dev/null || { echo "python3 is required" >&2; exit 1; }
HAVE_ETCD=0; HAVE_REDIS=0
if [ "$PEERS" = 1 ]; then
    command -v etcd >/dev/null && HAVE_ETCD=1 || log "etcd not installed: skipped"
    command -v redis-server >/dev/null && HAVE_REDIS=1 || log "redis-server not installed: skipped"
fi

# ---- build ---------------------------------------------------------------------------
log "building (release)"
cargo build --release -q --workspace --bins >&2
ln -sf target/release/master master
BIN=$root/target/release

source "$root/bench/lib.sh"
RES=$(mktemp -d "${TMPDIR:-/tmp}/meshkv-compare.XXXXXX")
cleanup() {
    bench_stop_all
    if [ "$KEEP" = 1 ]; then log "kept $RES"; else rm -rf "$RES"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

systems=(meshkv meshkv-lin)
[ "$HAVE_ETCD" = 1 ] && systems+=(etcd)
[ "$HAVE_REDIS" = 1 ] && systems+=(redis redis-always)

# ---- the time it will take -----------------------------------------------------------
nconn=$(echo "$CONNS" | tr ',' '\n' | wc -l)
est_seed=$(( SEED_RUNS * (SEED_N / 500 + 3) ))
est_http=$(( ROUNDS * ${#systems[@]} * (nconn * 2 * SECONDS_PER_PHASE + 10) ))
est_heal=$(( ROUNDS * (HEAL_KEYS / 800 + 8) ))
est_catch=$(( CATCHUP_KEYS / 2700 + CHANGES / 1500 + 15 ))
est=$(( est_seed + est_http + est_heal + est_catch ))
log "plan: ${ROUNDS} rounds of [seed runs, HTTP on ${systems[*]}, heal], then one catch-up"
log "      seed N=$SEED_N x $SEED_RUNS runs; HTTP ${SECONDS_PER_PHASE}s per phase, conns $CONNS, $HTTP_KEYS keys;"
log "      heal $HEAL_KEYS writes/side; catch-up $CHANGES changes in a $CATCHUP_KEYS-key store"
log "      estimated time: ~$(( est / 60 )) min $(( est % 60 )) s (seed ~${est_seed}s, HTTP ~${est_http}s, heal ~${est_heal}s, catch-up ~${est_catch}s)"

step=0
total_steps=$(( SEED_RUNS + ROUNDS * (${#systems[@]} + 1) + 1 ))
progress() { step=$((step + 1)); log "($step/$total_steps) $*"; }

run_seed() {
    local r=$1
    progress "seed benchmark run $r: N=$SEED_N"
    local line
    line=$(MASTER="$root/master" bench/seed-bench.sh "$SEED_N" 1 2>"$RES/seed-$r.err" | tail -n 1) || {
        cat "$RES/seed-$r.err" >&2; return 1; }
    echo "$line" > "$RES/seed-$r.txt"
    log "    $(grep '^run' "$RES/seed-$r.err" || true)"
}

run_http() {
    local sys=$1 r=$2 dir="$RES/run-$sys-$r"
    progress "round $r: HTTP load on $sys"
    case $sys in
        meshkv|meshkv-lin) bench_start_meshkv "$dir" "$BIN" ;;
        etcd) bench_start_etcd "$dir" ;;
        redis) bench_start_redis "$dir" default ;;
        redis-always) bench_start_redis "$dir" always ;;
    esac
    local target=$sys level=session
    [ "$sys" = redis-always ] && target=redis
    [ "$sys" = meshkv-lin ] && target=meshkv level=linearizable
    "$BIN/http_load" --target "$target" --label "$sys" --consistency "$level" --endpoints "$BENCH_ENDPOINTS" \
        --connections "$CONNS" --seconds "$SECONDS_PER_PHASE" --keys "$HTTP_KEYS" \
        --value-size 100 --json "$RES/http-$sys-$r.json" 2>&1 | sed 's/^/    /' >&2
    local rc=${PIPESTATUS[0]}
    bench_stop_all
    [ "$KEEP" = 1 ] || rm -rf "$dir"
    return "$rc"
}

run_heal() {
    local r=$1
    progress "round $r: heal after a partition ($HEAL_KEYS writes per side, 5 servers)"
    "$BIN/durability" --only heal --heal-keys "$HEAL_KEYS" --heal-servers 5 \
        --json "$RES/heal-$r.json" > "$RES/heal-$r.out" 2> "$RES/heal-$r.err" || {
        cat "$RES/heal-$r.err" >&2; return 1; }
    grep 'healed in' "$RES/heal-$r.err" | sed 's/^ */    /' >&2 || true
}

run_catchup() {
    progress "catch-up: server missing $CHANGES writes in a $CATCHUP_KEYS-key store"
    "$BIN/durability" --only catchup --keys "$CATCHUP_KEYS" --changes "$CHANGES" \
        --json "$RES/catchup.json" > "$RES/catchup.out" 2> >(sed 's/^/    /' >&2) || return 1
}

seed_done=0
for ((r = 1; r <= ROUNDS; r++)); do
    # This round's share of the seed runs (spread evenly over the rounds).
    want=$(( (SEED_RUNS * r + ROUNDS - 1) / ROUNDS ))
    while [ "$seed_done" -lt "$want" ]; do
        seed_done=$((seed_done + 1))
        run_seed "$seed_done"
    done
    # Alternate the order of the systems from round to round.
    order=("${systems[@]}")
    if [ $((r % 2)) = 0 ]; then
        order=()
        for ((i = ${#systems[@]} - 1; i >= 0; i--)); do order+=("${systems[$i]}"); done
    fi
    for sys in "${order[@]}"; do run_http "$sys" "$r"; done
    run_heal "$r"
done
run_catchup

log "all runs done; report:"
mkdir -p "$(dirname "$OUT")"
extra=()
[ "$SMOKE" = 1 ] && extra+=(--smoke)
python3 bench/report.py "$RES" --out "$OUT" --catchup-keys "$CATCHUP_KEYS" --rounds "$ROUNDS" \
    --seed-n "$SEED_N" "${extra[@]}"
log "JSON written to $OUT"
