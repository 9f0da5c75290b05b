package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"stasis/hypervisor"
	"stasis/qemuhook"
	"stasis/xenhook"
)

// swapOptions are the flags of `stasis swapout` and `stasis swapin`.
type swapOptions struct {
	// swapout
	qmp         string
	to          string
	mode        string
	bandwidth   int64
	keep        bool
	removeLocal bool
	xenDomain   string
	xenConfig   string
	xenDisks    []string // VDEV=PATH
	xl          string
	// swapin
	from      string
	localDir  string
	overwrite bool
	lazyDisk  bool
	paused    bool
	qemuLog   string

	noProgress bool
	jsonOut    bool
	verbose    bool
	out        io.Writer
	errOut     io.Writer
}

func (o *swapOptions) logger() *slog.Logger {
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(o.errOut, &slog.HandlerOptions{Level: level}))
}

func (o *swapOptions) progress() hypervisor.Progress {
	if o.noProgress {
		return nil
	}
	return &barProgress{w: o.errOut}
}

func init() {
	opts := &swapOptions{}
	swapoutCmd := &cobra.Command{
		Use:   "swapout (--qmp SOCK | --xen DOMAIN) --to DIR",
		Short: "Save a VM's memory, device state and disk delta into DIR (on casfs) and destroy it",
		Long: `swapout first checks what can fail before pausing (the capture mode fits
this QEMU and VM, the VM can be saved); if a check fails the VM runs on.
It then pauses the VM, saves its memory and device state and its qcow2 disk
delta into DIR (normally a directory on casfs), fsyncs everything, writes
DIR/manifest.json, verifies the snapshot by reading it back, and only then
destroys the VM. On any failure after pausing the VM is left paused and
intact and the error names the failed step; continue it with
"stasis resume --qmp SOCK" (or xl unpause).

The snapshot holds the QEMU command line, so "stasis swapin --from DIR"
needs nothing else.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.out, opts.errOut = cmd.OutOrStdout(), cmd.ErrOrStderr()
			return runSwapout(cmd.Context(), opts, args)
		},
	}
	f := swapoutCmd.Flags()
	f.StringVar(&opts.qmp, "qmp", "", "QEMU's QMP unix socket")
	f.StringVar(&opts.to, "to", "", "snapshot directory to create (must not exist or be empty)")
	f.StringVar(&opts.mode, "mode", "auto", "memory capture: auto (= stream), stream, ram-file (RAM in a shared memory-backend-file) or mapped-ram (QEMU >= 9)")
	f.Int64Var(&opts.bandwidth, "max-bandwidth", 0, "migration bandwidth cap in bytes/s (0: 64 GiB/s)")
	f.BoolVar(&opts.keep, "keep", false, "leave the VM paused after the verified snapshot instead of destroying it")
	f.BoolVar(&opts.removeLocal, "remove-local", false, "after a successful swapout delete the local disk overlays and RAM file")
	f.StringVar(&opts.xenDomain, "xen", "", "Xen domain to swap out with xl (instead of --qmp)")
	f.StringVar(&opts.xenConfig, "xen-config", "", "the Xen domain's xl config file (saved with the snapshot)")
	f.StringSliceVar(&opts.xenDisks, "xen-disk", nil, "a Xen disk delta to save, VDEV=PATH (repeatable)")
	f.StringVar(&opts.xl, "xl", "xl", "xl binary")

	swapinCmd := &cobra.Command{
		Use:   "swapin --from DIR",
		Short: "Restore a VM from a snapshot directory and resume it in virtual time",
		Long: `swapin reads DIR/manifest.json, refuses a snapshot that is incomplete or fails
verification (every file's size and BLAKE3 checksum), copies the disk delta
(and, in ram-file mode, the RAM image) to local files, starts the hypervisor
from the saved configuration with the guest clock continuing from where it
stopped, loads the memory while checking its checksum, and resumes the VM.
The driver (qemu, xen) is the one the manifest names. QEMU runs detached;
its QMP socket is the one it had before.

swapin never takes over what may belong to a live VM: the local files are
created exclusively (of two concurrent swapins into the same place exactly
one succeeds), and a QMP socket that still answers is refused, naming the
pid behind it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.out, opts.errOut = cmd.OutOrStdout(), cmd.ErrOrStderr()
			return runSwapin(cmd.Context(), opts, args)
		},
	}
	f = swapinCmd.Flags()
	f.StringVar(&opts.from, "from", "", "snapshot directory (e.g. under .snapshots/ on casfs)")
	f.StringVar(&opts.localDir, "local-dir", "", "put the restored disk overlays and RAM file here (default: their original paths)")
	f.BoolVar(&opts.overwrite, "overwrite", false, "replace local files that already exist")
	f.BoolVar(&opts.paused, "paused", false, "leave the restored VM paused")
	f.BoolVar(&opts.lazyDisk, "lazy-disk", false, "run on a local overlay over the snapshot's disk instead of copying it (use a .snapshots/ path)")
	f.StringVar(&opts.qemuLog, "log", "", "file for QEMU's output (default: discarded)")
	f.StringVar(&opts.xl, "xl", "xl", "xl binary (Xen snapshots)")

	for _, c := range []*cobra.Command{swapoutCmd, swapinCmd} {
		c.Flags().BoolVar(&opts.noProgress, "no-progress", false, "no progress bar")
		c.Flags().BoolVar(&opts.jsonOut, "json", false, "print the summary as JSON")
		c.Flags().BoolVarP(&opts.verbose, "verbose", "v", false, "log every step")
	}
	rootCmd.AddCommand(swapoutCmd, swapinCmd)
}

