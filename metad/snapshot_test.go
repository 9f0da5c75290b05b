package metad

import (
	"context"
	"syscall"
	"testing"
	"time"

	"stasis/cas"
)

func TestSnapshots(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		s := e.s
		ids := e.put(t, chunkData(1), chunkData(2), chunkData(3))
		exp := e.mkdir(t, RootIno, "exp")
		node := e.mkdir(t, exp.Ino, "node")
		mem := e.mkfile(t, node.Ino, "memory")
		_, err := s.Commit(ctx, CommitRequest{Ino: mem.Ino, Manifest: manifestOf(ids[0], ids[1])})
		must(t, err)
		_, err = s.Link(ctx, mem.Ino, exp.Ino, "hardlink")
		must(t, err)
		must(t, s.SetXattr(ctx, node.Ino, "user.tag", []byte("v1"), 0))
		outside := e.mkfile(t, RootIno, "outside")

		snap, err := s.CreateSnapshot(ctx, exp.Ino, "s1")
		must(t, err)
		if snap.Root != (Node{Snap: snap.ID, Ino: exp.Ino}) || snap.Name != "s1" || snap.Dir != exp.Ino || !snap.Created.Equal(e.clock.Now()) {
			t.Fatalf("snapshot %+v", snap)
		}
		_, err = s.CreateSnapshot(ctx, exp.Ino, "s1")
		wantErr(t, err, ErrExists)
		_, err = s.CreateSnapshot(ctx, mem.Ino, "x")
		wantErr(t, err, ErrNotDir)
		_, err = s.CreateSnapshot(ctx, 777, "x")
		wantErr(t, err, ErrNotFound)

		// Change the live tree every way after the snapshot.
		_, err = s.Commit(ctx, CommitRequest{Ino: mem.Ino, Manifest: manifestOf(ids[2])})
		must(t, err)
		must(t, s.SetXattr(ctx, node.Ino, "user.tag", []byte("v2"), 0))
		must(t, s.Rename(ctx, RootIno, "outside", node.Ino, "moved-in", 0))
		must(t, s.Rename(ctx, exp.Ino, "hardlink", RootIno, "moved-out", 0))
		e.mkfile(t, node.Ino, "new")
		must(t, s.Unlink(ctx, node.Ino, "memory"))

		// The snapshot is as it was.
		root := snap.Root
		ents, err := s.ReadDir(ctx, root, "", 0)
		must(t, err)
		if len(ents) != 2 || ents[0].Name != "hardlink" || ents[1].Name != "node" {
			t.Fatalf("snapshot root entries %+v", ents)
		}
		n, err := s.Lookup(ctx, root, "node")
		must(t, err)
		ents, err = s.ReadDir(ctx, Node{Snap: snap.ID, Ino: n.Ino}, "", 0)
		must(t, err)
		if len(ents) != 1 || ents[0].Name != "memory" || ents[0].Ino != mem.Ino {
			t.Fatalf("snapshot node entries %+v", ents)
		}
		v, err := s.GetXattr(ctx, Node{Snap: snap.ID, Ino: node.Ino}, "user.tag")
		must(t, err)
		if string(v) != "v1" {
			t.Fatalf("snapshot xattr %q", v)
		}
		plan, err := s.ReadPlan(ctx, Node{Snap: snap.ID, Ino: mem.Ino})
		must(t, err)
		if len(plan.Manifest.Extents) != 2 || plan.Manifest.Extents[0].ID != ids[0] || plan.Attr.Nlink != 2 {
			t.Fatalf("snapshot file plan %+v", plan)
		}
		_, err = s.GetAttr(ctx, Node{Snap: snap.ID, Ino: outside.Ino})
		wantErr(t, err, ErrNotFound)
		_, err = s.GetAttr(ctx, Node{Snap: 99, Ino: RootIno})
		wantErr(t, err, ErrNotFound)

		// Chunks only the snapshot references stay alive.
		if d, _ := s.DeadChunks(ctx); d != 0 {
			t.Fatalf("%d chunks dead while a snapshot holds them", d)
		}
		st, _ := s.Stats(ctx)
		if st.Snapshots != 1 || st.Chunks != 3 {
			t.Fatalf("stats %+v", st)
		}
		e.fsckClean(t)

		// Listing.
		e.clock.Add(time.Second)
		s2, err := s.CreateSnapshot(ctx, exp.Ino, "s2")
		must(t, err)
		_, err = s.CreateSnapshot(ctx, RootIno, "all")
		must(t, err)
		list, err := s.ListSnapshots(ctx, exp.Ino)
		must(t, err)
		if len(list) != 2 || list[0].ID != snap.ID || list[1].ID != s2.ID {
			t.Fatalf("list %+v", list)
		}
		all, err := s.ListSnapshots(ctx, 0)
		must(t, err)
		if len(all) != 3 {
			t.Fatalf("list all %+v", all)
		}
		_, err = s.ListSnapshots(ctx, 5555)
		wantErr(t, err, ErrNotFound)

		// Deleting the first snapshot releases ids[0] and ids[1], which
		// only it references; ids[2] stays (live file "moved-out").
		must(t, s.DeleteSnapshot(ctx, exp.Ino, "s1"))
		wantErr(t, s.DeleteSnapshot(ctx, exp.Ino, "s1"), ErrNotFound)
		if d, _ := s.DeadChunks(ctx); d != 2 {
			t.Fatalf("dead chunks %d after deleting s1, want 2", d)
		}
		must(t, s.DeleteSnapshot(ctx, exp.Ino, "s2"))
		must(t, s.DeleteSnapshot(ctx, RootIno, "all"))
		if d, _ := s.DeadChunks(ctx); d != 2 {
			t.Fatalf("dead chunks %d after deleting every snapshot, want 2", d)
		}
		_, err = s.ReadDir(ctx, root, "", 0)
		wantErr(t, err, ErrNotFound)
		st, _ = s.Stats(ctx)
		if st.Snapshots != 0 || st.Chunks != 1 {
			t.Fatalf("stats %+v", st)
		}
		// The name is free again.
		_, err = s.CreateSnapshot(ctx, exp.Ino, "s1")
		must(t, err)
		e.fsckClean(t)
	})
}

