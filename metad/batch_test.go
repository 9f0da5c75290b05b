package metad

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"stasis/cas"
)

// synthIDs returns n distinct synthetic chunk IDs starting at seed, all
// reported present by b.
func synthIDs(b *memBlocks, seed, n int) []cas.ChunkID {
	ids := make([]cas.ChunkID, n)
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := range ids {
		k := uint64(seed + i)
		for j := 0; j < 4; j++ {
			binary.LittleEndian.PutUint64(ids[i][j*8:], mix64(k+uint64(j)<<56))
		}
		b.chunks[ids[i]] = nil
	}
	return ids
}

// openBig opens a Service on badger with memtable mt and one in-memory
// blockd.
func openBig(t testing.TB, mt int64) *env {
	t.Helper()
	e := &env{clock: newClock(), kr: testKeyring(t), blocks: []*memBlocks{newMemBlocks()}, dir: t.TempDir()}
	opts := testBadger(t)
	opts.MemTableSize = mt
	opts.ValueLogFileSize = 256 << 20
	s, err := Open(Config{Dir: e.dir, Badger: opts, Keyring: e.kr, Now: e.clock.Now, Logger: testLogger(t), TokenTTL: time.Minute,
		Blocks: []BlockBackend{{Endpoint: Endpoint{Name: "b0"}, Store: e.blocks[0]}}})
	must(t, err)
	e.s = s
	t.Cleanup(func() { e.s.Close() })
	return e
}

func (e *env) manifest(t testing.TB, ino Ino) cas.Manifest {
	t.Helper()
	p, err := e.s.ReadPlan(context.Background(), Node{Ino: ino})
	must(t, err)
	return p.Manifest
}

func sameManifest(a, b cas.Manifest) bool {
	return a.Size == b.Size && a.Policy == b.Policy && slices.Equal(a.Extents, b.Extents)
}

func (e *env) stats(t testing.TB) Stats {
	t.Helper()
	st, err := e.s.Stats(context.Background())
	must(t, err)
	return st
}

// countKeys counts the records of one kind.
func countKeys(t testing.TB, st Store, kind byte) int {
	n := 0
	must(t, st.View(context.Background(), func(tx Txn) error {
		return tx.Iterate([]byte{kind}, nil, func(_, _ []byte) error { n++; return nil })
	}))
	return n
}

