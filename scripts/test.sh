#!/usr/bin/env bash
# Runs the race-enabled test suite so that no test can hang the run or leave
# anything behind: `make test` and therefore `make check` and CI call it.
#
# - Tests get a private TMPDIR, so everything they make (t.TempDir(), FUSE
#   mounts, QMP sockets, the casfs binaries they start) is under one path.
# - A watchdog ends a run that outlives TEST_DEADLINE (default 25m; each test
#   binary also has go test's own -timeout, TEST_TIMEOUT): it force-unmounts
#   the run's FUSE mounts (MNT_FORCE aborts the FUSE connection, so a process
#   blocked on a mount served by a stuck or dying process gets ENOTCONN
#   instead of sleeping forever), then kills the run's processes.
# - Afterwards, FUSE mounts still under TMPDIR and processes still running
#   from it are reported, removed, and fail the run: a leaked mount or QEMU
#   process is a test bug, and would wedge the next run on this machine.
#
# Extra arguments go to `go test` (default ./...).
set -uo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
TEST_TIMEOUT=${TEST_TIMEOUT:-15m}
TEST_DEADLINE=${TEST_DEADLINE:-25m}
[ $# -gt 0 ] || set -- ./...

# Short, because unix socket paths under it must stay below 108 bytes.
tmp=$(mktemp -d /tmp/st.XXXXXX) || exit 1

# fuse_mounts prints the mount points of FUSE file systems under $tmp,
# deepest first.
fuse_mounts() {
	awk -v p="$tmp/" '$3 ~ /^fuse/ && index($2, p) == 1 {print $2}' /proc/mounts | sort -r
}

# run_pids prints the pids of processes whose command line or working
# directory is under $tmp (test binaries run from the package directory, so
# this finds what they started: casfs mounts, QEMU guests, helpers).
run_pids() {
	local p
	for p in /proc/[0-9]*; do
		[ "${p#/proc/}" = $$ ] && continue
		if tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -qF "$tmp/" ||
			[[ "$(readlink "$p/cwd" 2>/dev/null)" == "$tmp"/* ]]; then
			echo "${p#/proc/}"
		fi
	done
}

unmount_all() {
	local m
	for m in $(fuse_mounts); do
		umount -f "$m" 2>/dev/null || true
		umount -l "$m" 2>/dev/null || true
	done
}

echo "$GO test -race -timeout $TEST_TIMEOUT $* (TMPDIR=$tmp, deadline $TEST_DEADLINE)"
TMPDIR=$tmp setsid "$GO" test -race -timeout "$TEST_TIMEOUT" "$@" &
gopid=$!

(
	# The sleep is killed with the watchdog, so it holds no pipe open.
	trap 'kill "$nap" 2>/dev/null; exit 0' TERM
	sleep "$TEST_DEADLINE" &
	nap=$!
	wait "$nap"
	echo "test.sh: the run outlived its deadline of $TEST_DEADLINE: aborting its FUSE mounts and killing it" >&2
	echo "test.sh: FUSE mounts: $(fuse_mounts | tr '\n' ' ')" >&2
	unmount_all
	# A goroutine dump from every test binary still running (go test prints
	# it with the package's output), then everything is killed.
	for p in $(run_pids); do
		case "$(readlink "/proc/$p/exe" 2>/dev/null)" in *.test) kill -QUIT "$p" 2>/dev/null ;; esac
	done
	sleep 20
	kill -KILL -- -"$gopid" 2>/dev/null
	for p in $(run_pids); do kill -KILL "$p" 2>/dev/null; done
) &
watchdog=$!

wait "$gopid"
rc=$?
kill "$watchdog" 2>/dev/null
wait "$watchdog" 2>/dev/null

left=$(fuse_mounts)
if [ -n "$left" ]; then
	echo "test.sh: FUSE mounts left behind by the tests (a test bug; removing them):" >&2
	echo "$left" >&2
	unmount_all
	rc=1
fi
pids=$(run_pids)
if [ -n "$pids" ]; then
	echo "test.sh: processes left running by the tests (a test bug; killing them):" >&2
	for p in $pids; do
		echo "  $p: $(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline")" >&2
		kill -KILL "$p" 2>/dev/null
	done
	rc=1
fi
sleep 0.2
unmount_all
rm -rf "$tmp" 2>/dev/null || echo "test.sh: could not remove $tmp" >&2
exit $rc
