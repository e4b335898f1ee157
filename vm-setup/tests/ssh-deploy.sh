#!/usr/bin/env bash
# The ssh deployment path, for real: emulated VMs that each run an sshd
# (local-vms.sh up --sshd --no-start), then update.sh, launch.sh, dopartition.sh and
# logs.sh over ssh against them, each checked through the HTTP API; then a short run
# of the fault suite whose faults go through launch.sh and dopartition.sh.
# Needs root, iproute2, iptables or nftables, openssh-server, openssh-client.
# Always tears down (trap).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
vs="$(cd "$here/.." && pwd)"
repo="$(cd "$vs/.." && pwd)"
case "${1:-}" in -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
[ "$(id -u)" -eq 0 ] || { echo "ssh-deploy: needs root" >&2; exit 2; }
for t in /usr/sbin/sshd ssh scp ssh-keygen; do
  command -v "$t" >/dev/null 2>&1 || { echo "ssh-deploy: needs $t (apt-get install -y openssh-server openssh-client)" >&2; exit 2; }
done

passed=0 failed=0
state=$(mktemp -d "${TMPDIR:-/tmp}/meshkv-ssh.XXXXXX")
LV=("$vs/local-vms.sh" --state "$state")
cleanup() {
  local rc=$?
  "${LV[@]}" down --purge >/dev/null 2>&1 || echo "ssh-deploy: teardown failed: ${LV[*]} down" >&2
  rm -rf "$state"
  exit "$rc"
}
trap cleanup EXIT

ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; [ -n "${2:-}" ] && printf '%s\n' "$2" | tail -n 20 | sed 's/^/     /'; }
ws() { "${LV[@]}" exec "$@"; } # on the workstation namespace
step() { # NAME CMD...: passes when CMD exits 0
  local name=$1 out; shift
  if out=$("$@" 2>&1); then ok "$name"; else bad "$name" "$out"; fi
  LAST=$out
}

# A plain HTTP request from the workstation with bash's /dev/tcp. Prints
# "STATUS BODY". Arguments: NODE METHOD PATH [BODY]. At the session level: this
# checks the available (AP) path through a partition, which the default
# linearizable level refuses on a side without a majority of a key's acceptors.
http() {
  ws timeout 5 bash -c '
    exec 3<>"/dev/tcp/10.77.0.$(($1 + 1))/8000" || exit 4
    printf "%s %s HTTP/1.0\r\nHost: n\r\nX-Meshkv-Consistency: session\r\nContent-Length: %s\r\n\r\n%s" "$2" "$3" "${#4}" "$4" >&3
    IFS=" " read -r _ status _ <&3
    while IFS= read -r line <&3 && [ "${line%$'"'"'\r'"'"'}" != "" ]; do :; done
    body=$(cat <&3)
    echo "$status $body"' _ "$@"
}
# Poll until NODE answers GET KEY with WANT (status 200), within SECONDS.
eventually_reads() { # NODE KEY WANT SECONDS
  local deadline=$((SECONDS + $4)) got
  while :; do
    got=$(http "$1" GET "/kv/$2" 2>/dev/null || true)
    [ "$got" = "200 $3" ] && return 0
    [ $SECONDS -lt $deadline ] || { echo "node $1: GET $2 gave '$got', wanted '200 $3'"; return 1; }
    sleep 0.05
  done
}
# For SECONDS, NODE must never answer GET KEY with VALUE (a partition holds).
never_reads() { # NODE KEY VALUE SECONDS
  local deadline=$((SECONDS + $4)) got
  while [ $SECONDS -lt $deadline ]; do
    got=$(http "$1" GET "/kv/$2" 2>/dev/null || true)
    [ "$got" = "200 $3" ] && { echo "node $1 saw $2=$3 across the partition"; return 1; }
    sleep 0.1
  done
}

"${LV[@]}" up --sshd --no-start >/dev/null
ok "local-vms.sh up --sshd --no-start"
"${LV[@]}" hosts > "$state/hosts"
MESHKV_SSH_OPTS="$(cat "$state/ssh/ssh_opts")"
export MESHKV_SSH_OPTS
H=(--hosts "$state/hosts")

