// Package testguest boots the stasis test guest (a Debian kernel and a busybox
// initramfs built by scripts/build-guest.sh) under QEMU/TCG for integration
// tests, and reads what the guest prints on its serial console.
//
// The guest's /init prints one line per second:
//
//	STASIS id=NAME n=COUNTER boot=BOOTID clock=EPOCH up=SECS disk=PREV
//
// where PREV is the counter it read back from its disk (sector 2048 of
// /dev/vda, O_DIRECT) before writing the new one. Tick parses such lines.
//
// The guest is found in $STASIS_CACHE/guest (default
// $HOME/.cache/stasis/guest); `make check` builds it. Tests call Require,
// which skips with a clear message only when the guest has not been built.
package testguest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ErrNotBuilt means the guest files are not in the cache.
var ErrNotBuilt = errors.New("testguest: guest not built (run scripts/build-guest.sh or make guest)")

// Files are the built guest's files.
type Files struct {
	Dir    string // the guest directory
	Kernel string // vmlinuz
	Initrd string // initrd.gz
	Base   string // base.raw: 64 MiB raw base image for qcow2 overlays
}

// CacheDir is $STASIS_CACHE or $HOME/.cache/stasis.
func CacheDir() string {
	if d := os.Getenv("STASIS_CACHE"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = "/root"
	}
	return filepath.Join(home, ".cache", "stasis")
}

// Find locates the built guest.
func Find() (Files, error) {
	d := filepath.Join(CacheDir(), "guest")
	f := Files{Dir: d, Kernel: filepath.Join(d, "vmlinuz"), Initrd: filepath.Join(d, "initrd.gz"), Base: filepath.Join(d, "base.raw")}
	for _, p := range []string{f.Kernel, f.Initrd, f.Base, filepath.Join(d, "guest.env")} {
		if _, err := os.Stat(p); err != nil {
			return Files{}, fmt.Errorf("%w: %s missing", ErrNotBuilt, p)
		}
	}
	return f, nil
}

// Require returns the guest files, or skips the test when the guest has not
// been built, and fails it when QEMU is not installed.
func Require(t testing.TB) Files {
	t.Helper()
	f, err := Find()
	if err != nil {
		t.Skipf("test guest absent: %v", err)
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatalf("qemu-system-x86_64 not installed (scripts/install-deps.sh installs it): %v", err)
	}
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatalf("qemu-img not installed: %v", err)
	}
	return f
}

// Config describes one guest.
type Config struct {
	// Dir holds the guest's overlay, sockets and console log. Required.
	Dir string
	// Name is printed by the guest in every line (kernel arg stasis.id).
	Name string
	// MemMiB is the guest's RAM; default 256.
	MemMiB int
	// Disk is the qcow2 overlay; default Dir/disk.qcow2, created over the
	// base image if it does not exist. NoDisk boots without a disk.
	Disk   string
	NoDisk bool
	// RAMFile, when set, puts guest RAM in a shared memory-backend-file at
	// this path (on tmpfs), as capture mode "ram-file" needs.
	RAMFile string
	// KernelArgs are appended to the kernel command line, e.g.
	// "stasis.ip=10.0.0.1/24" or "stasis.fill=20".
	KernelArgs []string
	// QEMUArgs are appended to QEMU's command line, e.g.
	// "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
	// "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01".
	QEMUArgs []string
	// Shell adds a second serial port (ttyS1) on the unix socket
	// Dir/shell.sock with a root shell behind it; see Guest.Exec.
	Shell bool
	// QEMU is the binary; default qemu-system-x86_64.
	QEMU string
}

// Guest is a started QEMU process running the test guest.
type Guest struct {
	Argv    []string // QEMU's full command line (Argv[0] is the binary)
	QMP     string   // QMP unix socket path
	Console *Console // the serial console log (ttyS0)
	Shell   string   // ttyS1 socket path when Config.Shell
	Disk    string   // the overlay path, "" without a disk
	Log     string   // QEMU's own stdout/stderr
	Cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
}

