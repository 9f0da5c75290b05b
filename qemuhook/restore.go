package qemuhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"stasis/hypervisor"
)

// RestoreOptions configure Restore.
type RestoreOptions struct {
	// LocalDir receives the VM's local files (its qcow2 overlays and, in
	// mode ram-file, its RAM file) under their original base names. Empty:
	// their original paths.
	LocalDir string
	// Overwrite allows replacing local files that already exist, except
	// one a process holds locked (a live QEMU's disk image). It is not
	// for concurrent restores into the same files.
	Overwrite bool
	// LazyDisk leaves each disk delta in the snapshot and starts the VM on a
	// fresh local qcow2 overlay whose backing file is the snapshot's copy,
	// so the VM resumes before its disk is fetched; casfs fetches (and
	// hash-checks) only the clusters the guest reads. The snapshot's disk
	// files are then checked for presence and size only, not read whole, and
	// must stay unchanged while the VM runs: restore from a .snapshots/ path.
	LazyDisk bool
	// Paused leaves the restored VM paused instead of continuing it.
	Paused bool
	// Log receives QEMU's stdout and stderr (appended); empty discards them.
	Log string
	// StartTimeout bounds how long QEMU may take to open its QMP socket;
	// default 60 s.
	StartTimeout time.Duration
	// Argv, when set, replaces the command line saved in the snapshot: an
	// experiment's host agent builds each node's command line for the host
	// it restores on (its socket paths, run directory). It is rewritten like
	// the saved one: local disk and RAM paths replaced, -rtc continued in
	// virtual time, "-S -incoming defer" appended. It must give QEMU the
	// same devices as the saved command line did.
	Argv []string
	// QMP is the QMP socket path Argv opens; required with Argv.
	QMP string
	// Cwd is the directory QEMU runs in with Argv (relative paths in it);
	// empty: the saved one if it exists.
	Cwd      string
	Progress hypervisor.Progress
	Logger   *slog.Logger
}

