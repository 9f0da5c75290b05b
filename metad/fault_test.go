package metad

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"
	"testing"
)

// faultStore wraps a Store and fails the n-th write (Set or Delete) counted
// from arm, inside whatever transaction it falls.
type faultStore struct {
	Store
	left   atomic.Int64 // writes until the failure; <= 0: off
	sticky atomic.Bool  // once the failure fired, every later write fails too
	fired  atomic.Bool
}

var errInjected = errors.New("injected store fault")

func (f *faultStore) arm(n int64) { f.left.Store(n); f.fired.Store(false) }

func (f *faultStore) Update(ctx context.Context, fn func(Txn) error) error {
	return f.Store.Update(ctx, func(t Txn) error { return fn(faultTxn{t, f}) })
}

type faultTxn struct {
	Txn
	f *faultStore
}

func (t faultTxn) hit() error {
	if t.f.left.Load() > 0 && t.f.left.Add(-1) == 0 {
		t.f.fired.Store(true)
		return errInjected
	}
	if t.f.sticky.Load() && t.f.fired.Load() {
		return errInjected
	}
	return nil
}

func (t faultTxn) Set(k, v []byte) error {
	if err := t.hit(); err != nil {
		return err
	}
	return t.Txn.Set(k, v)
}

func (t faultTxn) Delete(k []byte) error {
	if err := t.hit(); err != nil {
		return err
	}
	return t.Txn.Delete(k)
}

// dump returns every key and value of a store.
func dump(t *testing.T, st Store) map[string]string {
	out := map[string]string{}
	must(t, st.View(context.Background(), func(tx Txn) error {
		return tx.Iterate(nil, nil, func(k, v []byte) error {
			if k[0] != kSeq && k[0] != kStats { // sequences advance and stats deltas are per transaction
				out[string(k)] = string(v)
			}
			return nil
		})
	}))
	return out
}

// TestStoreFaultsLeaveNothingHalfDone fails every write position of a
// set of mutations in turn, on badger: each failing mutation returns the
// error and the store is exactly as before (and fsck-clean).
func TestStoreFaultsLeaveNothingHalfDone(t *testing.T) {
	ctx := context.Background()
	bs, err := OpenBadgerStore(t.TempDir(), testBadger(t))
	must(t, err)
	fs := &faultStore{Store: bs}
	e := &env{clock: newClock(), kr: testKeyring(t), blocks: []*memBlocks{newMemBlocks()}}
	s, err := Open(Config{Store: fs, Keyring: e.kr, Now: e.clock.Now, Blocks: []BlockBackend{{Endpoint: Endpoint{Name: "b0"}, Store: e.blocks[0]}}})
	must(t, err)
	e.s = s
	t.Cleanup(func() { s.Close() })
	ids := e.put(t, chunkData(1), chunkData(2), chunkData(3))
	d := e.mkdir(t, RootIno, "d")
	f := e.mkfile(t, d.Ino, "f")
	_, err = s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(ids[0], ids[1])})
	must(t, err)
	u := e.mkfile(t, d.Ino, "u")
	_, err = s.Commit(ctx, CommitRequest{Ino: u.Ino, Manifest: manifestOf(ids[0])})
	must(t, err)
	_, err = s.CreateSnapshot(ctx, d.Ino, "s0")
	must(t, err)
	ops := []struct {
		name string
		do   func() error
	}{
		{"commit", func() error {
			_, err := s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(ids[2], ids[1])})
			return err
		}},
		{"create", func() error {
			_, err := s.Create(ctx, CreateRequest{Parent: d.Ino, Name: "g", Mode: syscall.S_IFDIR | 0o700})
			return err
		}},
		{"rename", func() error { return s.Rename(ctx, d.Ino, "f", RootIno, "f2", 0) }},
		{"unlink", func() error { return s.Unlink(ctx, d.Ino, "u") }},
		{"truncate", func() error {
			z := uint64(10)
			_, err := s.SetAttr(ctx, f.Ino, SetAttrRequest{Size: &z})
			return err
		}},
		{"snapshot", func() error {
			_, err := s.CreateSnapshot(ctx, d.Ino, "s1")
			return err
		}},
		{"delete snapshot", func() error { return s.DeleteSnapshot(ctx, d.Ino, "s0") }},
	}
	for _, op := range ops {
		for n := int64(1); ; n++ {
			before := dump(t, bs)
			fs.arm(n)
			err := op.do()
			fs.arm(0)
			if err == nil {
				if n == 1 {
					t.Fatalf("%s: wrote nothing", op.name)
				}
				break // n is past the op's last write: it succeeded
			}
			if !errors.Is(err, errInjected) {
				t.Fatalf("%s, fault at write %d: error %v does not wrap the fault", op.name, n, err)
			}
			if op.name == "snapshot" || op.name == "delete snapshot" {
				// Multi-transaction operations: a failure is cleaned up
				// (or finished at the next Open); the store stays consistent.
				e.fsckClean(t)
				continue
			}
			if after := dump(t, bs); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Fatalf("%s, fault at write %d: store changed", op.name, n)
			}
			e.fsckClean(t)
		}
		e.fsckClean(t)
	}
}

