#!/usr/bin/env bash
# Four (or N) emulated VMs on one Linux machine: a network namespace per node, each
# with its own address on a bridge and its own data directory, running a real
# `meshkv serve`; a "workstation" namespace holds the bridge and runs the clients.
# Faults are real: SIGKILL (process crash), unplugging + SIGKILL (machine crash),
# restart on the same data, and firewall DROP between namespaces (partition).
#
# Everything it creates lives inside namespaces named after this run (mkv<pid>...):
# no interface, address, route or firewall rule is added outside them, and the
# 10.77.0.0/24 addresses exist only on the bridge inside the workstation namespace.
set -euo pipefail
# shellcheck source=vm-setup/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
Usage: vm-setup/local-vms.sh [--state DIR] [--dry-run] COMMAND [ARGS]

Emulate N VMs (default 4) with Linux network namespaces joined by a bridge, each
running a real `meshkv serve` on its own address and data directory. Needs root.

Commands:
  up [--n N] [--bin PATH] [--subnet A.B.C] [--firewall iptables|nft]
     [--no-start] [--sshd]          create the namespaces and start the servers
                                    (--sshd: also an sshd per node, for vm-setup's
                                    ssh deployment scripts; --no-start: no meshkv)
  down [--purge]                    stop everything, delete the namespaces
                                    (--purge: also the data, logs and certificates)
  kill ID                           process crash: SIGKILL the server
  crash ID                          machine crash: unplug the node, then SIGKILL
  stop ID                           graceful stop (SIGTERM)
  restart ID                        plug back in, start again on the same data
  partition A,B C,D [E,F ...]       drop traffic between the groups (replaces any
                                    earlier partition; unlisted nodes keep all links)
  heal                              remove every partition
  status                            one line per node
  servers                           the HTTP URLs, comma-separated
  hosts                             a vm-setup hosts file for the emulated VMs (--sshd)
  exec CMD [ARGS]                   run a command on the workstation (the namespace
                                    that can reach the nodes), e.g. the test suite
  ns ID|ws                          the namespace name of a node or the workstation

Options:
  --state DIR   where this emulation keeps its state, data and logs
                (default $MESHKV_VMS or /tmp/meshkv-vms)
  --dry-run     print the commands that change anything instead of running them
  --help        this text

Needs: root, iproute2 (ip), iptables or nftables (nft); for --sshd, openssh-server
and openssh-client. It installs nothing: .ci/run or you do, e.g.
  apt-get install -y iproute2 iptables openssh-server openssh-client
Example:
  sudo vm-setup/local-vms.sh up && sudo vm-setup/local-vms.sh status
  sudo vm-setup/local-vms.sh partition 0,1 2,3 && sudo vm-setup/local-vms.sh heal
  sudo vm-setup/local-vms.sh exec target/release/meshkv get --help
  sudo vm-setup/local-vms.sh down
EOF
}

STATE="${MESHKV_VMS:-${TMPDIR:-/tmp}/meshkv-vms}"
CMD=""
REST=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    -n|--dry-run) DRY_RUN=1 ;;
    --state) [ $# -ge 2 ] || die "--state needs a directory"; STATE=$2; shift ;;
    --state=*) STATE=${1#--state=} ;;
    -*) [ -z "$CMD" ] && die "unknown option $1 (see --help)"; REST+=("$1") ;;
    *) if [ -z "$CMD" ]; then CMD=$1; else REST+=("$1"); fi ;;
  esac
  shift
  # Everything after `exec` belongs to the command it runs.
  if [ "$CMD" = exec ]; then REST+=("$@"); break; fi
done
[ -n "$CMD" ] || { usage >&2; exit 2; }
STATE=$(mkdir -p "$STATE" && cd "$STATE" && pwd)
ENV_FILE="$STATE/vms.env"

