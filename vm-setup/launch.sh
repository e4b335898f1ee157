#!/usr/bin/env bash
# Start, stop, crash or restart meshkv on the hosts of the hosts file: through the
# systemd unit installed by update.sh where the host runs systemd, otherwise with
# nohup and a pid file. Idempotent: starting a running server does nothing.
set -euo pipefail
# shellcheck source=vm-setup/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'USAGE'
Usage: vm-setup/launch.sh [--hosts FILE] [--dry-run] [--mode auto|systemd|nohup]
                          start|stop|kill|restart|status [IDS]

  start    start meshkv where it is not running
  stop     graceful stop (SIGTERM), waits until it is gone
  kill     crash it: SIGKILL, no flush, no goodbye; it stays down until start
           (systemd: systemctl kill -s KILL, then stop so Restart= waits for you)
  restart  stop, then start (after update.sh, to run the new binary)
  status   running or not, pid, last log line
IDS: comma-separated host ids (default: all).

Options:
  --hosts FILE  hosts file (default vm-setup/hosts)
  --mode M      auto (systemd when the host runs it and update.sh installed the
                unit, nohup otherwise), systemd, or nohup
  --dry-run     print every command instead of running it
  --help        this text
Environment: MESHKV_SSH_OPTS adds ssh options.
USAGE
}

parse_common "$@"
mode=auto
set -- "${ARGS[@]+"${ARGS[@]}"}"
pos=()
while [ $# -gt 0 ]; do
  case "$1" in
    --mode) mode=${2:?--mode needs auto, systemd or nohup}; shift ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) pos+=("$1") ;;
  esac
  shift
done
[ ${#pos[@]} -ge 1 ] || { usage >&2; exit 2; }
action=${pos[0]} ids=${pos[1]:-all}
case "$mode" in auto|systemd|nohup) ;; *) die "--mode: auto, systemd or nohup" ;; esac
case "$action" in start|stop|kill|restart|status) ;; *) die "unknown action $action (see --help)" ;; esac
load_hosts "$HOSTS_FILE"

# The remote snippet: one ssh call per host and action. It finds the server by the
# pid file and checks /proc/PID/exe before signalling, never by name.
snippet() { # DIR SUDO ACTION
  local dir=$1 s=$2 act=$3
  cat <<SH
set -eu
D='$dir'; MODE='$mode'
use_systemd() {
  case "\$MODE" in systemd) return 0 ;; nohup) return 1 ;; esac
  [ -d /run/systemd/system ] && [ -f /etc/systemd/system/meshkv.service ]
}
pid_alive() {
  p=\$(cat "\$D/meshkv.pid" 2>/dev/null) || return 1
  e=\$(readlink "/proc/\$p/exe" 2>/dev/null) || return 1
  case "\$e" in "\$D/bin/meshkv"|"\$D/bin/meshkv (deleted)") echo "\$p" ;; *) return 1 ;; esac
}
wait_gone() {
  n=0
  while [ -d "/proc/\$1" ] && [ \$n -lt 200 ]; do sleep 0.05; n=\$((n + 1)); done
  [ ! -d "/proc/\$1" ]
}
start() {
  if use_systemd; then ${s}systemctl enable --now meshkv.service; return; fi
  if p=\$(pid_alive); then echo "already running (pid \$p)"; return; fi
  cd "\$D"
  NO_COLOR=1 nohup "\$D/bin/meshkv" serve --config "\$D/meshkv.toml" </dev/null >>"\$D/log/meshkv.log" 2>&1 &
  echo \$! > "\$D/meshkv.pid"
  n=0
  until grep -q 'meshkv serve: node .* http=' "\$D/log/meshkv.log" 2>/dev/null && [ -d "/proc/\$(cat "\$D/meshkv.pid")" ]; do
    [ -d "/proc/\$(cat "\$D/meshkv.pid")" ] || { tail -n 5 "\$D/log/meshkv.log"; echo "meshkv exited at start"; exit 1; }
    n=\$((n + 1)); [ \$n -lt 600 ] || { echo "meshkv not serving after 30 s"; exit 1; }
    sleep 0.05
  done
  echo "started (pid \$(cat "\$D/meshkv.pid"))"
}
stop() { # SIGNAL
  if use_systemd; then
    # After the SIGKILL, stop the unit so that Restart= does not bring it back:
    # it stays down, as after a crash, until launch.sh start.
    if [ "\$1" = KILL ]; then ${s}systemctl kill -s KILL meshkv.service || true; fi
    ${s}systemctl stop meshkv.service
    return
  fi
  if p=\$(pid_alive); then
    kill -"\$1" "\$p"
    wait_gone "\$p" || { kill -KILL "\$p"; wait_gone "\$p"; }
    echo "stopped (\$1, pid \$p)"
  else
    echo "not running"
  fi
}
status() {
  if use_systemd; then st=\$(systemctl is-active meshkv.service || true); echo "systemd: \$st"; return; fi
  if p=\$(pid_alive); then echo "running (pid \$p)"; else echo "not running"; fi
  tail -n 1 "\$D/log/meshkv.log" 2>/dev/null || true
}
case '$act' in
  start) start ;;
  stop) stop TERM ;;
  kill) stop KILL ;;
  restart) stop TERM; start ;;
  status) status ;;
esac
SH
}

rc=0
for i in $(select_hosts "$ids"); do
  # A line prefix shows which host said what.
  if [ "$DRY_RUN" = 1 ]; then
    remote "$i" "$(snippet "${H_DIR[$i]}" "$(sudo_for "$i")" "$action")"
  else
    out=$(remote "$i" "$(snippet "${H_DIR[$i]}" "$(sudo_for "$i")" "$action")" 2>&1) || rc=1
    printf '%s\n' "$out" | sed "s/^/host ${H_ID[$i]}: /"
  fi
done
exit $rc