// TestBigCommitLifecycle commits a manifest far larger than one badger
// transaction, rewrites 1% of it (the reference moves chunk by chunk),
// rewrites it again while a snapshot shares it, deletes the snapshot and the
// file, and lets GC delete every chunk; fsck is clean at each step and the
// stats are exact.
func TestBigCommitLifecycle(t *testing.T) {
	for _, c := range []struct {
		name string
		mt   int64
		n    int
	}{
		{"embedded-128MiB", 128 << 20, 300_000},
		{"small-4MiB", 4 << 20, 30_000},
		{"small-2MiB", 2 << 20, 12_000},
	} {
		t.Run(c.name, func(t *testing.T) {
			n := c.n
			if raceEnabled && c.mt > 2<<20 {
				// About 10x slower under the race detector (300k chunks: ~3 min).
				t.Skip("runs without -race only; the 2 MiB case covers the batched path under -race")
			}
			e := openBig(t, c.mt)
			ctx := context.Background()
			s := e.s
			limit := s.st.(txnLimiter).MaxTxnWrites()
			if 2*n <= limit { // a new chunk costs two writes (count, dead set)
				t.Fatalf("%d chunks fit one transaction of %d writes", n, limit)
			}
			if c.mt < 128<<20 && n < 3*limit {
				t.Fatalf("%d chunks are less than 3x the limit %d", n, limit)
			}
			t.Logf("%d chunks, transaction limit %d writes, batch %d", n, limit, s.batch)
			ids := synthIDs(e.blocks[0], 0, n)
			f := e.mkfile(t, RootIno, "big")
			start := time.Now()
			a, err := s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(ids...)})
			must(t, err)
			t.Logf("commit of %d chunks: %v", n, time.Since(start))
			if a.Size != uint64(n)*4096 || a.Gen != 1 {
				t.Fatalf("attr after commit %+v", a)
			}
			for _, k := range []byte{kPending, kList, kRelease} {
				if c := countKeys(t, s.st, k); c != 0 {
					t.Fatalf("%d %c records left after commit", c, k)
				}
			}
			e.fsckClean(t)
			if st := e.stats(t); st.Chunks != uint64(n) || st.LogicalBytes != uint64(n)*4096 || st.StoredRaw != uint64(n)*4096 {
				t.Fatalf("stats after commit %+v", st)
			}

			// Rewrite 1%: only the changed chunks move.
			fresh := synthIDs(e.blocks[0], 10_000_000, n/100)
			ids2 := slices.Clone(ids)
			for i := range fresh {
				ids2[i*100] = fresh[i]
			}
			start = time.Now()
			_, err = s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(ids2...)})
			must(t, err)
			t.Logf("rewrite of 1%%: %v", time.Since(start))
			must(t, s.releaseAll(ctx))
			e.fsckClean(t)
			if d, _ := s.DeadChunks(ctx); d != n/100 {
				t.Fatalf("%d dead chunks after a 1%% rewrite, want %d", d, n/100)
			}
			if !sameManifest(e.manifest(t, f.Ino), manifestOf(ids2...)) {
				t.Fatal("file does not read back the rewritten manifest")
			}

			// A snapshot shares the manifest: the next commit counts all of
			// its chunks, the snapshot keeps the old ones.
			_, err = s.CreateSnapshot(ctx, RootIno, "s")
			must(t, err)
			start = time.Now()
			_, err = s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(ids...)})
			must(t, err)
			t.Logf("commit over a shared manifest: %v", time.Since(start))
			e.fsckClean(t)
			must(t, s.DeleteSnapshot(ctx, RootIno, "s"))
			e.fsckClean(t)
			// The chunks the 1% rewrite dropped came back; the ones it added
			// left with the snapshot.
			if d, err := s.GC(ctx); err != nil || d != n/100 {
				t.Fatalf("GC after the snapshot went: deleted %d (%v), want %d", d, err, n/100)
			}
			e.fsckClean(t)

			// Unlink: the release is queued, GC finishes it and deletes all.
			start = time.Now()
			must(t, s.Unlink(ctx, RootIno, "big"))
			t.Logf("unlink: %v", time.Since(start))
			start = time.Now()
			deleted, err := s.GC(ctx)
			must(t, err)
			t.Logf("release and GC: %v", time.Since(start))
			if deleted != n || e.blocks[0].count() != 0 {
				t.Fatalf("GC deleted %d of %d chunks, %d left", deleted, n, e.blocks[0].count())
			}
			for _, k := range []byte{kRelease, kList, kManifest, kMRef, kChunk, kDead} {
				if c := countKeys(t, s.st, k); c != 0 {
					t.Fatalf("%d %c records left after unlink and GC", c, k)
				}
			}
			if st := e.stats(t); st.Chunks != 0 || st.LogicalBytes != 0 || st.StoredRaw != 0 {
				t.Fatalf("stats after unlink %+v", st)
			}
			e.fsckClean(t)
		})
	}
}

