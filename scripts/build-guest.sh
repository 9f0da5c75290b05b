#!/usr/bin/env bash
# build-guest.sh builds the test guest that stasis's integration tests boot
# under QEMU: a Debian kernel, a busybox initramfs whose /init counts in
# memory and writes the counter to its virtio disk, and a small raw base image
# for qcow2 overlays. Everything goes to $STASIS_CACHE/guest (default
# $HOME/.cache/stasis/guest), outside the repository.
#
#   vmlinuz      the kernel (from linux-image-6.1.0-*-amd64)
#   initrd.gz    busybox + virtio modules + /init (newc cpio, gzip)
#   base.raw     64 MiB raw base disk; bytes 0..511 hold a text header
#   guest.env    KERNEL_VERSION=..., GUEST_STAMP=... (what was built)
#
# Idempotent: when guest.env matches this script's inputs it exits at once,
# without touching the network. Runs as root with no stdin on Debian 12; on
# failure it says which step failed and exits non-zero.
#
# The guest's /init understands these kernel command-line options:
#   stasis.id=NAME      name printed in every line (default: guest)
#   stasis.ip=A.B.C.D/N configure eth0 (virtio-net) with this address
#   stasis.fill=MIB     fill MIB of tmpfs with random data at boot
#   stasis.shell=1      run a shell on ttyS1 (the second serial port)
# It prints, once:   STASIS-BOOT id=NAME boot=BOOTID base=<base header>
# then every second: STASIS id=NAME n=COUNTER boot=BOOTID clock=EPOCH up=SECS disk=PREV
# where disk=PREV is the counter it read back from /dev/vda (O_DIRECT) before
# writing n there (sector 2048, i.e. offset 1 MiB, text "STASISDISK n boot").
set -euo pipefail

die() { echo "build-guest: $*" >&2; exit 1; }

CACHE="${STASIS_CACHE:-${HOME:-/root}/.cache/stasis}"
OUT="$CACHE/guest"
SELF="$(readlink -f "$0")"
STAMP="$(sha256sum "$SELF" | cut -c1-16)"

if [ -f "$OUT/guest.env" ] && [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initrd.gz" ] && [ -f "$OUT/base.raw" ] &&
	grep -qx "GUEST_STAMP=$STAMP" "$OUT/guest.env"; then
	exit 0
fi

for tool in dpkg-deb gzip sha256sum; do
	command -v "$tool" >/dev/null || die "missing tool: $tool"
done
BUSYBOX=""
for b in /bin/busybox /usr/bin/busybox; do
	if [ -x "$b" ] && { LC_ALL=C ldd "$b" 2>&1 || true; } | grep -q "not a dynamic"; then
		BUSYBOX="$b"
		break
	fi
done
[ -n "$BUSYBOX" ] || die "need a static busybox (apt-get install busybox-static)"

mkdir -p "$OUT/debs" || die "cannot create $OUT"
WORK="$(mktemp -d "$OUT/.build.XXXXXX")" || die "mktemp failed"
trap 'rm -rf "$WORK"' EXIT

apt_download() { # apt_download PKG... into the current directory
	if ! apt-get -qq -o APT::Sandbox::User=root download "$@" </dev/null >/dev/null 2>"$WORK/apt.err"; then
		# A fresh system may have no package lists yet.
		[ "$(id -u)" -eq 0 ] || die "apt-get download $* failed and not root to run apt-get update: $(cat "$WORK/apt.err")"
		apt-get update -qq </dev/null >/dev/null 2>&1 || die "apt-get update failed"
		apt-get -qq -o APT::Sandbox::User=root download "$@" </dev/null >/dev/null 2>"$WORK/apt.err" ||
			die "apt-get download $* failed: $(cat "$WORK/apt.err")"
	fi
}

# 1. The kernel package: the metapackage names the real one in Depends.
#    Reuse a previously downloaded one so rebuilding the initramfs is offline.
KDEB="$(ls "$OUT"/debs/linux-image-6.*-amd64_*.deb 2>/dev/null | grep -v -- '-dbg' | sort -V | tail -n1 || true)"
if [ -z "$KDEB" ]; then
	echo "build-guest: downloading the Debian kernel"
	(cd "$WORK" && apt_download linux-image-amd64) || exit 1
	META="$(ls "$WORK"/linux-image-amd64_*.deb 2>/dev/null | head -n1)"
	[ -n "$META" ] || die "apt-get download linux-image-amd64 produced no .deb"
	REAL="$(dpkg-deb -f "$META" Depends | tr ',' '\n' | sed -n 's/^ *\(linux-image-[0-9][^ ]*-amd64\).*/\1/p' | head -n1)"
	[ -n "$REAL" ] || die "cannot find the kernel package in the Depends of $(basename "$META")"
	(cd "$OUT/debs" && apt_download "$REAL") || exit 1
	KDEB="$(ls "$OUT"/debs/"$REAL"_*.deb 2>/dev/null | head -n1)"
	[ -n "$KDEB" ] || die "apt-get download $REAL produced no .deb"
fi

echo "build-guest: extracting $(basename "$KDEB")"
dpkg-deb -x "$KDEB" "$WORK/k" || die "dpkg-deb -x $KDEB failed"
VMLINUZ="$(ls "$WORK"/k/boot/vmlinuz-* 2>/dev/null | head -n1)"
[ -n "$VMLINUZ" ] || die "no boot/vmlinuz-* in $KDEB"
KVER="${VMLINUZ##*/vmlinuz-}"
MODDIR="$WORK/k/lib/modules/$KVER/kernel"
[ -d "$MODDIR" ] || die "no modules for $KVER in $KDEB"

# 2. The initramfs.
R="$WORK/root"
mkdir -p "$R"/{bin,sbin,dev,proc,sys,tmp,run,mnt,lib/modules} || die "mkdir initramfs"
cp "$BUSYBOX" "$R/bin/busybox" || die "copy busybox"
for applet in $("$BUSYBOX" --list); do
	# Never link the applet named busybox: it would replace the binary.
	[ "$applet" = busybox ] && continue
	ln -sf busybox "$R/bin/$applet"
done

# Load order from `modinfo -F depends` (see notes/test-guest.md).
MODULES="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk
scsi_common scsi_mod libata ata_piix crct10dif_common crct10dif_generic crc-t10dif crc64
crc64-rocksoft t10-pi sd_mod failover net_failover virtio_net virtio_console"
: >"$R/lib/modules/order"
for m in $MODULES; do
	f="$(find "$MODDIR" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "${m//-/_}.ko" -o -name "${m//-/_}.ko.xz" -o -name "${m//-/_}.ko.zst" \) 2>/dev/null | head -n1)"
	if [ -z "$f" ]; then
		# Built into this kernel, or absent: /init skips it.
		continue
	fi
	case "$f" in
	*.xz) xz -dc "$f" >"$R/lib/modules/$m.ko" || die "xz -d $f" ;;
	*.zst) zstd -qdc "$f" >"$R/lib/modules/$m.ko" || die "zstd -d $f" ;;
	*) cp "$f" "$R/lib/modules/$m.ko" || die "copy $f" ;;
	esac
	echo "$m" >>"$R/lib/modules/order"
