# Helpers for bench/compare.sh (sourced, not run): start and stop a 3-server meshkv
# cluster, a 3-member etcd cluster and a redis server on loopback, each in its own
# temporary directory, and stop them again by pid. Needs python3 (free ports, health
# probes). Every process started here is recorded in BENCH_PIDS and stopped by
# `bench_stop_all`; nothing is ever killed by name.

BENCH_PIDS=()

# N distinct free TCP (or UDP with `udp`) ports on 127.0.0.1, space-separated.
bench_free_ports() {
    python3 - "$1" "${2:-tcp}" <<'EOF'
import socket, sys
n, kind = int(sys.argv[1]), sys.argv[2]
t = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
s = [socket.socket(socket.AF_INET, t) for _ in range(n)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])
EOF
}

# Wait until an HTTP GET of $1 answers 200 (at most $2 seconds, default 30).
bench_wait_http() {
    python3 - "$1" "${2:-30}" <<'EOF'
import sys, time, urllib.request
url, limit = sys.argv[1], float(sys.argv[2])
end = time.time() + limit
while time.time() < end:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                sys.exit(0)
    except Exception:
        pass
    time.sleep(0.1)
sys.exit(1)
EOF
}

# Stop every process started by these helpers (SIGTERM, then SIGKILL after 10 s).
bench_stop_all() {
    local p
    for p in "${BENCH_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for _ in $(seq 1 100); do
        local alive=0
        for p in "${BENCH_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for p in "${BENCH_PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for p in "${BENCH_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    BENCH_PIDS=()
}

# bench_start_meshkv DIR BIN_DIR: 3 servers; sets BENCH_ENDPOINTS (comma-separated).
# REPLICA_FSYNC_MS (default: the server's, 50) sets their replica_fsync_ms.
bench_start_meshkv() {
    local dir=$1 bin=$2 i p
    mkdir -p "$dir"
    "$bin/meshkv" certs init --dir "$dir/certs" --servers 0,1,2 >/dev/null 2>&1
    local q
    read -r -a q < <(bench_free_ports 3 udp)
    for i in 0 1 2; do
        {
            echo "id = $i"
            echo "data_dir = \"data$i\""
            echo "quic_listen = \"127.0.0.1:${q[$i]}\""
            echo "http_listen = \"127.0.0.1:0\""
            if [ -n "${REPLICA_FSYNC_MS:-}" ]; then
                echo "replica_fsync_ms = $REPLICA_FSYNC_MS"
            fi
            echo "[certs]"
            echo "dir = \"certs\""
            for p in 0 1 2; do
                echo "[[peers]]"
                echo "id = $p"
                echo "addr = \"127.0.0.1:${q[$p]}\""
            done
        } > "$dir/node$i.toml"
    done
    for i in 0 1 2; do
        MESHKV_LOG=warn "$bin/meshkv" serve --config "$dir/node$i.toml" \
            > "$dir/node$i.out" 2> "$dir/node$i.log" &
        BENCH_PIDS+=("$!")
    done
    local eps=() url
    for i in 0 1 2; do
        url=""
        for _ in $(seq 1 200); do
            url=$(sed -n 's/.* http=\([^ ]*\).*/\1/p' "$dir/node$i.out" | head -n 1)
            [ -n "$url" ] && break
            sleep 0.1
        done
        if [ -z "$url" ]; then
            echo "meshkv node $i did not start:" >&2
            cat "$dir/node$i.log" >&2
            return 1
        fi
        eps+=("$url")
    done
    for url in "${eps[@]}"; do
        local up=0
        for _ in $(seq 1 200); do
            if "$bin/meshkv" status --endpoints "$url" 2>/dev/null | grep -q 'peers_up=2/2'; then
                up=1
                break
            fi
            sleep 0.1
        done
        [ "$up" = 1 ] || { echo "meshkv $url: links not up" >&2; return 1; }
    done
    BENCH_ENDPOINTS=$(IFS=,; echo "${eps[*]}")
}

# bench_start_etcd DIR: a 3-member etcd cluster; sets BENCH_ENDPOINTS.
bench_start_etcd() {
    local dir=$1 i
    mkdir -p "$dir"
    local ports
    read -r -a ports < <(bench_free_ports 6)
    local cluster="" eps=() token="bench-$$-$RANDOM"
    for i in 0 1 2; do
        cluster+="${cluster:+,}e$i=http://127.0.0.1:${ports[$((3 + i))]}"
    done
    for i in 0 1 2; do
        local c="http://127.0.0.1:${ports[$i]}" peer="http://127.0.0.1:${ports[$((3 + i))]}"
        etcd --name "e$i" --data-dir "$dir/e$i" \
            --listen-client-urls "$c" --advertise-client-urls "$c" \
            --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token "$token" \
            --logger zap --log-level error --log-outputs stderr \
            > "$dir/e$i.out" 2> "$dir/e$i.log" &
        BENCH_PIDS+=("$!")
        eps+=("$c")
    done
    for c in "${eps[@]}"; do
        bench_wait_http "$c/health" 60 || { echo "etcd $c not healthy:" >&2; tail -n 5 "$dir"/e*.log >&2; return 1; }
    done
    BENCH_ENDPOINTS=$(IFS=,; echo "${eps[*]}")
}

# bench_start_redis DIR MODE (default|always); sets BENCH_ENDPOINTS.
bench_start_redis() {
    local dir=$1 mode=$2 port
    mkdir -p "$dir"
    read -r port < <(bench_free_ports 1)
    local extra=(--appendonly no)
    [ "$mode" = always ] && extra=(--appendonly yes --appendfsync always)
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save "" \
        --protected-mode no --daemonize no --logfile "$dir/redis.log" "${extra[@]}" \
        > /dev/null 2>&1 &
    BENCH_PIDS+=("$!")
    for _ in $(seq 1 100); do
        python3 -c "import socket; s=socket.create_connection(('127.0.0.1', $port), 1); s.sendall(b'PING\r\n'); exit(0 if s.recv(10).startswith(b'+PONG') else 1)" 2>/dev/null && {
            BENCH_ENDPOINTS="127.0.0.1:$port"
            return 0
        }
        sleep 0.1
    done
    echo "redis on $port did not start:" >&2
    cat "$dir/redis.log" >&2
    return 1
}