// Restore starts a VM from the snapshot in dir and, unless opts.Paused,
// continues it. It refuses a snapshot that is incomplete or fails
// verification (errors wrap hypervisor.ErrIncomplete or ErrCorrupt): every
// file's checksum is checked as it is read, and the guest never runs on
// data that did not verify. On failure nothing is left running and the
// local files it created are removed.
//
// Restore never reuses what may belong to a live VM or to another restore:
// each local file is created exclusively (of two concurrent restores into
// the same files exactly one succeeds; the other fails with an error
// wrapping hypervisor.ErrInUse and removes nothing it did not create), and
// a QMP socket that something still answers on is refused (ErrInUse, naming
// the pid behind it); only a dead socket is removed.
func Restore(ctx context.Context, dir string, opts RestoreOptions) (*Machine, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 60 * time.Second
	}
	p := hypervisor.OrNop(opts.Progress)
	man, err := hypervisor.ReadManifest(dir)
	if err != nil {
		return nil, err
	}
	if man.Driver != DriverName {
		return nil, fmt.Errorf("snapshot %s was made by driver %q, not qemu", dir, man.Driver)
	}
	var cfg savedConfig
	if err := json.Unmarshal(man.Config, &cfg); err != nil || len(cfg.Argv) == 0 || cfg.QMP == "" {
		return nil, &hypervisor.VerifyError{Dir: dir, File: hypervisor.ManifestName, Err: hypervisor.ErrCorrupt, Detail: "bad qemu config"}
	}
	savedArgv := cfg.Argv
	if len(opts.Argv) > 0 {
		if opts.QMP == "" {
			return nil, errors.New("qemuhook: RestoreOptions.Argv needs RestoreOptions.QMP")
		}
		savedArgv, cfg.QMP = opts.Argv, opts.QMP
		if opts.Cwd != "" {
			cfg.Cwd = opts.Cwd
		}
	}

	// Local files: where each goes, refusing to clobber.
	local := func(orig string) string {
		if !filepath.IsAbs(orig) {
			orig = filepath.Join(cfg.Cwd, orig)
		}
		if opts.LocalDir != "" {
			return filepath.Join(opts.LocalDir, filepath.Base(orig))
		}
		return orig
	}
	type copyJob struct {
		file hypervisor.File
		dst  string
		lazy bool // make an overlay over the snapshot's file instead of copying
	}
	var jobs []copyJob
	paths := map[string]string{}
	for _, d := range cfg.Disks {
		f, ok := fileNamed(man, d.File)
		if !ok {
			return nil, &hypervisor.VerifyError{Dir: dir, File: d.File, Err: hypervisor.ErrCorrupt, Detail: "disk not listed in the manifest"}
		}
		dst := local(d.Path)
		jobs = append(jobs, copyJob{f, dst, opts.LazyDisk && d.Format == "qcow2"})
		paths[d.Path] = dst
	}
	if man.Mode == ModeRAMFile {
		f, ok := man.File(hypervisor.RoleRAM)
		if !ok || cfg.RAMPath == "" {
			return nil, &hypervisor.VerifyError{Dir: dir, Err: hypervisor.ErrCorrupt, Detail: "ram-file snapshot without ram"}
		}
		dst := local(cfg.RAMPath)
		jobs = append(jobs, copyJob{f, dst, false})
		paths[cfg.RAMPath] = dst
	}
	// A QMP socket a live VM answers on is never taken over: refuse before
	// touching any file (start checks again, under a lock).
	if err := freeSocket(ctx, cfg.QMP); err != nil {
		return nil, err
	}
	// Every local file is created exclusively, in a fixed order: of two
	// restores into the same files exactly one gets them, and cleanup
	// removes only what this restore created.
	dsts := make([]string, len(jobs))
	for i, j := range jobs {
		dsts[i] = j.dst
	}
	claimed, err := hypervisor.ClaimLocal(dsts, opts.Overwrite)
	if err != nil {
		return nil, err
	}
	cleanup := claimed.Remove
	for i, j := range jobs {
		p.Start(j.file.Role, j.file.Size)
		if j.lazy {
			// qemu-img writes the overlay into the file claimed for it.
			if err := lazyOverlay(ctx, dir, j.file, j.dst); err != nil {
				cleanup()
				return nil, err
			}
		} else if err := hypervisor.CopyOutTo(dir, j.file, claimed.File(i), p); err != nil {
			cleanup()
			return nil, err
		}
	}

	// The memory image of mode mapped-ram is read by QEMU itself: verify it
	// before QEMU sees it.
	var memFile hypervisor.File
	switch man.Mode {
	case ModeStream, ModeMappedRAM:
		memFile, _ = man.File(hypervisor.RoleMemory)
	case ModeRAMFile:
		memFile, _ = man.File(hypervisor.RoleDevState)
	default:
		cleanup()
		return nil, fmt.Errorf("snapshot %s: unknown capture mode %q", dir, man.Mode)
	}
	if memFile.Name == "" {
		cleanup()
		return nil, &hypervisor.VerifyError{Dir: dir, Err: hypervisor.ErrIncomplete, Detail: "no memory image"}
	}
	if man.Mode == ModeMappedRAM {
		p.Start("verify memory", memFile.Size)
		if err := hypervisor.VerifyFile(dir, memFile, p); err != nil {
			cleanup()
			return nil, err
		}
	}

	argv := rewriteArgv(savedArgv, paths, man.GuestTime)
	m, err := start(ctx, argv, cfg, opts)
	if err != nil {
		cleanup()
		return nil, err
	}
	fail := func(err error) (*Machine, error) {
		m.Kill()
		cleanup()
		return nil, err
	}
	mon := m.mon
	if err := mon.setCapabilities(ctx, cfg.Capabilities); err != nil {
		return fail(err)
	}
	switch man.Mode {
	case ModeMappedRAM:
		abs, _ := filepath.Abs(filepath.Join(dir, memFile.Name))
		if err := mon.run(ctx, "migrate-incoming", map[string]string{"uri": "file:" + abs}, nil, nil); err != nil {
			return fail(err)
		}
		if _, err := mon.waitMigration(ctx, nil); err != nil {
			return fail(fmt.Errorf("loading memory: %w", err))
		}
	default:
		p.Start(memFile.Role, memFile.Size)
		if err := incomingFromFile(ctx, mon, dir, memFile, p); err != nil {
			return fail(err)
		}
	}
	if !opts.Paused {
		if err := mon.cont(ctx); err != nil {
			return fail(err)
		}
	}
	m.ramPath = paths[cfg.RAMPath]
	claimed.Keep()
	return m, nil
}

// lazyOverlay creates dst as a qcow2 overlay over the snapshot's qcow2.
func lazyOverlay(ctx context.Context, dir string, f hypervisor.File, dst string) error {
	src, err := filepath.Abs(filepath.Join(dir, f.Name))
	if err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536",
		"-b", src, "-F", "qcow2", dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("lazy disk: qemu-img create over %s: %v: %s", src, err, out)
	}
	return nil
}