// TestBatchedCommitFaults fails every write position of a batched commit
// (moving and counting), of an unlink whose release is queued, and of the
// releaser, once with a store that recovers (the commit rolls itself back)
// and once with a store that stays failed until "restart" (recovery rolls
// it back). After each: fsck clean, the file is its old or its new
// content. The store is consistent but not byte-identical to before a
// failed commit: the rollback leaves a dead set and a fresh sequence.
func TestBatchedCommitFaults(t *testing.T) {
	ctx := context.Background()
	fs := &faultStore{Store: NewMemStore()}
	e := &env{clock: newClock(), kr: testKeyring(t), blocks: []*memBlocks{newMemBlocks()}}
	s, err := Open(Config{Store: fs, Keyring: e.kr, Now: e.clock.Now, Logger: testLogger(t), Blocks: []BlockBackend{{Endpoint: Endpoint{Name: "b0"}, Store: e.blocks[0]}}})
	must(t, err)
	e.s = s
	t.Cleanup(func() { s.Close() })
	s.setTxnLimit(64) // batches of 21 chunks, 8 released inline
	a := synthIDs(e.blocks[0], 0, 120)
	b := append(slices.Clone(a[:60]), synthIDs(e.blocks[0], 1000, 60)...)
	d := e.mkdir(t, RootIno, "d")
	f := e.mkfile(t, RootIno, "f") // sole owner of its manifest: moves
	g := e.mkfile(t, d.Ino, "g")   // shared with snapshot: counts everything
	_, err = s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(a...)})
	must(t, err)
	_, err = s.Commit(ctx, CommitRequest{Ino: g.Ino, Manifest: manifestOf(a...)})
	must(t, err)
	_, err = s.CreateSnapshot(ctx, d.Ino, "s")
	must(t, err)
	e.fsckClean(t)

	settle := func(t *testing.T) {
		t.Helper()
		fs.arm(0)
		must(t, s.recoverPending(ctx)) // what Open does
		must(t, s.releaseAll(ctx))
		e.fsckClean(t)
	}
	commitFault := func(t *testing.T, ino Ino, sticky bool) {
		for n := int64(1); ; n++ {
			old := e.manifest(t, ino)
			nw := manifestOf(b...)
			if sameManifest(old, nw) {
				nw = manifestOf(a...)
			}
			fs.arm(n)
			fs.sticky.Store(sticky)
			_, err := s.Commit(ctx, CommitRequest{Ino: ino, Manifest: nw})
			fs.sticky.Store(false)
			settle(t)
			got := e.manifest(t, ino)
			switch {
			case err == nil:
				// The fault, if it fired, hit the background releaser after
				// the commit's last write.
				if !sameManifest(got, nw) {
					t.Fatalf("commit succeeded but the file is not new")
				}
				if n < 10 {
					t.Fatalf("commit wrote only %d times", n)
				}
				return
			case !errors.Is(err, errInjected):
				t.Fatalf("fault at write %d: error %v does not wrap the fault", n, err)
			case !sameManifest(got, old):
				t.Fatalf("fault at write %d: failed commit changed the file", n)
			}
		}
	}
	for _, sticky := range []bool{false, true} {
		t.Run(fmt.Sprintf("move/sticky=%v", sticky), func(t *testing.T) { commitFault(t, f.Ino, sticky) })
		t.Run(fmt.Sprintf("count/sticky=%v", sticky), func(t *testing.T) { commitFault(t, g.Ino, sticky) })
	}
	t.Run("unlink and release", func(t *testing.T) {
		for n := int64(1); ; n++ {
			h := e.mkfile(t, RootIno, "h")
			_, err := s.Commit(ctx, CommitRequest{Ino: h.Ino, Manifest: manifestOf(b...)})
			must(t, err)
			must(t, s.releaseAll(ctx))
			fs.arm(n)
			fs.sticky.Store(true)
			uerr := s.Unlink(ctx, RootIno, "h")
			rerr := s.releaseAll(ctx)
			fs.sticky.Store(false)
			fired := fs.fired.Load()
			settle(t)
			if uerr != nil {
				if !errors.Is(uerr, errInjected) {
					t.Fatalf("fault at write %d: unlink error %v", n, uerr)
				}
				if _, err := s.Lookup(ctx, Node{Ino: RootIno}, "h"); err != nil {
					t.Fatalf("failed unlink removed the file: %v", err)
				}
				must(t, s.Unlink(ctx, RootIno, "h"))
				must(t, s.releaseAll(ctx))
				e.fsckClean(t)
				continue
			}
			if rerr != nil && !errors.Is(rerr, errInjected) {
				t.Fatalf("fault at write %d: release error %v", n, rerr)
			}
			if !fired {
				if n < 5 {
					t.Fatalf("unlink and release wrote only %d times", n)
				}
				return
			}
		}
	})
}

