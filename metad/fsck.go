package metad

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"stasis/cas"
)

// FsckOptions configures Fsck.
type FsckOptions struct {
	// Repair rewrites what can be recomputed: manifest and chunk reference
	// counts (a chunk whose count drops to zero goes to the dead set), the
	// stats counters, and orphaned inodes (deleted). Structural damage
	// (dangling entries, wrong link counts) is only reported.
	Repair bool
	// MaxProblems bounds the problems listed (the count is exact). Default 1000.
	MaxProblems int
}

// FsckReport is what Fsck found.
type FsckReport struct {
	Inodes, Dirents, Manifests, Chunks, DeadChunks, Orphans, Snapshots int
	// Pending counts commits in progress (or interrupted, rolled back at the
	// next Open); Releasing counts manifests whose release is queued.
	Pending, Releasing int
	// ProblemCount counts every inconsistency; Problems lists the first ones.
	ProblemCount int
	Problems     []string
	Repaired     int
}

// String renders the report for humans.
func (r FsckReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "inodes %d, entries %d, manifests %d, chunks %d (dead %d), orphans %d, snapshots %d, pending commits %d, queued releases %d: %d problems",
		r.Inodes, r.Dirents, r.Manifests, r.Chunks, r.DeadChunks, r.Orphans, r.Snapshots, r.Pending, r.Releasing, r.ProblemCount)
	if r.Repaired > 0 {
		fmt.Fprintf(&b, ", %d repaired", r.Repaired)
	}
	for _, p := range r.Problems {
		b.WriteString("\n  ")
		b.WriteString(p)
	}
	if len(r.Problems) < r.ProblemCount {
		fmt.Fprintf(&b, "\n  ... and %d more", r.ProblemCount-len(r.Problems))
	}
	return b.String()
}

// fsckState is what one checking pass computes.
type fsckState struct {
	rep       FsckReport
	max       int
	mrefs     map[uint64]uint64      // expected manifest reference counts
	chunks    map[cas.ChunkID]uint64 // expected chunk reference counts
	chunkSize map[cas.ChunkID]uint32
	stats     statDelta // recomputed
	orphans   []Ino
}

func (f *fsckState) problem(format string, a ...any) {
	f.rep.ProblemCount++
	if len(f.rep.Problems) < f.max {
		f.rep.Problems = append(f.rep.Problems, fmt.Sprintf(format, a...))
	}
}

type fsckInode struct {
	n       *inode
	links   uint32 // directory entries naming it
	subdirs uint32
}

// Fsck checks a store's consistency (metad must not be running on it: open
// the directory with OpenBadgerStore, which badger locks). It recomputes
// manifest and chunk reference counts from the inode records of the live
// tree and of every snapshot and from the manifests, and compares them with
// the stored counts; it checks that every directory entry names an inode of
// its tree, link counts, directory parents, file sizes against manifests,
// the dead set, and the stats counters. A commit in progress counts for the
// list entries it has applied and a queued release for the entries it has
// not released yet (see batch.go); their records must be whole. A problem
// is a difference; orphaned
// inodes (unlinked while open when metad stopped) are counted but are not
// problems: the next Open reclaims them.
func Fsck(ctx context.Context, st Store, opts FsckOptions) (FsckReport, error) {
	f, err := fsckCheck(ctx, st, opts)
	if err != nil || !opts.Repair || (f.rep.ProblemCount == 0 && len(f.orphans) == 0) {
		return f.rep, err
	}
	repaired, err := fsckRepair(ctx, st, f)
	if err != nil {
		return f.rep, err
	}
	f2, err := fsckCheck(ctx, st, opts)
	f2.rep.Repaired = repaired
	return f2.rep, err
}