func fileNamed(man *hypervisor.Manifest, name string) (hypervisor.File, bool) {
	for _, f := range man.Files {
		if f.Name == name {
			return f, true
		}
	}
	return hypervisor.File{}, false
}

// incomingFromFile feeds a saved migration stream to QEMU through a pipe,
// verifying it on the way; it returns only when QEMU has loaded it and the
// checksum matched.
func incomingFromFile(ctx context.Context, mon *monitor, dir string, f hypervisor.File, p hypervisor.Progress) error {
	vr, err := hypervisor.OpenVerified(dir, f)
	if err != nil {
		return err
	}
	defer vr.Close()
	r, wp, err := os.Pipe()
	if err != nil {
		return err
	}
	unix.FcntlInt(wp.Fd(), unix.F_SETPIPE_SZ, 1<<20)
	const fdname = "stasis-incoming"
	err = mon.run(ctx, "getfd", map[string]string{"fdname": fdname}, nil, r)
	r.Close()
	if err != nil {
		wp.Close()
		return err
	}
	if err := mon.run(ctx, "migrate-incoming", map[string]string{"uri": "fd:" + fdname}, nil, nil); err != nil {
		wp.Close()
		return err
	}
	fed := make(chan error, 1)
	go func() { fed <- hypervisor.Feed(wp, vr, p) }()
	// If loading fails, QEMU may still hold the descriptor without reading:
	// closing our end makes a blocked write fail.
	_, merr := mon.waitMigration(ctx, nil)
	if merr != nil {
		wp.Close()
	}
	ferr := <-fed
	if ferr != nil {
		var ve *hypervisor.VerifyError
		if errors.As(ferr, &ve) {
			return ferr
		}
		if merr == nil {
			return fmt.Errorf("feeding %s: %w", f.Name, ferr)
		}
	}
	if merr != nil {
		return fmt.Errorf("loading %s: %w", f.Name, merr)
	}
	return nil
}

// StartOptions configure Start.
type StartOptions struct {
	// QMP is the QMP socket path argv opens. Required.
	QMP string
	// Cwd is QEMU's working directory (empty: this process's).
	Cwd string
	// Log receives QEMU's stdout and stderr (appended); empty discards them.
	Log string
	// StartTimeout bounds how long QEMU may take to open its QMP socket;
	// default 60 s.
	StartTimeout time.Duration
	Logger       *slog.Logger
}

// Start boots QEMU with the command line argv, detached in its own session
// so that it outlives this process, and connects to its QMP socket, with
// the same guarantees as Restore: a live VM's socket is refused, a dead one
// replaced, and a QEMU that exits or never opens its socket is an error
// with nothing left running.
func Start(ctx context.Context, argv []string, o StartOptions) (*Machine, error) {
	if len(argv) == 0 || o.QMP == "" {
		return nil, errors.New("qemuhook: Start needs a command line and its QMP socket path")
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = 60 * time.Second
	}
	return start(ctx, argv, savedConfig{QMP: o.QMP, Cwd: o.Cwd}, RestoreOptions{Log: o.Log, StartTimeout: o.StartTimeout, Logger: o.Logger})
}

