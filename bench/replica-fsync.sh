#!/usr/bin/env bash
# Replica fsync: the same load with replicas fsyncing every batch (replica_fsync_ms=0,
# the baseline) and with the default late fsync (50 ms), alternated over ROUNDS rounds
# in one session. Each run starts 3 servers (bench/lib.sh), makes N sequential
# session-level puts rotating over them (one keep-alive connection each), and reads
# every server's storage counters from /status. Prints puts/s, fsyncs per put and the
# ratios late/strict.
#
#   bench/replica-fsync.sh            # N=2000, ROUNDS=3
#   N=5000 ROUNDS=5 bench/replica-fsync.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
N=${N:-2000}
ROUNDS=${ROUNDS:-3}
cargo build --release -q -p meshkv-node --bin meshkv
TMP=$(mktemp -d "${TMPDIR:-/tmp}/meshkv-replica-fsync.XXXXXX")
trap 'bench_stop_all; rm -rf "$TMP"' EXIT INT TERM

one_run() { # MS -> "puts_per_s fsyncs_per_put deferred"
    local dir="$TMP/run-$1-$RANDOM"
    REPLICA_FSYNC_MS=$1 bench_start_meshkv "$dir" target/release
    python3 - "$BENCH_ENDPOINTS" "$N" <<'PY'
import sys, json, http.client, time, urllib.parse
eps, n = sys.argv[1].split(','), int(sys.argv[2])
def conn(ep):
    u = urllib.parse.urlparse(ep if ep.startswith('http') else 'http://' + ep)
    return http.client.HTTPConnection(u.hostname, u.port)
cs = [conn(e) for e in eps]
def storage(c):
    c.request('GET', '/status')
    return json.loads(c.getresponse().read())['storage']
before = [storage(c) for c in cs]
t = time.time()
for i in range(n):
    c = cs[i % len(cs)]
    c.request('PUT', f'/kv/k{i}', body=b'x' * 100, headers={'X-Meshkv-Consistency': 'session'})
    r = c.getresponse()
    r.read()
    if r.status not in (200, 201):
        sys.exit(f'put k{i}: {r.status}')
elapsed = time.time() - t
# Every server has applied the last pushes (a deferred fsync may still be due).
time.sleep(0.2)
after = [storage(c) for c in cs]
fs = sum(a['fsyncs'] - b['fsyncs'] for a, b in zip(after, before))
de = sum(a['deferred_batches'] - b['deferred_batches'] for a, b in zip(after, before))
print(f'{n / elapsed:.0f} {fs / n:.2f} {de}')
PY
    bench_stop_all
}

rates0=(); rates50=(); f0=(); f50=()
for ((r = 1; r <= ROUNDS; r++)); do
    for ms in 0 50; do
        read -r rate fpp def < <(one_run "$ms")
        printf 'round %d replica_fsync_ms=%-2s %6s puts/s  %s fsyncs/put  %s deferred batches\n' \
            "$r" "$ms" "$rate" "$fpp" "$def"
        if [ "$ms" = 0 ]; then rates0+=("$rate"); f0+=("$fpp"); else rates50+=("$rate"); f50+=("$fpp"); fi
    done
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
m0=$(median "${rates0[@]}"); m50=$(median "${rates50[@]}")
g0=$(median "${f0[@]}"); g50=$(median "${f50[@]}")
awk -v a="$m0" -v b="$m50" -v c="$g0" -v d="$g50" 'BEGIN{
  printf "median: strict %s puts/s, %s fsyncs/put; late %s puts/s, %s fsyncs/put; ratio late/strict: %.2fx puts/s, %.2fx fsyncs\n", a, c, b, d, b/a, d/c}'
