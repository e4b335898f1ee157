#!/usr/bin/env bash
# Partition the hosts of the hosts file into groups with iptables (and heal): each
# host of a group drops all traffic from and to the hosts of the other groups, in a
# chain of its own (MESHKV), so healing touches no other rule. The machine running
# this script is in no group: it keeps reaching every host (ssh, HTTP).
set -euo pipefail
# shellcheck source=vm-setup/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'USAGE'
Usage: vm-setup/dopartition.sh [--hosts FILE] [--dry-run] partition A,B C,D [E,F ...]
       vm-setup/dopartition.sh [--hosts FILE] [--dry-run] heal|show

  partition G1 G2 ...  groups of host ids; replaces any earlier partition; hosts in
                       no group keep all their links
  heal                 remove every partition (flush the MESHKV chain everywhere)
  show                 the MESHKV rules of every host

Options:
  --hosts FILE  hosts file (default vm-setup/hosts)
  --dry-run     print every command instead of running it
  --help        this text
Needs iptables on the hosts; a non-root ssh user needs passwordless sudo for
/sbin/iptables (visudo: %admin ALL=(ALL) NOPASSWD:/sbin/iptables, as in the seed).
Environment: MESHKV_SSH_OPTS adds ssh options.
USAGE
}

parse_common "$@"
set -- "${ARGS[@]+"${ARGS[@]}"}"
[ $# -ge 1 ] || { usage >&2; exit 2; }
action=$1; shift
load_hosts "$HOSTS_FILE"

# Make sure the chain exists and is jumped to from INPUT and OUTPUT; flush it.
reset_chain() { # SUDO
  local s=$1
  cat <<SH
${s}iptables -w -N MESHKV 2>/dev/null || true
for c in INPUT OUTPUT; do ${s}iptables -w -C \$c -j MESHKV 2>/dev/null || ${s}iptables -w -I \$c 1 -j MESHKV; done
${s}iptables -w -F MESHKV
SH
}

case "$action" in
  partition)
    [ $# -ge 2 ] || die "partition: at least two groups, like: partition 0,1 2,3"
    declare -A group_of=()
    g=0
    for grp in "$@"; do
      for id in ${grp//,/ }; do
        host_index "$id" >/dev/null
        [ -z "${group_of[$id]:-}" ] || die "host $id is in two groups"
        group_of[$id]=$g
      done
      g=$((g + 1))
    done
    for i in "${!H_ID[@]}"; do
      s=$(sudo_for "$i")
      script=$(reset_chain "$s")
      id=${H_ID[$i]}
      if [ -n "${group_of[$id]:-}" ]; then
        for j in "${!H_ID[@]}"; do
          other=${H_ID[$j]}
          if [ -n "${group_of[$other]:-}" ] && [ "${group_of[$other]}" != "${group_of[$id]}" ]; then
            script+=$'\n'"${s}iptables -w -A MESHKV -s ${H_ADDR[$j]} -j DROP"
            script+=$'\n'"${s}iptables -w -A MESHKV -d ${H_ADDR[$j]} -j DROP"
          fi
        done
      fi
      remote "$i" "$script"
    done
    note "partition: $*" ;;
  heal)
    for i in "${!H_ID[@]}"; do
      s=$(sudo_for "$i")
      remote "$i" "${s}iptables -w -F MESHKV 2>/dev/null || true"
    done
    note "healed" ;;
  show)
    for i in "${!H_ID[@]}"; do
      s=$(sudo_for "$i")
      if [ "$DRY_RUN" = 1 ]; then
        remote "$i" "${s}iptables -w -S MESHKV 2>/dev/null || true"
      else
        remote "$i" "${s}iptables -w -S MESHKV 2>/dev/null || true" | sed "s/^/host ${H_ID[$i]}: /"
      fi
    done ;;
  *) die "unknown action $action (see --help)" ;;
esac
