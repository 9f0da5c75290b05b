package blockd_test

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"stasis/blockd"
	"stasis/cas"
)

// Benchmarks of blockd ingest and reads over loopback with 64 KiB unique
// chunks, next to the two things they are judged against: hashing and
// encoding alone, and a local sequential write + fsync of the same bytes.
// All report MB/s of raw chunk bytes. Run them together, e.g.:
//
//	go test -run '^$' -bench 'Put|Get|LocalWrite|HashEncode' -benchtime 40x ./blockd/

const (
	benchChunk = 64 << 10
	benchBatch = 64 // chunks per Put: 4 MiB raw
)

type benchData struct {
	raw     [][]byte         // per batch, benchBatch*benchChunk raw bytes
	batches [][]blockd.Chunk // hashed and encoded
}

var words = []string{"the ", "quick ", "brown ", "fox ", "jumps ", "over ", "a ", "lazy ", "dog ", "stasis ",
	"saves ", "guest ", "memory ", "pages ", "into ", "chunks ", "while ", "network ", "frames ", "wait "}

// makeBatches prepares n batches of unique chunks: random bytes, or
// text-like bytes that LZ4 compresses about 2.5x. seed keeps runs apart.
func makeBatches(n int, compressible bool, seed uint64) benchData {
	r := rand.New(rand.NewPCG(seed, uint64(n)))
	var d benchData
	for range n {
		raw := make([]byte, benchBatch*benchChunk)
		if compressible {
			for i := 0; i < len(raw); {
				i += copy(raw[i:], words[r.IntN(len(words))])
			}
		} else {
			for i := 0; i < len(raw); i += 8 {
				binary.LittleEndian.PutUint64(raw[i:], r.Uint64())
			}
		}
		batch := make([]blockd.Chunk, benchBatch)
		for j := range batch {
			c := raw[j*benchChunk : (j+1)*benchChunk]
			binary.LittleEndian.PutUint64(c, r.Uint64()) // unique
			batch[j] = blockd.Chunk{ID: cas.Sum(c), Data: cas.Encode(nil, c)}
		}
		d.raw = append(d.raw, raw)
		d.batches = append(d.batches, batch)
	}
	return d
}

var benchSeed atomic.Uint64

func kinds() []struct {
	name         string
	compressible bool
} {
	return []struct {
		name         string
		compressible bool
	}{{"compressible", true}, {"random", false}}
}

