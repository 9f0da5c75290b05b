package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"stasis/hypervisor"
)

// stasisTool ingests through a real casfs mount in embedded mode, its data
// directory on the same disk as the peers' repositories. Every file gets
// the chunker policy stasis itself would choose for it (see policyFor).
type stasisTool struct {
	bin       string // casfs binary
	dir, mnt  string
	cmd       *exec.Cmd
	uploaded0 int64
	peakRSS   int64
}

func (t *stasisTool) Name() string { return "stasis" }

func (t *stasisTool) Init(ctx context.Context, dir string) error {
	t.dir = filepath.Join(dir, "data")
	t.mnt = filepath.Join(dir, "mnt")
	for _, d := range []string{t.dir, t.mnt} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	return t.mount(ctx)
}

func (t *stasisTool) mount(ctx context.Context) error {
	t.cmd = exec.Command(t.bin, "mount", "--data", t.dir, t.mnt)
	// The log lives beside the repository, not in it, so it survives cleanup.
	log, err := os.OpenFile(filepath.Dir(t.dir)+".casfs.log", os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	t.cmd.Stdout, t.cmd.Stderr = log, log
	if err := t.cmd.Start(); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if isMountPoint(t.mnt) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.cmd.Process.Kill()
	t.cmd.Wait()
	return fmt.Errorf("casfs did not mount %s within 30s (see %s.casfs.log)", t.mnt, filepath.Dir(t.dir))
}

func isMountPoint(p string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	abs, _ := filepath.Abs(p)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == abs {
			return true
		}
	}
	return false
}

func (t *stasisTool) unmount() error {
	if t.cmd == nil {
		return nil
	}
	t.peakRSS = max(t.peakRSS, procHWM(t.cmd.Process.Pid))
	t.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- t.cmd.Wait() }()
	select {
	case err := <-done:
		t.cmd = nil
		return err
	case <-time.After(60 * time.Second):
		t.cmd.Process.Kill()
		<-done
		syscall.Unmount(t.mnt, syscall.MNT_DETACH)
		t.cmd = nil
		return fmt.Errorf("casfs did not exit within 60s of SIGTERM")
	}
}

// policyFor is the chunker stasis's swapout uses per file kind (the
// hypervisor package's constants): page-aligned RAM images at 4 KiB, qcow2
// overlays at their 64 KiB cluster size, migration streams content-defined;
// anything else gets the mount's default.
func policyFor(name string) string {
	switch {
	case strings.HasSuffix(name, ".ram"):
		return hypervisor.ChunkerRAM
	case strings.HasSuffix(name, ".qcow2"):
		return "fixed:65536"
	case strings.HasSuffix(name, ".mig"):
		return hypervisor.ChunkerStream
	}
	return ""
}

func (t *stasisTool) Ingest(ctx context.Context, src, name string) (int64, error) {
	dstRoot := filepath.Join(t.mnt, name)
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		dst := filepath.Join(dstRoot, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(dst, 0o755)
		case d.Type().IsRegular():
			return copySparse(p, dst, policyFor(p))
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, dst)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return procHWM(t.cmd.Process.Pid), nil
}

// copySparse copies a file, skipping its holes with SEEK_DATA/SEEK_HOLE the
// way cp --sparse does, after setting the chunker policy on the new file.
// close() on casfs returns only when the file is durable.
func copySparse(src, dst, policy string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, fi.Mode().Perm())
	if err != nil {
		return err
	}
	if policy != "" {
		if err := unix.Fsetxattr(int(out.Fd()), "user.casfs.chunker", []byte(policy), 0); err != nil {
			out.Close()
			return fmt.Errorf("set chunker on %s: %w", dst, err)
		}
	}
	buf := make([]byte, 1<<20)
	size := fi.Size()
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if err != nil { // ENXIO: only a hole remains
			break
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			hole = size
		}
		if _, err := io.CopyBuffer(io.NewOffsetWriter(out, data), io.NewSectionReader(in, data, hole-data), buf); err != nil {
			out.Close()
			return err
		}
		off = hole
	}
	if err := out.Truncate(size); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func (t *stasisTool) Restore(ctx context.Context, name, rel, dst string) error {
	_, _, _, err := run(ctx, "", nil, "cp", "--sparse=always", filepath.Join(t.mnt, name, rel), dst)
	return err
}

// Remount unmounts and mounts again, so the next reads are cold in casfs's
// own caches as well as the kernel's.
func (t *stasisTool) Remount(ctx context.Context) error {
	if err := t.unmount(); err != nil {
		return err
	}
	dropCaches()
	return t.mount(ctx)
}

func (t *stasisTool) Stored() int64 { return diskUsage(t.dir) }

// Transferred is the bytes casfs uploaded to blockd since mount (encoded,
// as they crossed the wire), from `casfs stats`.
func (t *stasisTool) Transferred() int64 {
	st, err := t.stats()
	if err != nil {
		return -1
	}
	return int64(st.Mount.BytesUploaded)
}

type casfsStats struct {
	Mount struct {
		BytesUploaded float64 `json:"bytes_uploaded"`
	} `json:"mount"`
}

func (t *stasisTool) stats() (casfsStats, error) {
	var st casfsStats
	out, err := exec.Command(t.bin, "stats", t.mnt).Output()
	if err != nil {
		return st, fmt.Errorf("casfs stats: %w", err)
	}
	return st, json.Unmarshal(out, &st)
}

func (t *stasisTool) Close() error { return t.unmount() }
