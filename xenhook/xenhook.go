// Package xenhook is the hypervisor.Machine driver for Xen: it runs `xl`
// (pause, unpause, save, restore, destroy) with the save image streamed into
// a snapshot directory on casfs, and copies the domain's qcow2 disk deltas
// alongside. The snapshot format is package hypervisor's (mode "xl-save":
// files `memory`, the xl save image, and `disk.qcow2` / `disk-<vdev>.qcow2`).
//
// The save image goes through a pipe (xl writes /dev/fd/3), so stasis hashes
// it as it is written; restore feeds it back the same way with `xl restore
// -p`, verifying the checksum before it unpauses the domain.
//
// block-casfs (in this directory, also available as BlockScript) is a Xen
// block hotplug script that attaches a disk delta stored on casfs to a
// domain: it puts a fresh local qcow2 overlay over the casfs file (read
// lazily, only the clusters the guest touches) and exports it with qemu-nbd.
//
// Xen cannot boot on the project's machines: the driver is tested against a
// stand-in xl (testdata/xl) that records its arguments and writes and reads
// a save stream.
package xenhook

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"stasis/hypervisor"
)

// BlockScript is the block-casfs hotplug script; install it as
// /etc/xen/scripts/block-casfs (mode 0755).
//
//go:embed block-casfs
var BlockScript []byte

// ModeXLSave is the only capture mode: the xl save image.
const ModeXLSave = "xl-save"

// Disk is a disk delta of the domain.
type Disk struct {
	Vdev string `json:"vdev"` // xvda, ...
	Path string `json:"path"` // the local qcow2 overlay
}

// Config says which domain to drive and how.
type Config struct {
	// Domain is the domain name (or id). Required.
	Domain string
	// XL is the xl binary; default "xl" from PATH.
	XL string
	// DomainConfig is the domain's xl config file; its text is saved with
	// the snapshot and given to `xl restore` (optional: the save image
	// carries the config xl had).
	DomainConfig string
	// Disks are the domain's disk deltas to save.
	Disks  []Disk
	Logger *slog.Logger
}

var domainRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

