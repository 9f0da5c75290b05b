package blockd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/dgraph-io/badger/v4"

	"stasis/cas"
)

func (s *PackStore) gcLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.GCInterval)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			if n, err := s.Compact(context.Background(), s.cfg.GCDiscardRatio); err != nil && !errors.Is(err, ErrClosed) {
				s.log.Warn("pack compaction failed", "compacted", n, "err", err)
			} else if n > 0 {
				s.log.Info("packs compacted", "packs", n)
			}
		}
	}
}

// movedRecord is a live record of a pack being compacted.
type movedRecord struct {
	id  cas.ChunkID
	loc packLoc
}

// Compact rewrites every sealed pack whose dead fraction (bytes not
// indexed, over the bytes after the file header) exceeds ratio, and
// removes sealed packs with nothing live; it returns how many packs it
// removed. Live records are copied to the current pack (which is synced
// first), each index entry that still points at the old record is moved
// in a transaction, the index is synced, and only then is the old file
// removed. It is safe to run with concurrent Gets, Puts and Deletes; one
// compaction runs at a time.
func (s *PackStore) Compact(ctx context.Context, ratio float64) (int, error) {
	if err := s.enter(); err != nil {
		return 0, err
	}
	defer s.leave()
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	cands := s.candidates(ratio)
	if len(cands) == 0 {
		return 0, nil
	}
	recs, err := s.liveRecords(cands)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, p := range cands {
		select {
		case <-s.done:
			return n, ErrClosed
		default:
		}
		if err := ctx.Err(); err != nil {
			return n, err
		}
		removed, err := s.compactPack(ctx, p, recs[p.num])
		if err != nil {
			return n, fmt.Errorf("blockd: compact pack %s: %w", packName(p.num), err)
		}
		if removed {
			n++
		}
	}
	return n, nil
}

// candidates are the sealed, idle packs worth rewriting. The current pack
// is sealed first (a new one started) when it is idle and worth rewriting
// too: otherwise the dead bytes of the pack being written, all of a store
// smaller than PackSize, would stay until it filled up.
func (s *PackStore) candidates(ratio float64) []*packFile {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.cur; p.writers == 0 && p.size > packHeaderSize && worthCompacting(p, ratio) && s.failed == nil {
		if np, err := s.createPack(p.num + 1); err != nil {
			s.log.Warn("cannot seal the current pack for compaction", "pack", p.path, "err", err)
		} else {
			s.packs[np.num] = np
			s.cur = np
			p.closeDirect()
		}
	}
	var out []*packFile
	for _, p := range s.packs {
		if p == s.cur || p.writers > 0 {
			continue
		}
		if worthCompacting(p, ratio) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b *packFile) int { return cmp.Compare(a.num, b.num) })
	return out
}

// worthCompacting: p holds nothing live, or more than ratio of its body
// is dead.
func worthCompacting(p *packFile, ratio float64) bool {
	body := p.size - packHeaderSize
	return p.live <= 0 || (body > 0 && float64(body-p.live)/float64(body) > ratio)
}

// liveRecords finds the indexed records of the given packs (one pass over
// the index), each pack's in file order.
func (s *PackStore) liveRecords(packs []*packFile) (map[uint32][]movedRecord, error) {
	out := map[uint32][]movedRecord{}
	for _, p := range packs {
		out[p.num] = nil
	}
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{keyPrefixChunk}, PrefetchValues: true, PrefetchSize: 256})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var loc packLoc
			if err := it.Item().Value(func(v []byte) (err error) { loc, err = decodeLoc(v); return err }); err != nil {
				return err
			}
			if recs, ok := out[loc.pack]; ok {
				var id cas.ChunkID
				copy(id[:], it.Item().Key()[1:])
				out[loc.pack] = append(recs, movedRecord{id: id, loc: loc})
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("blockd: compaction index scan: %w", err)
	}
	for _, recs := range out {
		slices.SortFunc(recs, func(a, b movedRecord) int { return cmp.Compare(a.loc.off, b.loc.off) })
	}
	return out, nil
}