# ---- requirements ---------------------------------------------------------------
need_root() {
  [ "$DRY_RUN" = 1 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "needs root (it creates network namespaces and firewall rules inside them): run it with sudo"
}
need_tool() { # TOOL PACKAGE
  command -v "$1" >/dev/null 2>&1 || die "needs '$1' (Debian/Ubuntu package: $2). It installs nothing itself: apt-get install -y $2"
}

# ---- state ------------------------------------------------------------------------
PREFIX="" N=4 SUBNET="10.77.0" BIN="" FW="" QUIC_PORT=7000 HTTP_PORT=8000 SSHD=0
load_state() {
  [ -f "$ENV_FILE" ] || die "no emulation is up in $STATE (run: $0 --state $STATE up)"
  # shellcheck disable=SC1090
  source "$ENV_FILE"
}
ws() { echo "${PREFIX}ws"; }
nsn() { echo "${PREFIX}n$1"; }
ipn() { echo "$SUBNET.$(($1 + 1))"; }
check_id() {
  [[ "${1:-}" =~ ^[0-9]+$ ]] && [ "$1" -lt "$N" ] || die "no node '${1:-}' (nodes are 0..$((N - 1)))"
}
ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$1"; }

# Take the state lock: one command at a time changes this emulation.
# `lock soft` (for down) goes on without the lock after 10 s.
lock() {
  [ "$DRY_RUN" = 1 ] && return 0
  exec 9>"$STATE/lock"
  command -v flock >/dev/null 2>&1 || return 0
  if [ "${1:-}" = soft ]; then
    flock -w 10 9 || note "$STATE/lock is held by another process: tearing down anyway"
  else
    flock -w 120 9 || die "another local-vms.sh holds $STATE/lock for over 120 s"
  fi
}

# ---- processes --------------------------------------------------------------------
# The meshkv (or sshd) process of a namespace, found among the namespace's own pids
# and checked by executable, so that a recycled pid is never signalled.
ns_pid_of() { # NS EXE-NAME
  local pid exe
  for pid in $(ip netns pids "$1" 2>/dev/null || true); do
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
    exe=$(basename "${exe% (deleted)}")
    [ "$exe" = "$2" ] && { echo "$pid"; return 0; }
  done
  return 1
}
wait_gone() { # PID SECONDS
  local deadline=$((SECONDS + $2))
  while [ -d "/proc/$1" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || echo Z)" != Z ]; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.05
  done
}
signal_node() { # ID SIGNAL
  local pid
  pid=$(ns_pid_of "$(nsn "$1")" meshkv) || { note "node $1 is not running"; return 0; }
  run kill "-$2" "$pid"
  [ "$DRY_RUN" = 1 ] && return 0
  if ! wait_gone "$pid" 10; then
    [ "$2" = KILL ] && die "node $1 (pid $pid) did not die"
    note "node $1 did not stop on $2 within 10 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 10 || die "node $1 (pid $pid) did not die"
  fi
  rm -f "$STATE/node$1/pid"
}

# HTTP GET /health from the workstation, with bash's /dev/tcp (no curl needed).
probe() { # ID
  ip netns exec "$(ws)" timeout 2 bash -c '
    exec 3<>"/dev/tcp/$1/$2" || exit 1
    printf "GET /health HTTP/1.0\r\nHost: %s\r\n\r\n" "$1" >&3
    read -r line <&3 && [[ "$line" == *" 200"* ]]' _ "$(ipn "$1")" "$HTTP_PORT" 2>/dev/null
}

start_node() { # ID
  local i=$1 ns log pid deadline
  ns=$(nsn "$i") log="$STATE/node$i/meshkv.log"
  if pid=$(ns_pid_of "$ns" meshkv); then note "node $i already running (pid $pid)"; return 0; fi
  if [ "$DRY_RUN" = 1 ]; then
    show_cmd setsid ip netns exec "$ns" "$BIN" serve --config "$STATE/node$i/meshkv.toml"
    return 0
  fi
  echo "---- start $(date -u +%FT%T.%NZ)" >> "$log"
  # (fd 9 is the state lock: the server must not inherit it.)
  NO_COLOR=1 setsid ip netns exec "$ns" "$BIN" serve --config "$STATE/node$i/meshkv.toml" \
    < /dev/null >> "$log" 2>&1 9>&- &
  deadline=$((SECONDS + 30))
  pid=""
  until [ -n "$pid" ] && probe "$i"; do
    [ -n "$pid" ] || pid=$(ns_pid_of "$ns" meshkv || true)
    if [ -n "$pid" ] && [ ! -d "/proc/$pid" ]; then
      tail -n 20 "$log" >&2; die "node $i exited at start (log: $log)"
    fi
    if [ $SECONDS -ge $deadline ]; then
      tail -n 20 "$log" >&2; die "node $i not serving HTTP on $(ipn "$i"):$HTTP_PORT after 30 s (log: $log)"
    fi
    sleep 0.05
  done
  echo "$pid" > "$STATE/node$i/pid"
}

# ---- firewall inside the node namespaces ----------------------------------------
fw() { # NS ARGS...: iptables or nft inside a node namespace
  local ns=$1; shift
  run ip netns exec "$ns" "$@"
}
fw_flush() {
  local ns=$1
  if [ "$FW" = nft ]; then
    if [ "$DRY_RUN" = 1 ] || ip netns exec "$ns" nft list table inet meshkv >/dev/null 2>&1; then
      fw "$ns" nft flush table inet meshkv
    fi
  else
    if [ "$DRY_RUN" = 1 ] || ip netns exec "$ns" iptables -w -S MESHKV >/dev/null 2>&1; then
      fw "$ns" iptables -w -F MESHKV
    fi
  fi
}
fw_block() { # NS IP...
  local ns=$1 ip; shift
  if [ "$FW" = nft ]; then
    fw "$ns" nft add table inet meshkv
    fw "$ns" nft add chain inet meshkv input '{ type filter hook input priority 0; }'
    fw "$ns" nft add chain inet meshkv output '{ type filter hook output priority 0; }'
    for ip in "$@"; do
      fw "$ns" nft add rule inet meshkv input ip saddr "$ip" drop
      fw "$ns" nft add rule inet meshkv output ip daddr "$ip" drop
    done
  else
    if [ "$DRY_RUN" = 1 ] || ! ip netns exec "$ns" iptables -w -S MESHKV >/dev/null 2>&1; then
      fw "$ns" iptables -w -N MESHKV
    fi
    local c
    for c in INPUT OUTPUT; do
      if [ "$DRY_RUN" = 1 ] || ! ip netns exec "$ns" iptables -w -C "$c" -j MESHKV 2>/dev/null; then
        fw "$ns" iptables -w -I "$c" 1 -j MESHKV
      fi
    done
    for ip in "$@"; do
      fw "$ns" iptables -w -A MESHKV -s "$ip" -j DROP
      fw "$ns" iptables -w -A MESHKV -d "$ip" -j DROP
    done
  fi
}
fw_rules() { # NS -> number of DROP rules
  if [ "$FW" = nft ]; then
    ip netns exec "$1" nft list table inet meshkv 2>/dev/null | grep -c ' drop' || true
  else
    ip netns exec "$1" iptables -w -S MESHKV 2>/dev/null | grep -c DROP || true
  fi
}

# ---- commands -----------------------------------------------------------------------
cmd_up() {
  local start=1 sshd=0 bin="${MESHKV_BIN:-$REPO_DIR/target/release/meshkv}" fw_pref=""
  while [ ${#REST[@]} -gt 0 ]; do
    case "${REST[0]}" in
      --n) N=${REST[1]:?--n needs a number}; REST=("${REST[@]:1}") ;;
      --bin) bin=${REST[1]:?--bin needs a path}; REST=("${REST[@]:1}") ;;
      --subnet) SUBNET=${REST[1]:?--subnet needs A.B.C}; REST=("${REST[@]:1}") ;;
      --firewall) fw_pref=${REST[1]:?--firewall needs iptables or nft}; REST=("${REST[@]:1}") ;;
      --no-start) start=0 ;;
      --sshd) sshd=1 ;;
      *) die "up: unknown argument ${REST[0]}" ;;
    esac
    REST=("${REST[@]:1}")
  done
  [[ "$N" =~ ^[0-9]+$ ]] && [ "$N" -ge 1 ] && [ "$N" -le 200 ] || die "--n: 1..200"
  [[ "$SUBNET" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "--subnet: three octets, like 10.77.0"
  need_root
  need_tool ip iproute2
  case "$fw_pref" in
    iptables) need_tool iptables iptables; FW=iptables ;;
    nft) need_tool nft nftables; FW=nft ;;
    "") if command -v iptables >/dev/null 2>&1; then FW=iptables
        elif command -v nft >/dev/null 2>&1; then FW=nft
        else die "needs iptables or nft for partitions (Debian package iptables or nftables): apt-get install -y iptables"; fi ;;
    *) die "--firewall: iptables or nft" ;;
  esac
  if [ "$sshd" = 1 ]; then
    need_tool /usr/sbin/sshd openssh-server; need_tool ssh-keygen openssh-client
  fi
  [ -x "$bin" ] || [ "$DRY_RUN" = 1 ] || die "no meshkv binary at $bin: build it (cargo build --release -p meshkv-node) or pass --bin"
  BIN=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
  lock
  if [ -f "$ENV_FILE" ]; then
    local old_prefix
    old_prefix=$(sed -n 's/^PREFIX=//p' "$ENV_FILE")
    if [ -n "$old_prefix" ] && ns_exists "${old_prefix}ws"; then
      note "already up in $STATE (prefix $old_prefix); 'down' first for a new one"
      load_state; cmd_status; return 0
    fi
  fi
  PREFIX="mkv$$"
  SSHD=$sshd
  local i
  for i in $(seq 0 $((N - 1))); do
    ns_exists "$(nsn "$i")" && die "namespace $(nsn "$i") exists already (not ours): pick another --state"
  done
  if [ "$DRY_RUN" != 1 ]; then
    cat > "$ENV_FILE" <<EOF