// TestSnapshotInterruptedIsRemoved simulates a crash in the middle of
// taking and of deleting a snapshot: Open finishes the job.
func TestSnapshotInterruptedIsRemoved(t *testing.T) {
	e := newEnv(t, false, 1)
	ctx := context.Background()
	s := e.s
	x := e.put(t, chunkData(1))[0]
	d := e.mkdir(t, RootIno, "d")
	for _, name := range []string{"a", "b"} {
		f := e.mkfile(t, d.Ino, name)
		_, err := s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(x)})
		must(t, err)
	}
	// Half-built: the record says building and the records are copied.
	id := SnapID(900)
	must(t, s.update(ctx, func(t *tx) error {
		return putSnapRecord(t.t, id, &snapRecord{Dir: d.Ino, Name: "half", State: snapBuilding})
	}))
	must(t, s.copySubtree(ctx, id, d.Ino))
	e.fsckClean(t) // consistent at every step
	if l, _ := s.ListSnapshots(ctx, d.Ino); len(l) != 0 {
		t.Fatal("building snapshot listed")
	}
	// Half-deleted: a ready snapshot marked deleting.
	snap, err := s.CreateSnapshot(ctx, d.Ino, "full")
	must(t, err)
	must(t, s.update(ctx, func(t *tx) error {
		r, err := getSnapRecord(t.t, snap.ID)
		if err != nil {
			return err
		}
		r.State = snapDeleting
		t.delta.Snapshots--
		return putSnapRecord(t.t, snap.ID, r)
	}))
	e.reopen(t)
	s = e.s
	var left int
	must(t, s.st.View(ctx, func(t Txn) error {
		for _, p := range [][]byte{{kSnap}, inodePrefix(id), inodePrefix(snap.ID), direntSnapPrefix(id)} {
			if err := t.Iterate(p, nil, func(_, _ []byte) error { left++; return nil }); err != nil {
				return err
			}
		}
		return nil
	}))
	if left != 0 {
		t.Fatalf("%d snapshot records left after recovery", left)
	}
	e.fsckClean(t)
	st, _ := s.Stats(ctx)
	if st.Snapshots != 0 || st.Chunks != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestSnapshotHoldsUnlinkedContent(t *testing.T) {
	e := newEnv(t, true, 1)
	ctx := context.Background()
	s := e.s
	x := e.put(t, chunkData(9))[0]
	f := e.mkfile(t, RootIno, "f")
	_, err := s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(x)})
	must(t, err)
	snap, err := s.CreateSnapshot(ctx, RootIno, "keep")
	must(t, err)
	must(t, s.Unlink(ctx, RootIno, "f"))
	e.clock.Add(time.Hour)
	n, err := s.GC(ctx)
	must(t, err)
	if n != 0 || !e.has(x) {
		t.Fatal("GC deleted a chunk a snapshot references")
	}
	a, err := s.Lookup(ctx, snap.Root, "f")
	must(t, err)
	if a.Mode != syscall.S_IFREG|0o644 || a.Size != 4096 {
		t.Fatalf("snapshot attr %+v", a)
	}
	plan, err := s.ReadPlan(ctx, Node{Snap: snap.ID, Ino: a.Ino})
	must(t, err)
	if plan.Manifest.Extents[0].ID != x {
		t.Fatal("snapshot manifest changed")
	}
	_ = cas.ChunkID{}
	e.fsckClean(t)
}
