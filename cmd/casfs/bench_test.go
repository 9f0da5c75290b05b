package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"stasis/internal/seqio"
)

// Sequential I/O through a real casfs process (embedded stores on local
// disk) against the same file on the local disk, written with fsync.
//
//	go test -run '^$' -bench SeqIO -benchtime 1x ./cmd/casfs
//
// CASFS_BENCH_MIB sets the file size (default 1024). Metrics are MB/s and
// ratios to the local disk; casfs-rss-MiB is the casfs process's peak RSS.
// CASFS_BENCH_BIN runs a casfs binary built beforehand instead of this
// tree's (for A/B runs of two builds in one session).
// BenchmarkRSS writes CASFS_BENCH_RSS_MIB (default 4096) MiB. The data
// kinds (zero, text, random) are package seqio's, which casfs's
// BenchmarkWrite writes too.

// writeFile writes mib blocks of kind to path, fsyncs and closes it.
func writeFile(b *testing.B, path, kind string, mib int) time.Duration {
	b.Helper()
	buf := make([]byte, seqio.BlockSize)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	var gen time.Duration
	start := time.Now()
	for i := range mib {
		g := time.Now()
		if err := seqio.Fill(kind, i, buf); err != nil {
			b.Fatal(err)
		}
		gen += time.Since(g)
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return time.Since(start) - gen // data generation is not I/O
}

func readFile(b *testing.B, path string) time.Duration {
	b.Helper()
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, seqio.BlockSize)
	start := time.Now()
	// Both sides wrapped: io.Discard's ReadFrom would read 8 KiB at a time.
	if _, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{f}, buf); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

func dropCaches(b *testing.B) {
	syscall.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		b.Logf("cannot drop page cache (%v); cold reads are warm", err)
	}
}

// procStatus returns a /proc/PID/status field in bytes.
func procStatus(pid int, field string) int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, field+":") {
			kb, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// procCPU returns the user + system CPU time pid has used (includes the
// embedded stores; excludes the kernel's share of FUSE in the writer).
func procCPU(pid int) time.Duration {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	// Fields after the command name, which ends with the last ')'.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

func peakRSS(pid int) int64 { return procStatus(pid, "VmHWM") }

// sampleAnon records the peak anonymous RSS of pid (heap and stacks, not
// the block store's memory-mapped files, which the kernel can drop) until
// stop is called.
func sampleAnon(pid int) (stop func() int64) {
	done := make(chan struct{})
	peak := make(chan int64)
	go func() {
		var m int64
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			m = max(m, procStatus(pid, "RssAnon"))
			select {
			case <-done:
				peak <- m
				return
			case <-t.C:
			}
		}
	}()
	return func() int64 { close(done); return <-peak }
}

// stopMount stops casfs with SIGTERM and waits until it has unmounted and
// exited (it holds the stores' locks until then).
func stopMount(b *testing.B, m *mountProc, mnt string) {
	m.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.Exited:
	case <-time.After(2 * time.Minute):
		b.Fatal("casfs did not exit on SIGTERM")
	}
	if mounted(mnt) {
		unix.Unmount(mnt, unix.MNT_DETACH)
		b.Fatal("casfs exited but left its mount")
	}
}

// benchBinary is CASFS_BENCH_BIN, or this tree's casfs built for the run.
func benchBinary(b *testing.B) string {
	if bin := os.Getenv("CASFS_BENCH_BIN"); bin != "" {
		return bin
	}
	return buildBinary(b)
}

func BenchmarkSeqIO(b *testing.B) {
	bin := benchBinary(b)
	mib := seqio.EnvInt("CASFS_BENCH_MIB", 1024)
	for _, kind := range seqio.Kinds {
		b.Run(kind, func(b *testing.B) {
			for range b.N {
				work := b.TempDir()
				data, mnt := filepath.Join(work, "data"), filepath.Join(work, "mnt")
				os.Mkdir(mnt, 0o755)
				mbps := func(d time.Duration) float64 { return float64(mib<<20) / d.Seconds() / 1e6 }

				local := filepath.Join(work, "local")
				lw := writeFile(b, local, kind, mib)
				dropCaches(b)
				lr := readFile(b, local)
				os.Remove(local)

				cmd := startMount(b, bin, data, mnt)
				stop := sampleAnon(cmd.Process.Pid)
				c0 := procCPU(cmd.Process.Pid)
				cw := writeFile(b, filepath.Join(mnt, "one"), kind, mib)
				c1 := procCPU(cmd.Process.Pid)
				cw2 := writeFile(b, filepath.Join(mnt, "two"), kind, mib)
				c2 := procCPU(cmd.Process.Pid)
				anon := stop()
				rss := peakRSS(cmd.Process.Pid)
				stopMount(b, cmd, mnt)
				dropCaches(b)
				cmd = startMount(b, bin, data, mnt)
				cr := readFile(b, filepath.Join(mnt, "one"))
				stopMount(b, cmd, mnt)

				b.ReportMetric(mbps(lw), "local-write-MB/s")
				b.ReportMetric(mbps(cw), "casfs-write-MB/s")
				b.ReportMetric(mbps(cw2), "casfs-rewrite-MB/s")
				b.ReportMetric(mbps(lr), "local-coldread-MB/s")
				b.ReportMetric(mbps(cr), "casfs-coldread-MB/s")
				b.ReportMetric(lw.Seconds()/cw.Seconds(), "write-x-local")
				b.ReportMetric(lw.Seconds()/cw2.Seconds(), "rewrite-x-local")
				b.ReportMetric(lr.Seconds()/cr.Seconds(), "coldread-x-local")
				b.ReportMetric(float64(rss)/(1<<20), "casfs-rss-MiB")
				b.ReportMetric(float64(anon)/(1<<20), "casfs-anon-MiB")
				gib := float64(mib) / 1024
				b.ReportMetric((c1-c0).Seconds()/gib, "casfs-write-CPU-s/GiB")
				b.ReportMetric((c2-c1).Seconds()/gib, "casfs-rewrite-CPU-s/GiB")
			}
		})
	}
}

func BenchmarkRSS(b *testing.B) {
	bin := benchBinary(b)
	mib := seqio.EnvInt("CASFS_BENCH_RSS_MIB", 4096)
	for range b.N {
		work := b.TempDir()
		data, mnt := filepath.Join(work, "data"), filepath.Join(work, "mnt")
		os.Mkdir(mnt, 0o755)
		cmd := startMount(b, bin, data, mnt)
		stop := sampleAnon(cmd.Process.Pid)
		d := writeFile(b, filepath.Join(mnt, "big"), "text", mib)
		anon := stop()
		rss := peakRSS(cmd.Process.Pid)
		stopMount(b, cmd, mnt)
		b.ReportMetric(float64(mib<<20)/d.Seconds()/1e6, "casfs-write-MB/s")
		b.ReportMetric(float64(rss)/(1<<20), "casfs-rss-MiB")
		b.ReportMetric(float64(anon)/(1<<20), "casfs-anon-MiB")
	}
}
