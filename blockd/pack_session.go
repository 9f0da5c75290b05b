package blockd

import (
	"context"

	"stasis/cas"
)

// packSession is PackStore's putSession: one pack sync and one index sync
// per session instead of per batch. write writes a batch's new records to
// the current pack (a region, as Put does) without syncing or indexing
// them; writeback starts a pack sync in the background; commit syncs the
// packs once, then indexes every region and syncs the index once, the
// same durability order as Put (data durable before any index entry points
// at it). Records written by a session that is closed without a commit
// are dead bytes, never indexed. Each region keeps a writer reference on
// its pack (no compaction) until the session ends.
type packSession struct {
	s       *PackStore
	seen    map[cas.ChunkID]struct{} // IDs of the session's batches so far
	present []cas.ChunkID            // indexed already when written
	regions []packRegion             // written, not indexed
	ended   bool
}

// packRegion is one written batch: its pack, and its chunks' IDs (Data is
// nil: the caller's buffers are not kept) and locations.
type packRegion struct {
	p      *packFile
	chunks []Chunk
	locs   []packLoc
}

func (s *PackStore) beginPut() (putSession, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	if err := s.failedErr(); err != nil {
		s.leave()
		return nil, err
	}
	return &packSession{s: s, seen: map[cas.ChunkID]struct{}{}}, nil
}

func (ps *packSession) write(ctx context.Context, chunks []Chunk) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	todo, present, err := ps.s.newChunks(ctx, chunks, ps.seen)
	if err != nil {
		return err
	}
	ps.present = append(ps.present, present...)
	if len(todo) == 0 {
		return nil
	}
	p, locs, err := ps.s.writeRegion(todo)
	if err != nil {
		return err
	}
	ids := make([]Chunk, len(todo))
	for i, c := range todo {
		ids[i].ID = c.ID
	}
	ps.regions = append(ps.regions, packRegion{p: p, chunks: ids, locs: locs})
	return nil
}

func (ps *packSession) writeback() {
	if len(ps.regions) > 0 {
		ps.s.dataSync.Kick()
	}
}

func (ps *packSession) commit() error {
	s := ps.s
	if len(ps.regions) == 0 {
		return s.awaitDurable(ps.present)
	}
	defer ps.unplace()
	if err := s.dataSync.Sync(); err != nil {
		s.fail(err)
		return s.wrapErr("sync pack", err)
	}
	var written []cas.ChunkID
	var err error
	for _, r := range ps.regions {
		var w []cas.ChunkID
		w, err = s.indexNew(r.p, r.chunks, r.locs)
		written = append(written, w...)
		if err != nil {
			break
		}
	}
	defer s.setPending(written, -1)
	if err != nil {
		if len(written) > 0 {
			// Entries of the failed commit are visible: make them
			// durable before they stop being pending.
			if serr := s.syncIndex(); serr != nil {
				s.log.Error("index sync after a failed put", "err", serr)
			}
		}
		return s.wrapErr("put index", err)
	}
	// This sync starts after every index commit of the session and after
	// the chunks found present were visible, so it covers them all.
	return s.syncIndex()
}

// unplace drops the regions' writer references.
func (ps *packSession) unplace() {
	for _, r := range ps.regions {
		ps.s.unplace(r.p)
	}
	ps.regions = nil
}

func (ps *packSession) close() {
	if ps.ended {
		return
	}
	ps.ended = true
	ps.unplace() // uncommitted regions: dead bytes
	ps.s.leave()
}
