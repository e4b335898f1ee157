#!/usr/bin/env bash
# Tests for cleanup.sh, without cargo: fake `meshkv` and `master` processes are copies
# of /bin/sleep under those names (so the exe-name identity check passes), `other` is
# a copy that must never be signalled, and a copy of bash named `master` plays a live
# master with a real meshkv child. Every registry lives in a temporary MESHKV_RUNS.
# Every process the test starts is killed by pid on exit.
# Usage: tests-shell/cleanup-test.sh   (CLEANUP_SH=path overrides the script under test)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cleanup_sh="${CLEANUP_SH:-$here/../cleanup.sh}"
case "${1:-}" in -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac

passed=0 failed=0
started=() # every pid this test started (children and the one grandchild)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/meshkv-cleanup-test.XXXXXX")
# bash reports each background job killed by a signal ("line N: PID Killed ...") on
# its stderr whenever it reaps one; this test kills them on purpose, so the shell's
# stderr goes to a file and is replayed at exit without those notices.
exec 3>&2 2>"$tmp/stderr"
on_exit() {
  local rc=$? pid
  for pid in "${started[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  for pid in "${started[@]}"; do wait "$pid" 2>/dev/null || true; done
  grep -Ev '^.*: line [0-9]+: +[0-9]+ Killed ' "$tmp/stderr" >&3 || true
  rm -rf "$tmp"
  exit "$rc"
}
trap on_exit EXIT

bin=$tmp/bin shbin=$tmp/shbin
mkdir -p "$bin" "$shbin"
for name in meshkv master other; do cp /bin/sleep "$bin/$name"; done
cp /bin/bash "$shbin/master"

ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; [ -n "${2:-}" ] && printf '%s\n' "$2" | sed 's/^/     /'; return 0; }
check() { # NAME CMD...: passes when CMD exits 0
  local name=$1; shift
  if "$@"; then ok "$name"; else bad "$name" "$(printf 'rc=%s\nstdout: %s\nstderr: %s' "$rc" "$(cat "$tmp/out")" "$(cat "$tmp/err")")"; fi
}

spawn() { # EXE ARGS...: start it in the background; its pid goes to $REPLY
  "$@" </dev/null >/dev/null 2>&1 &
  REPLY=$!
  started+=("$REPLY")
}

