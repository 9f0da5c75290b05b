// Package qemuhook drives QEMU over QMP for stasis: it pauses a VM, saves its
// memory, device state and qcow2 disk delta into a snapshot directory on casfs
// (see package hypervisor for the format), restores a VM from one, resumes
// and destroys. *Machine implements hypervisor.Machine.
//
// Memory capture modes:
//
//   - ModeStream: `migrate` to a pipe passed with getfd; stasis copies the
//     stream into `memory` (chunker cdc:16k, since its page alignment
//     shifts). Works with any QEMU.
//   - ModeRAMFile: guest RAM lives in a shared memory-backend-file on local
//     tmpfs; with the x-ignore-shared capability the migration stream is only
//     the device state (`devstate`), and the page-aligned RAM file is copied
//     into `ram` with fixed 4 KiB chunks (zero pages stay holes).
//   - ModeMappedRAM: QEMU ≥ 9 writes `file:` + mapped-ram directly into
//     `memory` on casfs (fixed 4 KiB chunks).
//
// ModeAuto picks stream: measured here (bench/RESULTS.md) it has about 3×
// less downtime than ram-file when saving into casfs, for ~3% more bytes
// uploaded, because ram-file hashes and verifies the RAM file's full logical
// size. ram-file and mapped-ram are chosen explicitly.
//
// Virtual time: the guest must run with `-rtc clock=vm`. The guest's RTC at
// pause is recorded in the manifest, and restore starts QEMU with
// `-rtc base=<that time>,clock=vm`, so the guest clock continues from where
// it stopped instead of jumping by the time it spent swapped out.
package qemuhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"stasis/hypervisor"
)

// Capture modes.
const (
	ModeAuto      = ""
	ModeStream    = "stream"
	ModeRAMFile   = "ram-file"
	ModeMappedRAM = "mapped-ram"
)

// File names inside a snapshot directory.
const (
	fileMemory   = "memory"
	fileRAM      = "ram"
	fileDevState = "devstate"
)

// ErrUnsupported means the requested capture mode does not fit this VM or
// this QEMU.
var ErrUnsupported = errors.New("capture mode not supported here")

// Config says how to reach a running QEMU and how to save it.
type Config struct {
	// QMP is the path of the VM's QMP unix socket. Required.
	QMP string
	// Mode is the memory capture mode; ModeAuto chooses.
	Mode string
	// MaxBandwidth is set as migrate-set-parameters max-bandwidth before
	// saving, in bytes/s; 0 means 64 GiB/s (QEMU's default caps at 128 MiB/s).
	MaxBandwidth int64
	Logger       *slog.Logger
}

func (c *Config) validate() error {
	if c.QMP == "" {
		return errors.New("qemuhook: Config.QMP is required")
	}
	switch c.Mode {
	case ModeAuto, ModeStream, ModeRAMFile, ModeMappedRAM:
	default:
		return fmt.Errorf("qemuhook: unknown capture mode %q (want stream, ram-file or mapped-ram)", c.Mode)
	}
	if c.MaxBandwidth < 0 {
		return errors.New("qemuhook: negative MaxBandwidth")
	}
	if c.MaxBandwidth == 0 {
		c.MaxBandwidth = 64 << 30
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return nil
}

// Machine is a QEMU VM controlled over QMP. It implements
// hypervisor.Machine.
type Machine struct {
	cfg  Config
	mu   sync.Mutex
	mon  *monitor
	pid  int
	proc *os.Process   // set when this package started QEMU (Restore)
	done chan struct{} // closed when proc has been reaped
	// Set by Save; Destroy uses them.
	ramPath string
}

var (
	_ hypervisor.Machine     = (*Machine)(nil)
	_ hypervisor.Preflighter = (*Machine)(nil)
)

// Connect attaches to a running QEMU.
func Connect(ctx context.Context, cfg Config) (*Machine, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	mon, err := dial(ctx, cfg.QMP)
	if err != nil {
		return nil, err
	}
	return &Machine{cfg: cfg, mon: mon, pid: mon.pid}, nil
}

// Pid is the QEMU process id.
func (m *Machine) Pid() int { return m.pid }

// Version is QEMU's version as major, minor, micro.
func (m *Machine) Version() [3]int { return m.mon.version }

// Close disconnects from QMP without touching the VM.
func (m *Machine) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mon.Close()
}