// swapSummary is what swapout and swapin report.
type swapSummary struct {
	Op        string  `json:"op"`
	Dir       string  `json:"dir"`
	Driver    string  `json:"driver"`
	Mode      string  `json:"mode"`
	Bytes     int64   `json:"bytes"`                // logical bytes of the snapshot
	Uploaded  *int64  `json:"uploaded,omitempty"`   // encoded bytes casfs sent to its block store
	Duplicate *int64  `json:"duplicate,omitempty"`  // raw bytes casfs skipped as already stored
	Downtime  float64 `json:"downtime_s,omitempty"` // swapout: pause until verified and destroyed
	Elapsed   float64 `json:"elapsed_s"`            // whole command
	GuestTime string  `json:"guest_time,omitempty"` // guest clock at pause
	Offset    string  `json:"virtual_offset,omitempty"`
	Pid       int     `json:"pid,omitempty"` // swapin: the hypervisor process
	Note      string  `json:"note,omitempty"`
}

func runSwapout(ctx context.Context, opts *swapOptions, _ []string) error {
	if opts.to == "" {
		return errors.New("swapout: --to DIR is required")
	}
	if (opts.qmp == "") == (opts.xenDomain == "") {
		return errors.New("swapout: give exactly one of --qmp SOCK and --xen DOMAIN")
	}
	log := opts.logger()
	var m hypervisor.Machine
	if opts.qmp != "" {
		mode := opts.mode
		if mode == "auto" {
			mode = qemuhook.ModeAuto
		}
		qm, err := qemuhook.Connect(ctx, qemuhook.Config{QMP: opts.qmp, Mode: mode, MaxBandwidth: opts.bandwidth, Logger: log})
		if err != nil {
			return fmt.Errorf("swapout: %w", err)
		}
		defer qm.Close()
		m = qm
	} else {
		var disks []xenhook.Disk
		for _, d := range opts.xenDisks {
			vdev, path, ok := strings.Cut(d, "=")
			if !ok {
				return fmt.Errorf("swapout: --xen-disk %q: want VDEV=PATH", d)
			}
			disks = append(disks, xenhook.Disk{Vdev: vdev, Path: path})
		}
		xm, err := xenhook.New(xenhook.Config{Domain: opts.xenDomain, XL: opts.xl, DomainConfig: opts.xenConfig, Disks: disks, Logger: log})
		if err != nil {
			return fmt.Errorf("swapout: %w", err)
		}
		m = xm
	}
	host, _ := os.Hostname()
	start := time.Now()
	stats0, haveStats := casfsStats(opts.to)
	p := opts.progress()
	res, err := hypervisor.Swapout(ctx, m, opts.to, hypervisor.SwapoutOptions{Keep: opts.keep, Progress: p, Logger: log, Host: host})
	finishBar(p)
	if err != nil {
		return err
	}
	sum := swapSummary{Op: "swapout", Dir: opts.to, Driver: res.Manifest.Driver, Mode: res.Manifest.Mode, Bytes: res.Bytes,
		Downtime: res.Downtime.Seconds(), Elapsed: time.Since(start).Seconds()}
	if !res.Manifest.GuestTime.IsZero() {
		sum.GuestTime = res.Manifest.GuestTime.Format(time.RFC3339)
		sum.Offset = time.Duration(res.Manifest.VirtualOffsetNS).Round(time.Second).String()
	}
	if haveStats {
		if stats1, ok := casfsStats(opts.to); ok {
			up := int64(stats1.Mount.BytesUploaded - stats0.Mount.BytesUploaded)
			dup := int64(stats1.Mount.BytesSkippedDup - stats0.Mount.BytesSkippedDup)
			sum.Uploaded, sum.Duplicate = &up, &dup
			sum.Note = "upload counters are the casfs mount's, so concurrent writers add to them"
		}
	} else {
		sum.Note = "not on casfs: no upload statistics"
	}
	if opts.removeLocal && !opts.keep && res.Manifest.Driver == qemuhook.DriverName {
		if err := qemuhook.RemoveLocal(res.Manifest); err != nil {
			log.Warn("removing local files", "err", err)
		}
	}
	return printSwapSummary(opts, sum)
}