// TestBatchedCommitHoldsAgainstGC runs GC between the batches of a batched
// commit whose chunks are all dead (count 0, still in blockd): GC must not
// delete any of them. A second commit fails midway and is rolled back: its
// chunks go back to the dead set and GC collects them.
func TestBatchedCommitHoldsAgainstGC(t *testing.T) {
	e := newEnv(t, false, 2)
	ctx := context.Background()
	s := e.s
	s.setTxnLimit(300) // batches of 100
	var ids []cas.ChunkID
	for i := range 2 {
		ids = append(ids, synthIDs(e.blocks[i], i*10_000, 500)...)
	}
	// Keep only the chunks placed where they were stored.
	ids = slices.DeleteFunc(ids, func(id cas.ChunkID) bool { return !e.has(id) })
	f := e.mkfile(t, RootIno, "f")
	_, err := s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(ids...)})
	must(t, err)
	must(t, s.Unlink(ctx, RootIno, "f"))
	must(t, s.releaseAll(ctx))
	if d, _ := s.DeadChunks(ctx); d != len(ids) {
		t.Fatalf("%d dead, want %d", d, len(ids))
	}
	gcRuns := 0
	s.batchHook = func(_ uint64, next int) error {
		gcRuns++
		n, err := s.GC(ctx)
		if err != nil || n != 0 {
			return fmt.Errorf("GC during a commit deleted %d chunks (%v)", n, err)
		}
		return nil
	}
	g := e.mkfile(t, RootIno, "g")
	_, err = s.Commit(ctx, CommitRequest{Ino: g.Ino, Manifest: manifestOf(ids...)})
	must(t, err)
	if gcRuns < 3 {
		t.Fatalf("GC ran %d times during the commit", gcRuns)
	}
	e.referencedPresent(t)
	e.fsckClean(t)

	// A commit failing after two batches is rolled back; its chunks are dead
	// again and collectable.
	must(t, s.Unlink(ctx, RootIno, "g"))
	must(t, s.releaseAll(ctx))
	boom := errors.New("boom")
	s.batchHook = func(_ uint64, next int) error {
		if next >= 200 {
			return boom
		}
		return nil
	}
	h := e.mkfile(t, RootIno, "h")
	_, err = s.Commit(ctx, CommitRequest{Ino: h.Ino, Manifest: manifestOf(ids...)})
	wantErr(t, err, boom)
	s.batchHook = nil
	n, err := s.GC(ctx)
	must(t, err)
	if n != len(ids) {
		t.Fatalf("GC after a rolled back commit deleted %d of %d", n, len(ids))
	}
	if a, _ := s.GetAttr(ctx, Node{Ino: h.Ino}); a.Size != 0 || a.Gen != 0 {
		t.Fatalf("rolled back commit changed the file: %+v", a)
	}
	e.fsckClean(t)
}

// BenchmarkCommitBig commits a new 1 GiB manifest over the previous one
// each iteration and waits for the old one's release: every chunk count of
// the new manifest goes up, every one of the old goes down. Embedded
// options (128 MiB memtable, sync writes).
func BenchmarkCommitBig(b *testing.B) {
	for _, c := range []struct {
		size   int
		forced bool // the batched path even where one transaction would do
	}{{4 << 10, false}, {64 << 10, false}, {64 << 10, true}} {
		size := c.size
		name := fmt.Sprintf("%dKiB", size>>10)
		if c.forced {
			name += "-batched"
		}
		b.Run(name, func(b *testing.B) {
			e := benchBig(b)
			if c.forced {
				e.s.fastCommit, e.s.inline = 0, 0
			}
			ctx := context.Background()
			n := (1 << 30) / size
			f := e.mkfile(b, RootIno, "big")
			ms := [2]cas.Manifest{sizedManifest(synthIDs(e.blocks[0], 0, n), size), sizedManifest(synthIDs(e.blocks[0], n, n), size)}
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				if _, err := e.s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: ms[i%2]}); err != nil {
					b.Fatal(err)
				}
				if err := e.s.releaseAll(ctx); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "chunks/s")
		})
	}
}