step "update.sh deploys to 4 hosts over ssh" ws "$vs/update.sh" "${H[@]}" --no-build --certs "$state/deploy-certs"
step "update.sh again (idempotent)" ws "$vs/update.sh" "${H[@]}" --no-build --certs "$state/deploy-certs"
step "installed: binary, config, certificates (key 0600)" bash -c '
  for i in 0 1 2 3; do d='"$state"'/ssh-host$i/meshkv
    [ -x $d/bin/meshkv ] && [ -f $d/meshkv.toml ] && [ -f $d/certs/ca.pem ] && [ ! -e $d/certs/ca.key ] || exit 1
    [ "$(stat -c %a $d/certs/server-$i.key)" = 600 ] || exit 1
  done'
step "launch.sh start (nohup: no systemd here)" ws "$vs/launch.sh" "${H[@]}" start
step "launch.sh start again is a no-op" ws "$vs/launch.sh" "${H[@]}" start
grep -q "already running" <<<"$LAST" && ok "  ... says already running" || bad "  ... says already running" "$LAST"
step "all four serve HTTP" bash -c "[ \"\$(${LV[*]} status | grep -c ' ok\$')\" = 4 ]"
step "servers run inside their own namespaces" bash -c '
  for i in 0 1 2 3; do
    p=$(cat '"$state"'/ssh-host$i/meshkv/meshkv.pid)
    [ "$(ip netns identify $p)" = "$('"${LV[*]}"' ns $i)" ] || exit 1
  done'
out=$(http 0 PUT /kv/ssh-k1 v1 || true)
[[ "$out" == 20[01]* ]] && ok "PUT at node 0: $out" || bad "PUT at node 0" "$out"
step "... is read at node 3" eventually_reads 3 ssh-k1 v1 10

step "dopartition.sh partition 0,1 2,3" ws "$vs/dopartition.sh" "${H[@]}" partition 0,1 2,3
step "dopartition.sh show: 4 DROP rules per host" bash -c "[ \"\$(${LV[*]} exec $vs/dopartition.sh ${H[*]} show | grep -c DROP)\" = 16 ]"
out=$(http 0 PUT /kv/ssh-k1 v2 || true)
[[ "$out" == 200* ]] && ok "PUT at node 0 during the partition: $out" || bad "PUT during the partition" "$out"
step "node 1 (same side) gets it" eventually_reads 1 ssh-k1 v2 10
step "node 2 (other side) does not, for 2 s" never_reads 2 ssh-k1 v2 2
step "dopartition.sh heal" ws "$vs/dopartition.sh" "${H[@]}" heal
step "node 2 gets it after the heal" eventually_reads 2 ssh-k1 v2 10

step "launch.sh kill 3 (crash)" ws "$vs/launch.sh" "${H[@]}" --mode nohup kill 3
step "node 3 is gone" bash -c "${LV[*]} status | grep '^3 ' | grep -q unreachable"
out=$(http 0 PUT /kv/ssh-k2 while-3-down || true)
[[ "$out" == 20[01]* ]] && ok "PUT while node 3 is down: $out" || bad "PUT while node 3 is down" "$out"
step "launch.sh start 3 (same data)" ws "$vs/launch.sh" "${H[@]}" start 3
step "node 3 catches up" eventually_reads 3 ssh-k2 while-3-down 10
step "launch.sh restart 2" ws "$vs/launch.sh" "${H[@]}" restart 2
step "node 2 serves again after the restart" eventually_reads 2 ssh-k1 v2 10

# The fault suite, with faults injected over ssh (small sizes: this checks the path).
servers=$("${LV[@]}" servers)
step "meshkv-test failure+partition with faults over ssh" ws "$repo/target/release/meshkv-test" run \
  --servers "$servers" --out "$state/suite" --writes 40 --keys 20 --mp-keys 5 \
  --fault-min-ms 1500 --fault-max-ms 5000 \
  --kill-cmd "$vs/launch.sh --hosts $state/hosts --mode nohup kill {id}" \
  --restart-cmd "$vs/launch.sh --hosts $state/hosts start {id}" \
  --partition-cmd "$vs/dopartition.sh --hosts $state/hosts partition {a} {b}" \
  --heal-cmd "$vs/dopartition.sh --hosts $state/hosts heal" \
  failure partition

step "logs.sh collects 4 logs" ws "$vs/logs.sh" "${H[@]}" --out "$state/logs"
step "  ... non-empty" bash -c "[ \"\$(find $state/logs -name 'node-*.log' -size +0 | wc -l)\" = 4 ]"
step "launch.sh stop" ws "$vs/launch.sh" "${H[@]}" stop
step "nothing serves after stop" bash -c "[ \"\$(${LV[*]} status | grep -c ' ok\$')\" = 0 ]"

echo "ssh-deploy: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