// conn returns a live monitor, reconnecting after a cancelled call closed
// the previous one.
func (m *Machine) conn(ctx context.Context) (*monitor, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.mon.mu.Lock()
	closed := m.mon.closed
	m.mon.mu.Unlock()
	if !closed {
		return m.mon, nil
	}
	mon, err := dial(ctx, m.cfg.QMP)
	if err != nil {
		return nil, err
	}
	m.mon = mon
	return mon, nil
}

// Status is QEMU's run state ("running", "paused", "postmigrate", ...).
func (m *Machine) Status(ctx context.Context) (string, error) {
	mon, err := m.conn(ctx)
	if err != nil {
		return "", err
	}
	return mon.status(ctx)
}

// Pause stops the vCPUs.
func (m *Machine) Pause(ctx context.Context) error {
	mon, err := m.conn(ctx)
	if err != nil {
		return err
	}
	return mon.stop(ctx)
}

// Resume continues the VM, also after a completed or failed save (QEMU
// re-activates the block devices a migration handed over).
func (m *Machine) Resume(ctx context.Context) error {
	mon, err := m.conn(ctx)
	if err != nil {
		return err
	}
	// A failed migration may still be cleaning up; cont is refused while a
	// migration is active.
	if mi, err := mon.waitMigrationIdle(ctx); err != nil {
		return fmt.Errorf("resume: %w (migration %s)", err, mi)
	}
	return mon.cont(ctx)
}

