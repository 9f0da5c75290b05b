package blockd_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"stasis/blockd"
)

// BenchmarkIngestStores is BenchmarkIngestVsLocal for both persistent
// stores in one run: each iteration writes `conc` 4 MiB batches to a local
// file (write + fsync per batch), then puts the same chunks over loopback
// into a blockd server over the badger store, then into one over the pack
// store, so that all three see the same machine load. Both stores use the
// daemon's default (not Small) settings. Reported: MB/s of raw bytes for
// each and each store's rate as a fraction of local. "direct" puts the
// batches into the stores without HTTP or verification (as casfs's
// embedded mode does).
//
//	go test -run '^$' -bench IngestStores -benchtime 30x ./blockd/
func BenchmarkIngestStores(b *testing.B) {
	for _, mode := range []string{"http", "direct"} {
		for _, k := range kinds() {
			for _, conc := range []int{1, 4} {
				b.Run(mode+"/"+k.name+"/conc="+strconv.Itoa(conc), func(b *testing.B) {
					d := makeBatches(b.N*conc, k.compressible, benchSeed.Add(1))
					bs := openBenchBadger(b)
					ps := openBenchPack(b)
					put := map[string]func(batch []blockd.Chunk) error{}
					for name, st := range map[string]blockd.PruneStore{"badger": bs, "pack": ps} {
						if mode == "direct" {
							put[name] = func(batch []blockd.Chunk) error { return st.Put(context.Background(), batch) }
							continue
						}
						ts := startServer(b, st, 0)
						c := blockd.NewClient(ts.url, tokenFor(0, "b1"), testHTTP)
						put[name] = func(batch []blockd.Chunk) error { return c.Put(context.Background(), batch) }
					}
					f, err := os.Create(filepath.Join(b.TempDir(), "seq"))
					if err != nil {
						b.Fatal(err)
					}
					defer f.Close()
					var local, badger, pack time.Duration
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
						runConcurrent(b, conc, conc, func(j int) error { return put["badger"](d.batches[i*conc+j]) })
						t2 := time.Now()
						runConcurrent(b, conc, conc, func(j int) error { return put["pack"](d.batches[i*conc+j]) })
						local += t1.Sub(t0)
						badger += t2.Sub(t1)
						pack += time.Since(t2)
					}
					b.StopTimer()
					mb := float64(b.N*conc*benchBatch*benchChunk) / 1e6
					b.ReportMetric(mb/local.Seconds(), "local-MB/s")
					b.ReportMetric(mb/badger.Seconds(), "badger-MB/s")
					b.ReportMetric(mb/pack.Seconds(), "pack-MB/s")
					b.ReportMetric(local.Seconds()/badger.Seconds(), "badger-x-local")
					b.ReportMetric(local.Seconds()/pack.Seconds(), "pack-x-local")
				})
			}
		}
	}
}

// openBenchPack opens a pack store with the daemon's default settings.
func openBenchPack(b *testing.B) *blockd.PackStore {
	s, err := blockd.OpenPack(blockd.PackConfig{Dir: b.TempDir(), GCInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}