// BenchmarkCommitBigDelta rewrites a 1 GiB file at 4 KiB chunks (262144)
// with 1% of its chunks changed: only the changed counts move.
func BenchmarkCommitBigDelta(b *testing.B) {
	e := benchBig(b)
	ctx := context.Background()
	n := (1 << 30) / 4096
	f := e.mkfile(b, RootIno, "big")
	ids := synthIDs(e.blocks[0], 0, n)
	if _, err := e.s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: sizedManifest(ids, 4096)}); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		fresh := synthIDs(e.blocks[0], (i+1)*n, n/100)
		for k, id := range fresh {
			ids[(k*100+i)%n] = id
		}
		m := sizedManifest(ids, 4096)
		b.StartTimer()
		if _, err := e.s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: m}); err != nil {
			b.Fatal(err)
		}
		if err := e.s.releaseAll(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

func benchBig(b *testing.B) *env {
	e := &env{clock: newClock(), kr: testKeyring(b), blocks: []*memBlocks{newMemBlocks()}, dir: b.TempDir()}
	s, err := Open(Config{Dir: e.dir, Badger: BadgerOptions{SyncWrites: true, MemTableSize: 128 << 20},
		Keyring: e.kr, Now: e.clock.Now, Blocks: []BlockBackend{{Endpoint: Endpoint{Name: "b0"}, Store: e.blocks[0]}}})
	if err != nil {
		b.Fatal(err)
	}
	e.s = s
	b.Cleanup(func() { s.Close() })
	return e
}

func sizedManifest(ids []cas.ChunkID, size int) cas.Manifest {
	m := cas.Manifest{Policy: cas.Fixed(uint32(size)), Size: uint64(len(ids) * size)}
	for i, id := range ids {
		m.Extents = append(m.Extents, cas.Extent{Offset: uint64(i * size), Length: uint32(size), ID: id})
	}
	return m
}

// TestFsckQueueRecords leaves a commit pending (the store fails mid-commit
// and stays failed), checks fsck accepts it, then damages the pending and
// release records in turn: fsck reports each, and Open refuses a corrupt
// pending record with an error instead of guessing.
func TestFsckQueueRecords(t *testing.T) {
	ctx := context.Background()
	fs := &faultStore{Store: NewMemStore()}
	e := &env{clock: newClock(), kr: testKeyring(t), blocks: []*memBlocks{newMemBlocks()}}
	s, err := Open(Config{Store: fs, Keyring: e.kr, Now: e.clock.Now, Logger: testLogger(t), Blocks: []BlockBackend{{Endpoint: Endpoint{Name: "b0"}, Store: e.blocks[0]}}})
	must(t, err)
	e.s = s
	t.Cleanup(func() { s.Close() })
	s.setTxnLimit(64)
	ids := synthIDs(e.blocks[0], 0, 100)
	f := e.mkfile(t, RootIno, "f")
	var mid uint64
	s.batchHook = func(m uint64, next int) error {
		if next >= 42 {
			mid = m
			fs.arm(1)
			fs.sticky.Store(true) // the abort fails too: the record stays
		}
		return nil
	}
	_, err = s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(ids...)})
	wantErr(t, err, errInjected)
	fs.sticky.Store(false)
	fs.arm(0)
	s.batchHook = nil
	rep, err := Fsck(ctx, fs, FsckOptions{})
	must(t, err)
	if rep.Pending != 1 || rep.ProblemCount != 0 {
		t.Fatalf("fsck with a pending commit:\n%s", rep)
	}
	damage := func(k []byte, v []byte) (restore func()) {
		var old []byte
		must(t, fs.View(ctx, func(tx Txn) error {
			b, err := tx.Get(k)
			old = slices.Clone(b)
			return err
		}))
		must(t, fs.Update(ctx, func(tx Txn) error { return tx.Set(k, v) }))
		return func() { must(t, fs.Update(ctx, func(tx Txn) error { return tx.Set(k, old) })) }
	}
	for _, d := range []struct {
		name string
		k, v []byte
	}{
		{"pending not json", pendingKey(mid), []byte("{")},
		{"pending past its list", pendingKey(mid), []byte(`{"ino":2,"next":90,"end":90}`)},
		{"list truncated", listKey(mid), make([]byte, 35)},
	} {
		restore := damage(d.k, d.v)
		rep, err := Fsck(ctx, fs, FsckOptions{})
		must(t, err)
		if rep.ProblemCount == 0 {
			t.Fatalf("%s: fsck found nothing", d.name)
		}
		restore()
	}
	restore := damage(pendingKey(mid), []byte("{"))
	if err := s.recoverPending(ctx); err == nil {
		t.Fatal("recovery accepted a corrupt pending record")
	}
	restore()
	// Recovery turns the pending commit into a release; damage that too.
	// The background releaser (kicked by the failed commit) would finish the
	// release before it can be damaged: keep it out meanwhile.
	s.relMu.Lock()
	must(t, s.recoverPending(ctx))
	restore = damage(releaseKey(mid), []byte(`{"list":true,"next":0,"end":1000}`))
	rep, err = Fsck(ctx, fs, FsckOptions{})
	s.relMu.Unlock()
	must(t, err)
	if rep.ProblemCount == 0 {
		t.Fatal("fsck missed a release longer than its list")
	}
	if err := s.releaseAll(ctx); err == nil {
		t.Fatal("releaser accepted a release longer than its list")
	}
	restore()
	must(t, s.releaseAll(ctx))
	e.fsckClean(t)
	if d, _ := s.DeadChunks(ctx); d != 42 {
		t.Fatalf("%d dead chunks after rolling back 42 counted ones", d)
	}
}