// waitMigrationIdle waits until no migration is in progress.
func (mon *monitor) waitMigrationIdle(ctx context.Context) (string, error) {
	for {
		var mi migrationInfo
		if err := mon.run(ctx, "query-migrate", nil, &mi, nil); err != nil {
			return "", err
		}
		switch mi.Status {
		case "", "none", "completed", "failed", "cancelled":
			return mi.Status, nil
		}
		select {
		case <-ctx.Done():
			return mi.Status, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Destroy quits QEMU and waits (bounded) for the process to exit, killing it
// if it does not. A RAM file of mode ram-file is left in place; the caller
// owns it (see RemoveLocal).
func (m *Machine) Destroy(ctx context.Context) error {
	if mon, err := m.conn(ctx); err == nil {
		mon.quit(ctx)
		mon.Close()
	}
	if werr := m.waitExit(ctx, 10*time.Second); werr != nil {
		syscall.Kill(m.pid, syscall.SIGKILL)
		if werr := m.waitExit(ctx, 5*time.Second); werr != nil {
			return fmt.Errorf("destroy: qemu pid %d did not exit: %w", m.pid, werr)
		}
	}
	// QEMU is gone: whether quit answered before the connection dropped
	// does not matter.
	return nil
}

// Kill kills QEMU by pid without asking (tests, failed restores).
func (m *Machine) Kill() {
	if m.done != nil {
		select {
		case <-m.done:
			return // already reaped: the pid may belong to someone else now
		default:
		}
	} else if !alive(m.pid) {
		return
	}
	syscall.Kill(m.pid, syscall.SIGKILL)
	m.waitExit(context.Background(), 5*time.Second)
	m.mu.Lock()
	m.mon.Close()
	m.mu.Unlock()
}

// Exited is closed when a QEMU that Restore started has exited; nil for a
// VM attached with Connect.
func (m *Machine) Exited() <-chan struct{} { return m.done }

func (m *Machine) waitExit(ctx context.Context, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		if m.done != nil {
			select {
			case <-m.done:
				return nil
			default:
			}
		} else if !alive(m.pid) {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("timeout")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Alive reports whether pid exists and is not a zombie (a process that
// exited but was not yet reaped counts as gone).
func Alive(pid int) bool { return alive(pid) }

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// savedConfig is the driver config in manifest.json.
type savedConfig struct {
	QEMUVersion  string          `json:"qemu_version"`
	Argv         []string        `json:"argv"` // as QEMU was started
	Cwd          string          `json:"cwd"`
	QMP          string          `json:"qmp"`
	RAMPath      string          `json:"ram_path,omitempty"` // ram-file: the memory-backend-file's mem-path
	RAMSize      int64           `json:"ram_size,omitempty"`
	Capabilities map[string]bool `json:"capabilities,omitempty"`
	Disks        []savedDisk     `json:"disks"`
}

type savedDisk struct {
	Device        string `json:"device"`
	Path          string `json:"path"` // the image as QEMU's command line names it
	File          string `json:"file"` // name in the snapshot directory
	Format        string `json:"format"`
	Backing       string `json:"backing,omitempty"`
	BackingFormat string `json:"backing_format,omitempty"`
	ClusterSize   int64  `json:"cluster_size,omitempty"`
}

// blockInfo is the part of query-block stasis reads.
type blockInfo struct {
	Device   string `json:"device"`
	Qdev     string `json:"qdev"`
	Inserted *struct {
		File     string `json:"file"`
		RO       bool   `json:"ro"`
		Drv      string `json:"drv"`
		NodeName string `json:"node-name"`
		Image    struct {
			Filename       string `json:"filename"`
			Format         string `json:"format"`
			ClusterSize    int64  `json:"cluster-size"`
			BackingFile    string `json:"full-backing-filename"`
			BackingFormat  string `json:"backing-filename-format"`
			BackingFileRaw string `json:"backing-filename"`
		} `json:"image"`
	} `json:"inserted"`
}

// guestTime reads the guest's RTC (virtual clock) through QOM.
func guestTime(ctx context.Context, mon *monitor) (time.Time, error) {
	var tm struct {
		Year int `json:"tm_year"`
		Mon  int `json:"tm_mon"`
		Day  int `json:"tm_mday"`
		Hour int `json:"tm_hour"`
		Min  int `json:"tm_min"`
		Sec  int `json:"tm_sec"`
	}
	if err := mon.run(ctx, "qom-get", map[string]string{"path": "/machine", "property": "rtc-time"}, &tm, nil); err != nil {
		return time.Time{}, err
	}
	return time.Date(tm.Year+1900, time.Month(tm.Mon+1), tm.Day, tm.Hour, tm.Min, tm.Sec, 0, time.UTC), nil
}

// ramBackend finds a shared memory-backend-file holding the main RAM.
func ramBackend(ctx context.Context, mon *monitor) (path string, size int64, ok bool) {
	var id string
	if err := mon.run(ctx, "qom-get", map[string]string{"path": "/machine", "property": "memory-backend"}, &id, nil); err != nil || id == "" {
		return "", 0, false
	}
	obj := id
	if !strings.HasPrefix(obj, "/") {
		obj = "/objects/" + id
	}
	var share bool
	if err := mon.run(ctx, "qom-get", map[string]string{"path": obj, "property": "share"}, &share, nil); err != nil || !share {
		return "", 0, false
	}
	if err := mon.run(ctx, "qom-get", map[string]string{"path": obj, "property": "mem-path"}, &path, nil); err != nil || path == "" {
		return "", 0, false
	}
	if err := mon.run(ctx, "qom-get", map[string]string{"path": obj, "property": "size"}, &size, nil); err != nil {
		return "", 0, false
	}
	if fi, err := os.Stat(path); err != nil || !fi.Mode().IsRegular() {
		return "", 0, false // a directory: QEMU made an unlinked temp file
	}
	return path, size, true
}

// procInfo reads QEMU's command line and working directory from /proc.
func procInfo(pid int) (argv []string, cwd string, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, "", fmt.Errorf("read qemu command line: %w", err)
	}
	argv = strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	cwd, err = os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	if err != nil {
		return nil, "", fmt.Errorf("read qemu working directory: %w", err)
	}
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && !strings.HasSuffix(exe, " (deleted)") {
		argv[0] = exe
	}
	return argv, cwd, nil
}

// captureMode resolves the configured capture mode for this QEMU and this
// VM: ModeAuto becomes ModeStream; ram-file needs the shared RAM backend
// (whose path and size it returns), mapped-ram QEMU >= 9. It only reads.
func (m *Machine) captureMode(ctx context.Context, mon *monitor) (mode, ramPath string, ramSize int64, err error) {
	mode = m.cfg.Mode
	switch mode {
	case ModeAuto:
		mode = ModeStream
	case ModeRAMFile:
		var ok bool
		if ramPath, ramSize, ok = ramBackend(ctx, mon); !ok {
			return "", "", 0, fmt.Errorf("%w: ram-file needs the guest RAM in a shared memory-backend-file (-object memory-backend-file,share=on,mem-path=FILE -machine memory-backend=ID)", ErrUnsupported)
		}
	case ModeMappedRAM:
		if !mon.atLeast(9, 0) {
			return "", "", 0, fmt.Errorf("%w: mapped-ram needs QEMU >= 9, this is %d.%d.%d", ErrUnsupported, mon.version[0], mon.version[1], mon.version[2])
		}
	}
	return mode, ramPath, ramSize, nil
}

// saveableStates are the run states Save can migrate from: Swapout pauses a
// running VM; a paused one or one not yet started ("prelaunch") saves as it
// is. Not "postmigrate" (paused after a completed save, e.g. a kept
// snapshot): QEMU refuses to migrate it again until it has been resumed.
var saveableStates = map[string]bool{"running": true, "paused": true, "prelaunch": true}

// Preflight implements hypervisor.Preflighter: QMP answers, the VM is in a
// state that can be saved with no migration in progress, the capture mode
// fits this QEMU and VM (ram-file: the shared RAM backend; mapped-ram: QEMU
// >= 9), QEMU's command line and working directory are readable, and every
// writable disk image Save would copy exists. It only queries QEMU and
// stats files: the guest runs on untouched.
func (m *Machine) Preflight(ctx context.Context) error {
	mon, err := m.conn(ctx)
	if err != nil {
		return err
	}
	st, err := mon.status(ctx)
	if err != nil {
		return err
	}
	switch {
	case st == "postmigrate":
		return fmt.Errorf("the VM is paused after a completed save (%q); QEMU saves it again only after it has been resumed", st)
	case !saveableStates[st]:
		return fmt.Errorf("the VM is %q, not a state it can be saved from", st)
	}
	var mi migrationInfo
	if err := mon.run(ctx, "query-migrate", nil, &mi, nil); err != nil {
		return err
	}
	switch mi.Status {
	case "", "none", "completed", "failed", "cancelled":
	default:
		return fmt.Errorf("a migration is in progress (%s)", mi.Status)
	}
	if _, _, _, err := m.captureMode(ctx, mon); err != nil {
		return err
	}
	_, cwd, err := procInfo(m.pid)
	if err != nil {
		return err
	}
	var blocks []blockInfo
	if err := mon.run(ctx, "query-block", nil, &blocks, nil); err != nil {
		return err
	}
	for _, b := range writableDisks(blocks) {
		if _, err := os.Stat(localPath(b.Inserted.File, cwd)); err != nil {
			return fmt.Errorf("disk %s: %w", b.Device, err)
		}
	}
	return nil
}

// writableDisks are the images Save copies: writable, and local files (not
// nbd:, ...).
func writableDisks(blocks []blockInfo) []blockInfo {
	var w []blockInfo
	for _, b := range blocks {
		if b.Inserted != nil && !b.Inserted.RO && b.Inserted.File != "" && !strings.Contains(b.Inserted.File, ":") {
			w = append(w, b)
		}
	}
	return w
}

// localPath resolves a path from QEMU's command line against its cwd.
func localPath(p, cwd string) string {
	if !filepath.IsAbs(p) {
		return filepath.Join(cwd, p)
	}
	return p
}

// Save implements hypervisor.Machine: the VM must be paused.
func (m *Machine) Save(ctx context.Context, dir string, p hypervisor.Progress) (hypervisor.Saved, error) {
	p = hypervisor.OrNop(p)
	mon, err := m.conn(ctx)
	if err != nil {
		return hypervisor.Saved{}, err
	}
	st, err := mon.status(ctx)
	if err != nil {
		return hypervisor.Saved{}, err
	}
	if st == "running" {
		return hypervisor.Saved{}, errors.New("the VM is running; pause it first")
	}
	argv, cwd, err := procInfo(m.pid)
	if err != nil {
		return hypervisor.Saved{}, err
	}
	cfg := savedConfig{
		QEMUVersion: fmt.Sprintf("%d.%d.%d", mon.version[0], mon.version[1], mon.version[2]),
		Argv:        argv, Cwd: cwd, QMP: m.cfg.QMP, Capabilities: map[string]bool{},
	}
	gt, err := guestTime(ctx, mon)
	if err != nil {
		m.cfg.Logger.Warn("cannot read the guest clock; virtual time not recorded", "err", err)
	}
	var blocks []blockInfo
	if err := mon.run(ctx, "query-block", nil, &blocks, nil); err != nil {
		return hypervisor.Saved{}, err
	}

	mode, ramPath, ramSize, err := m.captureMode(ctx, mon)
	if err != nil {
		return hypervisor.Saved{}, err
	}
	if err := mon.run(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": m.cfg.MaxBandwidth}, nil, nil); err != nil {
		return hypervisor.Saved{}, err
	}
	caps := map[string]bool{"x-ignore-shared": mode == ModeRAMFile}
	if mon.atLeast(9, 0) {
		caps["mapped-ram"] = mode == ModeMappedRAM
	}
	if err := mon.setCapabilities(ctx, caps); err != nil {
		return hypervisor.Saved{}, err
	}
	for c, on := range caps {
		if on {
			cfg.Capabilities[c] = true
		}
	}

	var files []hypervisor.File
	log := m.cfg.Logger
	t0 := time.Now()
	defer func() { log.Debug("save done", "mode", mode, "took", time.Since(t0)) }()
	switch mode {
	case ModeStream:
		p.Start("memory", -1)
		f, err := m.migrateToFile(ctx, mon, dir, fileMemory, hypervisor.RoleMemory, hypervisor.ChunkerStream, p)
		if err != nil {
			return hypervisor.Saved{}, fmt.Errorf("memory: %w", err)
		}
		files = append(files, f)
	case ModeRAMFile:
		p.Start("devstate", -1)
		f, err := m.migrateToFile(ctx, mon, dir, fileDevState, hypervisor.RoleDevState, hypervisor.ChunkerStream, p)
		if err != nil {
			return hypervisor.Saved{}, fmt.Errorf("device state: %w", err)
		}
		files = append(files, f)
		log.Debug("device state saved", "bytes", f.Size, "took", time.Since(t0))
		fi, err := os.Stat(ramPath)
		if err != nil {
			return hypervisor.Saved{}, fmt.Errorf("ram: %w", err)
		}
		p.Start("ram", fi.Size())
		f, err = hypervisor.CopyIn(dir, fileRAM, hypervisor.RoleRAM, hypervisor.ChunkerRAM, ramPath, p)
		if err != nil {
			return hypervisor.Saved{}, fmt.Errorf("ram: %w", err)
		}
		files = append(files, f)
		log.Debug("ram saved", "bytes", f.Size, "took", time.Since(t0))
		cfg.RAMPath, cfg.RAMSize = ramPath, ramSize
		m.ramPath = ramPath
	case ModeMappedRAM:
		p.Start("memory", -1)
		f, err := m.migrateMappedRAM(ctx, mon, dir, p)
		if err != nil {
			return hypervisor.Saved{}, fmt.Errorf("memory: %w", err)
		}
		files = append(files, f)
	}

	// Disks: after the migration QEMU has flushed and handed over (inactivated)
	// every image, so the overlays are stable.
	writable := writableDisks(blocks)
	for _, b := range writable {
		in := b.Inserted
		name := "disk.qcow2"
		if len(writable) > 1 {
			name = "disk-" + sanitize(b.Device) + "." + in.Drv
		} else if in.Drv != "qcow2" {
			name = "disk." + in.Drv
		}
		local := localPath(in.File, cwd)
		fi, err := os.Stat(local)
		if err != nil {
			return hypervisor.Saved{}, fmt.Errorf("disk %s: %w", b.Device, err)
		}
		p.Start("disk "+b.Device, fi.Size())
		f, err := hypervisor.CopyIn(dir, name, hypervisor.RoleDisk, hypervisor.ChunkerForCluster(in.Image.ClusterSize), local, p)
		if err != nil {
			return hypervisor.Saved{}, fmt.Errorf("disk %s: %w", b.Device, err)
		}
		files = append(files, f)
		cfg.Disks = append(cfg.Disks, savedDisk{
			Device: b.Device, Path: in.File, File: name, Format: in.Drv,
			Backing: in.Image.BackingFile, BackingFormat: in.Image.BackingFormat, ClusterSize: in.Image.ClusterSize,
		})
	}
	raw, err := json.Marshal(cfg)
	if err != nil {
		return hypervisor.Saved{}, err
	}
	return hypervisor.Saved{Driver: DriverName, Mode: mode, Files: files, Config: raw, GuestTime: gt}, nil
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, s)
}

// migrateToFile runs a migration into a pipe and copies the stream into
// dir/name.
func (m *Machine) migrateToFile(ctx context.Context, mon *monitor, dir, name, role, chunker string, p hypervisor.Progress) (hypervisor.File, error) {
	w, err := hypervisor.CreateFile(dir, name, role, chunker, p)
	if err != nil {
		return hypervisor.File{}, err
	}
	r, wp, err := os.Pipe()
	if err != nil {
		w.Abort()
		return hypervisor.File{}, err
	}
	unix.FcntlInt(wp.Fd(), unix.F_SETPIPE_SZ, 1<<20)
	const fdname = "stasis-migrate"
	err = mon.run(ctx, "getfd", map[string]string{"fdname": fdname}, nil, wp)
	wp.Close() // QEMU holds its own copy now
	if err != nil {
		r.Close()
		w.Abort()
		return hypervisor.File{}, err
	}
	copied := make(chan error, 1)
	go func() {
		_, err := w.ReadFrom(r)
		// Closing the read end makes QEMU's writes fail (EPIPE) if we
		// stopped early, so the migration fails instead of blocking.
		r.Close()
		copied <- err
	}()
	if err := mon.run(ctx, "migrate", map[string]string{"uri": "fd:" + fdname}, nil, nil); err != nil {
		// QEMU did not take the descriptor: close it so the copy sees EOF.
		mon.run(context.WithoutCancel(ctx), "closefd", map[string]string{"fdname": fdname}, nil, nil)
		<-copied
		w.Abort()
		return hypervisor.File{}, err
	}
	_, merr := mon.waitMigration(ctx, nil)
	if merr != nil && ctx.Err() != nil {
		// Cancelled: stop QEMU writing, on a fresh connection if need be.
		if mon2, err := m.conn(context.WithoutCancel(ctx)); err == nil {
			mon2.run(context.WithoutCancel(ctx), "migrate_cancel", nil, nil, nil)
		}
		r.Close()
	}
	cerr := <-copied
	if cerr != nil {
		w.Abort()
		return hypervisor.File{}, fmt.Errorf("writing %s: %w", name, cerr)
	}
	if merr != nil {
		w.Abort()
		return hypervisor.File{}, merr
	}
	return w.Commit()
}

// migrateMappedRAM has QEMU (≥ 9) write a mapped-ram image straight into
// dir/memory, then fsyncs and hashes it.
func (m *Machine) migrateMappedRAM(ctx context.Context, mon *monitor, dir string, p hypervisor.Progress) (hypervisor.File, error) {
	path, err := filepath.Abs(filepath.Join(dir, fileMemory))
	if err != nil {
		return hypervisor.File{}, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return hypervisor.File{}, err
	}
	f.Close()
	if err := hypervisor.SetChunker(path, hypervisor.ChunkerRAM); err != nil {
		return hypervisor.File{}, err
	}
	if err := mon.run(ctx, "migrate", map[string]string{"uri": "file:" + path}, nil, nil); err != nil {
		return hypervisor.File{}, err
	}
	if _, err := mon.waitMigration(ctx, nil); err != nil {
		return hypervisor.File{}, err
	}
	return hypervisor.HashFile(dir, fileMemory, hypervisor.RoleMemory, hypervisor.ChunkerRAM, p)
}

// RemoveLocal deletes the local files a swapped-out VM no longer needs:
// its qcow2 overlays and, in mode ram-file, its RAM file. Call it only after
// a successful swapout (the snapshot holds them).
func RemoveLocal(man *hypervisor.Manifest) error {
	var cfg savedConfig
	if err := json.Unmarshal(man.Config, &cfg); err != nil {
		return err
	}
	var errs []error
	for _, d := range cfg.Disks {
		p := d.Path
		if !filepath.IsAbs(p) {
			p = filepath.Join(cfg.Cwd, p)
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if cfg.RAMPath != "" {
		if err := os.Remove(cfg.RAMPath); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
