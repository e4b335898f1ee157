#!/usr/bin/env bash
# CI entry of the fault suite (run as root; .ci/run installs the packages below):
#   1. the vm-setup scripts: --help, dry-run outputs against golden files, errors
#   2. the ssh deployment path for real against namespaces running sshd
#   3. the five tests (plus the no-session variants) against 4 emulated VMs at the
#      seed's sizes, asserting: no acknowledged write lost; identical stores within
#      the bound after every fault; zero chain breaks and stale reads without faults
#      when the session token is sent
#   4. the same tests, and `concurrent` (6 clients on 3 shared keys through a crash
#      and a partition), with plain clients (no token) at the linearizable level,
#      asserting also: zero chain breaks, zero stale reads and a linearizable
#      history in every test, faults or not
#   5. the checker itself: it passes the recorded history and flags deliberately
#      broken copies of it (a chain break, a lost write)
# Every step tears down what it set up (traps), whatever happens.
# Packages: iproute2, iptables (or nftables), openssh-server, openssh-client.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
case "${1:-}" in -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; echo "Usage: vm-setup/ci-faults.sh [--size quick|ci|full] [--out DIR]"; exit 0 ;; esac
size=ci out="$repo/results/ci-faults"
while [ $# -gt 0 ]; do
  case "$1" in
    --size) size=${2:?}; shift ;;
    --out) out=${2:?}; shift ;;
    *) echo "ci-faults: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

missing=()
[ "$(id -u)" -eq 0 ] || { echo "ci-faults: needs root (network namespaces)" >&2; exit 2; }
command -v ip >/dev/null || missing+=(iproute2)
command -v iptables >/dev/null || command -v nft >/dev/null || missing+=(iptables)
command -v /usr/sbin/sshd >/dev/null || missing+=(openssh-server)
command -v ssh >/dev/null || missing+=(openssh-client)
if [ ${#missing[@]} -gt 0 ]; then
  echo "ci-faults: missing packages: ${missing[*]} (apt-get install -y ${missing[*]})" >&2
  exit 2
fi

start=$(date +%s)
passed=0 failed=0
result() { # NAME RC
  if [ "$2" -eq 0 ]; then passed=$((passed + 1)); echo "ci-faults: ok   $1"
  else failed=$((failed + 1)); echo "ci-faults: FAIL $1 (exit $2)"; fi
}
section() { echo; echo "==== $* ($(( $(date +%s) - start )) s)"; }

section "build"
cargo build --release -p meshkv-node -p meshkv-faultsuite --manifest-path "$repo/Cargo.toml"

section "vm-setup scripts: --help, dry-run, errors"
rc=0; "$here/tests/check-scripts.sh" || rc=$?; result "vm-setup scripts" "$rc"

section "ssh deployment against emulated VMs"
rc=0; "$here/tests/ssh-deploy.sh" || rc=$?; result "ssh deployment" "$rc"

section "fault suite: 4 emulated VMs, size $size"
rm -rf "$out"
rc=0; "$here/faults.sh" --no-build --size "$size" --out "$out" || rc=$?; result "fault suite (5 tests + no-session variants)" "$rc"

section "fault suite: plain clients at the linearizable level, size $size"
rc=0; "$here/faults.sh" --no-build --size "$size" --out "$out/linearizable" -- --consistency linearizable --no-session concurrent || rc=$?
result "fault suite at the linearizable level (plain clients)" "$rc"

section "the checker flags broken histories"
mt="$repo/target/release/meshkv-test"
h="$out/base.history.json"
if [ -f "$h" ]; then
  rc=0; "$mt" check "$h" || rc=$?; result "checker passes the recorded base history" "$rc"
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  # A PUT whose old value nobody wrote: the chain breaks there.
  sed '0,/"old":"[^"]*"/s//"old":"not-the-previous-value"/' "$h" > "$tmp/chain.json"
  rc=0; "$mt" check "$tmp/chain.json" > "$tmp/chain.out" || rc=$?
  cat "$tmp/chain.out"
  if [ "$rc" -eq 1 ] && grep -q ' 1 chain breaks' "$tmp/chain.out"; then rc=0; else rc=1; fi
  result "checker flags a broken chain" "$rc"
  # A key that converged to an older value than its last acknowledged write.
  sed -E '0,/^  \["([^"]*)","([^"]*)-[0-9]+"\]/s//  ["\1","\2-0"]/' "$h" > "$tmp/lost.json"
  rc=0; "$mt" check "$tmp/lost.json" > "$tmp/lost.out" || rc=$?
  cat "$tmp/lost.out"
  if [ "$rc" -eq 1 ] && grep -q ' 1 lost writes' "$tmp/lost.out"; then rc=0; else rc=1; fi
  result "checker flags a lost write" "$rc"
else
  result "fault suite wrote $h" 1
fi

echo
echo "ci-faults: results (tables, JSON, plots, logs) in $out"
echo "ci-faults: $(( $(date +%s) - start )) s"
echo "ci-faults: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
