#!/usr/bin/env bash
# Cold sequential reads through casfs, several builds alternated on the same
# data: bench/coldread.sh BIN... (each BIN a casfs binary or a wrapper script
# that adds flags). Writes one 1 GiB file (KIND=text or random, MIB=size)
# through the first BIN, then, ROUNDS times, for each BIN: drop the page
# cache, mount the same data directory, dd the file with 1 MiB reads,
# unmount. Prints MB/s and the casfs process's CPU seconds. Needs root.
set -euo pipefail
MIB=${MIB:-1024}
KIND=${KIND:-text}
ROUNDS=${ROUNDS:-3}
w=${WORK:-/tmp/casfs-coldread}
rm -rf "$w"; mkdir -p "$w/data" "$w/mnt"

waitmount() { for _ in $(seq 100); do mountpoint -q "$w/mnt" && return; sleep 0.1; done; echo "no mount" >&2; exit 1; }

python3 - "$KIND" "$MIB" >"$w/src" <<'PY'
import os, random, sys
kind, mib = sys.argv[1], int(sys.argv[2])
r, out = random.Random(1), sys.stdout.buffer
phrase = b'the quick brown fox jumps over the lazy dog '
for _ in range(mib):
    if kind == 'random':
        out.write(os.urandom(1 << 20))
        continue
    b = bytearray()
    while len(b) < 1 << 20:
        b += r.randbytes(64) + phrase * 20
    out.write(bytes(b[:1 << 20]))
PY

"$1" mount --log-level warn --data "$w/data" "$w/mnt" 2>/dev/null & pid=$!
waitmount
dd if="$w/src" of="$w/mnt/f" bs=1M status=none
kill "$pid"; wait "$pid" || true
rm -f "$w/src"

for r in $(seq "$ROUNDS"); do
	for bin in "$@"; do
		sync; echo 3 >/proc/sys/vm/drop_caches
		"$bin" mount --log-level warn --data "$w/data" "$w/mnt" 2>/dev/null & pid=$!
		waitmount
		s=$(date +%s.%N); dd if="$w/mnt/f" of=/dev/null bs=1M status=none; e=$(date +%s.%N)
		cpu=$(awk '{print ($14+$15)/100}' "/proc/$pid/stat")
		printf 'round %s %s: %.0f MB/s, casfs CPU %.2f s\n' "$r" "$bin" "$(echo "$MIB*1.048576/($e-$s)" | bc -l)" "$cpu"
		kill "$pid"; wait "$pid" || true
	done
done
rm -rf "$w"