func (c *Config) validate() error {
	if !domainRE.MatchString(c.Domain) {
		return fmt.Errorf("xenhook: bad domain name %q", c.Domain)
	}
	if c.XL == "" {
		c.XL = "xl"
	}
	for _, d := range c.Disks {
		if d.Vdev == "" || d.Path == "" || !domainRE.MatchString(d.Vdev) {
			return fmt.Errorf("xenhook: bad disk %+v (need vdev and path)", d)
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return nil
}

// Machine is a Xen domain driven through xl.
type Machine struct{ cfg Config }

var _ hypervisor.Machine = (*Machine)(nil)

// New returns a driver for a running domain.
func New(cfg Config) (*Machine, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Machine{cfg: cfg}, nil
}

// xl runs one xl command; stdin/extra files optional.
func (m *Machine) xl(ctx context.Context, extra *os.File, args ...string) error {
	return runXL(ctx, m.cfg.XL, extra, args...)
}

func runXL(ctx context.Context, xl string, extra *os.File, args ...string) error {
	cmd := exec.CommandContext(ctx, xl, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if extra != nil {
		cmd.ExtraFiles = []*os.File{extra} // fd 3
	}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("xl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// Pause runs xl pause.
func (m *Machine) Pause(ctx context.Context) error { return m.xl(ctx, nil, "pause", m.cfg.Domain) }

// Resume runs xl unpause.
func (m *Machine) Resume(ctx context.Context) error { return m.xl(ctx, nil, "unpause", m.cfg.Domain) }

// Destroy runs xl destroy.
func (m *Machine) Destroy(ctx context.Context) error { return m.xl(ctx, nil, "destroy", m.cfg.Domain) }

type savedConfig struct {
	Domain       string            `json:"domain"`
	DomainConfig string            `json:"domain_config,omitempty"` // the xl config text
	Disks        []Disk            `json:"disks"`
	DiskFiles    map[string]string `json:"disk_files"` // vdev -> snapshot file
}

// Save runs `xl save -p DOMAIN /dev/fd/3` (the domain stays paused and
// alive) with the save image streamed into dir/memory, then copies the disk
// deltas.
func (m *Machine) Save(ctx context.Context, dir string, p hypervisor.Progress) (hypervisor.Saved, error) {
	p = hypervisor.OrNop(p)
	cfg := savedConfig{Domain: m.cfg.Domain, Disks: m.cfg.Disks, DiskFiles: map[string]string{}}
	if m.cfg.DomainConfig != "" {
		b, err := os.ReadFile(m.cfg.DomainConfig)
		if err != nil {
			return hypervisor.Saved{}, fmt.Errorf("domain config: %w", err)
		}
		cfg.DomainConfig = string(b)
	}
	p.Start("memory", -1)
	w, err := hypervisor.CreateFile(dir, "memory", hypervisor.RoleMemory, hypervisor.ChunkerStream, p)
	if err != nil {
		return hypervisor.Saved{}, err
	}
	r, wp, err := os.Pipe()
	if err != nil {
		w.Abort()
		return hypervisor.Saved{}, err
	}
	copied := make(chan error, 1)
	go func() {
		_, err := w.ReadFrom(r)
		r.Close() // xl gets EPIPE if we stopped early
		copied <- err
	}()
	xerr := m.xl(ctx, wp, "save", "-p", m.cfg.Domain, "/dev/fd/3")
	wp.Close()
	cerr := <-copied
	if cerr != nil {
		w.Abort()
		return hypervisor.Saved{}, fmt.Errorf("writing memory: %w", cerr)
	}
	if xerr != nil {
		w.Abort()
		return hypervisor.Saved{}, xerr
	}
	mem, err := w.Commit()
	if err != nil {
		return hypervisor.Saved{}, err
	}
	files := []hypervisor.File{mem}
	for _, d := range m.cfg.Disks {
		name := "disk.qcow2"
		if len(m.cfg.Disks) > 1 {
			name = "disk-" + d.Vdev + ".qcow2"
		}
		fi, err := os.Stat(d.Path)
		if err != nil {
			return hypervisor.Saved{}, fmt.Errorf("disk %s: %w", d.Vdev, err)
		}
		p.Start("disk "+d.Vdev, fi.Size())
		f, err := hypervisor.CopyIn(dir, name, hypervisor.RoleDisk, hypervisor.ChunkerForCluster(65536), d.Path, p)
		if err != nil {
			return hypervisor.Saved{}, fmt.Errorf("disk %s: %w", d.Vdev, err)
		}
		files = append(files, f)
		cfg.DiskFiles[d.Vdev] = name
	}
	raw, err := json.Marshal(cfg)
	if err != nil {
		return hypervisor.Saved{}, err
	}
	return hypervisor.Saved{Driver: DriverName, Mode: ModeXLSave, Files: files, Config: raw}, nil
}

// RestoreOptions configure Restore.
type RestoreOptions struct {
	// XL is the xl binary; default "xl".
	XL string
	// LocalDir receives the disk deltas under their original base names;
	// empty: their original paths.
	LocalDir string
	// Overwrite allows replacing existing local disk files.
	Overwrite bool
	// Paused leaves the domain paused.
	Paused   bool
	Progress hypervisor.Progress
	Logger   *slog.Logger
}

// Restore brings a domain back from dir: the disk deltas are copied (and
// verified) to local paths, the save image is fed to `xl restore -p` through
// a pipe while its checksum is computed, and only when it verified is the
// domain unpaused (unless opts.Paused). A snapshot that is incomplete or
// fails verification is refused; a domain created from a bad image is
// destroyed.
func Restore(ctx context.Context, dir string, opts RestoreOptions) (*Machine, error) {
	if opts.XL == "" {
		opts.XL = "xl"
	}
	p := hypervisor.OrNop(opts.Progress)
	man, err := hypervisor.ReadManifest(dir)
	if err != nil {
		return nil, err
	}
	if man.Driver != DriverName || man.Mode != ModeXLSave {
		return nil, fmt.Errorf("snapshot %s was made by %s/%s, not xen/%s", dir, man.Driver, man.Mode, ModeXLSave)
	}
	var cfg savedConfig
	if err := json.Unmarshal(man.Config, &cfg); err != nil || !domainRE.MatchString(cfg.Domain) {
		return nil, &hypervisor.VerifyError{Dir: dir, File: hypervisor.ManifestName, Err: hypervisor.ErrCorrupt, Detail: "bad xen config"}
	}
	mem, ok := man.File(hypervisor.RoleMemory)
	if !ok {
		return nil, &hypervisor.VerifyError{Dir: dir, Err: hypervisor.ErrIncomplete, Detail: "no save image"}
	}
	// Every local disk is created exclusively, so two restores never share
	// one and cleanup removes only what this restore created.
	files := make([]hypervisor.File, len(cfg.Disks))
	dsts := make([]string, len(cfg.Disks))
	for i, d := range cfg.Disks {
		for _, mf := range man.Files {
			if mf.Name == cfg.DiskFiles[d.Vdev] {
				files[i] = mf
			}
		}
		if files[i].Name == "" {
			return nil, &hypervisor.VerifyError{Dir: dir, Err: hypervisor.ErrCorrupt, Detail: "disk " + d.Vdev + " not in the manifest"}
		}
		dsts[i] = d.Path
		if opts.LocalDir != "" {
			dsts[i] = filepath.Join(opts.LocalDir, filepath.Base(d.Path))
		}
	}
	claimed, err := hypervisor.ClaimLocal(dsts, opts.Overwrite)
	if err != nil {
		return nil, err
	}
	cleanup := claimed.Remove
	disks := make([]Disk, 0, len(cfg.Disks))
	for i, d := range cfg.Disks {
		p.Start("disk "+d.Vdev, files[i].Size)
		if err := hypervisor.CopyOutTo(dir, files[i], claimed.File(i), p); err != nil {
			cleanup()
			return nil, err
		}
		disks = append(disks, Disk{Vdev: d.Vdev, Path: dsts[i]})
	}
	args := []string{"restore", "-p", "-e"}
	if cfg.DomainConfig != "" {
		// The config names the disks' local paths; point it at the restored ones.
		text := cfg.DomainConfig
		for i, d := range cfg.Disks {
			text = strings.ReplaceAll(text, d.Path, disks[i].Path)
		}
		cf, err := os.CreateTemp("", "stasis-xl-*.cfg")
		if err != nil {
			cleanup()
			return nil, err
		}
		defer os.Remove(cf.Name())
		cf.WriteString(text)
		cf.Close()
		args = append(args, cf.Name())
	}
	args = append(args, "/dev/fd/3")

	vr, err := hypervisor.OpenVerified(dir, mem)
	if err != nil {
		cleanup()
		return nil, err
	}
	defer vr.Close()
	r, wp, err := os.Pipe()
	if err != nil {
		cleanup()
		return nil, err
	}
	p.Start("memory", mem.Size)
	fed := make(chan error, 1)
	go func() { fed <- hypervisor.Feed(wp, vr, p) }()
	xerr := runXL(ctx, opts.XL, r, args...)
	r.Close()
	ferr := <-fed
	m := &Machine{cfg: Config{Domain: cfg.Domain, XL: opts.XL, Disks: disks, Logger: opts.Logger}}
	m.cfg.validate()
	var ve *hypervisor.VerifyError
	if errors.As(ferr, &ve) {
		if xerr == nil {
			m.Destroy(context.WithoutCancel(ctx))
		}
		cleanup()
		return nil, ferr
	}
	if xerr != nil {
		cleanup()
		return nil, xerr
	}
	if ferr != nil {
		m.Destroy(context.WithoutCancel(ctx))
		cleanup()
		return nil, fmt.Errorf("feeding the save image to xl: %w", ferr)
	}
	// The domain runs on these disks now, even if unpause fails.
	claimed.Keep()
	if !opts.Paused {
		if err := m.Resume(ctx); err != nil {
			return nil, err
		}
	}
	return m, nil
}