// Args returns QEMU's command line for cfg (without creating anything).
func Args(f Files, cfg Config) []string {
	cfg = withDefaults(cfg)
	mem := strconv.Itoa(cfg.MemMiB)
	args := []string{cfg.QEMU,
		"-accel", "tcg", "-m", mem + "M", "-smp", "1",
		"-display", "none", "-nodefaults", "-no-user-config", "-no-reboot",
		"-kernel", f.Kernel, "-initrd", f.Initrd,
		"-append", strings.Join(append([]string{"console=ttyS0", "nokaslr", "no_timer_check", "panic=-1", "quiet", "stasis.id=" + cfg.Name}, cfg.KernelArgs...), " "),
		"-rtc", "base=utc,clock=vm",
		"-chardev", "file,id=con0,path=" + filepath.Join(cfg.Dir, "console.log") + ",append=on",
		"-serial", "chardev:con0",
		"-qmp", "unix:" + filepath.Join(cfg.Dir, "qmp.sock") + ",server=on,wait=off",
	}
	if cfg.Shell {
		args = append(args, "-chardev", "socket,id=sh0,path="+filepath.Join(cfg.Dir, "shell.sock")+",server=on,wait=off",
			"-serial", "chardev:sh0")
		args[indexOf(args, "-append")+1] += " stasis.shell=1"
	}
	if cfg.RAMFile != "" {
		args = append(args, "-object", "memory-backend-file,id=mem,size="+mem+"M,mem-path="+cfg.RAMFile+",share=on",
			"-machine", "pc,memory-backend=mem")
	} else {
		args = append(args, "-machine", "pc")
	}
	if !cfg.NoDisk {
		args = append(args, "-drive", "file="+cfg.Disk+",if=virtio,format=qcow2,id=disk0")
	}
	return append(args, cfg.QEMUArgs...)
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

func withDefaults(cfg Config) Config {
	if cfg.Name == "" {
		cfg.Name = "guest"
	}
	if cfg.MemMiB == 0 {
		cfg.MemMiB = 256
	}
	if cfg.Disk == "" {
		cfg.Disk = filepath.Join(cfg.Dir, "disk.qcow2")
	}
	if cfg.QEMU == "" {
		cfg.QEMU = "qemu-system-x86_64"
	}
	return cfg
}

// CreateOverlay makes a qcow2 overlay (64 KiB clusters) at path over the
// guest's base image.
func CreateOverlay(f Files, path string) error {
	out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536",
		"-b", f.Base, "-F", "raw", path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-img create %s: %v: %s", path, err, out)
	}
	return nil
}

// Launch starts a guest. The caller must call Kill. Use Start in tests.
func Launch(f Files, cfg Config) (*Guest, error) {
	if cfg.Dir == "" {
		return nil, errors.New("testguest: Config.Dir is required")
	}
	cfg = withDefaults(cfg)
	if !cfg.NoDisk {
		if _, err := os.Stat(cfg.Disk); errors.Is(err, os.ErrNotExist) {
			if err := CreateOverlay(f, cfg.Disk); err != nil {
				return nil, err
			}
		}
	}
	argv := Args(f, cfg)
	g := &Guest{
		Argv:    argv,
		QMP:     filepath.Join(cfg.Dir, "qmp.sock"),
		Console: &Console{Path: filepath.Join(cfg.Dir, "console.log")},
		Log:     filepath.Join(cfg.Dir, "qemu.log"),
		exited:  make(chan struct{}),
	}
	if cfg.Shell {
		g.Shell = filepath.Join(cfg.Dir, "shell.sock")
	}
	if !cfg.NoDisk {
		g.Disk = cfg.Disk
	}
	// Start reading the console where this QEMU begins writing.
	if fi, err := os.Stat(g.Console.Path); err == nil {
		g.Console.off = fi.Size()
	}
	logf, err := os.OpenFile(g.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = cfg.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("testguest: start qemu: %w", err)
	}
	g.Cmd = cmd
	g.Console.Done = g.exited
	go func() { g.waitErr = cmd.Wait(); close(g.exited) }()
	// Wait until the QMP socket accepts connections so callers can connect
	// at once. The file appearing is not enough: QEMU binds it before it
	// listens, and a connect in between is refused.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.DialTimeout("unix", g.QMP, time.Second); err == nil {
			c.Close()
			return g, nil
		}
		select {
		case <-g.exited:
			b, _ := os.ReadFile(g.Log)
			return nil, fmt.Errorf("testguest: qemu exited at start: %v: %s", g.waitErr, b)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			g.Kill()
			return nil, errors.New("testguest: qemu did not create its QMP socket within 30s")
		}
	}
}

// Start launches a guest for a test and kills it in t.Cleanup.
func Start(t testing.TB, f Files, cfg Config) *Guest {
	t.Helper()
	g, err := Launch(f, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Kill)
	return g
}

// Kill kills QEMU (by pid) and waits for it to exit. Safe to call twice.
func (g *Guest) Kill() {
	if g.Cmd == nil || g.Cmd.Process == nil {
		return
	}
	select {
	case <-g.exited:
		return
	default:
	}
	_ = g.Cmd.Process.Kill()
	select {
	case <-g.exited:
	case <-time.After(10 * time.Second):
	}
}

// Exited is closed when QEMU has exited.
func (g *Guest) Exited() <-chan struct{} { return g.exited }

// Pid is QEMU's process id.
func (g *Guest) Pid() int { return g.Cmd.Process.Pid }