func TestCorruptRecords(t *testing.T) {
	e := newEnv(t, false, 1)
	ctx := context.Background()
	f := e.mkfile(t, RootIno, "f")
	x := e.put(t, chunkData(1))[0]
	_, err := e.s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(x)})
	must(t, err)
	var mid uint64
	must(t, e.s.st.View(ctx, func(tx Txn) error {
		b, err := tx.Get(inodeKey(LiveSnap, f.Ino))
		if err != nil {
			return err
		}
		n, err := decodeInode(b)
		mid = n.MID
		return err
	}))
	must(t, e.s.st.Update(ctx, func(tx Txn) error {
		if err := tx.Set(inodeKey(LiveSnap, f.Ino), []byte("{not json")); err != nil {
			return err
		}
		return tx.Set(manifestKey(mid), []byte("SMF\x01garbage"))
	}))
	if _, err := e.s.GetAttr(ctx, Node{Ino: f.Ino}); err == nil {
		t.Fatal("corrupt inode read without error")
	}
	rep, err := Fsck(ctx, e.s.Store(), FsckOptions{})
	must(t, err)
	if rep.ProblemCount == 0 {
		t.Fatal("fsck missed corrupt records")
	}
}

func TestFsckFindsAndRepairsRefcounts(t *testing.T) {
	e := newEnv(t, false, 1)
	ctx := context.Background()
	ids := e.put(t, chunkData(1), chunkData(2))
	f := e.mkfile(t, RootIno, "f")
	_, err := e.s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(ids...)})
	must(t, err)
	// Damage: a wrong chunk count, a leaked manifest count, a bogus stats delta.
	must(t, e.s.st.Update(ctx, func(tx Txn) error {
		if err := tx.Set(chunkKey(ids[0]), encodeChunkRec(5, 4096)); err != nil {
			return err
		}
		if err := tx.Set(mrefKey(999), u64(nil, 1)); err != nil {
			return err
		}
		return e.s.writeDelta(tx, statDelta{Chunks: 3})
	}))
	rep, err := Fsck(ctx, e.s.Store(), FsckOptions{})
	must(t, err)
	if rep.ProblemCount != 3 {
		t.Fatalf("fsck found %d problems, want 3:\n%s", rep.ProblemCount, rep)
	}
	rep, err = Fsck(ctx, e.s.Store(), FsckOptions{Repair: true})
	must(t, err)
	if rep.ProblemCount != 0 || rep.Repaired == 0 {
		t.Fatalf("after repair:\n%s", rep)
	}
	e.fsckClean(t)
	st, _ := e.s.Stats(ctx)
	if st.Chunks != 2 {
		t.Fatalf("stats after repair %+v", st)
	}
}

func TestStatsCompaction(t *testing.T) {
	e := newEnv(t, false, 1)
	ctx := context.Background()
	for i := range 50 {
		e.mkfile(t, RootIno, fmt.Sprintf("f%d", i))
	}
	before, err := e.s.Stats(ctx)
	must(t, err)
	must(t, e.s.compactStats(ctx))
	after, err := e.s.Stats(ctx)
	must(t, err)
	if before != after || after.Inodes != 51 {
		t.Fatalf("compaction changed stats: %+v -> %+v", before, after)
	}
	n := 0
	must(t, e.s.st.View(ctx, func(tx Txn) error {
		return tx.Iterate([]byte{kStats}, nil, func(_, _ []byte) error { n++; return nil })
	}))
	if n != 1 {
		t.Fatalf("%d stats records after compaction, want 1", n)
	}
	e.fsckClean(t)
}
