#!/usr/bin/env bash
# Collect the logs of every host into one local folder.
set -euo pipefail
# shellcheck source=vm-setup/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'USAGE'
Usage: vm-setup/logs.sh [--hosts FILE] [--dry-run] [--out DIR] [IDS]

Copy DIR/log/meshkv.log of each host (and, where meshkv runs under systemd, the
unit's journal) to OUT/node-ID.log (default OUT: results/logs-<unix time>).

Options:
  --hosts FILE  hosts file (default vm-setup/hosts)
  --out DIR     where to put them
  --dry-run     print every command instead of running it
  --help        this text
Environment: MESHKV_SSH_OPTS adds ssh/scp options.
USAGE
}

parse_common "$@"
out="$REPO_DIR/results/logs-$(date +%s)" ids=all
set -- "${ARGS[@]+"${ARGS[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=${2:?--out needs a directory}; shift ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) ids=$1 ;;
  esac
  shift
done
load_hosts "$HOSTS_FILE"
run mkdir -p "$out"
rc=0
for i in $(select_hosts "$ids"); do
  id=${H_ID[$i]}
  pull "$i" "${H_DIR[$i]}/log/meshkv.log" "$out/node-$id.log" || { note "host $id: no log copied"; rc=1; }
  if [ "$DRY_RUN" = 1 ]; then
    remote "$i" "if [ -d /run/systemd/system ]; then journalctl -u meshkv.service --no-pager -o short-iso 2>/dev/null || true; fi"
  else
    remote "$i" "if [ -d /run/systemd/system ]; then journalctl -u meshkv.service --no-pager -o short-iso 2>/dev/null || true; fi" \
      > "$out/node-$id.journal" 2>/dev/null || true
    [ -s "$out/node-$id.journal" ] || rm -f "$out/node-$id.journal"
  fi
done
note "logs in $out"
exit $rc
