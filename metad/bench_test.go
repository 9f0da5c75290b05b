package metad

import (
	"context"
	"fmt"
	"net/http/httptest"
	"sync/atomic"
	"syscall"
	"testing"

	"stasis/cas"
)

// Benchmarks run on the badger store (SyncNone unless the name says Sync:
// SyncAll, SyncCommits: SyncCommits) with in-memory blockd backends. Results: bench/RESULTS.md.

func benchEnv(b *testing.B, sync bool) *env {
	if sync {
		return benchEnvMode(b, SyncAll)
	}
	return benchEnvMode(b, SyncNone)
}

func benchEnvMode(b *testing.B, mode SyncMode) *env {
	e := &env{clock: newClock(), kr: testKeyring(b)}
	e.dir = b.TempDir()
	bl := newMemBlocks()
	e.blocks = []*memBlocks{bl}
	cfg := Config{Dir: e.dir, Badger: BadgerOptions{Sync: mode, MemTableSize: 64 << 20, BlockCacheSize: 32 << 20, IndexCacheSize: 16 << 20, ValueLogFileSize: 64 << 20},
		Keyring: e.kr, Now: e.clock.Now, Blocks: []BlockBackend{{Endpoint: Endpoint{Name: "b0"}, Store: bl}}}
	if testStore != nil { // another backend (BenchStores)
		st, err := testStore(b)()
		if err != nil {
			b.Fatal(err)
		}
		cfg.Store, cfg.Dir = st, ""
	}
	s, err := Open(cfg)
	if err != nil {
		b.Fatal(err)
	}
	e.s = s
	b.Cleanup(func() { s.Close() })
	return e
}

