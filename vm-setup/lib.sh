# shellcheck shell=bash
# Shared by the vm-setup scripts (sourced, never run): dry-run, the hosts file, ssh
# and scp wrappers, and the one place a node's config file is written.

# shellcheck disable=SC2034 # (variables here are used by the scripts that source it)
VM_SETUP_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC2034
REPO_DIR="$(cd "$VM_SETUP_DIR/.." && pwd)"
DRY_RUN="${DRY_RUN:-0}"

die() { echo "$(basename "$0"): $*" >&2; exit 1; }
note() { echo "$(basename "$0"): $*" >&2; }

# Print a command as a shell would read it.
show_cmd() {
  local out="+" a
  for a in "$@"; do out+=" $(printf '%q' "$a")"; done
  echo "$out"
}

# Run a command, or only print it under --dry-run.
run() {
  if [ "$DRY_RUN" = 1 ]; then show_cmd "$@"; else "$@"; fi
}

# The config file of one server (TOML, the format of node/src/config.rs; see
# examples/cluster/). Arguments: ID QUIC_ADDR HTTP_ADDR DATA_DIR CERT_DIR PEERS, where
# PEERS is "id=host:port id=host:port ..." for every server of the cluster.
render_config() {
  local id=$1 quic=$2 http=$3 data=$4 certs=$5 peers=$6 p
  cat <<EOF
# meshkv server $id (written by vm-setup; see node/src/config.rs for every key)
id = $id
data_dir = "$data"
quic_listen = "$quic"
http_listen = "$http"

[certs]
dir = "$certs"   # ca.pem, server-$id.pem, server-$id.key
EOF
  for p in $peers; do
    printf '\n[[peers]]\nid = %s\naddr = "%s"\n' "${p%%=*}" "${p#*=}"
  done
  cat <<EOF

[http]
max_wait_ms = 10000
EOF
}

# The systemd unit of a host whose meshkv lives in DIR, run as USER.
render_unit() {
  local dir=$1 user=$2
  cat <<EOF
[Unit]
Description=meshkv replicated key-value store
After=network-online.target
Wants=network-online.target

[Service]
User=$user
WorkingDirectory=$dir
Environment=NO_COLOR=1
ExecStart=$dir/bin/meshkv serve --config $dir/meshkv.toml
Restart=on-failure
RestartSec=1
StandardOutput=append:$dir/log/meshkv.log
StandardError=append:$dir/log/meshkv.log
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
EOF
}

# ---- the hosts file -------------------------------------------------------------
# One host per line: ID ADDRESS SSH_USER DIR [QUIC_PORT [HTTP_PORT]]; # comments.
H_ID=() H_ADDR=() H_USER=() H_DIR=() H_QUIC=() H_HTTP=()

load_hosts() {
  local file=$1 id addr user dir quic http rest line=0
  [ -f "$file" ] || die "hosts file $file not found (see vm-setup/hosts.example)"
  while read -r id addr user dir quic http rest || [ -n "${id:-}" ]; do
    line=$((line + 1))
    case "${id:-}" in ''|'#'*) continue ;; esac
    [[ "$id" =~ ^[0-9]+$ ]] || die "$file:$line: id '$id' is not a number"
    [ -n "${dir:-}" ] || die "$file:$line: expected ID ADDRESS SSH_USER DIR [QUIC_PORT [HTTP_PORT]]"
    [[ "$dir" == /* ]] || die "$file:$line: DIR must be absolute ($dir)"
    H_ID+=("$id") H_ADDR+=("$addr") H_USER+=("$user") H_DIR+=("$dir")
    H_QUIC+=("${quic:-7000}") H_HTTP+=("${http:-8000}")
  done < "$file"
  [ "${#H_ID[@]}" -gt 0 ] || die "$file: no hosts"
}

# Index of a host id in the H_ arrays.
host_index() {
  local i
  for i in "${!H_ID[@]}"; do
    [ "${H_ID[$i]}" = "$1" ] && { echo "$i"; return 0; }
  done
  die "no host with id $1 in the hosts file"
}

# Indexes selected by a comma-separated id list ("" or "all": every host).
select_hosts() {
  local ids=${1:-all} id
  if [ "$ids" = all ]; then echo "${!H_ID[@]}"; return; fi
  for id in ${ids//,/ }; do host_index "$id"; done | tr '\n' ' '
}

all_peers() {
  local i out=""
  for i in "${!H_ID[@]}"; do out+="${H_ID[$i]}=${H_ADDR[$i]}:${H_QUIC[$i]} "; done
  echo "$out"
}

# ---- ssh ----------------------------------------------------------------------
# MESHKV_SSH_OPTS adds options (an identity, a known_hosts file, a port).
SSH_OPTS=(-o BatchMode=yes -o ConnectTimeout=10)
if [ -n "${MESHKV_SSH_OPTS:-}" ]; then
  read -r -a _extra <<< "$MESHKV_SSH_OPTS"
  SSH_OPTS+=("${_extra[@]}")
fi

# remote INDEX SCRIPT: run a shell snippet on a host.
remote() {
  local i=$1; shift
  if [ "$DRY_RUN" = 1 ]; then
    # The remote script, one line at a time, under the ssh command.
    echo "$(show_cmd ssh "${SSH_OPTS[@]}" "${H_USER[$i]}@${H_ADDR[$i]}") <<'SH'"
    printf '%s\n' "$*" | sed 's/^/    /'
    echo "SH"
    return 0
  fi
  ssh "${SSH_OPTS[@]}" "${H_USER[$i]}@${H_ADDR[$i]}" "$@"
}

# push INDEX LOCAL REMOTE_PATH: copy a file to a host.
push() {
  local i=$1 src=$2 dst=$3
  run scp -q "${SSH_OPTS[@]}" "$src" "${H_USER[$i]}@${H_ADDR[$i]}:$dst"
}

# pull INDEX REMOTE_PATH LOCAL: copy a file from a host.
pull() {
  local i=$1 src=$2 dst=$3
  run scp -q "${SSH_OPTS[@]}" "${H_USER[$i]}@${H_ADDR[$i]}:$src" "$dst"
}

# sudo on hosts where the ssh user is not root.
sudo_for() { [ "${H_USER[$1]}" = root ] && echo "" || echo "sudo -n "; }

# Common options: --hosts FILE, --dry-run, --help (sets HOSTS_FILE, DRY_RUN; the
# caller's usage function prints help). Leaves the other arguments in ARGS.
# shellcheck disable=SC2034
HOSTS_FILE="${MESHKV_HOSTS:-$VM_SETUP_DIR/hosts}"
ARGS=()
# shellcheck disable=SC2034
parse_common() {
  while [ $# -gt 0 ]; do
    case "$1" in
      -h|--help) usage; exit 0 ;;
      -n|--dry-run) DRY_RUN=1 ;;
      --hosts) [ $# -ge 2 ] || die "--hosts needs a file"; HOSTS_FILE=$2; shift ;;
      --hosts=*) HOSTS_FILE=${1#--hosts=} ;;
      *) ARGS+=("$1") ;;
    esac
    shift
  done
}
