package metad

import (
	"context"
	"errors"
	"fmt"
)

// Snapshots copy the metadata records of a directory subtree (inodes and
// directory entries) under the snapshot's id, keeping inode numbers, and
// share manifests by reference: a copied inode adds one reference to its
// manifest, so taking a snapshot does no per-chunk work and copies no chunk
// data. Its cost is linear in the number of inodes of the subtree (see
// bench/RESULTS.md). A later change of the live tree writes new records
// and never touches the copies, so renames into or out of the directory
// cannot change a snapshot.
//
// Creation runs in several transactions while every namespace and content
// mutation waits (snapMu), so the copy is of one frozen tree; the snapshot
// record is "building" until the last transaction marks it "ready", and a
// crash in between leaves a "building" record that Open deletes. Every
// transaction keeps manifest reference counts equal to the records that
// name them, so the store is consistent at every step.

// snapBatch bounds the records one snapshot transaction copies or deletes.
const snapBatch = 2000

func getSnapRecord(t Txn, id SnapID) (*snapRecord, error) {
	b, err := t.Get(snapKey(id))
	if errors.Is(err, ErrNoKey) {
		return nil, fmt.Errorf("%w: snapshot %d", ErrNotFound, id)
	}
	if err != nil {
		return nil, err
	}
	r := new(snapRecord)
	return r, jsonUnmarshal(b, r)
}

func putSnapRecord(t Txn, id SnapID, r *snapRecord) error {
	b, err := jsonMarshal(r)
	if err != nil {
		return err
	}
	return t.Set(snapKey(id), b)
}

// CreateSnapshot implements Snapshots.
func (s *Service) CreateSnapshot(ctx context.Context, dir Ino, name string) (Snapshot, error) {
	if err := validName(name); err != nil {
		return Snapshot{}, err
	}
	n, err := s.st.NextID("snap")
	if err != nil {
		return Snapshot{}, err
	}
	id := SnapID(n)
	s.snapMu.Lock()
	defer s.snapMu.Unlock()
	rec := &snapRecord{Dir: dir, Name: name, Created: s.now().UnixNano(), State: snapBuilding}
	err = s.update(ctx, func(t *tx) error {
		if _, err := t.liveDir(dir); err != nil {
			return err
		}
		if _, err := t.t.Get(snapNameKey(dir, name)); err == nil {
			return fmt.Errorf("%w: snapshot %q of directory %d", ErrExists, name, dir)
		} else if !errors.Is(err, ErrNoKey) {
			return err
		}
		if err := t.t.Set(snapNameKey(dir, name), u64(nil, uint64(id))); err != nil {
			return err
		}
		return putSnapRecord(t.t, id, rec)
	})
	if err != nil {
		return Snapshot{}, err
	}
	if err := s.copySubtree(ctx, id, dir); err != nil {
		s.log.Error("snapshot copy failed; deleting it", "snap", id, "err", err)
		if perr := s.purgeSnapshot(context.WithoutCancel(ctx), id); perr != nil {
			s.log.Error("cannot delete failed snapshot; it is deleted at next start", "snap", id, "err", perr)
		}
		return Snapshot{}, err
	}
	rec.State = snapReady
	err = s.update(ctx, func(t *tx) error {
		if r, err := getSnapRecord(t.t, id); err != nil || r.State != snapBuilding {
			return fmt.Errorf("metad: snapshot %d changed while it was built (%v)", id, err)
		}
		t.delta.Snapshots++
		return putSnapRecord(t.t, id, rec)
	})
	if err != nil {
		if perr := s.purgeSnapshot(context.WithoutCancel(ctx), id); perr != nil {
			s.log.Error("cannot delete failed snapshot; it is deleted at next start", "snap", id, "err", perr)
		}
		return Snapshot{}, err
	}
	if err := s.Sync(context.WithoutCancel(ctx)); err != nil {
		return Snapshot{}, fmt.Errorf("metad: snapshot %d written but not synced: %w", id, err)
	}
	s.log.Info("snapshot created", "snap", id, "dir", dir, "name", name)
	return rec.snapshot(id), nil
}

