package metad

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"

	"stasis/cas"
)

func TestCommitAndReadPlan(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		s := e.s
		f := e.mkfile(t, RootIno, "f")
		ids := e.put(t, chunkData(1), chunkData(2))
		// A manifest with a hole extent and a gap.
		m := cas.Manifest{Policy: cas.Fixed(4096), Size: 5 * 4096, Extents: []cas.Extent{
			{Offset: 0, Length: 4096, ID: ids[0]},
			{Offset: 4096, Length: 4096, Hole: true},
			{Offset: 3 * 4096, Length: 4096, ID: ids[1]},
			{Offset: 4 * 4096, Length: 4096, ID: ids[0]},
		}}
		a, err := s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: m})
		must(t, err)
		if a.Size != 5*4096 || a.Gen != 1 {
			t.Fatalf("commit attr %+v", a)
		}
		plan, err := s.ReadPlan(ctx, Node{Ino: f.Ino})
		must(t, err)
		if len(plan.Manifest.Extents) != 4 || plan.Manifest.Extents[2].ID != ids[1] || plan.Attr.Gen != 1 {
			t.Fatalf("read plan %+v", plan)
		}
		if _, err := e.kr.Verify(plan.Token, cas.OpGet, "b0", e.clock.Now()); err != nil {
			t.Fatalf("read token: %v", err)
		}
		if _, err := e.kr.Verify(plan.Token, cas.OpPut, "b0", e.clock.Now()); err == nil {
			t.Fatal("read token grants put")
		}
		st, err := s.Stats(ctx)
		must(t, err)
		if st.Chunks != 2 || st.LogicalBytes != 5*4096 || st.HoleBytes != 2*4096 || st.StoredRaw != 2*4096 {
			t.Fatalf("stats %+v", st)
		}
		// ExpectGen.
		_, err = s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(ids[1]), ExpectGen: 7})
		wantErr(t, err, ErrConflict)
		// A chunk blockd does not hold: refused, nothing changes.
		ghost := cas.Sum([]byte("never uploaded"))
		_, err = s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(ids[1], ghost)})
		wantErr(t, err, ErrMissingChunk)
		plan2, _ := s.ReadPlan(ctx, Node{Ino: f.Ino})
		if plan2.Attr.Gen != 1 || len(plan2.Manifest.Extents) != 4 {
			t.Fatalf("failed commit changed the file: %+v", plan2.Attr)
		}
		// Bad manifests.
		bad := manifestOf(ids[0])
		bad.Size = 10
		_, err = s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: bad})
		wantErr(t, err, ErrInvalid)
		_, err = s.Commit(ctx, CommitRequest{Ino: RootIno, Manifest: manifestOf(ids[0])})
		wantErr(t, err, ErrIsDir)
		_, err = s.Commit(ctx, CommitRequest{Ino: 4242, Manifest: manifestOf(ids[0])})
		wantErr(t, err, ErrNotFound)
		// Replace: chunk 0 loses its last reference and becomes dead.
		_, err = s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(ids[1]), ExpectGen: 1})
		must(t, err)
		if n, _ := s.DeadChunks(ctx); n != 1 {
			t.Fatalf("dead chunks %d, want 1", n)
		}
		e.fsckClean(t)
		n, err := s.GC(ctx)
		must(t, err)
		if n != 1 || e.has(ids[0]) || !e.has(ids[1]) {
			t.Fatalf("gc deleted %d; has0 %v has1 %v", n, e.has(ids[0]), e.has(ids[1]))
		}
		// Truncate to the middle of the only extent.
		size := uint64(100)
		a, err = s.SetAttr(ctx, f.Ino, SetAttrRequest{Size: &size})
		must(t, err)
		plan, _ = s.ReadPlan(ctx, Node{Ino: f.Ino})
		if a.Size != 100 || plan.Manifest.Size != 100 || plan.Manifest.Extents[0].Length != 100 || plan.Manifest.Extents[0].ID != ids[1] {
			t.Fatalf("truncate: %+v %+v", a, plan.Manifest)
		}
		size = 0
		_, err = s.SetAttr(ctx, f.Ino, SetAttrRequest{Size: &size})
		must(t, err)
		if n, _ := s.DeadChunks(ctx); n != 1 {
			t.Fatalf("dead chunks %d after truncate to 0, want 1", n)
		}
		e.fsckClean(t)
	})
}

