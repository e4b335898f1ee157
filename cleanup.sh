#!/usr/bin/env bash
# Kill whatever a master left running: every child pid it recorded, and the master
# itself if it is still alive. Processes are found through the pid lists the masters
# wrote (never by name), and each pid is checked to still be a meshkv/master process
# before it is signalled, so a recycled pid is never hit.
#
# Usage: ./cleanup.sh            clean up after every master of this user
#        ./cleanup.sh RUN_DIR    clean up one run directory (its pids file)
set -euo pipefail

runs="${MESHKV_RUNS:-${TMPDIR:-/tmp}/meshkv-runs}"
killed=0

ours() { # pid -> true if it is a meshkv or master executable
  local exe
  exe=$(readlink "/proc/$1/exe" 2>/dev/null || true)
  case "$(basename "${exe% (deleted)}")" in
    meshkv|master) return 0 ;;
    *) return 1 ;;
  esac
}

kill_pid() {
  local pid=$1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  if [ -d "/proc/$pid" ] && ours "$pid"; then
    kill -9 "$pid" 2>/dev/null && killed=$((killed + 1)) || true
  fi
}

kill_run_dir() {
  local dir=$1
  [ -f "$dir/pids" ] || return 0
  while read -r pid; do kill_pid "$pid"; done < "$dir/pids"
}

if [ $# -ge 1 ]; then
  kill_run_dir "$1"
else
  shopt -s nullglob
  for f in "$runs"/*; do
    master_pid=$(basename "$f")
    run_dir=$(head -n1 "$f" 2>/dev/null || true)
    [ -n "$run_dir" ] && kill_run_dir "$run_dir"
    kill_pid "$master_pid"
    rm -f "$f"
  done
fi
echo "cleanup: killed $killed process(es)" >&2
