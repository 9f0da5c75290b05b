package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// metaTarget is a directory to run metadata operations in, and how to tear it down.
type metaTarget struct {
	name  string
	dir   string
	close func() error
}

// runMetadata measures create/stat/readdir/unlink rates and `tar x` of a
// source tree (Go's crypto packages, from GOROOT: ~1,200 files, 16 MB)
// through casfs, on tmpfs and on local disk.
func runMetadata(ctx context.Context, log *slog.Logger, o options, r *report) error {
	const files = 5000
	tarball := filepath.Join(o.work, "src.tar")
	goroot := runtime.GOROOT()
	const tree = "src/crypto"
	if _, _, _, err := run(ctx, goroot, nil, "tar", "cf", tarball, tree); err != nil {
		return err
	}
	nfiles := 0
	filepath.WalkDir(filepath.Join(goroot, tree), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			nfiles++
		}
		return nil
	})
	targets := func() ([]metaTarget, error) {
		st := &stasisTool{bin: o.casfs}
		if err := st.Init(ctx, filepath.Join(o.work, "meta-stasis")); err != nil {
			return nil, err
		}
		local := filepath.Join(o.work, "meta-local")
		shm, err := os.MkdirTemp("/dev/shm", "stasis-bench-meta")
		if err != nil {
			st.Close()
			return nil, err
		}
		return []metaTarget{
			{"stasis", st.mnt, st.Close},
			{"tmpfs", shm, func() error { return os.RemoveAll(shm) }},
			{"local-disk", local, func() error { return os.RemoveAll(local) }},
		}, nil
	}
	type res struct{ create, stat, readdir, unlink, tarx []float64 }
	results := map[string]*res{}
	var order []string
	for iter := 0; iter < o.runs; iter++ {
		ts, err := targets()
		if err != nil {
			return err
		}
		for _, t := range ts {
			if results[t.name] == nil {
				results[t.name] = &res{}
				order = append(order, t.name)
			}
			rs := results[t.name]
			d := filepath.Join(t.dir, "m")
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
			rate := func(n int, f func(i int) error) (float64, error) {
				start := time.Now()
				for i := 0; i < n; i++ {
					if err := f(i); err != nil {
						return 0, err
					}
				}
				return float64(n) / time.Since(start).Seconds(), nil
			}
			name := func(i int) string { return filepath.Join(d, fmt.Sprintf("f%05d", i)) }
			c, err := rate(files, func(i int) error {
				f, err := os.Create(name(i))
				if err != nil {
					return err
				}
				return f.Close()
			})
			if err != nil {
				return fmt.Errorf("%s create: %w", t.name, err)
			}
			s, err := rate(files, func(i int) error { _, err := os.Lstat(name(i)); return err })
			if err != nil {
				return fmt.Errorf("%s stat: %w", t.name, err)
			}
			rd, err := rate(20, func(int) error {
				ents, err := os.ReadDir(d)
				if err == nil && len(ents) != files {
					err = fmt.Errorf("readdir saw %d of %d entries", len(ents), files)
				}
				return err
			})
			if err != nil {
				return fmt.Errorf("%s readdir: %w", t.name, err)
			}
			u, err := rate(files, func(i int) error { return os.Remove(name(i)) })
			if err != nil {
				return fmt.Errorf("%s unlink: %w", t.name, err)
			}
			tx := filepath.Join(t.dir, "tarx")
			os.MkdirAll(tx, 0o755)
			secs, _, _, err := run(ctx, tx, nil, "tar", "xf", tarball)
			if err == nil {
				_, _, _, err = run(ctx, "", nil, "sync", "-f", tx)
			}
			if err != nil {
				return fmt.Errorf("%s tar x: %w", t.name, err)
			}
			rs.create = append(rs.create, c)
			rs.stat = append(rs.stat, s)
			rs.readdir = append(rs.readdir, rd*files)
			rs.unlink = append(rs.unlink, u)
			rs.tarx = append(rs.tarx, secs.Seconds())
			log.Info("metadata", "target", t.name, "run", iter, "create/s", int(c), "tar-x-s", fmt.Sprintf("%.1f", secs.Seconds()))
		}
		for _, t := range ts {
			if err := t.close(); err != nil {
				log.Warn("close", "target", t.name, "err", err)
			}
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d empty files per phase; readdir counts entries returned per second; `tar x` unpacks Go's `src/crypto` tree (%d files) and syncs. casfs makes every file durable at close (a metad commit with fsync, plus a block-store sync per file with data) and other namespace changes durable within a second (metad `--sync=commits`); tmpfs and local disk sync nothing until the final `sync -f`.\n\n", files, nfiles)
	b.WriteString("| target | create/s | stat/s | readdir entries/s | unlink/s | tar x s (min–max) |\n|---|---|---|---|---|---|\n")
	for _, n := range order {
		rs := results[n]
		tx := summarize(rs.tarx)
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | %.0f | %.0f | %.1f (%.1f–%.1f) |\n", n, summarize(rs.create).Median, summarize(rs.stat).Median,
			summarize(rs.readdir).Median, summarize(rs.unlink).Median, tx.Median, tx.Min, tx.Max)
	}
	b.WriteString("\n")
	r.add(&section{title: "5. Metadata through the mount", extra: b.String()})
	return nil
}