done
grep -qx virtio_blk "$R/lib/modules/order" || [ -n "$(find "$MODDIR" -name 'virtio_blk*' | head -n1)" ] ||
	echo "build-guest: note: virtio_blk not found as a module; assuming built in" >&2

cat >"$R/init" <<'EOF'
#!/bin/sh
# stasis test guest: count in memory, write the counter to /dev/vda.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmp /tmp
while read -r m; do
	insmod "/lib/modules/$m.ko" 2>/dev/null
done </lib/modules/order

ID=guest IP= FILL=0 SHELL1=0
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	stasis.id=*) ID="${arg#stasis.id=}" ;;
	stasis.ip=*) IP="${arg#stasis.ip=}" ;;
	stasis.fill=*) FILL="${arg#stasis.fill=}" ;;
	stasis.shell=*) SHELL1="${arg#stasis.shell=}" ;;
	esac
done

ip link set lo up
if [ -n "$IP" ]; then
	i=0
	while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
	ip link set eth0 up
	ip addr add "$IP" dev eth0
fi
if [ "$FILL" -gt 0 ] 2>/dev/null; then
	head -c "${FILL}m" /dev/urandom >/tmp/fill
fi
if [ "$SHELL1" = 1 ] && [ -e /dev/ttyS1 ]; then
	setsid sh -c 'exec sh -i </dev/ttyS1 >/dev/ttyS1 2>&1' &
fi

BOOT=$(cat /proc/sys/kernel/random/boot_id)
BASE=$(dd if=/dev/vda bs=512 count=1 iflag=direct 2>/dev/null | head -n1 | tr -cd 'A-Za-z0-9=._-')
echo "STASIS-BOOT id=$ID boot=$BOOT base=${BASE:-none}"
n=0
while :; do
	n=$((n+1))
	PREV=none
	if [ -b /dev/vda ]; then
		PREV=$(dd if=/dev/vda bs=512 skip=2048 count=1 iflag=direct 2>/dev/null | head -n1 | cut -d' ' -f2 | tr -cd '0-9')
		printf 'STASISDISK %d %s\n' "$n" "$BOOT" | dd of=/dev/vda bs=512 seek=2048 count=1 conv=sync,notrunc oflag=direct 2>/dev/null
	fi
	read -r UP _ </proc/uptime
	echo "STASIS id=$ID n=$n boot=$BOOT clock=$(date +%s) up=$UP disk=${PREV:-none}"
	sleep 1
done
EOF
chmod 755 "$R/init"

(cd "$R" && find . | "$BUSYBOX" cpio -o -H newc 2>/dev/null | gzip -1 >"$WORK/initrd.gz") || die "building the initramfs failed"
[ -s "$WORK/initrd.gz" ] || die "empty initramfs"

# 3. The base disk: sparse 64 MiB with a header the guest prints at boot.
truncate -s 64M "$WORK/base.raw" || die "truncate base.raw"
printf 'STASIS-BASE-V1\n' | dd of="$WORK/base.raw" bs=512 count=1 conv=sync,notrunc 2>/dev/null || die "write base header"

# Install atomically-enough: files first, the stamp last.
rm -f "$OUT/guest.env"
cp "$VMLINUZ" "$OUT/vmlinuz.tmp" && mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz" || die "install vmlinuz"
mv "$WORK/initrd.gz" "$OUT/initrd.gz" || die "install initrd.gz"
if [ ! -f "$OUT/base.raw" ] || ! cmp -s "$WORK/base.raw" "$OUT/base.raw"; then
	mv "$WORK/base.raw" "$OUT/base.raw" || die "install base.raw"
fi
printf 'KERNEL_VERSION=%s\nGUEST_STAMP=%s\n' "$KVER" "$STAMP" >"$OUT/guest.env.tmp" && mv "$OUT/guest.env.tmp" "$OUT/guest.env" || die "write guest.env"
echo "build-guest: built guest for kernel $KVER in $OUT"