func TestPrepareUploadDedup(t *testing.T) {
	e := newEnv(t, false, 1)
	ctx := context.Background()
	s := e.s
	stored := e.put(t, chunkData(1))[0]
	committed := e.put(t, chunkData(2))[0]
	f := e.mkfile(t, RootIno, "f")
	_, err := s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(committed)})
	must(t, err)
	fresh := cas.Sum(chunkData(3))
	plan, err := s.PrepareUpload(ctx, []cas.ChunkID{stored, committed, fresh, fresh})
	must(t, err)
	if len(plan.Missing) != 1 || plan.Missing[0].ID != fresh || plan.Missing[0].Endpoint != 0 {
		t.Fatalf("missing %+v, want only the fresh chunk", plan.Missing)
	}
	if _, err := e.kr.Verify(plan.Token, cas.OpPut|cas.OpHas, "b0", e.clock.Now()); err != nil {
		t.Fatalf("put token: %v", err)
	}
	if !plan.Expiry.After(e.clock.Now()) {
		t.Fatal("plan already expired")
	}
	e.put(t, chunkData(3))
	g := e.mkfile(t, RootIno, "g")
	_, err = s.Commit(ctx, CommitRequest{Ino: g.Ino, Manifest: manifestOf(stored, committed, fresh)})
	must(t, err)
	st, _ := s.Stats(ctx)
	if st.Chunks != 3 {
		t.Fatalf("stats chunks %d", st.Chunks)
	}
	e.fsckClean(t)
	// blockd down: PrepareUpload and commits needing blockd say unavailable.
	e.blocks[0].fail = errors.New("connection refused")
	_, err = s.PrepareUpload(ctx, []cas.ChunkID{cas.Sum([]byte("x"))})
	wantErr(t, err, ErrUnavailable)
}

// TestGCRacePinnedChunk is the race of the issue: PrepareUpload reports a
// chunk present while it is dead (count 0, not yet collected); GC runs; the
// client commits the chunk without uploading it. The chunk must still be in
// blockd, and its count must be 1.
func TestGCRacePinnedChunk(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		s := e.s
		x := e.put(t, chunkData(42))[0]
		f := e.mkfile(t, RootIno, "f")
		_, err := s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(x)})
		must(t, err)
		must(t, s.Unlink(ctx, RootIno, "f")) // x: count 0, dead, still in blockd
		if n, _ := s.DeadChunks(ctx); n != 1 {
			t.Fatalf("dead %d", n)
		}
		plan, err := s.PrepareUpload(ctx, []cas.ChunkID{x})
		must(t, err)
		if len(plan.Missing) != 0 {
			t.Fatal("dead but stored chunk reported missing")
		}
		n, err := s.GC(ctx)
		must(t, err)
		if n != 0 || !e.has(x) {
			t.Fatalf("GC deleted a pinned chunk (deleted %d, present %v)", n, e.has(x))
		}
		g := e.mkfile(t, RootIno, "g")
		_, err = s.Commit(ctx, CommitRequest{Ino: g.Ino, Manifest: manifestOf(x)})
		must(t, err)
		e.clock.Add(time.Hour) // the pin expires; the reference protects x now
		n, err = s.GC(ctx)
		must(t, err)
		if n != 0 || !e.has(x) {
			t.Fatalf("GC deleted a referenced chunk")
		}
		if d, _ := s.DeadChunks(ctx); d != 0 {
			t.Fatalf("revived chunk still dead")
		}
		e.fsckClean(t)

		// Without a pin: the dead chunk is collected once the pin expires,
		// and a late commit that names it is refused.
		must(t, s.Unlink(ctx, RootIno, "g"))
		_, err = s.PrepareUpload(ctx, []cas.ChunkID{x})
		must(t, err)
		e.clock.Add(2 * time.Minute)
		n, err = s.GC(ctx)
		must(t, err)
		if n != 1 || e.has(x) {
			t.Fatalf("GC did not collect an unpinned dead chunk")
		}
		h := e.mkfile(t, RootIno, "h")
		_, err = s.Commit(ctx, CommitRequest{Ino: h.Ino, Manifest: manifestOf(x)})
		wantErr(t, err, ErrMissingChunk)
		e.fsckClean(t)
	})
}