PREFIX=$PREFIX
N=$N
SUBNET=$SUBNET
BIN=$BIN
FW=$FW
QUIC_PORT=$QUIC_PORT
HTTP_PORT=$HTTP_PORT
SSHD=$SSHD
EOF
    # Any failure from here on: take down what was made.
    trap up_failed EXIT
  fi
  local w
  w=$(ws)
  run ip netns add "$w"
  run ip -n "$w" link set lo up
  run ip -n "$w" link add br0 type bridge
  run ip -n "$w" addr add "$SUBNET.254/24" dev br0
  run ip -n "$w" link set br0 up
  for i in $(seq 0 $((N - 1))); do
    local ns
    ns=$(nsn "$i")
    run ip netns add "$ns"
    run ip -n "$ns" link set lo up
    run ip -n "$w" link add "v$i" type veth peer name eth0 netns "$ns"
    run ip -n "$w" link set "v$i" master br0
    run ip -n "$w" link set "v$i" up
    run ip -n "$ns" addr add "$(ipn "$i")/24" dev eth0
    run ip -n "$ns" link set eth0 up
  done
  # Certificates and one config per node.
  # (Reuses the CA of an earlier run of this state directory.)
  run "$BIN" certs init --dir "$STATE/certs" --servers "$(seq -s, 0 $((N - 1)))" 2>/dev/null
  local peers=""
  for i in $(seq 0 $((N - 1))); do peers+="$i=$(ipn "$i"):$QUIC_PORT "; done
  for i in $(seq 0 $((N - 1))); do
    run mkdir -p "$STATE/node$i/data"
    if [ "$DRY_RUN" = 1 ]; then
      echo "+ render_config $i > $STATE/node$i/meshkv.toml"
    else
      render_config "$i" "$(ipn "$i"):$QUIC_PORT" "$(ipn "$i"):$HTTP_PORT" \
        "$STATE/node$i/data" "$STATE/certs" "$peers" > "$STATE/node$i/meshkv.toml"
    fi
  done
  [ "$sshd" = 1 ] && start_sshd
  if [ "$start" = 1 ]; then
    for i in $(seq 0 $((N - 1))); do start_node "$i"; done
  fi
  trap - EXIT
  [ "$DRY_RUN" = 1 ] && return 0
  note "up: $N nodes, prefix $PREFIX, state $STATE"
  cmd_status
}