// TestTruncateBigSharedFile truncates a file whose manifest a snapshot
// shares and whose remaining chunks are more than one transaction can
// count: it goes through the batched commit; the snapshot keeps the old
// content.
func TestTruncateBigSharedFile(t *testing.T) {
	e := openBig(t, 2<<20)
	ctx := context.Background()
	s := e.s
	if l := s.st.(txnLimiter).MaxTxnWrites(); l >= 5000 {
		t.Fatalf("5000 count updates fit one transaction of %d writes", l)
	}
	ids := synthIDs(e.blocks[0], 0, 6000)
	d := e.mkdir(t, RootIno, "d")
	f := e.mkfile(t, d.Ino, "f")
	_, err := s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(ids...)})
	must(t, err)
	snap, err := s.CreateSnapshot(ctx, d.Ino, "s")
	must(t, err)
	size := uint64(5000 * 4096)
	mode := uint32(0o600)
	a, err := s.SetAttr(ctx, f.Ino, SetAttrRequest{Size: &size, Mode: &mode})
	must(t, err)
	if a.Size != size || a.Mode&0o777 != mode {
		t.Fatalf("attr after truncate %+v", a)
	}
	if !sameManifest(e.manifest(t, f.Ino), manifestOf(ids[:5000]...)) {
		t.Fatal("truncated file does not read back its first 5000 chunks")
	}
	p, err := s.ReadPlan(ctx, Node{Snap: snap.ID, Ino: f.Ino})
	must(t, err)
	if !sameManifest(p.Manifest, manifestOf(ids...)) {
		t.Fatal("snapshot changed")
	}
	e.fsckClean(t)
	must(t, s.DeleteSnapshot(ctx, d.Ino, "s"))
	n, err := s.GC(ctx)
	must(t, err)
	if n != 1000 {
		t.Fatalf("GC deleted %d chunks, want the 1000 cut off", n)
	}
	e.fsckClean(t)
}
