#!/usr/bin/env bash
# Build meshkv and install it on every host of the hosts file: binary, per-node
# config, the CA certificate and the node's own certificate and key, and a systemd
# unit where the host runs systemd. Idempotent: run it again after any change.
set -euo pipefail
# shellcheck source=vm-setup/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'USAGE'
Usage: vm-setup/update.sh [--hosts FILE] [--dry-run] [--no-build] [--bin PATH]
                          [--certs DIR] [--ids 0,1,...]

Build meshkv (cargo build --release -p meshkv-node), make the cluster certificates
(meshkv certs init: the CA is made once and reused), and copy to each host over
ssh/scp, under the host's DIR:
  DIR/bin/meshkv      the binary (replaced atomically; a running server keeps the old
                      one until restarted: vm-setup/launch.sh restart)
  DIR/meshkv.toml     its config (id, QUIC and HTTP addresses, every peer, paths)
  DIR/certs/          ca.pem, server-ID.pem, server-ID.key (0600); never ca.key
  DIR/data/ DIR/log/  store and log
and, where the host runs systemd, /etc/systemd/system/meshkv.service (daemon-reload).

Options:
  --hosts FILE  hosts file (default vm-setup/hosts; see vm-setup/hosts.example):
                ID ADDRESS SSH_USER DIR [QUIC_PORT [HTTP_PORT]]
  --dry-run     print every command instead of running it
  --no-build    use the binary as it is
  --bin PATH    the binary (default target/release/meshkv)
  --certs DIR   where the CA and certificates are kept locally (default certs/out)
  --ids LIST    only these hosts (default all)
  --help        this text
Environment: MESHKV_SSH_OPTS adds ssh/scp options (e.g. "-i KEY -p 2222").
Non-root ssh users need passwordless sudo for systemctl and the unit file only.
USAGE
}

parse_common "$@"
build=1 bin="$REPO_DIR/target/release/meshkv" certs="$REPO_DIR/certs/out" ids=all
set -- "${ARGS[@]+"${ARGS[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=0 ;;
    --bin) bin=${2:?--bin needs a path}; shift ;;
    --certs) certs=${2:?--certs needs a directory}; shift ;;
    --ids) ids=${2:?--ids needs a list}; shift ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
load_hosts "$HOSTS_FILE"

if [ "$build" = 1 ]; then
  run cargo build --release -p meshkv-node --manifest-path "$REPO_DIR/Cargo.toml"
fi
[ -x "$bin" ] || [ "$DRY_RUN" = 1 ] || die "no binary at $bin (build it, or --bin PATH)"
all_ids=$(IFS=,; echo "${H_ID[*]}")
run "$bin" certs init --dir "$certs" --servers "$all_ids"

stage="$REPO_DIR/target/vm-setup/stage"
run mkdir -p "$stage"
peers=$(all_peers)
for i in $(select_hosts "$ids"); do
  id=${H_ID[$i]} dir=${H_DIR[$i]} user=${H_USER[$i]}
  note "host $id (${H_USER[$i]}@${H_ADDR[$i]}:$dir)"
  cfg="$stage/meshkv-$id.toml" unit="$stage/meshkv-$id.service"
  if [ "$DRY_RUN" = 1 ]; then
    echo "+ render_config $id > $cfg"
    echo "+ render_unit $dir $user > $unit"
  else
    render_config "$id" "${H_ADDR[$i]}:${H_QUIC[$i]}" "${H_ADDR[$i]}:${H_HTTP[$i]}" \
      "$dir/data" "$dir/certs" "$peers" > "$cfg"
    render_unit "$dir" "$user" > "$unit"
  fi
  remote "$i" "mkdir -p '$dir/bin' '$dir/certs' '$dir/data' '$dir/log' && chmod 700 '$dir/certs'"
  push "$i" "$bin" "$dir/bin/meshkv.new"
  remote "$i" "chmod 755 '$dir/bin/meshkv.new' && mv -f '$dir/bin/meshkv.new' '$dir/bin/meshkv'"
  push "$i" "$cfg" "$dir/meshkv.toml"
  push "$i" "$certs/ca.pem" "$dir/certs/ca.pem"
  push "$i" "$certs/server-$id.pem" "$dir/certs/server-$id.pem"
  push "$i" "$certs/server-$id.key" "$dir/certs/server-$id.key"
  remote "$i" "chmod 600 '$dir/certs/server-$id.key'"
  push "$i" "$unit" "$dir/meshkv.service"
  s=$(sudo_for "$i")
  # The unit is installed only where systemd runs; launch.sh falls back to nohup.
  remote "$i" "if [ -d /run/systemd/system ]; then ${s}install -m 644 '$dir/meshkv.service' /etc/systemd/system/meshkv.service && ${s}systemctl daemon-reload && echo 'systemd unit installed'; else echo 'no systemd: launch.sh will use nohup'; fi"
done
note "done: start with vm-setup/launch.sh start"