// TestGCConcurrentCommits hammers GC while clients prepare and commit the
// same small set of chunks and delete files: no committed file may name a
// chunk that is missing from blockd.
func TestGCConcurrentCommits(t *testing.T) {
	e := newEnv(t, false, 2)
	ctx := context.Background()
	s := e.s
	var pool [][]byte
	for i := range 16 {
		pool = append(pool, chunkData(i))
	}
	ids := e.put(t, pool...)
	stop := make(chan struct{})
	gcDone := make(chan error)
	go func() {
		for {
			select {
			case <-stop:
				gcDone <- nil
				return
			default:
			}
			if _, err := s.GC(ctx); err != nil {
				gcDone <- err
				return
			}
		}
	}()
	errc := make(chan error, 4)
	for w := range 4 {
		go func() {
			errc <- func() error {
				for i := range 40 {
					name := fmt.Sprintf("w%d-%d", w, i)
					a, err := s.Create(ctx, CreateRequest{Parent: RootIno, Name: name, Mode: syscall.S_IFREG | 0o644})
					if err != nil {
						return err
					}
					use := []cas.ChunkID{ids[(w+i)%16], ids[(w*3+i*7)%16]}
					plan, err := s.PrepareUpload(ctx, use)
					if err != nil {
						return err
					}
					for _, mc := range plan.Missing { // re-upload what GC took
						for j, id := range ids {
							if id == mc.ID {
								e.put(t, pool[j])
							}
						}
					}
					if _, err := s.Commit(ctx, CommitRequest{Ino: a.Ino, Manifest: manifestOf(use...)}); err != nil {
						return fmt.Errorf("commit %s: %w", name, err)
					}
					if i%2 == 0 {
						if err := s.Unlink(ctx, RootIno, name); err != nil {
							return err
						}
					}
				}
				return nil
			}()
		}()
	}
	for range 4 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	must(t, <-gcDone)
	// Every live file's chunks are in blockd.
	ents, err := s.ReadDir(ctx, Node{Ino: RootIno}, "", 0)
	must(t, err)
	for _, en := range ents {
		plan, err := s.ReadPlan(ctx, Node{Ino: en.Ino})
		must(t, err)
		for i, x := range plan.Manifest.Extents {
			if !e.blocks[plan.Location[i]].has(x.ID) {
				t.Fatalf("file %s names chunk %s that blockd lost", en.Name, x.ID.Short())
			}
		}
	}
	e.fsckClean(t)
}

func TestUnlinkOpenFile(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		s := e.s
		x := e.put(t, chunkData(1))[0]
		f := e.mkfile(t, RootIno, "f")
		_, err := s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(x)})
		must(t, err)
		must(t, s.Open(ctx, f.Ino))
		must(t, s.Open(ctx, f.Ino))
		must(t, s.Unlink(ctx, RootIno, "f"))
		// Still readable and writable by inode.
		plan, err := s.ReadPlan(ctx, Node{Ino: f.Ino})
		must(t, err)
		if plan.Attr.Nlink != 0 || len(plan.Manifest.Extents) != 1 {
			t.Fatalf("open unlinked file: %+v", plan.Attr)
		}
		if n, _ := s.DeadChunks(ctx); n != 0 {
			t.Fatal("content of an open file went dead")
		}
		e.fsckClean(t) // an orphan is not a problem
		must(t, s.Release(ctx, f.Ino))
		if _, err := s.GetAttr(ctx, Node{Ino: f.Ino}); err != nil {
			t.Fatalf("inode gone before last release: %v", err)
		}
		must(t, s.Release(ctx, f.Ino))
		_, err = s.GetAttr(ctx, Node{Ino: f.Ino})
		wantErr(t, err, ErrNotFound)
		if n, _ := s.DeadChunks(ctx); n != 1 {
			t.Fatal("content of a released orphan not dead")
		}
		wantErr(t, s.Release(ctx, f.Ino), ErrInvalid)
		wantErr(t, s.Open(ctx, 999), ErrNotFound)
		// Rename over an open file orphans it too.
		g := e.mkfile(t, RootIno, "g")
		e.mkfile(t, RootIno, "h")
		must(t, s.Open(ctx, g.Ino))
		must(t, s.Rename(ctx, RootIno, "h", RootIno, "g", 0))
		if a, err := s.GetAttr(ctx, Node{Ino: g.Ino}); err != nil || a.Nlink != 0 {
			t.Fatalf("replaced open file: %+v %v", a, err)
		}
		must(t, s.Release(ctx, g.Ino))
		e.fsckClean(t)
	})
}

func TestOrphansReclaimedAtStart(t *testing.T) {
	e := newEnv(t, false, 1)
	ctx := context.Background()
	x := e.put(t, chunkData(1))[0]
	f := e.mkfile(t, RootIno, "f")
	_, err := e.s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(x)})
	must(t, err)
	must(t, e.s.Open(ctx, f.Ino))
	must(t, e.s.Unlink(ctx, RootIno, "f"))
	e.reopen(t) // the client "crashed": nobody releases
	_, err = e.s.GetAttr(ctx, Node{Ino: f.Ino})
	wantErr(t, err, ErrNotFound)
	if n, _ := e.s.DeadChunks(ctx); n != 1 {
		t.Fatal("orphan content not released at start")
	}
	e.fsckClean(t)
}

