#!/usr/bin/env bash
# The seed's fault test suite against four emulated VMs, in one command: build, bring
# up the namespaces, run the five tests (throughput, base consistency, failure,
# manual partition, stress partition), tear everything down, and leave the tables,
# JSON records, plots and server logs in one results folder.
set -euo pipefail
# shellcheck source=vm-setup/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'USAGE'
Usage: sudo vm-setup/faults.sh [--size quick|ci|full] [--out DIR] [--n N] [--no-build]
                               [--tests "T1 T2 ..."] [-- MESHKV-TEST OPTIONS]

Runs meshkv-test (faultsuite/) against N (default 4) emulated VMs made by
vm-setup/local-vms.sh, with real faults: the failure test crashes the last node
(unplug + SIGKILL) and restarts it on its data; the partition tests drop traffic
between {0,1} and {2,3} with iptables/nft inside the namespaces, then heal.
Exit status: 0 when every assertion held, 1 when one failed, 2 on a setup error.

Options:
  --size S     quick: ~15 s (throughput 2000 requests; 40 keys x 50 writes)
               ci:    the seed's sizes, ~1 minute here (5000 requests from 10
                      workers; 40 keys x 500 writes) [default]
               full:  the seed's upper sizes (20000 requests; 40 keys x 1000 writes)
  --out DIR    results folder (default results/faults-<date>)
  --n N        number of emulated VMs (default 4)
  --tests "…"  which tests (default: "all base-nosession stress-nosession", i.e. the
               five plus the consistency tests without the session token)
  --no-build   use target/release/{meshkv,meshkv-test} as they are
  --dry-run    print the commands instead of running them
  --help       this text
Anything after -- goes to `meshkv-test run` (see target/release/meshkv-test run --help).
Needs root, iproute2, and iptables or nftables (see vm-setup/local-vms.sh --help).
USAGE
}

size=ci out="" n=4 build=1 tests="all base-nosession stress-nosession" extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    -n|--dry-run) DRY_RUN=1 ;;
    --size) size=${2:?--size needs quick, ci or full}; shift ;;
    --out) out=${2:?--out needs a directory}; shift ;;
    --n) n=${2:?--n needs a number}; shift ;;
    --tests) tests=${2:?--tests needs a list}; shift ;;
    --no-build) build=0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
case "$size" in
  quick) sizes=(--tp-ops 2000 --keys 40 --writes 50 --mp-keys 10 --fault-min-ms 1500 --fault-max-ms 5000) ;;
  ci) sizes=(--tp-ops 5000 --keys 40 --writes 500 --mp-keys 20 --fault-min-ms 3000 --fault-max-ms 10000) ;;
  full) sizes=(--tp-ops 20000 --keys 40 --writes 1000 --mp-keys 40 --fault-min-ms 5000 --fault-max-ms 15000) ;;
  *) die "--size: quick, ci or full" ;;
esac
[ "$DRY_RUN" = 1 ] || [ "$(id -u)" -eq 0 ] || die "needs root (network namespaces and firewall rules inside them): sudo $0 $*"
out=${out:-$REPO_DIR/results/faults-$(date +%Y%m%d-%H%M%S)}
LV="$VM_SETUP_DIR/local-vms.sh"

if [ "$build" = 1 ]; then
  run cargo build --release -p meshkv-node -p meshkv-faultsuite --manifest-path "$REPO_DIR/Cargo.toml"
fi
for b in meshkv meshkv-test; do
  [ -x "$REPO_DIR/target/release/$b" ] || [ "$DRY_RUN" = 1 ] || die "no target/release/$b: build first (or drop --no-build)"
done

if [ "$DRY_RUN" = 1 ]; then
  state="${TMPDIR:-/tmp}/meshkv-faults.XXXXXX"
else
  state=$(mktemp -d "${TMPDIR:-/tmp}/meshkv-faults.XXXXXX")
fi
run mkdir -p "$out"
finish() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$DRY_RUN" != 1 ] && [ -f "$state/vms.env" ]; then
    mkdir -p "$out/logs"
    for f in "$state"/node*/meshkv.log; do
      [ -f "$f" ] && cp "$f" "$out/logs/$(basename "$(dirname "$f")").log"
    done
  fi
  if [ "$DRY_RUN" != 1 ]; then
    "$LV" --state "$state" down >/dev/null 2>&1 || note "teardown of $state failed: run $LV --state $state down"
    rm -rf "$state"
  fi
  # Leave the results to whoever called sudo.
  if [ -n "${SUDO_UID:-}" ] && [ -d "$out" ]; then chown -R "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "$out" 2>/dev/null || true; fi
  [ "$DRY_RUN" = 1 ] || note "results in $out"
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ "$DRY_RUN" = 1 ]; then
  run "$LV" --state "$state" up --n "$n"
  servers="http://10.77.0.1:8000,..."
else
  "$LV" --state "$state" up --n "$n" >&2
  servers=$("$LV" --state "$state" servers)
fi
lv="$(printf %q "$LV") --state $(printf %q "$state")"
# shellcheck disable=SC2086
run "$LV" --state "$state" exec "$REPO_DIR/target/release/meshkv-test" run \
  --servers "$servers" --out "$out" \
  --kill-cmd "$lv crash {id}" --restart-cmd "$lv restart {id}" \
  --partition-cmd "$lv partition {a} {b}" --heal-cmd "$lv heal" \
  "${sizes[@]}" "${extra[@]+"${extra[@]}"}" $tests
