package casfs_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"syscall"
	"testing"
	"time"

	"stasis/casfs"
	"stasis/casfs/internal/testenv"
	"stasis/metad"
)

// BenchmarkWrite measures the write path of the logic layer alone (no
// FUSE, in-memory block store, metad on badger in a temp dir): a file
// written sequentially 1 MiB at a time and flushed, then the same bytes
// under a second name (every chunk a duplicate). It reports MB/s and the
// CPU seconds the whole process spent per GiB written (user + system),
// which is steadier than elapsed time on a shared machine. Data kinds are
// those of cmd/casfs's BenchmarkSeqIO.
//
//	go test -run '^$' -bench 'Write$' -benchtime 2x ./casfs/   # CASFS_BENCH_MIB (default 256)
func BenchmarkWrite(b *testing.B) {
	mib := 256
	if v := envInt("CASFS_BENCH_MIB"); v > 0 {
		mib = v
	}
	for _, kind := range []string{"zero", "text", "random"} {
		data := make([]byte, mib<<20)
		for i := range mib {
			fillBlock(kind, i, data[i<<20:(i+1)<<20])
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

func envInt(name string) int {
	var v int
	fmt.Sscan(os.Getenv(name), &v)
	return v
}

// fillBlock fills buf (1 MiB) with block i of a data kind, as cmd/casfs's
// benchmark does: zero = 80% zero 4 KiB pages, the rest random; text =
// 64 random bytes alternating with 64 bytes of a phrase; random.
func fillBlock(kind string, i int, buf []byte) {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], uint64(i)+1)
	c := rand.NewChaCha8(s)
	r := rand.New(c)
	switch kind {
	case "random":
		c.Read(buf)
	case "zero":
		clear(buf)
		for p := 0; p < len(buf); p += 4096 {
			if r.IntN(5) == 0 {
				c.Read(buf[p : p+4096])
			}
		}
	case "text":
		phrase := []byte("the quick brown fox jumps over the lazy dog; ")
		for p := 0; p < len(buf); p += 128 {
			c.Read(buf[p : p+64])
			for k := p + 64; k < p+128; k++ {
				buf[k] = phrase[(k-p)%len(phrase)]
			}
		}
	}
}