up_failed() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then note "up failed: tearing down"; teardown || true; rm -f "$ENV_FILE"; fi
}

start_sshd() {
  local d="$STATE/ssh" i ns
  run mkdir -p "$d"
  if [ ! -f "$d/id_ed25519" ]; then run ssh-keygen -q -t ed25519 -N "" -C meshkv-local-vms -f "$d/id_ed25519"; fi
  if [ ! -f "$d/host_ed25519" ]; then run ssh-keygen -q -t ed25519 -N "" -C meshkv-local-vms-host -f "$d/host_ed25519"; fi
  run cp "$d/id_ed25519.pub" "$d/authorized_keys"
  # sshd refuses to start without its privilege-separation directory.
  [ -d /run/sshd ] || run mkdir -p -m 0755 /run/sshd
  for i in $(seq 0 $((N - 1))); do
    ns=$(nsn "$i")
    if [ "$DRY_RUN" = 1 ]; then
      echo "+ write $d/sshd-$i.conf"; show_cmd ip netns exec "$ns" /usr/sbin/sshd -D -e -f "$d/sshd-$i.conf"; continue
    fi
    cat > "$d/sshd-$i.conf" <<EOF
ListenAddress $(ipn "$i"):22
HostKey $d/host_ed25519
PidFile none
AuthorizedKeysFile $d/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
Subsystem sftp internal-sftp
EOF
    setsid ip netns exec "$ns" /usr/sbin/sshd -D -e -f "$d/sshd-$i.conf" < /dev/null >> "$d/sshd-$i.log" 2>&1 9>&- &
  done
  # Each sshd answers on port 22 of its node before we go on.
  local deadline=$((SECONDS + 20))
  for i in $(seq 0 $((N - 1))); do
    until ip netns exec "$(ws)" timeout 1 bash -c 'exec 3<>"/dev/tcp/$1/22"' _ "$(ipn "$i")" 2>/dev/null; do
      [ $SECONDS -lt $deadline ] || { cat "$d/sshd-$i.log" >&2; die "sshd of node $i not listening"; }
      sleep 0.05
    done
  done
  printf '%s\n' "-i $d/id_ed25519 -o UserKnownHostsFile=$d/known_hosts -o StrictHostKeyChecking=accept-new -o IdentitiesOnly=yes" > "$d/ssh_opts"
}

