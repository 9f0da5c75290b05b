package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
)

// The datasets are captured from real guests: the project's test guest
// (scripts/build-guest.sh) booted under TCG, with a bench-only init wrapper
// (passed as rdinit=, appended as a second cpio archive) that "installs
// packages" shared by every node — the same bytes, read from the shared
// base image into memory and written to the node's disk — and writes
// node-specific data (random bytes in memory, random "logs" on disk) before
// handing over to the guest's own /init.

const benchInit = `#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs tmp /tmp
while read -r m; do insmod "/lib/modules/$m.ko" 2>/dev/null; done </lib/modules/order
PKG=0 UNIQ=0 LOGS=0
for a in $(cat /proc/cmdline); do case "$a" in
bench.pkg=*) PKG="${a#bench.pkg=}";; bench.uniq=*) UNIQ="${a#bench.uniq=}";; bench.logs=*) LOGS="${a#bench.logs=}";;
esac; done
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
mkdir -p /tmp/pkgs /tmp/data
# shared: packages from the base image (MiB 8..) into memory and onto disk (MiB 96..)
[ "$PKG" -gt 0 ] && dd if=/dev/vda of=/tmp/pkgs/blob bs=1M skip=8 count=$PKG iflag=direct 2>/dev/null
[ "$PKG" -gt 0 ] && dd if=/tmp/pkgs/blob of=/dev/vda bs=1M seek=96 oflag=direct conv=notrunc 2>/dev/null
# node-specific: data in memory, logs on disk (MiB 160..)
[ "$UNIQ" -gt 0 ] && head -c "${UNIQ}m" /dev/urandom >/tmp/data/blob
[ "$LOGS" -gt 0 ] && head -c "${LOGS}m" /dev/urandom | dd of=/dev/vda bs=1M seek=160 oflag=direct conv=notrunc 2>/dev/null
sync
echo "BENCH-READY"
exec /init
`

// guestKit is the kernel, initramfs (with the bench wrapper) and base image.
type guestKit struct {
	kernel, initrd, base string
}

func guestDir() string {
	c := os.Getenv("STASIS_CACHE")
	if c == "" {
		c = filepath.Join(os.Getenv("HOME"), ".cache", "stasis")
	}
	return filepath.Join(c, "guest")
}

// prepareKit builds the bench initramfs and a 256 MiB base image whose MiB
// 8..72 hold deterministic pseudo-random "package" bytes.
func prepareKit(ctx context.Context, work string) (guestKit, error) {
	g := guestDir()
	k := guestKit{kernel: filepath.Join(g, "vmlinuz"), initrd: filepath.Join(work, "initrd-bench.gz"), base: filepath.Join(work, "base.raw")}
	for _, f := range []string{k.kernel, filepath.Join(g, "initrd.gz")} {
		if _, err := os.Stat(f); err != nil {
			return k, fmt.Errorf("test guest missing (%v): run `make check` or scripts/build-guest.sh first", err)
		}
	}
	root := filepath.Join(work, "initroot")
	if err := os.MkdirAll(filepath.Join(root, "bench"), 0o755); err != nil {
		return k, err
	}
	if err := os.WriteFile(filepath.Join(root, "bench", "init"), []byte(benchInit), 0o755); err != nil {
		return k, err
	}
	extra := filepath.Join(work, "bench.cpio.gz")
	if _, _, _, err := run(ctx, root, nil, "sh", "-c", "find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > "+extra); err != nil {
		return k, err
	}
	if _, _, _, err := run(ctx, "", nil, "sh", "-c", fmt.Sprintf("cat %s %s > %s", filepath.Join(g, "initrd.gz"), extra, k.initrd)); err != nil {
		return k, err
	}
	f, err := os.Create(k.base)
	if err != nil {
		return k, err
	}
	defer f.Close()
	if err := f.Truncate(256 << 20); err != nil {
		return k, err
	}
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 1<<20)
	for mib := int64(8); mib < 72; mib++ {
		for i := 0; i < len(buf); i += 8 {
			v := r.Uint64()
			for j := 0; j < 8; j++ {
				buf[i+j] = byte(v >> (8 * j))
			}
		}
		// half-compressible like real binaries: zero the upper half of each 4 KiB page
		for p := 0; p < len(buf); p += 4096 {
			clear(buf[p+2048 : p+4096])
		}
		if _, err := f.WriteAt(buf, mib<<20); err != nil {
			return k, err
		}
	}
	return k, f.Sync()
}

// nodeSpec says what one guest runs.
type nodeSpec struct {
	name          string
	memMB         int
	pkgMB, uniqMB int
	logsMB        int
}

// vm is a running guest.
type vm struct {
	spec    nodeSpec
	dir     string // node directory: qmp socket, serial log, overlay
	ramPath string // memory-backend-file on /dev/shm
	cmd     *exec.Cmd
	mon     *qmp.SocketMonitor
}

