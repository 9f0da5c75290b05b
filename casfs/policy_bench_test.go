package casfs_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	"stasis/casfs"
	"stasis/casfs/internal/testenv"
	"stasis/metad"
)

// BenchmarkPolicy measures what each chunker policy stores and how fast the
// write path runs, on data shaped like the hypervisor's files:
//
//   - ram: two 64 MiB "RAM images" of sibling guests: 80% zero pages,
//     the non-zero pages mostly shared, each with 15% of its own pages.
//   - stream: the same two images as migration streams: small page headers
//     and a header of different length shift the alignment between them
//     (what QEMU's stream format does).
//   - qcow2: two 32 MiB overlays sharing 64 KiB clusters, with 4 KiB
//     sub-cluster edits in 10% of them.
//
// Reported: stored raw bytes relative to the page-granular lower bound, and
// write MB/s through casfs (in-process stores).
//
//	go test -run '^$' -bench Policy -benchtime 1x ./casfs/
func BenchmarkPolicy(b *testing.B) {
	sets := map[string][2][]byte{"ram": ramPair(), "stream": streamPair(), "qcow2": qcowPair()}
	for _, set := range []string{"ram", "stream", "qcow2"} {
		for _, pol := range []string{"fixed:4k", "fixed:16k", "fixed:64k", "cdc:16k", "cdc:64k"} {
			b.Run(set+"/"+pol, func(b *testing.B) {
				for range b.N {
					e := testenv.New(b, testenv.Options{FS: casfs.Config{Logger: testenv.Logger(b)}})
					ctx := context.Background()
					var busy time.Duration
					var logical int
					for i, data := range sets[set] {
						a, err := e.FS.Create(ctx, metad.CreateRequest{Parent: metad.RootIno, Name: fmt.Sprint(i), Mode: syscall.S_IFREG | 0o644, Policy: pol})
						if err != nil {
							b.Fatal(err)
						}
						h, _, err := e.FS.Open(ctx, metad.Node{Ino: a.Ino}, syscall.O_WRONLY)
						if err != nil {
							b.Fatal(err)
						}
						start := time.Now()
						for off := 0; off < len(data); off += 1 << 20 {
							if _, err := h.Write(ctx, data[off:min(off+1<<20, len(data))], int64(off)); err != nil {
								b.Fatal(err)
							}
						}
						if err := h.Flush(ctx); err != nil {
							b.Fatal(err)
						}
						busy += time.Since(start)
						h.Release(ctx)
						logical += len(data)
					}
					st, err := e.FS.Stats(ctx)
					if err != nil {
						b.Fatal(err)
					}
					b.ReportMetric(float64(st.StoredRaw)/(1<<20), "stored-raw-MiB")
					b.ReportMetric(float64(e.Blocks.EncodedBytes())/(1<<20), "stored-lz4-MiB")
					b.ReportMetric(float64(pageBound(sets[set]))/(1<<20), "page-bound-MiB")
					b.ReportMetric(float64(st.Chunks), "chunks")
					b.ReportMetric(float64(logical)/busy.Seconds()/1e6, "write-MB/s")
				}
			})
		}
	}
}

// pageBound is the raw size of the distinct non-zero 4 KiB pages.
func pageBound(files [2][]byte) int {
	seen := map[string]bool{}
	n := 0
	for _, f := range files {
		for off := 0; off+4096 <= len(f); off += 4096 {
			p := f[off : off+4096]
			if bytes.Count(p, []byte{0}) == 4096 || seen[string(p)] {
				continue
			}
			seen[string(p)] = true
			n += 4096
		}
	}
	return n
}

func randomPage(r *rand.Rand, p []byte) {
	for i := 0; i < len(p); i += 8 {
		v := r.Uint64()
		for k := range 8 {
			p[i+k] = byte(v >> (8 * k))
		}
	}
}

func ramPair() (out [2][]byte) {
	const size = 64 << 20
	r := rand.New(rand.NewPCG(1, 2))
	base := make([]byte, size)
	nonzero := make([]bool, size/4096)
	for i := range nonzero {
		if r.IntN(5) == 0 {
			nonzero[i] = true
			randomPage(r, base[i*4096:(i+1)*4096])
		}
	}
	for k := range out {
		img := bytes.Clone(base)
		for i := range nonzero {
			if nonzero[i] && r.IntN(100) < 15 {
				randomPage(r, img[i*4096:(i+1)*4096])
			}
		}
		out[k] = img
	}
	return out
}

// streamPair turns each RAM image into a stream of non-zero pages, each
// preceded by an 8-byte header, with zero pages as 8-byte markers.
func streamPair() (out [2][]byte) {
	for k, img := range ramPair() {
		// The second stream starts with a longer header, so the same pages
		// sit at other offsets (as when device state or dirty-page order differ).
		s := make([]byte, 100+k*1000)
		for off := 0; off < len(img); off += 4096 {
			p := img[off : off+4096]
			hdr := []byte{byte(off >> 12), byte(off >> 20), byte(off >> 28), 0, 0, 0, 0, 1}
			if bytes.Count(p, []byte{0}) == 4096 {
				hdr[7] = 2
				s = append(s, hdr...)
				continue
			}
			s = append(append(s, hdr...), p...)
		}
		out[k] = s
	}
	return out
}

func qcowPair() (out [2][]byte) {
	const size = 32 << 20
	r := rand.New(rand.NewPCG(3, 4))
	base := make([]byte, size)
	randomPage(r, base)
	for k := range out {
		img := bytes.Clone(base)
		for c := 0; c < size; c += 64 << 10 {
			if r.IntN(10) == 0 {
				off := c + r.IntN(16)*4096
				randomPage(r, img[off:off+4096])
			}
		}
		out[k] = img
	}
	return out
}