func runSwapin(ctx context.Context, opts *swapOptions, _ []string) error {
	if opts.from == "" {
		return errors.New("swapin: --from DIR is required")
	}
	log := opts.logger()
	start := time.Now()
	man, err := hypervisor.ReadManifest(opts.from)
	if err != nil {
		return fmt.Errorf("swapin: %w", err)
	}
	p := opts.progress()
	sum := swapSummary{Op: "swapin", Dir: opts.from, Driver: man.Driver, Mode: man.Mode, Bytes: man.Bytes()}
	m, err := hypervisor.Restore(ctx, opts.from, hypervisor.RestoreOptions{
		LocalDir: opts.localDir, Overwrite: opts.overwrite, LazyDisk: opts.lazyDisk, Paused: opts.paused, Log: opts.qemuLog,
		Progress: p, Logger: log,
		DriverOptions: map[string]any{xenhook.DriverName: xenhook.DriverOptions{XL: opts.xl}},
	})
	finishBar(p)
	if err != nil {
		return fmt.Errorf("swapin: %w", err)
	}
	if pm, ok := m.(interface{ Pid() int }); ok {
		sum.Pid = pm.Pid()
	}
	// The VM runs on without us: drop our connection to it, if any.
	if c, ok := m.(io.Closer); ok {
		c.Close()
	}
	sum.Elapsed = time.Since(start).Seconds()
	if !man.GuestTime.IsZero() {
		sum.GuestTime = man.GuestTime.Format(time.RFC3339)
	}
	return printSwapSummary(opts, sum)
}

func printSwapSummary(opts *swapOptions, s swapSummary) error {
	if opts.jsonOut {
		enc := json.NewEncoder(opts.out)
		enc.SetIndent("", "  ")
		return enc.Encode(s)
	}
	w := opts.out
	fmt.Fprintf(w, "%s %s: %s/%s, %s\n", s.Op, s.Dir, s.Driver, s.Mode, humanBytes(s.Bytes))
	if s.Uploaded != nil {
		fmt.Fprintf(w, "  uploaded %s, skipped as duplicates %s\n", humanBytes(*s.Uploaded), humanBytes(*s.Duplicate))
	}
	if s.Op == "swapout" {
		fmt.Fprintf(w, "  downtime %.2fs (paused until verified and destroyed)\n", s.Downtime)
	}
	fmt.Fprintf(w, "  elapsed %.2fs\n", s.Elapsed)
	if s.GuestTime != "" {
		fmt.Fprintf(w, "  guest clock %s", s.GuestTime)
		if s.Offset != "" {
			fmt.Fprintf(w, " (virtual time lags host by %s)", s.Offset)
		}
		fmt.Fprintln(w)
	}
	if s.Pid != 0 {
		fmt.Fprintf(w, "  running as pid %d\n", s.Pid)
	}
	if s.Note != "" {
		fmt.Fprintf(w, "  note: %s\n", s.Note)
	}
	return nil
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// casfsMountStats is the part of casfs's user.casfs.stats the summary needs.
type casfsMountStats struct {
	Mount struct {
		BytesUploaded   uint64 `json:"bytes_uploaded"`
		BytesSkippedDup uint64 `json:"bytes_skipped_dup"`
	} `json:"mount"`
}

// casfsStats finds the casfs mount holding path (the nearest existing
// ancestor whose root answers the user.casfs.stats xattr) and reads it.
func casfsStats(path string) (casfsMountStats, bool) {
	var s casfsMountStats
	p, err := filepath.Abs(path)
	if err != nil {
		return s, false
	}
	buf := make([]byte, 64<<10)
	for {
		if n, err := unix.Getxattr(p, "user.casfs.stats", buf); err == nil {
			return s, json.Unmarshal(buf[:n], &s) == nil
		}
		parent := filepath.Dir(p)
		if parent == p {
			return s, false
		}
		p = parent
	}
}

// barProgress shows one progress bar per phase on stderr.
type barProgress struct {
	w   io.Writer
	bar *progressbar.ProgressBar
}

func (b *barProgress) Start(phase string, total int64) {
	if b.bar != nil {
		b.bar.Finish()
		fmt.Fprintln(b.w)
	}
	b.bar = progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(b.w), progressbar.OptionShowBytes(true),
		progressbar.OptionSetDescription(phase), progressbar.OptionThrottle(100*time.Millisecond))
}

func (b *barProgress) Add(n int64) {
	if b.bar != nil {
		b.bar.Add64(n)
	}
}

func finishBar(p hypervisor.Progress) {
	if b, ok := p.(*barProgress); ok && b.bar != nil {
		b.bar.Finish()
		fmt.Fprintln(b.w)
	}
}