func bootVM(ctx context.Context, k guestKit, spec nodeSpec, dir string) (*vm, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	v := &vm{spec: spec, dir: dir, ramPath: fmt.Sprintf("/dev/shm/stasis-bench-%s-%d", spec.name, os.Getpid())}
	overlay := filepath.Join(dir, "disk.qcow2")
	if _, _, _, err := run(ctx, "", nil, "qemu-img", "create", "-q", "-f", "qcow2", "-b", k.base, "-F", "raw", overlay); err != nil {
		return nil, err
	}
	qmpSock := filepath.Join(dir, "qmp.sock")
	args := []string{"-accel", "tcg", "-display", "none", "-nodefaults", "-no-user-config", "-no-reboot",
		"-m", fmt.Sprintf("%dM", spec.memMB),
		"-object", fmt.Sprintf("memory-backend-file,id=mem,size=%dM,mem-path=%s,share=on", spec.memMB, v.ramPath),
		"-machine", "pc,memory-backend=mem",
		"-kernel", k.kernel, "-initrd", k.initrd,
		"-append", fmt.Sprintf("console=ttyS0 quiet no_timer_check panic=-1 rdinit=/bench/init stasis.id=%s bench.pkg=%d bench.uniq=%d bench.logs=%d", spec.name, spec.pkgMB, spec.uniqMB, spec.logsMB),
		"-drive", "file=" + overlay + ",if=virtio,format=qcow2,cache=none",
		"-serial", "file:" + filepath.Join(dir, "serial.log"),
		"-qmp", "unix:" + qmpSock + ",server=on,wait=off",
		"-rtc", "clock=vm",
	}
	v.cmd = exec.Command("qemu-system-x86_64", args...)
	v.cmd.Stdout, v.cmd.Stderr = os.Stderr, os.Stderr
	if err := v.cmd.Start(); err != nil {
		return nil, err
	}
	var err error
	for i := 0; i < 100; i++ {
		if v.mon, err = newMonitor(qmpSock); err == nil {
			return v, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	v.kill()
	return nil, err
}

func newMonitor(sock string) (*qmp.SocketMonitor, error) {
	m, err := qmp.NewSocketMonitor("unix", sock, 2*time.Second)
	if err == nil {
		err = m.Connect()
	}
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", sock, err)
	}
	return m, nil
}

// waitCounter waits until the guest has printed counter n (its workload is
// done by then). A guest whose QEMU exited (a kernel panic, with -no-reboot
// and panic=-1) fails at once with the end of its console.
func (v *vm) waitCounter(ctx context.Context, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	want := fmt.Sprintf(" n=%d ", n)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(filepath.Join(v.dir, "serial.log"))
		if err == nil && strings.Contains(string(b), want) {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if syscall.Kill(v.cmd.Process.Pid, 0) != nil || v.exited() {
			return fmt.Errorf("guest %s exited while booting: %s", v.spec.name, tail(b, 300))
		}
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("guest %s did not reach counter %d within %s", v.spec.name, n, timeout)
}

func (v *vm) qmp(cmd string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	out, err := v.mon.Run(b)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	var resp struct {
		Return json.RawMessage        `json:"return"`
		Error  *struct{ Desc string } `json:"error"`
	}
	if err := json.Unmarshal(out, &resp); err != nil {
		return nil, err
	}
	if resp.Error != nil {
		return nil, fmt.Errorf("qmp %s: %s", cmd, resp.Error.Desc)
	}
	return resp.Return, nil
}

// migrateTo saves the stopped guest with `migrate exec:` into file; with
// ignoreShared only device state is written (RAM stays in the shared file).
func (v *vm) migrateTo(file string, ignoreShared bool) error {
	if _, err := v.qmp("migrate-set-capabilities", map[string]any{"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": ignoreShared}}}); err != nil {
		return err
	}
	if _, err := v.qmp("migrate-set-parameters", map[string]any{"max-bandwidth": int64(100) << 30}); err != nil {
		return err
	}
	if _, err := v.qmp("migrate", map[string]any{"uri": "exec:cat > " + file}); err != nil {
		return err
	}
	for i := 0; i < 1200; i++ {
		out, err := v.qmp("query-migrate", nil)
		if err != nil {
			return err
		}
		var st struct{ Status string }
		json.Unmarshal(out, &st)
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration of %s %s", v.spec.name, st.Status)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("migration of %s did not complete", v.spec.name)
}

// capture stops the guest and writes its state into dst: mem.ram (the
// page-aligned RAM file), devstate (x-ignore-shared stream), disk.qcow2,
// and, when stream is set, mem.mig (a full migration stream).
func (v *vm) capture(ctx context.Context, dst string, stream bool) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	if _, err := v.qmp("stop", nil); err != nil {
		return err
	}
	if err := v.migrateTo(filepath.Join(dst, "devstate"), true); err != nil {
		return err
	}
	if stream {
		// QEMU refuses a second migration from the post-migrate state:
		// resume for an instant and stop again.
		if err := v.cont(); err != nil {
			return err
		}
		if _, err := v.qmp("stop", nil); err != nil {
			return err
		}
		if err := v.migrateTo(filepath.Join(dst, "mem.mig"), false); err != nil {
			return err
		}
	}
	for _, c := range [][2]string{{v.ramPath, "mem.ram"}, {filepath.Join(v.dir, "disk.qcow2"), "disk.qcow2"}} {
		if _, _, _, err := run(ctx, "", nil, "cp", "--sparse=always", c[0], filepath.Join(dst, c[1])); err != nil {
			return err
		}
	}
	return nil
}

// exited reports whether the QEMU process has terminated (a zombie counts).
func (v *vm) exited() bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", v.cmd.Process.Pid))
	if err != nil {
		return true
	}
	f := strings.Fields(string(b))
	return len(f) > 2 && f[2] == "Z"
}

func (v *vm) cont() error { _, err := v.qmp("cont", nil); return err }

func (v *vm) kill() {
	if v.mon != nil {
		v.mon.Disconnect()
	}
	if v.cmd != nil && v.cmd.Process != nil {
		v.cmd.Process.Signal(syscall.SIGKILL)
		v.cmd.Wait()
	}
	os.Remove(v.ramPath)
}

// serialLines returns the guest's console output lines with prefix.
func (v *vm) serialLines(prefix string) []string {
	f, err := os.Open(filepath.Join(v.dir, "serial.log"))
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), prefix) {
			out = append(out, sc.Text())
		}
	}
	return out
}
