package metad

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"stasis/cas"
)

// Commits and releases larger than one transaction.
//
// A store transaction holds a bounded number of writes (badger: about
// MemTableSize/650), and counting a manifest's chunks costs one or two
// writes per distinct chunk. Small changes keep the one-transaction path;
// larger ones go through durable intent records, so that every transaction
// leaves a consistent store and a crash at any point leaves each file either
// its old or its new content:
//
//  1. Commit's first transaction stores the new manifest ('m' mid), the list
//     of chunks whose counts it must raise ('l' mid) and a pending record
//     ('p' mid: inode, next index, end).
//  2. Batch transactions raise the counts of list[next:next+batch] and
//     advance next in the same transaction: each entry is applied exactly
//     once.
//  3. The swap transaction points the inode at mid (generation, size,
//     stats), deletes the pending record and releases the old manifest.
//
// A manifest whose last reference goes away is released inline when its
// chunks fit the transaction's budget; otherwise the transaction deletes its
// reference count and writes a release record ('u' mid: next, end), and the
// releaser lowers the counts in batches, advancing next in the same
// transaction, and deletes 'u', 'l' and 'm' with the last batch. The
// releaser runs in the background after each enqueue, at start and at the
// beginning of every GC pass.
//
// A commit that fails after its first transaction, or that a crash
// interrupts (Open finds its pending record), is rolled back by turning the
// pending record into a release of list[0:next]: the chunks it counted drop
// back and, if nothing else names them, go to the dead set as GC candidates.
// While the commit runs its chunks are held in memory (see hold), so GC
// cannot delete them between verification and counting; after a crash there
// are no holds and no pins, and GC waits TokenTTL after start anyway.
//
// When the file's old manifest has no other reference (no snapshot shares
// it) the commit moves the file's reference chunk by chunk, as the
// one-transaction path does: the list holds only the chunks new to the file,
// and the swap releases only the chunks that left it (the old manifest is
// deleted at the swap; its release record, if needed, carries its own
// list). So rewriting 1% of a large file costs about 1% of its chunks in
// count updates.

// pendingRec is the value under a 'p' key.
type pendingRec struct {
	Ino  Ino    `json:"ino"`
	Move uint64 `json:"move,omitempty"` // the old manifest, when the commit moves the file's reference
	Next int    `json:"next"`           // list entries applied
	End  int    `json:"end"`            // list length
}

// releaseRec is the value under a 'u' key. The chunks released are the first
// End entries of the list 'l' mid when List is set, or else of the distinct
// chunk IDs of manifest 'm' mid in order of first appearance.
type releaseRec struct {
	List bool `json:"list,omitempty"`
	Next int  `json:"next"`
	End  int  `json:"end"`
}

// listEntry is one entry of an 'l' list.
type listEntry struct {
	ID   cas.ChunkID
	Size uint32 // raw size, for counts created by a commit (0 in release lists)
}

const listEntrySize = cas.IDSize + 4

func encodeList(l []listEntry) []byte {
	b := make([]byte, 0, len(l)*listEntrySize)
	for _, e := range l {
		b = append(b, e.ID[:]...)
		b = binary.BigEndian.AppendUint32(b, e.Size)
	}
	return b
}

func decodeList(b []byte) ([]listEntry, error) {
	if len(b)%listEntrySize != 0 {
		return nil, fmt.Errorf("metad: corrupt chunk list (%d bytes)", len(b))
	}
	l := make([]listEntry, len(b)/listEntrySize)
	for i := range l {
		e := b[i*listEntrySize:]
		copy(l[i].ID[:], e[:cas.IDSize])
		l[i].Size = binary.BigEndian.Uint32(e[cas.IDSize:])
	}
	return l, nil
}

func getPending(t Txn, mid uint64) (*pendingRec, error) {
	b, err := t.Get(pendingKey(mid))
	if err != nil {
		return nil, fmt.Errorf("metad: pending commit of manifest %d: %w", mid, err)
	}
	p := new(pendingRec)
	if err := jsonUnmarshal(b, p); err != nil {
		return nil, fmt.Errorf("metad: pending commit of manifest %d: %w", mid, err)
	}
	if p.Next < 0 || p.End < p.Next {
		return nil, fmt.Errorf("metad: pending commit of manifest %d has bad progress %d/%d", mid, p.Next, p.End)
	}
	return p, nil
}

func putJSON(t Txn, k []byte, v any) error {
	b, err := jsonMarshal(v)
	if err != nil {
		return err
	}
	return t.Set(k, b)
}

