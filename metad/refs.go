package metad

import (
	"context"
	"errors"
	"fmt"

	"stasis/cas"
)

// Reference counting. An inode record (live or in a snapshot) names at most
// one manifest; a manifest's 'r' count is the number of inode records naming
// it. A chunk's 'c' count is the number of stored manifests naming it (once
// per manifest however many extents use it). When a chunk's count reaches
// zero its record moves to the dead set ('z'), from which GC deletes it in
// blockd unless a pin or a commit protects it; a commit that names a dead
// chunk revives it.

// putManifest stores m as a new manifest with one reference and counts its
// chunks. ok reports whether an unreferenced chunk may be revived (it is
// verified as stored); a chunk neither referenced nor ok fails the
// transaction with ErrMissingChunk.
func (t *tx) putManifest(m *cas.Manifest, ok func(cas.ChunkID) bool) (uint64, error) {
	b, err := m.MarshalBinary()
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	mid, err := t.s.st.NextID("mid")
	if err != nil {
		return 0, err
	}
	sizes := make(map[cas.ChunkID]uint32, len(m.Extents))
	for _, e := range m.Extents {
		if !e.Hole {
			if _, seen := sizes[e.ID]; !seen {
				sizes[e.ID] = e.Length
				if err := t.incChunk(e.ID, e.Length, ok); err != nil {
					return 0, err
				}
			}
		}
	}
	if err := t.t.Set(manifestKey(mid), b); err != nil {
		return 0, err
	}
	return mid, t.t.Set(mrefKey(mid), u64(nil, 1))
}

func (t *tx) incChunk(id cas.ChunkID, size uint32, ok func(cas.ChunkID) bool) error {
	b, err := t.t.Get(chunkKey(id))
	switch {
	case err == nil:
		refs, sz, err := decodeChunkRec(b)
		if err != nil {
			return err
		}
		return t.t.Set(chunkKey(id), encodeChunkRec(refs+1, sz))
	case errors.Is(err, ErrNoKey):
		if ok == nil || !ok(id) {
			return fmt.Errorf("%w: %s", ErrMissingChunk, id)
		}
		if err := t.t.Delete(deadKey(id)); err != nil {
			return err
		}
		t.delta.Chunks++
		t.delta.Raw += int64(size)
		return t.t.Set(chunkKey(id), encodeChunkRec(1, size))
	default:
		return err
	}
}

func (t *tx) decChunk(id cas.ChunkID) error {
	b, err := t.t.Get(chunkKey(id))
	if errors.Is(err, ErrNoKey) {
		return fmt.Errorf("metad: reference count of chunk %s is already zero", id.Short())
	}
	if err != nil {
		return err
	}
	refs, sz, err := decodeChunkRec(b)
	if err != nil {
		return err
	}
	if refs > 1 {
		return t.t.Set(chunkKey(id), encodeChunkRec(refs-1, sz))
	}
	t.delta.Chunks--
	t.delta.Raw -= int64(sz)
	if err := t.t.Delete(chunkKey(id)); err != nil {
		return err
	}
	return t.t.Set(deadKey(id), u64(nil, uint64(t.now)))
}

// refManifest adds a reference to an existing manifest (snapshot copies).
func (t *tx) refManifest(mid uint64) error {
	b, err := t.t.Get(mrefKey(mid))
	if err != nil {
		return fmt.Errorf("metad: manifest %d has no reference count: %w", mid, err)
	}
	return t.t.Set(mrefKey(mid), u64(nil, getU64(b)+1))
}

// releaseManifest drops a reference. The last one releases the manifest:
// its chunks' counts drop inline if they fit the transaction's budget, else
// a release record queues them for the releaser (see batch.go).
func (t *tx) releaseManifest(mid uint64) error {
	if mid == 0 {
		return nil
	}
	b, err := t.t.Get(mrefKey(mid))
	if err != nil {
		return fmt.Errorf("metad: manifest %d has no reference count: %w", mid, err)
	}
	if n := getU64(b); n > 1 {
		return t.t.Set(mrefKey(mid), u64(nil, n-1))
	}
	m, err := t.manifest(mid)
	if err != nil {
		return err
	}
	if err := t.t.Delete(mrefKey(mid)); err != nil {
		return err
	}
	ids := m.ChunkIDs()
	if len(ids) > t.budget {
		t.released = true
		return putJSON(t.t, releaseKey(mid), &releaseRec{End: len(ids)})
	}
	t.budget -= len(ids)
	for _, id := range ids {
		if err := t.decChunk(id); err != nil {
			return err
		}
	}
	return t.t.Delete(manifestKey(mid))
}

func (t *tx) manifest(mid uint64) (*cas.Manifest, error) {
	m := new(cas.Manifest)
	if mid == 0 {
		return m, nil
	}
	b, err := t.t.Get(manifestKey(mid))
	if err != nil {
		return nil, fmt.Errorf("metad: manifest %d: %w", mid, err)
	}
	if err := m.UnmarshalBinary(b); err != nil {
		return nil, fmt.Errorf("metad: manifest %d: %w", mid, err)
	}
	return m, nil
}