func fsckCheck(ctx context.Context, st Store, opts FsckOptions) (*fsckState, error) {
	f := &fsckState{max: opts.MaxProblems, mrefs: map[uint64]uint64{}, chunks: map[cas.ChunkID]uint64{}, chunkSize: map[cas.ChunkID]uint32{}}
	if f.max <= 0 {
		f.max = 1000
	}
	err := st.View(ctx, func(t Txn) error {
		// Snapshots.
		snaps := map[SnapID]*snapRecord{}
		err := t.Iterate([]byte{kSnap}, nil, func(k, v []byte) error {
			r := new(snapRecord)
			if err := jsonUnmarshal(v, r); err != nil {
				f.problem("snapshot %d: %v", getU64(k[1:]), err)
				return nil
			}
			snaps[SnapID(getU64(k[1:]))] = r
			if r.State == snapReady {
				f.rep.Snapshots++
				f.stats.Snapshots++
			}
			return nil
		})
		if err != nil {
			return err
		}
		err = t.Iterate([]byte{kSnapName}, nil, func(k, v []byte) error {
			id := SnapID(getU64(v))
			r, ok := snaps[id]
			if !ok || r.Dir != Ino(getU64(k[1:])) || r.Name != string(k[9:]) {
				f.problem("snapshot name %q of directory %d names snapshot %d, which does not match", k[9:], getU64(k[1:]), id)
			}
			return nil
		})
		if err != nil {
			return err
		}
		// Inodes of every tree.
		inodes := map[Node]*fsckInode{}
		err = t.Iterate([]byte{kInode}, nil, func(k, v []byte) error {
			if len(k) != 17 {
				f.problem("malformed inode key %x", k)
				return nil
			}
			nd := Node{Snap: SnapID(getU64(k[1:])), Ino: Ino(getU64(k[9:]))}
			if nd.Snap != LiveSnap && snaps[nd.Snap] == nil {
				f.problem("inode %d belongs to unknown snapshot %d", nd.Ino, nd.Snap)
			}
			n, err := decodeInode(v)
			if err != nil {
				f.problem("inode %v: %v", nd, err)
				return nil
			}
			f.rep.Inodes++
			inodes[nd] = &fsckInode{n: n}
			if n.MID != 0 {
				f.mrefs[n.MID]++
			}
			if nd.Snap == LiveSnap {
				f.stats.Inodes++
				if n.isReg() {
					f.stats.Logical += int64(n.Size)
					f.stats.Hole += int64(n.Hole)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		// Directory entries.
		err = t.Iterate([]byte{kDirent}, nil, func(k, v []byte) error {
			f.rep.Dirents++
			if len(k) < 18 {
				f.problem("malformed directory entry key %x", k)
				return nil
			}
			snap, parent, name := SnapID(getU64(k[1:])), Ino(getU64(k[9:])), string(k[17:])
			ino, _, err := decodeDirent(v)
			if err != nil {
				f.problem("entry %q in %d@%d: %v", name, parent, snap, err)
				return nil
			}
			if validName(name) != nil {
				f.problem("entry %q in %d@%d has an invalid name", name, parent, snap)
			}
			p := inodes[Node{Snap: snap, Ino: parent}]
			if p == nil || !p.n.isDir() {
				f.problem("entry %q is in %d@%d, which is not a directory", name, parent, snap)
			}
			c := inodes[Node{Snap: snap, Ino: ino}]
			if c == nil {
				f.problem("entry %q in %d@%d names missing inode %d", name, parent, snap, ino)
				return nil
			}
			c.links++
			if c.n.isDir() {
				if p != nil {
					p.subdirs++
				}
				if snap == LiveSnap && c.n.Parent != parent {
					f.problem("directory %d is entry %q of %d but records parent %d", ino, name, parent, c.n.Parent)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		orphan := map[Ino]bool{}
		err = t.Iterate([]byte{kOrphan}, nil, func(k, _ []byte) error {
			orphan[Ino(getU64(k[1:]))] = true
			return nil
		})
		if err != nil {
			return err
		}
		// Link counts and reachability of the live tree.
		manifestSize := map[uint64]Node{}
		for nd, c := range inodes {
			if c.n.MID != 0 {
				manifestSize[c.n.MID] = nd
			}
			if nd.Snap != LiveSnap {
				continue
			}
			switch {
			case c.n.isDir():
				if c.n.Nlink != 2+c.subdirs {
					f.problem("directory %d has link count %d, want %d", nd.Ino, c.n.Nlink, 2+c.subdirs)
				}
				if want := uint32(1); nd.Ino != RootIno && c.links != want {
					f.problem("directory %d has %d entries naming it", nd.Ino, c.links)
				}
			case c.links == 0 && c.n.Nlink == 0 && orphan[nd.Ino]:
				f.rep.Orphans++
				f.orphans = append(f.orphans, nd.Ino)
			case c.n.Nlink != c.links:
				f.problem("inode %d has link count %d but %d entries", nd.Ino, c.n.Nlink, c.links)
			}
		}
		if inodes[Node{Ino: RootIno}] == nil {
			f.problem("the root directory is missing")
		}
		// Commits in progress and queued releases.
		pending := map[uint64]*pendingRec{}
		err = t.Iterate([]byte{kPending}, nil, func(k, v []byte) error {
			mid := getU64(k[1:])
			f.rep.Pending++
			p := new(pendingRec)
			if err := jsonUnmarshal(v, p); err != nil || p.Next < 0 || p.End < p.Next {
				f.problem("pending commit of manifest %d: bad record %q", mid, v)
				return nil
			}
			pending[mid] = p
			return nil
		})
		if err != nil {
			return err
		}
		releasing := map[uint64]*releaseRec{}
		err = t.Iterate([]byte{kRelease}, nil, func(k, v []byte) error {
			mid := getU64(k[1:])
			f.rep.Releasing++
			r := new(releaseRec)
			if err := jsonUnmarshal(v, r); err != nil || r.Next < 0 || r.End < r.Next {
				f.problem("release of manifest %d: bad record %q", mid, v)
				return nil
			}
			if pending[mid] != nil {
				f.problem("manifest %d is both pending and being released", mid)
			}
			releasing[mid] = r
			return nil
		})
		if err != nil {
			return err
		}
		err = t.Iterate([]byte{kList}, nil, func(k, v []byte) error {
			mid := getU64(k[1:])
			p, r := pending[mid], releasing[mid]
			if p == nil && (r == nil || !r.List) {
				f.problem("chunk list %d belongs to no pending commit or release", mid)
				return nil
			}
			l, err := decodeList(v)
			if err != nil {
				f.problem("chunk list %d: %v", mid, err)
				return nil
			}
			switch {
			case p != nil && len(l) != p.End:
				f.problem("pending commit of manifest %d has %d list entries, record says %d", mid, len(l), p.End)
			case p != nil:
				for _, e := range l[:p.Next] {
					f.chunks[e.ID]++
					if _, ok := f.chunkSize[e.ID]; !ok {
						f.chunkSize[e.ID] = e.Size
					}
				}
			case len(l) < r.End:
				f.problem("release of manifest %d has %d list entries, record says %d", mid, len(l), r.End)
			default:
				for _, e := range l[r.Next:r.End] {
					f.chunks[e.ID]++
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		for mid := range pending {
			if _, err := t.Get(listKey(mid)); errors.Is(err, ErrNoKey) {
				f.problem("pending commit of manifest %d has no chunk list", mid)
			}
			if _, err := t.Get(manifestKey(mid)); errors.Is(err, ErrNoKey) {
				f.problem("pending commit of manifest %d has no manifest", mid)
			}
			if f.mrefs[mid] != 0 {
				f.problem("manifest %d is pending but named by %d inodes", mid, f.mrefs[mid])
			}
		}
		for mid, r := range releasing {
			if f.mrefs[mid] != 0 {
				f.problem("manifest %d is being released but named by %d inodes", mid, f.mrefs[mid])
			}
			if r.List {
				if _, err := t.Get(listKey(mid)); errors.Is(err, ErrNoKey) {
					f.problem("release of manifest %d has no chunk list", mid)
				}
			} else if _, err := t.Get(manifestKey(mid)); errors.Is(err, ErrNoKey) {
				f.problem("release of manifest %d has no manifest", mid)
			}
		}
		// Manifests and the chunk counts they imply.
		err = t.Iterate([]byte{kManifest}, nil, func(k, v []byte) error {
			f.rep.Manifests++
			mid := getU64(k[1:])
			var m cas.Manifest
			if err := m.UnmarshalBinary(v); err != nil {
				f.problem("manifest %d: %v", mid, err)
				return nil
			}
			r := releasing[mid]
			if f.mrefs[mid] == 0 && pending[mid] == nil && (r == nil || r.List) {
				f.problem("manifest %d is stored but no inode names it", mid)
			}
			if nd, ok := manifestSize[mid]; ok {
				n := inodes[nd].n
				if n.Size != m.Size || n.Hole != holeBytes(&m) {
					f.problem("inode %v has size %d (hole %d) but its manifest %d has %d (hole %d)", nd, n.Size, n.Hole, mid, m.Size, holeBytes(&m))
				}
			}
			for _, e := range m.Extents {
				if !e.Hole {
					if _, ok := f.chunkSize[e.ID]; !ok {
						f.chunkSize[e.ID] = e.Length
					}
				}
			}
			switch ids := m.ChunkIDs(); {
			case f.mrefs[mid] != 0:
				for _, id := range ids {
					f.chunks[id]++
				}
			case r != nil && !r.List && len(ids) < r.End:
				f.problem("release of manifest %d names %d chunks but the manifest has %d", mid, r.End, len(ids))
			case r != nil && !r.List:
				for _, id := range ids[r.Next:r.End] {
					f.chunks[id]++
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		stored := map[uint64]bool{}
		err = t.Iterate([]byte{kMRef}, nil, func(k, v []byte) error {
			mid := getU64(k[1:])
			stored[mid] = true
			if got, want := getU64(v), f.mrefs[mid]; got != want {
				f.problem("manifest %d has reference count %d, want %d", mid, got, want)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for mid, want := range f.mrefs {
			if !stored[mid] {
				f.problem("manifest %d is named by %d inodes but has no reference count", mid, want)
			}
			if _, err := t.Get(manifestKey(mid)); errors.Is(err, ErrNoKey) {
				f.problem("manifest %d is named by %d inodes but is missing", mid, want)
			}
		}
		seen := map[cas.ChunkID]bool{}
		err = t.Iterate([]byte{kChunk}, nil, func(k, v []byte) error {
			f.rep.Chunks++
			id, err := cas.ChunkIDFromBytes(k[1:])
			if err != nil {
				f.problem("malformed chunk key %x", k)
				return nil
			}
			seen[id] = true
			refs, size, err := decodeChunkRec(v)
			if err != nil {
				f.problem("chunk %s: %v", id, err)
				return nil
			}
			if want := f.chunks[id]; refs != want {
				f.problem("chunk %s has reference count %d, want %d", id, refs, want)
			}
			f.stats.Chunks++
			f.stats.Raw += int64(size)
			return nil
		})
		if err != nil {
			return err
		}
		for id, want := range f.chunks {
			if !seen[id] {
				f.problem("chunk %s is named by %d manifests but has no reference count", id, want)
			}
		}
		err = t.Iterate([]byte{kDead}, nil, func(k, _ []byte) error {
			f.rep.DeadChunks++
			id, _ := cas.ChunkIDFromBytes(k[1:])
			if seen[id] {
				f.problem("chunk %s is in the dead set but referenced", id)
			}
			return nil
		})
		if err != nil {
			return err
		}
		got, _, err := sumStats(t, 0)
		if err != nil {
			return err
		}
		if got != f.stats {
			f.problem("stats counters %+v, recomputed %+v", got, f.stats)
		}
		return nil
	})
	return f, err
}

func fsckRepair(ctx context.Context, st Store, f *fsckState) (int, error) {
	repaired := 0
	budget := defaultTxnWrites / 8
	if l, ok := st.(txnLimiter); ok {
		budget = l.MaxTxnWrites() / 8
	}
	n, err := reclaimOrphans(ctx, st, time.Now().UnixNano(), budget, func(t Txn, d statDelta) error { return nil })
	if err != nil {
		return repaired, err
	}
	repaired += n
	now := uint64(time.Now().UnixNano())
	// Manifest reference counts: set to the recomputed value.
	type kv struct{ k, v []byte }
	var writes []kv
	var deletes [][]byte
	err = st.View(ctx, func(t Txn) error {
		for mid, want := range f.mrefs {
			b, err := t.Get(mrefKey(mid))
			if err != nil || getU64(b) != want {
				writes = append(writes, kv{mrefKey(mid), u64(nil, want)})
			}
		}
		if err := t.Iterate([]byte{kMRef}, nil, func(k, _ []byte) error {
			if f.mrefs[getU64(k[1:])] == 0 {
				deletes = append(deletes, append([]byte{}, k...))
			}
			return nil
		}); err != nil {
			return err
		}
		for id, want := range f.chunks {
			b, err := t.Get(chunkKey(id))
			refs, size, derr := decodeChunkRec(b)
			if err != nil || derr != nil || refs != want {
				if derr != nil || err != nil {
					size = f.chunkSize[id]
				}
				writes = append(writes, kv{chunkKey(id), encodeChunkRec(want, size)})
				deletes = append(deletes, deadKey(id))
			}
		}
		return t.Iterate([]byte{kChunk}, nil, func(k, _ []byte) error {
			id, err := cas.ChunkIDFromBytes(k[1:])
			if err == nil && f.chunks[id] == 0 {
				deletes = append(deletes, append([]byte{}, k...))
				writes = append(writes, kv{deadKey(id), u64(nil, now)})
			}
			return nil
		})
	})
	if err != nil {
		return repaired, err
	}
	for len(writes)+len(deletes) > 0 {
		nw, nd := min(len(writes), 1000), min(len(deletes), 1000)
		err := st.Update(ctx, func(t Txn) error {
			for _, k := range deletes[:nd] {
				if err := t.Delete(k); err != nil {
					return err
				}
			}
			for _, w := range writes[:nw] {
				if err := t.Set(w.k, w.v); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return repaired, err
		}
		repaired += nw + nd
		writes, deletes = writes[nw:], deletes[nd:]
	}
	// Stats: recompute from scratch (the orphans reclaimed above changed them).
	f2, err := fsckCheck(ctx, st, FsckOptions{MaxProblems: 1})
	if err != nil {
		return repaired, err
	}
	for {
		var keys [][]byte
		err := st.View(ctx, func(t Txn) error {
			var err error
			_, keys, err = sumStats(t, 4096)
			return err
		})
		if err != nil {
			return repaired, err
		}
		err = st.Update(ctx, func(t Txn) error {
			for _, k := range keys {
				if err := t.Delete(k); err != nil {
					return err
				}
			}
			b, err := jsonMarshal(f2.stats)
			if err != nil {
				return err
			}
			return t.Set(statsBaseKey(), b)
		})
		if err != nil {
			return repaired, err
		}
		if len(keys) < 4096 {
			break
		}
	}
	return repaired + 1, nil
}
