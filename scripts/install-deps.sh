#!/usr/bin/env bash
# Installs what `make check` needs and is missing: Debian packages (as root)
# and the test guest (kernel + initramfs) in $STASIS_CACHE. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

# --bench: also the peer tools bench/e2e compares against.
bench=0
[ "${1:-}" = --bench ] && bench=1

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-img >/dev/null || need+=(qemu-utils)
[ -x /bin/busybox ] && /bin/busybox --help 2>&1 | grep -q static || dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v ip >/dev/null || need+=(iproute2)
# PostgreSQL server binaries: metad's PostgreSQL store tests start a private server (internal/pgtest).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ $bench = 1 ]; then
	for t in restic:restic borg:borgbackup casync:casync rsync:rsync; do
		command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
	done
fi

if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "install-deps: missing packages: ${need[*]}; run as root or install them: apt-get install ${need[*]}" >&2
		exit 1
	fi
	echo "install-deps: installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq </dev/null || { echo "install-deps: apt-get update failed" >&2; exit 1; }
	apt-get install -y -qq "${need[@]}" </dev/null || { echo "install-deps: apt-get install ${need[*]} failed" >&2; exit 1; }
fi

if [ -x scripts/build-guest.sh ]; then
	scripts/build-guest.sh
fi
echo "install-deps: ok"
