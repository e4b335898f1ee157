#!/usr/bin/env bash
# Checks of the vm-setup scripts that need neither root nor a network: every script
# answers --help, dry-runs print exactly the commands in tests/golden/, and bad input
# gets a clear error. `--update` rewrites the golden files (review the diff!).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
vs="$(cd "$here/.." && pwd)"
repo="$(cd "$vs/.." && pwd)"
update=0
[ "${1:-}" = --update ] && update=1
passed=0 failed=0
export TMPDIR=/tmp
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
hosts="$here/hosts.fixture"
export MESHKV_SSH_OPTS=""

ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; [ -n "${2:-}" ] && printf '%s\n' "$2" | sed 's/^/     /'; }

# Paths and per-run names differ between machines and runs.
normalize() {
  sed -e "s|$repo|<repo>|g" -e "s|$tmp|<tmp>|g" -e 's|mkv[0-9][0-9]*|mkv<pid>|g' \
      -e 's|faults-[0-9][0-9-]*|faults-<date>|g' -e 's|logs-[0-9][0-9]*|logs-<time>|g'
}

for s in local-vms.sh update.sh launch.sh dopartition.sh logs.sh faults.sh; do
  if out=$("$vs/$s" --help 2>&1) && grep -q '^Usage: ' <<<"$out"; then ok "$s --help"; else bad "$s --help" "$out"; fi
done

golden() { # NAME CMD...
  local name=$1 out; shift
  if ! out=$("$@" 2>&1); then bad "dry-run $name exits 0" "$out"; return; fi
  out=$(normalize <<<"$out")
  if [ "$update" = 1 ]; then printf '%s\n' "$out" > "$here/golden/$name.txt"; fi
  if diff -u "$here/golden/$name.txt" - <<<"$out" > "$tmp/diff"; then
    ok "dry-run $name"
  else
    bad "dry-run $name (differs from tests/golden/$name.txt)" "$(head -40 "$tmp/diff")"
  fi
}
golden update "$vs/update.sh" --hosts "$hosts" --dry-run --no-build
golden update-build-ids "$vs/update.sh" --hosts "$hosts" --dry-run --ids 2
golden launch-start "$vs/launch.sh" --hosts "$hosts" --dry-run start 0
golden launch-kill "$vs/launch.sh" --hosts "$hosts" --dry-run --mode nohup kill 2,3
golden partition "$vs/dopartition.sh" --hosts "$hosts" --dry-run partition 0,1 2,3
golden partition-three "$vs/dopartition.sh" --hosts "$hosts" --dry-run partition 0 1 2
golden heal "$vs/dopartition.sh" --hosts "$hosts" --dry-run heal
golden logs "$vs/logs.sh" --hosts "$hosts" --dry-run --out "$tmp/logs"
golden local-vms-up "$vs/local-vms.sh" --state "$tmp/vms" --dry-run up --bin "$tmp/meshkv"
golden faults-ci "$vs/faults.sh" --dry-run --no-build --size ci --out "$tmp/out"

# The config the scripts write, for one host (the format of node/src/config.rs).
(
  # shellcheck source=vm-setup/lib.sh
  source "$vs/lib.sh"
  render_config 2 192.0.2.12:7100 192.0.2.12:8100 /home/meshkv/kv/data /home/meshkv/kv/certs \
    "0=192.0.2.10:7000 1=192.0.2.11:7000 2=192.0.2.12:7100 3=192.0.2.13:7100"
) > "$tmp/node2.toml"
golden config cat "$tmp/node2.toml"
( source "$vs/lib.sh"; render_unit /opt/meshkv meshkv ) > "$tmp/unit"
golden unit cat "$tmp/unit"

expect_error() { # NAME PATTERN CMD...
  local name=$1 pat=$2 out; shift 2
  if out=$("$@" 2>&1); then bad "$name fails" "$out"; return; fi
  if grep -q -- "$pat" <<<"$out"; then ok "$name fails clearly"; else bad "$name: message lacks '$pat'" "$out"; fi
}
printf '0 192.0.2.1 root relative/dir\n' > "$tmp/bad-hosts"
expect_error "missing hosts file" "not found" "$vs/update.sh" --hosts "$tmp/none" --dry-run
expect_error "relative DIR" "must be absolute" "$vs/launch.sh" --hosts "$tmp/bad-hosts" --dry-run start
expect_error "host in two groups" "two groups" "$vs/dopartition.sh" --hosts "$hosts" --dry-run partition 0,1 1,2
expect_error "unknown host id" "no host with id 9" "$vs/dopartition.sh" --hosts "$hosts" --dry-run partition 0 9
expect_error "unknown launch action" "unknown action" "$vs/launch.sh" --hosts "$hosts" --dry-run explode
expect_error "local-vms without up" "no emulation is up" "$vs/local-vms.sh" --state "$tmp/empty" status
expect_error "local-vms bad command" "unknown command" "$vs/local-vms.sh" --state "$tmp/empty" frobnicate
if [ "$(id -u)" -ne 0 ]; then
  expect_error "local-vms up without root" "needs root" "$vs/local-vms.sh" --state "$tmp/vms2" up
fi

echo "check-scripts: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
