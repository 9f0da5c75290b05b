package casfs_test

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"stasis/casfs"
	"stasis/casfs/internal/testenv"
	"stasis/internal/seqio"
	"stasis/metad"
)

// BenchmarkWrite measures the write path of the logic layer alone (no
// FUSE, in-memory block store, metad on badger in a temp dir): a file
// written sequentially 1 MiB at a time and flushed, then the same bytes
// under a second name (every chunk a duplicate). It reports MB/s and the
// CPU seconds the whole process spent per GiB written (user + system),
// which is steadier than elapsed time on a shared machine. Data kinds are
// package seqio's, the same bytes cmd/casfs's BenchmarkSeqIO writes.
//
//	go test -run '^$' -bench 'Write$' -benchtime 2x ./casfs/   # CASFS_BENCH_MIB (default 256)
func BenchmarkWrite(b *testing.B) {
	mib := seqio.EnvInt("CASFS_BENCH_MIB", 256)
	for _, kind := range seqio.Kinds {
		data := make([]byte, mib*seqio.BlockSize)
		for i := range mib {
			if err := seqio.Fill(kind, i, data[i*seqio.BlockSize:(i+1)*seqio.BlockSize]); err != nil {
				b.Fatal(err)
			}
		}
		b.Run(kind, func(b *testing.B) {
			var wr, rw, wrCPU, rwCPU time.Duration
			for range b.N {
				e := testenv.New(b, testenv.Options{FS: casfs.Config{Logger: testenv.Logger(b)}})
				for i, d := range []*time.Duration{&wr, &rw} {
					c0 := cpuTime()
					*d += writeOnce(b, e.FS, fmt.Sprint(i), data)
					cpu := cpuTime() - c0
					if i == 0 {
						wrCPU += cpu
					} else {
						rwCPU += cpu
					}
				}
			}
			n := float64(b.N)
			gib := float64(len(data)) / (1 << 30)
			b.ReportMetric(float64(len(data))*n/wr.Seconds()/1e6, "write-MB/s")
			b.ReportMetric(float64(len(data))*n/rw.Seconds()/1e6, "rewrite-MB/s")
			b.ReportMetric(wrCPU.Seconds()/n/gib, "write-CPU-s/GiB")
			b.ReportMetric(rwCPU.Seconds()/n/gib, "rewrite-CPU-s/GiB")
		})
	}
}

func writeOnce(b *testing.B, fsys *casfs.FS, name string, data []byte) time.Duration {
	ctx := context.Background()
	a, err := fsys.Create(ctx, metad.CreateRequest{Parent: metad.RootIno, Name: name, Mode: syscall.S_IFREG | 0o644, Policy: "fixed:64k"})
	if err != nil {
		b.Fatal(err)
	}
	h, _, err := fsys.Open(ctx, metad.Node{Ino: a.Ino}, syscall.O_WRONLY)
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	for off := 0; off < len(data); off += 1 << 20 {
		if _, err := h.Write(ctx, data[off:off+1<<20], int64(off)); err != nil {
			b.Fatal(err)
		}
	}
	if err := h.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	d := time.Since(start)
	if err := h.Release(ctx); err != nil {
		b.Fatal(err)
	}
	return d
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