alive() { # PID: running (not gone, not a zombie)
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

gone() { # PID: wait (bounded, ~10 s) for it to stop running
  local i
  for ((i = 0; i < 200; i++)); do
    alive "$1" || return 0
    sleep 0.05
  done
  return 1
}

killed() { # PID (a child of this shell): it stopped, by SIGKILL
  local st=0
  gone "$1" || return 1
  wait "$1" 2>/dev/null || st=$?
  [ "$st" -eq 137 ]
}

dead_pid() { # a pid whose process has exited (and been reaped); in $REPLY
  "$bin/master" 0 </dev/null >/dev/null 2>&1 &
  REPLY=$!
  wait "$REPLY" || true
}

new_runs() { # fresh registry dir for one scenario
  MESHKV_RUNS=$(mktemp -d "$tmp/runs.XXXXXX")
  export MESHKV_RUNS
}

register() { # MASTER_PID RUN_DIR CHILD_PID...: what a master records
  local master=$1 dir=$2; shift 2
  mkdir -p "$dir"
  printf '%s\n' "$dir" >"$MESHKV_RUNS/$master"
  : >"$dir/pids"
  if [ $# -gt 0 ]; then printf '%s\n' "$@" >>"$dir/pids"; fi
}

run_cleanup() { # ARGS...: sets rc, $tmp/out, $tmp/err
  rc=0
  bash "$cleanup_sh" "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
}

rc_is() { [ "$rc" -eq "$1" ]; }
killed_count() { grep -qx "cleanup: killed $1 process(es)" "$tmp/err"; }
one_line_err() { [ "$(wc -l <"$tmp/err")" -eq 1 ] && [ ! -s "$tmp/out" ]; }

# --- 1: a live master and its two children are left alone -------------------------
new_runs
spawn "$bin/master" 300; m=$REPLY
spawn "$bin/meshkv" 300; c1=$REPLY
spawn "$bin/meshkv" 300; c2=$REPLY
register "$m" "$tmp/run1" "$c1" "$c2"
run_cleanup
check "1 live master: exit 0" rc_is 0
check "1 live master: nothing killed" killed_count 0
check "1 live master: child 1 alive" alive "$c1"
check "1 live master: child 2 alive" alive "$c2"
check "1 live master: master alive" alive "$m"
check "1 live master: registry file kept" test -f "$MESHKV_RUNS/$m"
live_master=$m live_dir=$tmp/run1 live_c1=$c1 live_c2=$c2

# --- 2: a dead master's two children are killed, its registry file removed --------
new_runs
dead_pid; m=$REPLY
spawn "$bin/meshkv" 300; c1=$REPLY
spawn "$bin/meshkv" 300; c2=$REPLY
register "$m" "$tmp/run2" "$c1" "$c2"
run_cleanup
check "2 dead master: exit 0" rc_is 0
check "2 dead master: two killed" killed_count 2
check "2 dead master: child 1 killed" killed "$c1"
check "2 dead master: child 2 killed" killed "$c2"
check "2 dead master: registry file removed" test ! -e "$MESHKV_RUNS/$m"

# --- 2b: master pid recycled by a non-master: cleaned as dead, pid not signalled ---
new_runs
spawn "$bin/other" 300; m=$REPLY
spawn "$bin/meshkv" 300; c1=$REPLY
register "$m" "$tmp/run2b" "$c1"
run_cleanup
check "2b recycled master pid: exit 0" rc_is 0
check "2b recycled master pid: one killed" killed_count 1
check "2b recycled master pid: child killed" killed "$c1"
check "2b recycled master pid: the 'other' at its pid alive" alive "$m"
check "2b recycled master pid: registry file removed" test ! -e "$MESHKV_RUNS/$m"

# --- 2c: master pid recycled by a meshkv: that meshkv is not signalled -------------
new_runs
spawn "$bin/meshkv" 300; m=$REPLY
register "$m" "$tmp/run2c"
run_cleanup
check "2c master pid now a meshkv: nothing killed" killed_count 0
check "2c master pid now a meshkv: it is alive" alive "$m"
check "2c master pid now a meshkv: registry file removed" test ! -e "$MESHKV_RUNS/$m"

# --- 3: recorded pids that are not meshkv/master (or not pids) are not signalled ---
new_runs
dead_pid; m=$REPLY
spawn "$bin/other" 300; o=$REPLY
spawn "$bin/meshkv" 300; c1=$REPLY
register "$m" "$tmp/run3" "$o" "$c1" abc 0 "" "-1" "$$"
run_cleanup
check "3 foreign pids: exit 0" rc_is 0
check "3 foreign pids: only the meshkv killed" killed_count 1
check "3 foreign pids: 'other' alive" alive "$o"
check "3 foreign pids: meshkv killed" killed "$c1"
check "3 foreign pids: registry file removed" test ! -e "$MESHKV_RUNS/$m"

# --- 4: options and bad arguments ---------------------------------------------------
new_runs
dead_pid; m=$REPLY
spawn "$bin/meshkv" 300; c1=$REPLY
register "$m" "$tmp/run4" "$c1"
run_cleanup --help
check "4 --help: exit 0" rc_is 0
check "4 --help: prints usage" grep -q '^Usage: ./cleanup.sh' "$tmp/out"
run_cleanup -h
check "4 -h: exit 0" rc_is 0
check "4 -h: prints usage" grep -q '^Usage: ./cleanup.sh' "$tmp/out"
run_cleanup --bogus
check "4 --bogus: exit 2" rc_is 2
check "4 --bogus: one-line error" one_line_err
check "4 --bogus: names the option" grep -q -- '--bogus' "$tmp/err"
run_cleanup "$tmp/no-such-dir"
check "4 missing dir: exit 2" rc_is 2
check "4 missing dir: one-line error" one_line_err
run_cleanup "$tmp/run4" "$tmp/run4"
check "4 two dirs: exit 2" rc_is 2
check "4 two dirs: one-line error" one_line_err
check "4 after bad arguments: nothing killed" alive "$c1"
check "4 after bad arguments: registry file kept" test -f "$MESHKV_RUNS/$m"
run_cleanup
check "4 then no argument: the child is killed" killed "$c1"

# --- 5: an explicit RUN_DIR is cleaned even though its master is alive -------------
new_runs
register "$live_master" "$live_dir" "$live_c1" "$live_c2"
run_cleanup "$live_dir"
check "5 RUN_DIR: exit 0" rc_is 0
check "5 RUN_DIR: two killed" killed_count 2
check "5 RUN_DIR: child 1 killed" killed "$live_c1"
check "5 RUN_DIR: child 2 killed" killed "$live_c2"
check "5 RUN_DIR: its master (not in pids) alive" alive "$live_master"
check "5 RUN_DIR: registry file untouched" test -f "$MESHKV_RUNS/$live_master"
run_cleanup -- "$live_dir"
check "5 -- RUN_DIR: exit 0, nothing left to kill" killed_count 0

# --- 6: a dead master's pids reused inside a live run are not signalled ------------
# A live master (bash named `master`) with a real meshkv child; a dead master's pid
# list names that child and a live master: neither is hit, its own child is.
new_runs
# shellcheck disable=SC2016 # $1, $2 and $! are the inner shell's
spawn "$shbin/master" -c '"$1" 300 </dev/null >/dev/null 2>&1 & echo "$!" >"$2.tmp"; mv "$2.tmp" "$2"; wait' \
  master "$bin/meshkv" "$tmp/grandchild"
lm=$REPLY
for ((i = 0; i < 200; i++)); do [ -s "$tmp/grandchild" ] && break; sleep 0.05; done
gc=$(cat "$tmp/grandchild" 2>/dev/null || true)
if [[ "$gc" =~ ^[0-9]+$ ]]; then
  started+=("$gc")
  dead_pid; m=$REPLY
  spawn "$bin/meshkv" 300; c1=$REPLY
  register "$m" "$tmp/run6" "$gc" "$live_master" "$c1"
  run_cleanup
  check "6 reused pids: only its own child killed" killed_count 1
  check "6 reused pids: live master's meshkv child alive" alive "$gc"
  check "6 reused pids: live master alive" alive "$live_master"
  check "6 reused pids: bash master alive" alive "$lm"
  check "6 reused pids: own child killed" killed "$c1"
  check "6 reused pids: registry file removed" test ! -e "$MESHKV_RUNS/$m"
else
  bad "6 reused pids: the bash master did not start its child"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