func getRelease(t Txn, mid uint64) (*releaseRec, error) {
	b, err := t.Get(releaseKey(mid))
	if err != nil {
		return nil, fmt.Errorf("metad: release of manifest %d: %w", mid, err)
	}
	r := new(releaseRec)
	if err := jsonUnmarshal(b, r); err != nil {
		return nil, fmt.Errorf("metad: release of manifest %d: %w", mid, err)
	}
	if r.Next < 0 || r.End < r.Next {
		return nil, fmt.Errorf("metad: release of manifest %d has bad progress %d/%d", mid, r.Next, r.End)
	}
	return r, nil
}

// releaseIDs returns the chunks release record r of mid names, [0, r.End).
func releaseIDs(t Txn, mid uint64, r *releaseRec) ([]cas.ChunkID, error) {
	var ids []cas.ChunkID
	if r.List {
		b, err := t.Get(listKey(mid))
		if err != nil {
			return nil, fmt.Errorf("metad: chunk list of manifest %d: %w", mid, err)
		}
		l, err := decodeList(b)
		if err != nil {
			return nil, err
		}
		ids = make([]cas.ChunkID, len(l))
		for i, e := range l {
			ids[i] = e.ID
		}
	} else {
		m, err := (&tx{t: t}).manifest(mid)
		if err != nil {
			return nil, err
		}
		ids = m.ChunkIDs()
	}
	if len(ids) < r.End {
		return nil, fmt.Errorf("metad: release of manifest %d names %d chunks but has %d", mid, r.End, len(ids))
	}
	return ids[:r.End], nil
}

// txnLimiter is the optional rung of a Store that bounds the writes of one
// transaction; the Service sizes its batches from it.
type txnLimiter interface {
	MaxTxnWrites() int
}

// defaultTxnWrites is assumed for stores without a limit.
const defaultTxnWrites = 1 << 15

// setTxnLimit derives the batch sizes from the writes one transaction can
// hold: a count change costs up to two writes.
func (s *Service) setTxnLimit(writes int) {
	writes = max(writes, 64)
	s.batch = max(writes/3, 8)      // chunks per batch transaction
	s.inline = max(writes/8, 4)     // chunks a transaction may release inline
	s.fastCommit = max(writes/4, 4) // distinct chunks committed in one transaction
}