func benchCreate(b *testing.B, mode SyncMode) {
	e := benchEnvMode(b, mode)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := e.s.Create(ctx, CreateRequest{Parent: RootIno, Name: fmt.Sprintf("f%09d", i), Mode: syscall.S_IFREG | 0o644}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

func BenchmarkCreate(b *testing.B)            { benchCreate(b, SyncNone) }
func BenchmarkCreateSync(b *testing.B)        { benchCreate(b, SyncAll) }
func BenchmarkCreateSyncCommits(b *testing.B) { benchCreate(b, SyncCommits) }

// benchSmallFile is what one small file costs metad: create, commit of one
// chunk, chmod and utimes (as tar does), by sync mode.
func benchSmallFile(b *testing.B, mode SyncMode) {
	e := benchEnvMode(b, mode)
	ctx := context.Background()
	id := e.put(b, chunkData(1))[0]
	m := manifestOf(id)
	mode0, t0 := uint32(0o644), e.clock.Now()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		a, err := e.s.Create(ctx, CreateRequest{Parent: RootIno, Name: fmt.Sprintf("f%09d", i), Mode: syscall.S_IFREG | 0o600})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := e.s.Commit(ctx, CommitRequest{Ino: a.Ino, Manifest: m}); err != nil {
			b.Fatal(err)
		}
		if _, err := e.s.SetAttr(ctx, a.Ino, SetAttrRequest{Mode: &mode0, Mtime: &t0}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "files/s")
}

func BenchmarkSmallFileSync(b *testing.B)        { benchSmallFile(b, SyncAll) }
func BenchmarkSmallFileSyncCommits(b *testing.B) { benchSmallFile(b, SyncCommits) }

// BenchmarkCreateParallel creates files from 8 goroutines, each in its own
// directory (creates in one directory conflict on the parent's times).
func BenchmarkCreateParallel(b *testing.B) {
	e := benchEnv(b, true)
	ctx := context.Background()
	var n atomic.Int64
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		d, err := e.s.Create(ctx, CreateRequest{Parent: RootIno, Name: fmt.Sprintf("d%d", n.Add(1)), Mode: syscall.S_IFDIR | 0o755})
		if err != nil {
			b.Error(err)
			return
		}
		for i := 0; pb.Next(); i++ {
			if _, err := e.s.Create(ctx, CreateRequest{Parent: d.Ino, Name: fmt.Sprintf("f%d", i), Mode: syscall.S_IFREG | 0o644}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

func fillDir(b *testing.B, e *env, parent Ino, n int) {
	ctx := context.Background()
	for i := range n {
		if _, err := e.s.Create(ctx, CreateRequest{Parent: parent, Name: fmt.Sprintf("f%06d", i), Mode: syscall.S_IFREG | 0o644}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLookup(b *testing.B) {
	e := benchEnv(b, false)
	fillDir(b, e, RootIno, 10000)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := e.s.Lookup(ctx, Node{Ino: RootIno}, fmt.Sprintf("f%06d", i%10000)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

func BenchmarkReadDir10k(b *testing.B) {
	e := benchEnv(b, false)
	fillDir(b, e, RootIno, 10000)
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		ents, err := e.s.ReadDir(ctx, Node{Ino: RootIno}, "", 0)
		if err != nil || len(ents) != 10000 {
			b.Fatal(len(ents), err)
		}
	}
	b.ReportMetric(float64(b.N*10000)/b.Elapsed().Seconds(), "entries/s")
}

// gibManifest is a 1 GiB file at 64 KiB chunks (16384 distinct chunks),
// varied by seed.
func gibManifest(seed int) (cas.Manifest, []cas.ChunkID) {
	const chunk, n = 64 << 10, 16384
	m := cas.Manifest{Policy: cas.Fixed(chunk), Size: n * chunk}
	ids := make([]cas.ChunkID, n)
	for i := range n {
		ids[i] = cas.Sum(fmt.Appendf(nil, "%d/%d", seed, i))
		m.Extents = append(m.Extents, cas.Extent{Offset: uint64(i) * chunk, Length: chunk, ID: ids[i]})
	}
	return m, ids
}

// BenchmarkCommit1GiB commits a new 1 GiB manifest (16384 new chunks) over
// the previous one (whose 16384 chunks die) each iteration: the refcount
// work of a full rewrite, in one transaction.
func BenchmarkCommit1GiB(b *testing.B) { benchCommit1GiB(b, SyncAll) }

func benchCommit1GiB(b *testing.B, mode SyncMode) {
	e := benchEnvMode(b, mode)
	ctx := context.Background()
	f := e.mkfile(b, RootIno, "big")
	ms := make([]cas.Manifest, 0, 8)
	for s := range 2 {
		m, ids := gibManifest(s)
		for _, id := range ids {
			e.blocks[0].chunks[id] = nil
		}
		ms = append(ms, m)
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := e.s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: ms[i%2]}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "commits/s")
}

// BenchmarkCommitParallelShared: 8 files committed concurrently, manifests
// sharing chunks (reference-count conflicts).
func BenchmarkCommitParallelShared(b *testing.B) {
	e := benchEnv(b, true)
	ctx := context.Background()
	var pool []cas.ChunkID
	for i := range 64 {
		pool = append(pool, e.put(b, chunkData(i))...)
	}
	var n atomic.Int64
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w := int(n.Add(1))
		f, err := e.s.Create(ctx, CreateRequest{Parent: RootIno, Name: fmt.Sprintf("f%d", w), Mode: syscall.S_IFREG | 0o644})
		if err != nil {
			b.Error(err)
			return
		}
		for i := 0; pb.Next(); i++ {
			var ids []cas.ChunkID
			for k := range 16 {
				ids = append(ids, pool[(w*7+i*5+k*3)%len(pool)])
			}
			if _, err := e.s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(ids...)}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "commits/s")
}

func BenchmarkSnapshot10k(b *testing.B) {
	e := benchEnv(b, true)
	ctx := context.Background()
	ids := e.put(b, chunkData(1), chunkData(2))
	d := e.mkdir(b, RootIno, "exp")
	// 10k files in 100 directories, each with a one-chunk manifest.
	for i := range 100 {
		sub := e.mkdir(b, d.Ino, fmt.Sprintf("n%03d", i))
		for j := range 100 {
			a := e.mkfile(b, sub.Ino, fmt.Sprintf("f%03d", j))
			if _, err := e.s.Commit(ctx, CommitRequest{Ino: a.Ino, Manifest: manifestOf(ids[(i+j)%2])}); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := e.s.CreateSnapshot(ctx, d.Ino, fmt.Sprintf("s%d", i)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/snapshot")
}

// BenchmarkHTTPLookup and BenchmarkHTTPCreate: the same operations through
// Client -> loopback HTTP -> Server -> Service.
func BenchmarkHTTPLookup(b *testing.B) {
	e := benchEnv(b, false)
	fillDir(b, e, RootIno, 1000)
	c := benchClient(b, e)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := c.Lookup(ctx, Node{Ino: RootIno}, fmt.Sprintf("f%06d", i%1000)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

func BenchmarkHTTPCreate(b *testing.B)            { benchHTTPCreate(b, SyncAll) }
func BenchmarkHTTPCreateSyncCommits(b *testing.B) { benchHTTPCreate(b, SyncCommits) }

func benchHTTPCreate(b *testing.B, mode SyncMode) {
	e := benchEnvMode(b, mode)
	c := benchClient(b, e)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := c.Create(ctx, CreateRequest{Parent: RootIno, Name: fmt.Sprintf("f%d", i), Mode: syscall.S_IFREG | 0o644}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

func benchClient(b *testing.B, e *env) *Client {
	srv, err := NewServer(e.s, ServerConfig{Keyring: e.kr})
	if err != nil {
		b.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	b.Cleanup(ts.Close)
	return NewClient(ts.URL, e.kr, "bench", ts.Client())
}

// BenchmarkCommit1GiBDelta rewrites a 1 GiB file (64 KiB chunks) of which
// 1% of the chunks changed since the last commit: the swapout-after-swapin
// case. Only changed chunks' counts are written.
func BenchmarkCommit1GiBDelta(b *testing.B) {
	e := benchEnv(b, true)
	ctx := context.Background()
	f := e.mkfile(b, RootIno, "big")
	m, ids := gibManifest(0)
	for _, id := range ids {
		e.blocks[0].chunks[id] = nil
	}
	if _, err := e.s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: m}); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		for k := range 164 { // 1% of 16384
			j := (i*7919 + k*101) % len(m.Extents)
			id := cas.Sum(fmt.Appendf(nil, "delta %d %d", i, k))
			e.blocks[0].chunks[id] = nil
			m.Extents[j].ID = id
		}
		b.StartTimer()
		if _, err := e.s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: m}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "commits/s")
}

// BenchmarkCreateParallelSameDir: 8 goroutines create in one directory;
// every create updates the directory's times, so transactions conflict.
func BenchmarkCreateParallelSameDir(b *testing.B) {
	e := benchEnv(b, true)
	ctx := context.Background()
	var n atomic.Int64
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w := n.Add(1)
		for i := 0; pb.Next(); i++ {
			if _, err := e.s.Create(ctx, CreateRequest{Parent: RootIno, Name: fmt.Sprintf("w%d-%d", w, i), Mode: syscall.S_IFREG | 0o644}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}
