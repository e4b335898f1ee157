#!/usr/bin/env bash
# The seed's throughput benchmark through ./master: 5 servers, clients 5..9 one per
# server, N puts issued by the clients in rotation, then stabilize. Prints puts/s (put
# phase plus the final stabilize) per run and the median of RUNS runs, plus the
# stabilize time alone. Usage: bench/seed-bench.sh [N=10000] [RUNS=5]
# MASTER_ARGS=--sequential runs each put to its end before the next (no pipelining).
set -euo pipefail
N=${1:-10000}
RUNS=${2:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
MASTER=${MASTER:-$root/master}
[ -x "$MASTER" ] || make -C "$root" build >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
script="$tmp/seed.txt"
{
  for s in 0 1 2 3 4; do echo "joinServer $s"; done
  for c in 5 6 7 8 9; do echo "joinClient $c $((c - 5))"; done
  for ((i = 0; i < N; i++)); do echo "put $((5 + i % 5)) key$i value$i"; done
  echo "stabilize"
} > "$script"
echo "seed benchmark: N=$N puts, $RUNS runs" >&2
rates=()
stabs=()
for ((r = 1; r <= RUNS; r++)); do
  # shellcheck disable=SC2086
  "$MASTER" --timing ${MASTER_ARGS:-} < "$script" > /dev/null 2> "$tmp/err"
  put_ms=$(awk '/^timing: put /{for(i=1;i<=NF;i++) if($i ~ /^total_ms=/){split($i,a,"=");print a[2]}}' "$tmp/err")
  stab_ms=$(awk '/^timing: stabilize /{for(i=1;i<=NF;i++) if($i ~ /^total_ms=/){split($i,a,"=");print a[2]}}' "$tmp/err")
  if [ -z "$put_ms" ] || [ -z "$stab_ms" ]; then
    echo "run $r failed:" >&2; cat "$tmp/err" >&2; exit 1
  fi
  rate=$(awk -v n="$N" -v p="$put_ms" -v s="$stab_ms" 'BEGIN{printf "%.0f", n / ((p + s) / 1000)}')
  printf 'run %d: %s puts/s (puts %.1f ms, stabilize %.2f ms)\n' "$r" "$rate" "$put_ms" "$stab_ms" >&2
  rates+=("$rate")
  stabs+=("$stab_ms")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
echo "seed_benchmark puts=$N runs=$RUNS median_puts_per_s=$(median "${rates[@]}") median_stabilize_ms=$(median "${stabs[@]}")"
