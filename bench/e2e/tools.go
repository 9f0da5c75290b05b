package main

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Tool is one way of storing versions of a tree: local disk, tmpfs, a peer
// backup tool, or stasis. Each version is a directory tree ingested whole.
type Tool interface {
	Name() string
	// Init prepares an empty repository under dir (on the disk being measured).
	Init(ctx context.Context, dir string) error
	// Ingest stores tree src as version name, durably; it returns the peak
	// RSS of the process doing the work.
	Ingest(ctx context.Context, src, name string) (peakRSS int64, err error)
	// Restore writes file rel of version name to dst.
	Restore(ctx context.Context, name, rel, dst string) error
	// Stored is the repository's footprint on disk, in bytes.
	Stored() int64
	Close() error
}

// transferrer is implemented by tools that know how many bytes they moved
// (stasis: bytes uploaded to blockd). Others count repository growth.
type transferrer interface{ Transferred() int64 }

// copyTool copies versions side by side with cp and syncs them: the
// "local disk" and "tmpfs" baselines (no dedup, no compression).
type copyTool struct {
	name string
	base string // where repositories live, e.g. /dev/shm for tmpfs
	dir  string
}

func (t *copyTool) Name() string { return t.name }
func (t *copyTool) Init(ctx context.Context, dir string) error {
	if t.base != "" {
		dir = filepath.Join(t.base, "stasis-bench-"+filepath.Base(dir))
	}
	t.dir = dir
	return os.MkdirAll(dir, 0o755)
}
func (t *copyTool) Ingest(ctx context.Context, src, name string) (int64, error) {
	_, rss, _, err := run(ctx, "", nil, "cp", "-a", "--sparse=always", src, filepath.Join(t.dir, name))
	if err != nil {
		return 0, err
	}
	// cp + fsync: sync every copied file (coreutils sync FILE... fsyncs each).
	var files []string
	filepath.WalkDir(filepath.Join(t.dir, name), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			files = append(files, p)
		}
		return nil
	})
	for len(files) > 0 {
		n := min(len(files), 1000)
		if _, _, _, err := run(ctx, "", nil, "sync", files[:n]...); err != nil {
			return 0, err
		}
		files = files[n:]
	}
	return rss, nil
}
func (t *copyTool) Restore(ctx context.Context, name, rel, dst string) error {
	_, _, _, err := run(ctx, "", nil, "cp", "--sparse=always", filepath.Join(t.dir, name, rel), dst)
	return err
}
func (t *copyTool) Stored() int64 { return diskUsage(t.dir) }
func (t *copyTool) Close() error {
	if t.base != "" {
		return os.RemoveAll(t.dir)
	}
	return nil
}

// rsyncTool keeps versions as rsync --link-dest trees: unchanged files are
// hard links, changed files are copied whole.
type rsyncTool struct {
	dir, prev string
}

func (t *rsyncTool) Name() string { return "rsync" }
func (t *rsyncTool) Init(ctx context.Context, dir string) error {
	t.dir = dir
	return os.MkdirAll(dir, 0o755)
}
func (t *rsyncTool) Ingest(ctx context.Context, src, name string) (int64, error) {
	args := []string{"-a", "--sparse"}
	if t.prev != "" {
		args = append(args, "--link-dest="+filepath.Join(t.dir, t.prev))
	}
	args = append(args, src+"/", filepath.Join(t.dir, name)+"/")
	_, rss, _, err := run(ctx, "", nil, "rsync", args...)
	if err == nil {
		_, _, _, err = run(ctx, "", nil, "sync", "-f", t.dir)
	}
	t.prev = name
	return rss, err
}
func (t *rsyncTool) Restore(ctx context.Context, name, rel, dst string) error {
	_, _, _, err := run(ctx, "", nil, "cp", "--sparse=always", filepath.Join(t.dir, name, rel), dst)
	return err
}
func (t *rsyncTool) Stored() int64 { return diskUsage(t.dir) }
func (t *rsyncTool) Close() error  { return nil }

// resticTool: restic 0.14, repository version 2 (zstd auto compression), its
// default content-defined chunking (~1 MiB average).
type resticTool struct{ dir string }