// TestCommitMovesReferences: rewriting a file whose manifest no snapshot
// shares changes only the counts of chunks that appear or disappear.
func TestCommitMovesReferences(t *testing.T) {
	e := newEnv(t, false, 1)
	ctx := context.Background()
	s := e.s
	ids := e.put(t, chunkData(1), chunkData(2), chunkData(3), chunkData(4))
	f := e.mkfile(t, RootIno, "f")
	g := e.mkfile(t, RootIno, "g")
	_, err := s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(ids[0], ids[1], ids[2], ids[1])})
	must(t, err)
	_, err = s.Commit(ctx, CommitRequest{Ino: g.Ino, Manifest: manifestOf(ids[0])})
	must(t, err)
	count := func(id cas.ChunkID) uint64 {
		var n uint64
		must(t, s.st.View(ctx, func(tx Txn) error {
			b, err := tx.Get(chunkKey(id))
			if errors.Is(err, ErrNoKey) {
				return nil
			}
			n, _, err = decodeChunkRec(b)
			return err
		}))
		return n
	}
	if count(ids[0]) != 2 || count(ids[1]) != 1 {
		t.Fatalf("counts %d %d", count(ids[0]), count(ids[1]))
	}
	// f: {0,1,2} -> {1,2,3}: 0 loses f's reference (g keeps it), 3 appears.
	_, err = s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(ids[1], ids[2], ids[3])})
	must(t, err)
	for i, want := range []uint64{1, 1, 1, 1} {
		if got := count(ids[i]); got != want {
			t.Fatalf("chunk %d count %d, want %d", i, got, want)
		}
	}
	// The same manifest again: nothing changes but the generation.
	a, err := s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(ids[1], ids[2], ids[3])})
	must(t, err)
	if a.Gen != 3 {
		t.Fatalf("gen %d", a.Gen)
	}
	// A missing chunk in the move path changes nothing.
	_, err = s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(ids[1], cas.Sum([]byte("ghost")))})
	wantErr(t, err, ErrMissingChunk)
	if count(ids[2]) != 1 || count(ids[3]) != 1 {
		t.Fatal("failed commit changed counts")
	}
	// g: {0} -> {}: 0 dies.
	_, err = s.Commit(ctx, CommitRequest{Ino: g.Ino, Manifest: cas.Manifest{Policy: cas.Fixed(4096)}})
	must(t, err)
	if count(ids[0]) != 0 {
		t.Fatal("chunk 0 still counted")
	}
	if d, _ := s.DeadChunks(ctx); d != 1 {
		t.Fatalf("dead %d", d)
	}
	e.fsckClean(t)
}

// TestSweep: chunks uploaded but never committed are deleted by Sweep,
// except those a client is still expected to commit (within its plan's
// life) or that are pinned; referenced and dead-tracked chunks are left to
// their owners.
func TestSweep(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		s := e.s
		ids := e.put(t, chunkData(1), chunkData(2), chunkData(3), chunkData(4))
		stray, ref, dead, pinned := ids[0], ids[1], ids[2], ids[3]
		f := e.mkfile(t, RootIno, "f")
		_, err := s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(ref, dead)})
		must(t, err)
		_, err = s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(ref)}) // dead: count 0, dead set
		must(t, err)
		_, err = s.PrepareUpload(ctx, []cas.ChunkID{pinned}) // present, uncommitted: pinned
		must(t, err)
		fresh := cas.Sum(chunkData(5))
		plan, err := s.PrepareUpload(ctx, []cas.ChunkID{fresh})
		must(t, err)
		if len(plan.Missing) != 1 {
			t.Fatal("fresh chunk not missing")
		}
		e.put(t, chunkData(5)) // uploaded, commit still to come
		n, err := s.Sweep(ctx)
		must(t, err)
		if n != 1 || e.has(stray) {
			t.Fatalf("sweep deleted %d; stray present %v", n, e.has(stray))
		}
		for i, id := range []cas.ChunkID{ref, dead, pinned, fresh} {
			if !e.has(id) {
				t.Fatalf("sweep deleted protected chunk %d", i)
			}
		}
		g := e.mkfile(t, RootIno, "g")
		_, err = s.Commit(ctx, CommitRequest{Ino: g.Ino, Manifest: manifestOf(fresh)})
		must(t, err)
		// After every plan expires: the pinned-but-never-committed chunk is
		// swept, the dead one is GC's, the committed ones stay.
		e.clock.Add(time.Hour)
		n, err = s.Sweep(ctx)
		must(t, err)
		if n != 1 || e.has(pinned) || !e.has(ref) || !e.has(fresh) || !e.has(dead) {
			t.Fatalf("second sweep deleted %d (pinned %v ref %v fresh %v dead %v)", n, e.has(pinned), e.has(ref), e.has(fresh), e.has(dead))
		}
		n, err = s.GC(ctx)
		must(t, err)
		if n != 1 || e.has(dead) {
			t.Fatal("GC did not collect the dead chunk")
		}
		e.fsckClean(t)
		e.referencedPresent(t)
	})
}