// start runs QEMU with argv (detached in its own session, so it outlives
// the stasis process) and connects to its QMP socket.
func start(ctx context.Context, argv []string, cfg savedConfig, opts RestoreOptions) (*Machine, error) {
	out := io.Writer(nil)
	if opts.Log != "" {
		f, err := os.OpenFile(opts.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		out = f
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	if fi, err := os.Stat(cfg.Cwd); err == nil && fi.IsDir() {
		cmd.Dir = cfg.Cwd
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	daemonize := false
	for _, a := range argv {
		if a == "-daemonize" || a == "--daemonize" {
			daemonize = true
		}
	}
	// Starting QEMUs whose QMP sockets share a directory take turns until
	// the socket answers: QEMU unlinks whatever is at its socket path, so
	// two starting at once would both pass the check below.
	unlock, err := lockDir(ctx, filepath.Dir(cfg.QMP))
	if err != nil {
		return nil, err
	}
	defer unlock()
	// A stale socket from the previous QEMU must not be mistaken for ours,
	// and a live one must not be taken over.
	if err := freeSocket(ctx, cfg.QMP); err != nil {
		return nil, err
	}
	m := &Machine{cfg: Config{QMP: cfg.QMP, Logger: opts.Logger}}
	m.cfg.validate()
	if daemonize {
		if b, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("start qemu: %v: %s", err, b)
		}
	} else {
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("start qemu: %w", err)
		}
		m.proc = cmd.Process
		m.pid = cmd.Process.Pid
		m.done = make(chan struct{})
		go func() { cmd.Wait(); close(m.done) }()
	}
	deadline := time.Now().Add(opts.StartTimeout)
	for {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		mon, err := dial(dctx, cfg.QMP)
		cancel()
		if err == nil {
			m.mon = mon
			if m.pid == 0 {
				m.pid = mon.pid
			}
			return m, nil
		}
		if m.done != nil {
			select {
			case <-m.done:
				return nil, fmt.Errorf("qemu exited while starting (see its log %q): %s", opts.Log, strings.Join(argv, " "))
			default:
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			if m.proc != nil {
				m.proc.Kill()
				<-m.done
			}
			return nil, fmt.Errorf("qemu did not open its QMP socket %s: %w", cfg.QMP, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freeSocket makes sure a new QEMU may create its QMP socket at path:
// nothing is there, or a socket nobody listens on any more (it is removed).
// A socket that answers is refused, naming the pid of the process behind
// it; so is anything else at path, or a socket whose state is unclear.
func freeSocket(ctx context.Context, path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("QMP path %s exists and is not a socket: %w; not replacing it", path, hypervisor.ErrInUse)
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	pid, err := peerPid(cctx, path)
	cancel()
	switch {
	case err == nil:
		return fmt.Errorf("QMP socket %s belongs to a live VM (qemu pid %d): %w; destroy that VM first or restore with another QMP path", path, pid, hypervisor.ErrInUse)
	case errors.Is(err, syscall.ECONNREFUSED):
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("removing the stale QMP socket %s: %w", path, err)
		}
		return nil
	}
	return fmt.Errorf("QMP socket %s: cannot tell whether a VM still owns it (%w): %w", path, err, hypervisor.ErrInUse)
}

// lockDir takes an exclusive flock on dir, waiting for it while ctx lasts;
// unlock releases it.
func lockDir(ctx context.Context, dir string) (unlock func(), err error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", dir, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for the lock on %s: %w", dir, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// rewriteArgv turns a saved QEMU command line into the restore command
// line: local file paths replaced, any previous -incoming and -S dropped,
// -rtc set to continue the guest clock from base in virtual time, and
// "-S -incoming defer" appended.
func rewriteArgv(argv []string, paths map[string]string, base time.Time) []string {
	out := []string{argv[0]}
	rtc := false
	for i := 1; i < len(argv); i++ {
		a := argv[i]
		opt := a
		if strings.HasPrefix(opt, "--") {
			opt = opt[1:]
		}
		switch opt {
		case "-incoming":
			i++
			continue
		case "-S":
			continue
		case "-rtc":
			if i+1 < len(argv) {
				out = append(out, "-rtc", rewriteRTC(argv[i+1], base))
				rtc = true
				i++
				continue
			}
		}
		out = append(out, replacePaths(a, paths))
	}
	if !rtc {
		out = append(out, "-rtc", rewriteRTC("", base))
	}
	return append(out, "-S", "-incoming", "defer")
}

// rewriteRTC sets base= (when known) and clock=vm in an -rtc option.
func rewriteRTC(s string, base time.Time) string {
	var keep []string
	hadBase := ""
	for _, part := range strings.Split(s, ",") {
		switch {
		case part == "":
		case strings.HasPrefix(part, "base="):
			hadBase = part
		case strings.HasPrefix(part, "clock="):
		default:
			keep = append(keep, part)
		}
	}
	b := hadBase
	if !base.IsZero() {
		b = "base=" + base.UTC().Format("2006-01-02T15:04:05")
	}
	if b != "" {
		keep = append([]string{b}, keep...)
	}
	return strings.Join(append(keep, "clock=vm"), ",")
}

// replacePaths replaces file values in one argument: key=OLD in a QEMU
// option list (file=, filename=, mem-path=, path=) and "OLD" in JSON.
func replacePaths(a string, paths map[string]string) string {
	if len(paths) == 0 {
		return a
	}
	if strings.HasPrefix(a, "{") {
		for o, n := range paths {
			on, _ := json.Marshal(o)
			nn, _ := json.Marshal(n)
			a = strings.ReplaceAll(a, string(on), string(nn))
		}
		return a
	}
	parts := strings.Split(a, ",")
	for i, part := range parts {
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			continue
		}
		if n, hit := paths[v]; hit {
			switch k {
			case "file", "filename", "mem-path", "path":
				parts[i] = k + "=" + n
			}
		}
	}
	return strings.Join(parts, ",")
}