func (t *resticTool) env() []string {
	return []string{"RESTIC_REPOSITORY=" + t.dir, "RESTIC_PASSWORD=bench", "RESTIC_CACHE_DIR=" + t.dir + ".cache"}
}
func (t *resticTool) Name() string { return "restic" }
func (t *resticTool) Init(ctx context.Context, dir string) error {
	t.dir = dir
	_, _, _, err := run(ctx, "", t.env(), "restic", "init", "--repository-version", "2")
	return err
}
func (t *resticTool) Ingest(ctx context.Context, src, name string) (int64, error) {
	_, rss, _, err := run(ctx, src, t.env(), "restic", "backup", "--quiet", "--tag", name, ".")
	return rss, err
}
func (t *resticTool) Restore(ctx context.Context, name, rel, dst string) error {
	tmp := dst + ".restic"
	defer os.RemoveAll(tmp)
	_, _, _, err := run(ctx, "", t.env(), "restic", "restore", "latest", "--tag", name, "--target", tmp, "--include", rel)
	if err != nil {
		return err
	}
	return moveFound(tmp, rel, dst)
}
func (t *resticTool) Stored() int64 { return diskUsage(t.dir) }
func (t *resticTool) Close() error  { return os.RemoveAll(t.dir + ".cache") }

// borgTool: borg 1.2 with lz4 (stasis's compression class), no encryption,
// default buzhash chunker (~2 MiB average).
type borgTool struct{ dir string }

func (t *borgTool) env() []string {
	return []string{"BORG_REPO=" + t.dir, "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes",
		"BORG_RELOCATED_REPO_ACCESS_IS_OK=yes", "BORG_BASE_DIR=" + t.dir + ".home"}
}
func (t *borgTool) Name() string { return "borg" }
func (t *borgTool) Init(ctx context.Context, dir string) error {
	t.dir = dir
	_, _, _, err := run(ctx, "", t.env(), "borg", "init", "--encryption=none")
	return err
}
func (t *borgTool) Ingest(ctx context.Context, src, name string) (int64, error) {
	_, rss, _, err := run(ctx, src, t.env(), "borg", "create", "--compression", "lz4", "::"+name, ".")
	return rss, err
}
func (t *borgTool) Restore(ctx context.Context, name, rel, dst string) error {
	tmp := dst + ".borg"
	os.MkdirAll(tmp, 0o755)
	defer os.RemoveAll(tmp)
	_, _, _, err := run(ctx, tmp, t.env(), "borg", "extract", "--sparse", "::"+name, rel)
	if err != nil {
		return err
	}
	return moveFound(tmp, rel, dst)
}
func (t *borgTool) Stored() int64 { return diskUsage(t.dir) }
func (t *borgTool) Close() error  { return os.RemoveAll(t.dir + ".home") }

// casyncTool: one blob index per file (how casync stores images), its
// defaults: zstd, chunks 16/64/256 KiB, one shared chunk store.
type casyncTool struct{ dir string }

func (t *casyncTool) Name() string { return "casync" }
func (t *casyncTool) Init(ctx context.Context, dir string) error {
	t.dir = dir
	return os.MkdirAll(filepath.Join(dir, "store"), 0o755)
}
func (t *casyncTool) Ingest(ctx context.Context, src, name string) (int64, error) {
	var peak int64
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		idx := filepath.Join(t.dir, name, rel+".caibx")
		if err := os.MkdirAll(filepath.Dir(idx), 0o755); err != nil {
			return err
		}
		_, rss, _, err := run(ctx, "", nil, "casync", "make", "--store="+filepath.Join(t.dir, "store"), idx, p)
		peak = max(peak, rss)
		return err
	})
	if err == nil {
		_, _, _, err = run(ctx, "", nil, "sync", "-f", t.dir)
	}
	return peak, err
}
func (t *casyncTool) Restore(ctx context.Context, name, rel, dst string) error {
	_, _, _, err := run(ctx, "", nil, "casync", "extract", "--store="+filepath.Join(t.dir, "store"),
		filepath.Join(t.dir, name, rel+".caibx"), dst)
	return err
}
func (t *casyncTool) Stored() int64 { return diskUsage(t.dir) }
func (t *casyncTool) Close() error  { return nil }

// moveFound finds rel under a restore target (tools differ in how much of
// the original path they recreate) and renames it to dst.
func moveFound(root, rel, dst string) error {
	var found string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && strings.HasSuffix(p, "/"+rel) {
			found = p
			return filepath.SkipAll
		}
		return nil
	})
	if found == "" {
		return fmt.Errorf("restored tree under %s has no %s", root, rel)
	}
	return os.Rename(found, dst)
}
