package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"
)

type workload struct {
	name string
	run  func(ctx context.Context, log *slog.Logger, o options, r *report) error
}

// workloads run in this order; the guest datasets are captured once and shared.
var workloads = []workload{
	{"vm", runVM},
	{"experiment", runExperiment},
	{"metadata", runMetadata},
}

func workloadNames() []string {
	var n []string
	for _, w := range workloads {
		n = append(n, w.name)
	}
	return n
}

// ingestCase describes one side-by-side measurement: versions are ingested
// in order into a fresh repository; the last one is measured; restore reads
// restoreFile of the last version back with cold caches.
type ingestCase struct {
	versions    []string // source trees, ingested in order
	restoreFile string   // path relative to a version root
}

// measureIngest runs the case with every tool, o.runs times each, and
// returns, per version, one row per tool (stasis first). Every version is
// measured as it is ingested on top of the earlier ones; restore is
// measured once, after the last version, and reported in its rows.
func measureIngest(ctx context.Context, log *slog.Logger, o options, c ingestCase) ([][]ingestRow, error) {
	nv := len(c.versions)
	last := c.versions[nv-1]
	out := make([][]ingestRow, nv)
	for ti := range peerTools(o) {
		type acc struct {
			speeds             []float64
			stored, trans, rss []int64
		}
		per := make([]acc, nv)
		var restores []float64
		name := ""
		for iter := 0; iter < o.runs; iter++ {
			t := peerTools(o)[ti]
			name = t.Name()
			dir := filepath.Join(o.work, fmt.Sprintf("%s-%d", t.Name(), iter))
			if err := t.Init(ctx, dir); err != nil {
				return nil, fmt.Errorf("%s init: %w", t.Name(), err)
			}
			fail := func(what string, err error) ([][]ingestRow, error) {
				t.Close()
				os.RemoveAll(dir)
				return nil, fmt.Errorf("%s %s: %w", t.Name(), what, err)
			}
			for i, v := range c.versions {
				before, tBefore := t.Stored(), transferredOf(t)
				dropCaches()
				start := time.Now()
				peak, err := t.Ingest(ctx, v, fmt.Sprintf("v%d", i+1))
				if err != nil {
					return fail(fmt.Sprintf("ingest v%d", i+1), err)
				}
				secs := time.Since(start).Seconds()
				trans := t.Stored() - before
				if tr, ok := t.(transferrer); ok {
					trans = tr.Transferred() - tBefore
				}
				per[i].speeds = append(per[i].speeds, float64(logicalSize(v))/1e6/secs)
				per[i].stored = append(per[i].stored, t.Stored())
				per[i].trans = append(per[i].trans, trans)
				per[i].rss = append(per[i].rss, peak)
				log.Info("measured", "tool", name, "run", iter, "version", i+1, "MBps", fmt.Sprintf("%.0f", per[i].speeds[iter]), "stored", mb(t.Stored()))
			}
			if rm, ok := t.(interface{ Remount(context.Context) error }); ok {
				if err := rm.Remount(ctx); err != nil {
					return fail("remount", err)
				}
			}
			dropCaches()
			dst := filepath.Join(o.work, "restored")
			start := time.Now()
			if err := t.Restore(ctx, fmt.Sprintf("v%d", nv), c.restoreFile, dst); err != nil {
				return fail("restore", err)
			}
			restores = append(restores, time.Since(start).Seconds())
			if err := sameFile(filepath.Join(last, c.restoreFile), dst); err != nil {
				return fail("restore produced a different file", err)
			}
			os.Remove(dst)
			if err := t.Close(); err != nil {
				log.Warn("close", "tool", name, "err", err)
			}
			os.RemoveAll(dir)
		}
		for i := range per {
			row := ingestRow{Tool: name, MBps: summarize(per[i].speeds), Stored: medianInt(per[i].stored),
				Transferred: medianInt(per[i].trans), PeakRSS: medianInt(per[i].rss)}
			if i == nv-1 {
				row.RestoreS = summarize(restores)
			}
			out[i] = append(out[i], row)
		}
	}
	return out, nil
}

func transferredOf(t Tool) int64 {
	if tr, ok := t.(transferrer); ok {
		return tr.Transferred()
	}
	return 0
}

func medianInt(xs []int64) int64 {
	f := make([]float64, len(xs))
	for i, x := range xs {
		f[i] = float64(x)
	}
	return int64(summarize(f).Median)
}

// sameFile compares two files byte for byte.
func sameFile(a, b string) error {
	fa, err := os.Open(a)
	if err != nil {
		return err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return err
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	var off int64
	for {
		na, ea := fa.ReadAt(ba, off)
		nb, eb := fb.ReadAt(bb, off)
		if na != nb || string(ba[:na]) != string(bb[:nb]) {
			return fmt.Errorf("%s and %s differ near offset %d", a, b, off)
		}
		if na == 0 || ea != nil || eb != nil {
			if (ea == nil) != (eb == nil) {
				return fmt.Errorf("%s and %s differ in length", a, b)
			}
			return nil
		}
		off += int64(na)
	}
}