teardown() {
  local ns pid pids
  for ns in "$(ws)" $(for i in $(seq 0 $((N - 1))); do nsn "$i"; done); do
    ns_exists "$ns" || continue
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    for pid in $pids; do run kill -KILL "$pid" 2>/dev/null || true; done
    if [ "$DRY_RUN" != 1 ]; then
      for pid in $pids; do wait_gone "$pid" 10 || note "pid $pid in $ns did not die"; done
    fi
    run ip netns del "$ns"
  done
}

cmd_down() {
  local purge=0
  [ "${REST[0]:-}" = --purge ] && purge=1
  if [ ! -f "$ENV_FILE" ]; then note "nothing is up in $STATE"; return 0; fi
  need_root
  load_state
  lock soft
  teardown
  if [ "$DRY_RUN" != 1 ]; then
    rm -f "$ENV_FILE"
    if [ "$purge" = 1 ]; then
      rm -rf "$STATE"/node* "$STATE/certs" "$STATE/ssh" "$STATE"/ssh-host*
    fi
  fi
  if [ "$purge" = 1 ]; then
    note "down: namespaces of $PREFIX removed, state purged"
  else
    note "down: namespaces of $PREFIX removed; logs and data kept in $STATE"
  fi
}

cmd_status() {
  local i ns pid link rules health
  printf '%-4s %-14s %-18s %-8s %-5s %-10s %s\n' node namespace address pid link partition http
  for i in $(seq 0 $((N - 1))); do
    ns=$(nsn "$i")
    pid=$(ns_pid_of "$ns" meshkv || echo -)
    link=$(ip -n "$ns" -o link show eth0 2>/dev/null | grep -q 'state UP\|,UP' && echo up || echo down)
    rules=$(fw_rules "$ns"); [ "${rules:-0}" -gt 0 ] && rules="$rules drops" || rules=none
    if probe "$i"; then health=ok; else health=unreachable; fi
    printf '%-4s %-14s %-18s %-8s %-5s %-10s %s\n' "$i" "$ns" "$(ipn "$i"):$HTTP_PORT" "$pid" "$link" "$rules" "$health"
  done
}

