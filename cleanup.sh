#!/usr/bin/env bash
# Kill whatever a dead master left running. Processes are found through the pid lists
# the masters wrote (never by name), and each pid is checked to still be a
# meshkv/master process before it is signalled, so a recycled pid is never hit.
#
# Every master records itself in $MESHKV_RUNS/<master_pid> (default
# ${TMPDIR:-/tmp}/meshkv-runs/), a file whose first line is its run directory; the run
# directory's `pids` file lists the children it started, one pid per line.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: ./cleanup.sh            clean up after every dead master of this user
       ./cleanup.sh RUN_DIR    kill every process listed in RUN_DIR/pids
       ./cleanup.sh --help     show this help

With no argument, only masters that are gone are cleaned up: a master whose recorded
pid is no longer alive, or is alive but no longer a `master` executable (a recycled
pid). The children it recorded are killed and its registry file is removed; live
masters and their children are left alone. RUN_DIR is explicit: its processes are
killed even if their master is still running.

Masters register in $MESHKV_RUNS (default ${TMPDIR:-/tmp}/meshkv-runs). A pid is
only signalled if it is a `meshkv` or `master` executable; nothing is killed by name.
EOF
}

runs="${MESHKV_RUNS:-${TMPDIR:-/tmp}/meshkv-runs}"
killed=0

exe_name() { # pid -> basename of its executable, empty if gone or unreadable
  local exe
  exe=$(readlink "/proc/$1/exe" 2>/dev/null || true)
  [ -n "$exe" ] || return 0
  basename "${exe% (deleted)}"
}

ours() { # pid -> true if it is a meshkv or master executable
  case "$(exe_name "$1")" in
    meshkv|master) return 0 ;;
    *) return 1 ;;
  esac
}

live_master() { # pid -> true if it is alive and a master executable
  [[ "$1" =~ ^[1-9][0-9]*$ ]] && [ "$(exe_name "$1")" = master ]
}

parent_of() { # pid -> its parent pid, empty if gone
  awk '/^PPid:/ { print $2; exit }' "/proc/$1/status" 2>/dev/null || true
}

# kill_pid PID [spare]: SIGKILL PID if it is a meshkv/master process. With "spare",
# also leave it alone if it is a live master or the child of one (a pid that a dead
# master recorded and that has since been reused inside a live run).
kill_pid() {
  local pid=$1 spare=${2:-}
  [[ "$pid" =~ ^[1-9][0-9]*$ ]] || return 0
  if [ ! -d "/proc/$pid" ] || ! ours "$pid"; then return 0; fi
  if [ -n "$spare" ]; then
    if live_master "$pid" || live_master "$(parent_of "$pid")"; then return 0; fi
  fi
  if kill -9 "$pid" 2>/dev/null; then killed=$((killed + 1)); fi
}

kill_run_dir() { # dir [spare]
  local dir=$1 spare=${2:-} pid
  [ -f "$dir/pids" ] || return 0
  while read -r pid || [ -n "$pid" ]; do kill_pid "$pid" "$spare"; done < "$dir/pids"
}

case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  --) shift ;;
  -*) echo "cleanup.sh: unknown option: $1 (try --help)" >&2; exit 2 ;;
esac
if [ $# -gt 1 ]; then
  echo "cleanup.sh: too many arguments (try --help)" >&2
  exit 2
fi

if [ $# -eq 1 ]; then
  if [ ! -d "$1" ]; then
    echo "cleanup.sh: no such run directory: $1" >&2
    exit 2
  fi
  kill_run_dir "$1"
else
  shopt -s nullglob
  for f in "$runs"/*; do
    master_pid=$(basename "$f")
    # Only our own registry files whose name is a pid; anything else is not ours.
    [[ "$master_pid" =~ ^[1-9][0-9]*$ ]] || continue
    if [ ! -f "$f" ] || [ ! -O "$f" ]; then continue; fi
    if live_master "$master_pid"; then continue; fi
    # The master is gone (or its pid now belongs to something else, which is
    # therefore never signalled): kill what it left, then forget it.
    run_dir=$(head -n1 "$f" 2>/dev/null || true)
    if [ -n "$run_dir" ]; then kill_run_dir "$run_dir" spare; fi
    rm -f -- "$f"
  done
fi
echo "cleanup: killed $killed process(es)" >&2