// commitBatched commits m to req.Ino through a pending record (see the top
// of this file). ok reports the verified chunks; every chunk of m is held by
// the caller, which also holds snapMu shared.
func (s *Service) commitBatched(ctx context.Context, req CommitRequest, m *cas.Manifest, ok func(cas.ChunkID) bool) (Attr, error) {
	enc, err := m.MarshalBinary()
	if err != nil {
		return Attr{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	var (
		mid     uint64
		list    []listEntry // counts to raise
		oldIDs  []cas.ChunkID
		leaving []cas.ChunkID
		move    uint64
	)
	err = s.update(ctx, func(t *tx) error {
		n, err := t.live(req.Ino)
		if err != nil {
			return err
		}
		if err := checkCommit(req, n); err != nil {
			return err
		}
		list, oldIDs, move = nil, nil, 0
		var had map[cas.ChunkID]bool
		if n.MID != 0 {
			b, err := t.t.Get(mrefKey(n.MID))
			if err != nil {
				return fmt.Errorf("metad: manifest %d has no reference count: %w", n.MID, err)
			}
			if getU64(b) == 1 {
				old, err := t.manifest(n.MID)
				if err != nil {
					return err
				}
				move, oldIDs = n.MID, old.ChunkIDs()
				had = make(map[cas.ChunkID]bool, len(oldIDs))
				for _, id := range oldIDs {
					had[id] = true
				}
			}
		}
		seen := make(map[cas.ChunkID]bool, len(m.Extents))
		for _, e := range m.Extents {
			if e.Hole || seen[e.ID] {
				continue
			}
			seen[e.ID] = true
			if !had[e.ID] {
				if !ok(e.ID) {
					if _, err := t.t.Get(chunkKey(e.ID)); errors.Is(err, ErrNoKey) {
						return fmt.Errorf("%w: %s", ErrMissingChunk, e.ID)
					} else if err != nil {
						return err
					}
				}
				list = append(list, listEntry{ID: e.ID, Size: e.Length})
			}
		}
		if mid, err = s.st.NextID("mid"); err != nil {
			return err
		}
		if err := t.t.Set(manifestKey(mid), enc); err != nil {
			return err
		}
		if err := t.t.Set(listKey(mid), encodeList(list)); err != nil {
			return err
		}
		return putJSON(t.t, pendingKey(mid), &pendingRec{Ino: req.Ino, Move: move, End: len(list)})
	})
	if err != nil {
		return Attr{}, err
	}
	if move != 0 {
		has := make(map[cas.ChunkID]bool, len(m.Extents))
		for _, e := range m.Extents {
			if !e.Hole {
				has[e.ID] = true
			}
		}
		for _, id := range oldIDs {
			if !has[id] {
				leaving = append(leaving, id)
			}
		}
	}
	a, err := s.applyPending(ctx, req, mid, m, list, leaving)
	if err != nil {
		if rerr := s.abortPending(context.WithoutCancel(ctx), mid); rerr != nil {
			s.log.Error("cannot roll back a failed commit; the next start does", "mid", mid, "err", rerr)
		}
		s.kickReleaser()
		return Attr{}, err
	}
	return a, nil
}

func checkCommit(req CommitRequest, n *inode) error {
	switch {
	case n.isDir():
		return fmt.Errorf("%w: inode %d", ErrIsDir, req.Ino)
	case !n.isReg():
		return fmt.Errorf("%w: inode %d is not a regular file", ErrInvalid, req.Ino)
	case req.ExpectGen != 0 && n.Gen != req.ExpectGen:
		return fmt.Errorf("%w: inode %d is at generation %d, not %d", ErrConflict, req.Ino, n.Gen, req.ExpectGen)
	}
	return nil
}

// applyPending raises the counts of list in batches, then swaps.
func (s *Service) applyPending(ctx context.Context, req CommitRequest, mid uint64, m *cas.Manifest, list []listEntry, leaving []cas.ChunkID) (Attr, error) {
	ok := func(cas.ChunkID) bool { return true } // verified (or found referenced) before the first transaction; held since
	batch := s.batch
	for next := 0; next < len(list); {
		n := min(batch, len(list)-next)
		if s.batchHook != nil {
			if err := s.batchHook(mid, next); err != nil {
				return Attr{}, err
			}
		}
		err := s.update(ctx, func(t *tx) error {
			p, err := getPending(t.t, mid)
			if err != nil {
				return err
			}
			if p.Next != next {
				return fmt.Errorf("metad: pending commit of manifest %d is at %d, expected %d", mid, p.Next, next)
			}
			for _, e := range list[next : next+n] {
				if err := t.incChunk(e.ID, e.Size, ok); err != nil {
					return err
				}
			}
			p.Next += n
			return putJSON(t.t, pendingKey(mid), p)
		})
		if errors.Is(err, ErrTxnTooBig) && n > 8 {
			batch = n / 2
			continue
		}
		if err != nil {
			return Attr{}, err
		}
		next += n
	}
	var a Attr
	err := s.update(ctx, func(t *tx) error {
		p, err := getPending(t.t, mid)
		if err != nil {
			return err
		}
		if p.Next != p.End {
			return fmt.Errorf("metad: pending commit of manifest %d applied %d of %d", mid, p.Next, p.End)
		}
		n, err := t.live(req.Ino)
		if err != nil {
			return err
		}
		if err := checkCommit(req, n); err != nil {
			return err
		}
		if n.MID != p.Move && p.Move != 0 {
			return fmt.Errorf("%w: inode %d changed content during the commit", ErrConflict, req.Ino)
		}
		for _, k := range [][]byte{pendingKey(mid), listKey(mid)} {
			if err := t.t.Delete(k); err != nil {
				return err
			}
		}
		if err := t.t.Set(mrefKey(mid), u64(nil, 1)); err != nil {
			return err
		}
		if p.Move != 0 {
			if err := t.releaseList(p.Move, leaving); err != nil {
				return err
			}
			n.MID = 0 // released; setContent must not release it again
		}
		if err := t.setContent(req.Ino, n, mid, m); err != nil {
			return err
		}
		if !req.Mtime.IsZero() {
			n.Mtime = req.Mtime.UnixNano()
		} else {
			n.Mtime = t.now
		}
		n.Ctime = t.now
		a = n.attr(req.Ino)
		return nil
	})
	return a, err
}

// releaseList releases manifest old, whose reference moved to a new
// manifest chunk by chunk: only the chunks in leaving lose a count. old's
// records go; the counts drop inline within the budget, else through a
// release record carrying the list.
func (t *tx) releaseList(old uint64, leaving []cas.ChunkID) error {
	b, err := t.t.Get(mrefKey(old))
	if err != nil {
		return fmt.Errorf("metad: manifest %d has no reference count: %w", old, err)
	}
	if getU64(b) != 1 {
		return fmt.Errorf("metad: manifest %d gained references during a commit", old)
	}
	for _, k := range [][]byte{mrefKey(old), manifestKey(old)} {
		if err := t.t.Delete(k); err != nil {
			return err
		}
	}
	if len(leaving) <= t.budget {
		t.budget -= len(leaving)
		for _, id := range leaving {
			if err := t.decChunk(id); err != nil {
				return err
			}
		}
		return nil
	}
	l := make([]listEntry, len(leaving))
	for i, id := range leaving {
		l[i].ID = id
	}
	if err := t.t.Set(listKey(old), encodeList(l)); err != nil {
		return err
	}
	t.released = true
	return putJSON(t.t, releaseKey(old), &releaseRec{List: true, End: len(l)})
}

// abortPending rolls back the pending commit of mid: the counts it raised
// are released, its manifest is deleted.
func (s *Service) abortPending(ctx context.Context, mid uint64) error {
	return s.update(ctx, func(t *tx) error {
		p, err := getPending(t.t, mid)
		if errors.Is(err, ErrNoKey) {
			return nil
		}
		if err != nil {
			return err
		}
		for _, k := range [][]byte{pendingKey(mid), manifestKey(mid)} {
			if err := t.t.Delete(k); err != nil {
				return err
			}
		}
		t.released = true
		return putJSON(t.t, releaseKey(mid), &releaseRec{List: true, End: p.Next})
	})
}

// recoverPending rolls back every commit a crash interrupted.
func (s *Service) recoverPending(ctx context.Context) error {
	var mids []uint64
	err := s.st.View(ctx, func(t Txn) error {
		return t.Iterate([]byte{kPending}, nil, func(k, _ []byte) error {
			mids = append(mids, getU64(k[1:]))
			return nil
		})
	})
	if err != nil {
		return err
	}
	for _, mid := range mids {
		s.log.Info("rolling back an interrupted commit", "mid", mid)
		if err := s.abortPending(ctx, mid); err != nil {
			return err
		}
	}
	return nil
}

// kickReleaser wakes the background releaser.
func (s *Service) kickReleaser() {
	select {
	case s.relKick <- struct{}{}:
	default:
	}
}

func (s *Service) releaseLoop() {
	defer close(s.relDone)
	for {
		select {
		case <-s.stop:
			return
		case <-s.relKick:
		}
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			select {
			case <-s.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		if err := s.releaseAll(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("releasing manifests failed; the next GC pass retries", "err", err)
		}
		cancel()
	}
}

// releaseAll finishes every queued release.
func (s *Service) releaseAll(ctx context.Context) error {
	s.relMu.Lock()
	defer s.relMu.Unlock()
	for {
		var mids []uint64
		err := s.st.View(ctx, func(t Txn) error {
			mids = mids[:0]
			return t.Iterate([]byte{kRelease}, nil, func(k, _ []byte) error {
				mids = append(mids, getU64(k[1:]))
				if len(mids) >= 256 {
					return ErrStop
				}
				return nil
			})
		})
		if err != nil || len(mids) == 0 {
			return err
		}
		for _, mid := range mids {
			if err := s.releaseOne(ctx, mid); err != nil {
				return err
			}
		}
	}
}

// releaseOne runs the release of mid to its end. Caller holds relMu.
func (s *Service) releaseOne(ctx context.Context, mid uint64) error {
	var r *releaseRec
	var ids []cas.ChunkID
	err := s.st.View(ctx, func(t Txn) error {
		var err error
		if r, err = getRelease(t, mid); err != nil {
			return err
		}
		ids, err = releaseIDs(t, mid, r)
		return err
	})
	if err != nil {
		return err
	}
	batch := s.batch
	for next := r.Next; ; {
		n := min(batch, r.End-next)
		err := s.update(ctx, func(t *tx) error {
			r, err := getRelease(t.t, mid)
			if err != nil {
				return err
			}
			if r.Next != next {
				return fmt.Errorf("metad: release of manifest %d is at %d, expected %d", mid, r.Next, next)
			}
			for _, id := range ids[next : next+n] {
				if err := t.decChunk(id); err != nil {
					return err
				}
			}
			r.Next += n
			if r.Next < r.End {
				return putJSON(t.t, releaseKey(mid), r)
			}
			for _, k := range [][]byte{releaseKey(mid), listKey(mid), manifestKey(mid)} {
				if err := t.t.Delete(k); err != nil {
					return err
				}
			}
			return nil
		})
		if errors.Is(err, ErrTxnTooBig) && n > 8 {
			batch = n / 2
			continue
		}
		if err != nil {
			return err
		}
		if next += n; next >= r.End {
			return nil
		}
	}
}