// holeBytes is the part of a file of the manifest's size not backed by chunks.
func holeBytes(m *cas.Manifest) uint64 {
	var data uint64
	for _, e := range m.Extents {
		if !e.Hole {
			data += uint64(e.Length)
		}
	}
	return m.Size - data
}

// setContent points live regular file n at manifest mid (already counted)
// describing m, releases the old manifest and updates size and stats.
func (t *tx) setContent(ino Ino, n *inode, mid uint64, m *cas.Manifest) error {
	if err := t.releaseManifest(n.MID); err != nil {
		return err
	}
	hole := holeBytes(m)
	t.delta.Logical += int64(m.Size) - int64(n.Size)
	t.delta.Hole += int64(hole) - int64(n.Hole)
	n.MID, n.Size, n.Hole, n.Policy = mid, m.Size, hole, m.Policy.String()
	n.Gen++
	t.dirty(ino)
	return nil
}

// swapManifest makes m the content of live regular file n. When the old
// manifest has no other reference (no snapshot shares it), the file's
// reference moves to the new manifest chunk by chunk: only chunks that
// appear or disappear change their counts, so rewriting a large file with
// few changed chunks costs writes in proportion to the change. Otherwise
// the new manifest counts all its chunks and the old one loses a reference.
func (t *tx) swapManifest(ino Ino, n *inode, m *cas.Manifest, ok func(cas.ChunkID) bool) error {
	if n.MID != 0 {
		b, err := t.t.Get(mrefKey(n.MID))
		if err != nil {
			return fmt.Errorf("metad: manifest %d has no reference count: %w", n.MID, err)
		}
		if getU64(b) == 1 {
			return t.moveManifest(ino, n, m, ok)
		}
	}
	mid, err := t.putManifest(m, ok)
	if err != nil {
		return err
	}
	return t.setContent(ino, n, mid, m)
}

func (t *tx) moveManifest(ino Ino, n *inode, m *cas.Manifest, ok func(cas.ChunkID) bool) error {
	enc, err := m.MarshalBinary()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	old, err := t.manifest(n.MID)
	if err != nil {
		return err
	}
	oldIDs := old.ChunkIDs()
	had := make(map[cas.ChunkID]bool, len(oldIDs))
	for _, id := range oldIDs {
		had[id] = true
	}
	has := make(map[cas.ChunkID]bool, len(m.Extents))
	for _, e := range m.Extents {
		if e.Hole || has[e.ID] {
			continue
		}
		has[e.ID] = true
		if !had[e.ID] {
			if err := t.incChunk(e.ID, e.Length, ok); err != nil {
				return err
			}
		}
	}
	var leaving []cas.ChunkID
	for _, id := range oldIDs {
		if !has[id] {
			leaving = append(leaving, id)
		}
	}
	if err := t.releaseList(n.MID, leaving); err != nil {
		return err
	}
	mid, err := t.s.st.NextID("mid")
	if err != nil {
		return err
	}
	if err := t.t.Set(manifestKey(mid), enc); err != nil {
		return err
	}
	if err := t.t.Set(mrefKey(mid), u64(nil, 1)); err != nil {
		return err
	}
	n.MID = 0 // released above; setContent must not release it again
	return t.setContent(ino, n, mid, m)
}

// dropInode deletes live inode ino (link count zero, not open): its record,
// its orphan mark, its manifest reference.
func (t *tx) dropInode(ino Ino, n *inode) error {
	if err := t.releaseManifest(n.MID); err != nil {
		return err
	}
	t.delta.Inodes--
	if n.isReg() {
		t.delta.Logical -= int64(n.Size)
		t.delta.Hole -= int64(n.Hole)
	}
	t.inodes[ino] = &txInode{n: n, deleted: true}
	return t.t.Delete(orphanKey(ino))
}

// reclaimOrphans drops every orphan-marked inode whose link count is zero.
func reclaimOrphans(ctx context.Context, st Store, now int64, budget int, writeDelta func(Txn, statDelta) error) (int, error) {
	var inos []Ino
	err := st.View(ctx, func(t Txn) error {
		return t.Iterate([]byte{kOrphan}, nil, func(k, _ []byte) error {
			inos = append(inos, Ino(getU64(k[1:])))
			return nil
		})
	})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, ino := range inos {
		dropped := false
		err := st.Update(ctx, func(txn Txn) error {
			dropped = false
			t := &tx{t: txn, now: now, inodes: map[Ino]*txInode{}, budget: budget}
			nd, err := t.live(ino)
			if errors.Is(err, ErrNotFound) {
				return txn.Delete(orphanKey(ino))
			}
			if err != nil {
				return err
			}
			if nd.Nlink > 0 {
				return txn.Delete(orphanKey(ino))
			}
			if err := t.dropInode(ino, nd); err != nil {
				return err
			}
			if err := t.flush(); err != nil {
				return err
			}
			dropped = true
			return writeDelta(txn, t.delta)
		})
		if err != nil {
			return n, err
		}
		if dropped {
			n++
		}
	}
	return n, nil
}