cmd_partition() {
  [ ${#REST[@]} -ge 2 ] || die "partition: at least two groups, like: partition 0,1 2,3"
  local g i j seen=" " ips
  local -a group_of
  for i in $(seq 0 $((N - 1))); do group_of[i]=-1; done
  for g in "${!REST[@]}"; do
    for i in ${REST[$g]//,/ }; do
      check_id "$i"
      [[ "$seen" == *" $i "* ]] && die "node $i is in two groups"
      seen+="$i "
      group_of[i]=$g
    done
  done
  lock
  for i in $(seq 0 $((N - 1))); do fw_flush "$(nsn "$i")"; done
  for i in $(seq 0 $((N - 1))); do
    [ "${group_of[i]}" -ge 0 ] || continue
    ips=()
    for j in $(seq 0 $((N - 1))); do
      [ "${group_of[j]}" -ge 0 ] && [ "${group_of[j]}" != "${group_of[i]}" ] && ips+=("$(ipn "$j")")
    done
    [ ${#ips[@]} -gt 0 ] && fw_block "$(nsn "$i")" "${ips[@]}"
  done
  note "partition: ${REST[*]}"
}

cmd_heal() {
  lock
  local i
  for i in $(seq 0 $((N - 1))); do fw_flush "$(nsn "$i")"; done
  note "healed"
}

case "$CMD" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) load_state; cmd_status ;;
  servers)
    load_state
    out=""
    for i in $(seq 0 $((N - 1))); do out+="${out:+,}http://$(ipn "$i"):$HTTP_PORT"; done
    echo "$out" ;;
  hosts)
    load_state
    echo "# id address ssh_user dir quic_port http_port (emulated VMs of $STATE)"
    for i in $(seq 0 $((N - 1))); do
      echo "$i $(ipn "$i") root $STATE/ssh-host$i/meshkv $QUIC_PORT $HTTP_PORT"
    done ;;
  ns)
    load_state
    case "${REST[0]:-}" in ws|workstation) ws ;; *) check_id "${REST[0]:-}"; nsn "${REST[0]}" ;; esac ;;
  exec)
    load_state; need_root
    [ ${#REST[@]} -gt 0 ] || die "exec: which command?"
    exec ip netns exec "$(ws)" "${REST[@]}" ;;
  kill) load_state; need_root; check_id "${REST[0]:-}"; lock; signal_node "${REST[0]}" KILL; note "node ${REST[0]} killed (process crash)" ;;
  stop) load_state; need_root; check_id "${REST[0]:-}"; lock; signal_node "${REST[0]}" TERM; note "node ${REST[0]} stopped" ;;
  crash)
    load_state; need_root; check_id "${REST[0]:-}"; lock
    # Unplug first, so that not even the kernel's resets reach the other nodes.
    run ip -n "$(nsn "${REST[0]}")" link set eth0 down
    signal_node "${REST[0]}" KILL
    note "node ${REST[0]} crashed (unplugged, SIGKILL)" ;;
  restart)
    load_state; need_root; check_id "${REST[0]:-}"; lock
    run ip -n "$(nsn "${REST[0]}")" link set eth0 up
    start_node "${REST[0]}"
    note "node ${REST[0]} restarted on its data" ;;
  partition) load_state; need_root; cmd_partition ;;
  heal) load_state; need_root; cmd_heal ;;
  *) die "unknown command '$CMD' (see --help)" ;;
esac