// runConcurrent hands batches 0..n-1 to conc workers.
func runConcurrent(b *testing.B, n, conc int, fn func(i int) error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

func BenchmarkPut(b *testing.B) {
	for _, k := range kinds() {
		for _, conc := range []int{1, 4} {
			b.Run(k.name+"/conc="+strconv.Itoa(conc), func(b *testing.B) {
				d := makeBatches(b.N, k.compressible, benchSeed.Add(1))
				st := openBenchBadger(b)
				ts := startServer(b, st, 0)
				c := blockd.NewClient(ts.url, tokenFor(0, "b1"), testHTTP)
				b.SetBytes(benchBatch * benchChunk)
				b.ResetTimer()
				runConcurrent(b, b.N, conc, func(i int) error { return c.Put(context.Background(), d.batches[i]) })
				b.StopTimer()
				enc := st.Stats().EncodedBytes
				b.ReportMetric(float64(enc)/float64(b.N*benchBatch*benchChunk), "stored/raw")
			})
		}
	}
}

func BenchmarkGet(b *testing.B) {
	for _, k := range kinds() {
		b.Run(k.name, func(b *testing.B) {
			d := makeBatches(b.N, k.compressible, benchSeed.Add(1))
			st := openBenchBadger(b)
			ts := startServer(b, st, 0)
			c := blockd.NewClient(ts.url, tokenFor(0, "b1"), testHTTP)
			for _, batch := range d.batches {
				if err := st.Put(context.Background(), batch); err != nil {
					b.Fatal(err)
				}
			}
			b.SetBytes(benchBatch * benchChunk)
			b.ResetTimer()
			buf := make([]byte, 0, benchChunk)
			for i := 0; i < b.N; i++ {
				ids := make([]cas.ChunkID, benchBatch)
				for j, ch := range d.batches[i] {
					ids[j] = ch.ID
				}
				// Fetch, decode and verify, as a reader would.
				err := c.GetMany(context.Background(), ids, func(id cas.ChunkID, enc []byte) error {
					var err error
					buf, err = cas.DecodeVerify(buf[:0], id, enc)
					return err
				})
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkLocalWriteFsync writes the same raw bytes to a local file in the
// same file system, fsyncing after each 4 MiB batch (blockd syncs each Put).
func BenchmarkLocalWriteFsync(b *testing.B) {
	for _, k := range kinds() {
		b.Run(k.name, func(b *testing.B) {
			d := makeBatches(b.N, k.compressible, benchSeed.Add(1))
			f, err := os.Create(filepath.Join(b.TempDir(), "seq"))
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			b.SetBytes(benchBatch * benchChunk)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := f.Write(d.raw[i]); err != nil {
					b.Fatal(err)
				}
				if err := f.Sync(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkHashEncode is the client's CPU work per chunk: BLAKE3 and LZ4
// (the server's verification is decode + BLAKE3).
func BenchmarkHashEncode(b *testing.B) {
	for _, k := range kinds() {
		b.Run(k.name, func(b *testing.B) {
			d := makeBatches(1, k.compressible, benchSeed.Add(1))
			buf := make([]byte, 0, 2*benchChunk)
			b.SetBytes(benchBatch * benchChunk)
			for b.Loop() {
				for j := range benchBatch {
					c := d.raw[0][j*benchChunk : (j+1)*benchChunk]
					cas.Sum(c)
					buf = cas.Encode(buf[:0], c)
				}
			}
		})
	}
}

// BenchmarkGroupCommit puts one 8 KiB chunk per Put straight into badger
// with 1 and 16 concurrent writers: with group commit, 16 writers share
// syncs (syncs/put well below 1) and reach more puts/s.
func BenchmarkGroupCommit(b *testing.B) {
	for _, conc := range []int{1, 16} {
		b.Run("conc="+strconv.Itoa(conc), func(b *testing.B) {
			st := openBenchBadger(b)
			r := rand.New(rand.NewPCG(benchSeed.Add(1), 1))
			chunks := make([]blockd.Chunk, b.N)
			for i := range chunks {
				raw := make([]byte, 8<<10)
				for j := 0; j < len(raw); j += 8 {
					binary.LittleEndian.PutUint64(raw[j:], r.Uint64())
				}
				chunks[i] = blockd.Chunk{ID: cas.Sum(raw), Data: cas.Encode(nil, raw)}
			}
			before := st.Syncs()
			b.ResetTimer()
			runConcurrent(b, b.N, conc, func(i int) error {
				return st.Put(context.Background(), chunks[i:i+1])
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "puts/s")
			b.ReportMetric(float64(st.Syncs()-before)/float64(b.N), "syncs/put")
		})
	}
}

// BenchmarkStorePut is the badger store alone (no HTTP, no verification):
// 4 MiB batches of 64 KiB chunks, each Put synced.
func BenchmarkStorePut(b *testing.B) {
	for _, k := range kinds() {
		b.Run(k.name, func(b *testing.B) {
			d := makeBatches(b.N, k.compressible, benchSeed.Add(1))
			st := openBenchBadger(b)
			b.SetBytes(benchBatch * benchChunk)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := st.Put(context.Background(), d.batches[i]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// openBenchBadger opens a store with the daemon's default (not Small)
// settings: 1 GiB value-log files, 64 MiB memtables.
func openBenchBadger(b *testing.B) *blockd.BadgerStore {
	s, err := blockd.OpenBadger(blockd.BadgerConfig{Dir: b.TempDir(), GCInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// BenchmarkIngestVsLocal interleaves the two things compared, so that both
// see the same machine load (this machine is shared and noisy): each
// iteration writes `conc` 4 MiB batches to a local file (write + fsync per
// batch), then puts the same raw bytes, already hashed and encoded, into
// blockd over loopback from `conc` concurrent clients. It reports both
// rates and blockd's as a fraction of local ("ratio").
func BenchmarkIngestVsLocal(b *testing.B) {
	for _, k := range kinds() {
		for _, conc := range []int{1, 4} {
			b.Run(k.name+"/conc="+strconv.Itoa(conc), func(b *testing.B) {
				d := makeBatches(b.N*conc, k.compressible, benchSeed.Add(1))
				st := openBenchBadger(b)
				ts := startServer(b, st, 0)
				c := blockd.NewClient(ts.url, tokenFor(0, "b1"), testHTTP)
				f, err := os.Create(filepath.Join(b.TempDir(), "seq"))
				if err != nil {
					b.Fatal(err)
				}
				defer f.Close()
				var local, put time.Duration
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					t0 := time.Now()
					for j := range conc {
						if _, err := f.Write(d.raw[i*conc+j]); err != nil {
							b.Fatal(err)
						}
						if err := f.Sync(); err != nil {
							b.Fatal(err)
						}
					}
					t1 := time.Now()
					runConcurrent(b, conc, conc, func(j int) error { return c.Put(context.Background(), d.batches[i*conc+j]) })
					local += t1.Sub(t0)
					put += time.Since(t1)
				}
				b.StopTimer()
				mb := float64(b.N*conc*benchBatch*benchChunk) / 1e6
				b.ReportMetric(mb/local.Seconds(), "local-MB/s")
				b.ReportMetric(mb/put.Seconds(), "blockd-MB/s")
				b.ReportMetric(local.Seconds()/put.Seconds(), "ratio")
			})
		}
	}
}