// compactPack moves p's live records to the current pack and removes p.
// It reports false if p still had live bytes after the move (a Delete in
// flight; the next compaction removes it).
func (s *PackStore) compactPack(ctx context.Context, p *packFile, recs []movedRecord) (bool, error) {
	batchBytes := int64(32 << 20)
	if s.cfg.Small {
		batchBytes = 8 << 20
	}
	for len(recs) > 0 {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		var size int64
		k := 0
		for k < len(recs) && k < 1000 && (k == 0 || size+recs[k].loc.recLen() <= batchBytes) {
			size += recs[k].loc.recLen()
			k++
		}
		if err := s.moveRecords(p, recs[:k]); err != nil {
			return false, err
		}
		recs = recs[k:]
	}
	s.mu.Lock()
	if p.live > 0 || p.writers > 0 || p == s.cur {
		live := p.live
		s.mu.Unlock()
		s.log.Debug("pack not removed yet: live bytes left after compaction", "pack", p.path, "live", live)
		return false, nil
	}
	delete(s.packs, p.num)
	delete(s.dirty, p)
	s.mu.Unlock()
	// The deletes that emptied the pack may not be synced yet (Delete
	// commits, then syncs): make them durable before the file goes, or a
	// power loss would bring back index entries naming a missing pack.
	if err := s.syncIndex(); err != nil {
		return false, err
	}
	// Readers holding the pack finish first; later ones find it gone and
	// look the chunk up again (the index no longer names this pack).
	p.rw.Lock()
	p.closeFiles()
	p.rw.Unlock()
	if err := os.Remove(p.path); err != nil {
		return false, err
	}
	if err := syncDir(s.packDir); err != nil {
		return false, err
	}
	return true, nil
}

// moveRecords copies records of p to the current pack and moves the index
// entries that still point at them.
func (s *PackStore) moveRecords(p *packFile, recs []movedRecord) error {
	chunks := make([]Chunk, 0, len(recs))
	keep := recs[:0:0]
	bp := scratch.Get().(*[]byte)
	defer scratch.Put(bp)
	for _, r := range recs {
		data, err := s.readChunk(r.id, r.loc)
		if err == nil {
			// Pack records carry no data checksum: re-hash what is
			// moved, so that a damaged chunk is reported here rather
			// than copied.
			if *bp, err = CheckChunk((*bp)[:0], Chunk{ID: r.id, Data: data}); err != nil {
				err = fmt.Errorf("%w: pack %s offset %d: %w", ErrPackCorrupt, packName(r.loc.pack), r.loc.off, err)
			}
		}
		if err != nil {
			// A damaged record stays where it is (and so does its
			// pack): compaction must not turn corruption into loss.
			return err
		}
		chunks = append(chunks, Chunk{ID: r.id, Data: data})
		keep = append(keep, r)
	}
	np, locs, err := s.writeBatch(chunks)
	if err != nil {
		return err
	}
	err = s.indexMove(p, np, keep, locs)
	s.unplace(np)
	if err != nil {
		return err
	}
	return s.syncIndex()
}

// indexMove points each entry that still names its old record at the new
// copy, in one transaction (retried on conflicts with Deletes and Puts).
func (s *PackStore) indexMove(from, to *packFile, recs []movedRecord, locs []packLoc) error {
	var moved []int
	if err := updateRetrying(s.db, func(txn *badger.Txn) error {
		moved = moved[:0]
		for i, r := range recs {
			key := chunkKey(r.id)
			item, err := txn.Get(key)
			if errors.Is(err, badger.ErrKeyNotFound) {
				continue // deleted meanwhile: the copy is dead
			}
			if err != nil {
				return err
			}
			var cur packLoc
			if err := item.Value(func(v []byte) (err error) { cur, err = decodeLoc(v); return err }); err != nil {
				return err
			}
			if cur != r.loc {
				continue // deleted and put again elsewhere
			}
			if err := txn.Set(key, locs[i].encode()); err != nil {
				return err
			}
			moved = append(moved, i)
		}
		return nil
	}); err != nil {
		return err
	}
	s.mu.Lock()
	for _, i := range moved {
		from.live -= recs[i].loc.recLen()
		to.live += locs[i].recLen()
	}
	s.mu.Unlock()
	return nil
}