// copySubtree copies the live records of dir's subtree under snapshot id.
// It reads the whole subtree in one read transaction, then writes at most
// snapBatch records per transaction. Caller holds snapMu exclusively, so the
// live tree does not change meanwhile.
func (s *Service) copySubtree(ctx context.Context, id SnapID, dir Ino) error {
	type rec struct {
		k, v []byte
		mid  uint64 // manifest an inode copy references
	}
	var recs []rec
	copied := map[Ino]bool{}
	copyInode := func(t Txn, ino Ino) (*inode, error) {
		b, err := t.Get(inodeKey(LiveSnap, ino))
		if err != nil {
			return nil, fmt.Errorf("metad: snapshot: inode %d: %w", ino, err)
		}
		n, err := decodeInode(b)
		if err != nil {
			return nil, err
		}
		if !copied[ino] {
			copied[ino] = true
			recs = append(recs, rec{inodeKey(id, ino), b, n.MID})
		}
		return n, nil
	}
	err := s.st.View(ctx, func(t Txn) error {
		recs = recs[:0]
		clear(copied)
		if _, err := copyInode(t, dir); err != nil {
			return err
		}
		queue := []Ino{dir}
		for len(queue) > 0 {
			d := queue[0]
			queue = queue[1:]
			prefix := direntPrefix(LiveSnap, d)
			var ents []rec
			err := t.Iterate(prefix, nil, func(k, v []byte) error {
				ents = append(ents, rec{k: append(direntPrefix(id, d), k[len(prefix):]...), v: append([]byte{}, v...)})
				return nil
			})
			if err != nil {
				return err
			}
			for _, e := range ents {
				ino, _, err := decodeDirent(e.v)
				if err != nil {
					return err
				}
				recs = append(recs, e)
				n, err := copyInode(t, ino)
				if err != nil {
					return err
				}
				if n.isDir() {
					queue = append(queue, ino)
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for len(recs) > 0 {
		batch := recs[:min(len(recs), snapBatch)]
		recs = recs[len(batch):]
		err := s.st.Update(ctx, func(t Txn) error {
			tt := &tx{t: t}
			for _, r := range batch {
				if err := t.Set(r.k, r.v); err != nil {
					return err
				}
				if r.mid != 0 {
					if err := tt.refManifest(r.mid); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// ListSnapshots implements Snapshots, oldest first. Dir 0 lists the
// snapshots of every directory.
func (s *Service) ListSnapshots(ctx context.Context, dir Ino) ([]Snapshot, error) {
	out := []Snapshot{}
	err := s.st.View(ctx, func(t Txn) error {
		out = out[:0]
		add := func(id SnapID) error {
			r, err := getSnapRecord(t, id)
			if err != nil {
				return err
			}
			if r.State == snapReady {
				out = append(out, r.snapshot(id))
			}
			return nil
		}
		if dir == 0 {
			return t.Iterate([]byte{kSnap}, nil, func(k, _ []byte) error { return add(SnapID(getU64(k[1:]))) })
		}
		prefix := snapNamePrefix(dir)
		err := t.Iterate(prefix, nil, func(_, v []byte) error { return add(SnapID(getU64(v))) })
		if err != nil {
			return err
		}
		if len(out) == 0 {
			if _, err := t.Get(inodeKey(LiveSnap, dir)); errors.Is(err, ErrNoKey) {
				return fmt.Errorf("%w: directory %d", ErrNotFound, dir)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sortSnapshots(out)
	return out, nil
}

// DeleteSnapshot implements Snapshots. The snapshot disappears at once (one
// transaction marks it deleting and frees its name); its records are then
// removed in batches, releasing manifests and chunks (which GC collects).
// If removing fails midway, DeleteSnapshot still succeeds: the next GC pass
// or the next Open finishes the job.
func (s *Service) DeleteSnapshot(ctx context.Context, dir Ino, name string) error {
	if err := validName(name); err != nil {
		return err
	}
	var id SnapID
	err := s.update(ctx, func(t *tx) error {
		b, err := t.t.Get(snapNameKey(dir, name))
		if errors.Is(err, ErrNoKey) {
			return fmt.Errorf("%w: snapshot %q of directory %d", ErrNotFound, name, dir)
		}
		if err != nil {
			return err
		}
		id = SnapID(getU64(b))
		r, err := getSnapRecord(t.t, id)
		if err != nil {
			return err
		}
		if r.State != snapReady { // being built: not visible yet
			return fmt.Errorf("%w: snapshot %q of directory %d", ErrNotFound, name, dir)
		}
		t.delta.Snapshots--
		r.State = snapDeleting
		if err := t.t.Delete(snapNameKey(dir, name)); err != nil {
			return err
		}
		return putSnapRecord(t.t, id, r)
	})
	if err != nil {
		return err
	}
	if err := s.Sync(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("metad: deletion of snapshot %d written but not synced: %w", id, err)
	}
	if err := s.purgeSnapshot(ctx, id); err != nil {
		s.log.Warn("snapshot deletion interrupted; GC or the next start finishes it", "snap", id, "err", err)
	}
	return nil
}

// finishDeletes purges snapshots left in the deleting state.
func (s *Service) finishDeletes(ctx context.Context) error {
	var ids []SnapID
	err := s.st.View(ctx, func(t Txn) error {
		return t.Iterate([]byte{kSnap}, nil, func(k, v []byte) error {
			var r snapRecord
			if err := jsonUnmarshal(v, &r); err != nil {
				return err
			}
			if r.State == snapDeleting {
				ids = append(ids, SnapID(getU64(k[1:])))
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	for _, id := range ids {
		if err := s.purgeSnapshot(ctx, id); err != nil {
			return err
		}
	}
	return nil
}

// purgeSnapshot deletes every record of snapshot id, then the snapshot.
func (s *Service) purgeSnapshot(ctx context.Context, id SnapID) error {
	for _, prefix := range [][]byte{direntSnapPrefix(id), inodePrefix(id)} {
		for {
			n := 0
			err := s.update(ctx, func(t *tx) error {
				n = 0
				var keys [][]byte
				var mids []uint64
				err := t.t.Iterate(prefix, nil, func(k, v []byte) error {
					keys = append(keys, append([]byte{}, k...))
					if k[0] == kInode {
						nd, err := decodeInode(v)
						if err != nil {
							return err
						}
						mids = append(mids, nd.MID)
					}
					if len(keys) >= snapBatch/4 {
						return ErrStop
					}
					return nil
				})
				if err != nil {
					return err
				}
				for _, mid := range mids {
					if err := t.releaseManifest(mid); err != nil {
						return err
					}
				}
				for _, k := range keys {
					if err := t.t.Delete(k); err != nil {
						return err
					}
				}
				n = len(keys)
				return nil
			})
			if err != nil {
				return err
			}
			if n == 0 {
				break
			}
		}
	}
	return s.update(ctx, func(t *tx) error {
		r, err := getSnapRecord(t.t, id)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if r.State == snapReady {
			t.delta.Snapshots--
		}
		if b, err := t.t.Get(snapNameKey(r.Dir, r.Name)); err == nil && SnapID(getU64(b)) == id {
			if err := t.t.Delete(snapNameKey(r.Dir, r.Name)); err != nil {
				return err
			}
		}
		return t.t.Delete(snapKey(id))
	})
}
