package metad

import (
	"context"
	"errors"
	"fmt"
	"time"

	"stasis/blockd"
	"stasis/cas"
)

// Garbage collection. A chunk whose reference count reaches zero is put in
// the dead set ('z') in the same transaction. GC deletes dead chunks from
// their blockd, except chunks that are
//   - pinned: PrepareUpload told a client they exist, until the plan expires;
//   - held: a commit naming them is being verified and written;
//   - revived: a commit referenced them again before GC got to them.
// The coordination is in memory under pinMu: GC marks the chunks it is about
// to delete as collecting (skipping pinned and held ones), re-checks that
// they are still unreferenced, deletes them from blockd, and only then drops
// them from the dead set. PrepareUpload pins before it looks and reports
// collecting chunks as missing; Commit holds before it verifies and never
// accepts a collecting chunk it has not seen referenced. So a chunk a client
// was told exists stays in blockd until the client commits or the pin
// expires.
//
// Pins are not persistent, so the background GC waits TokenTTL after start
// before its first pass: by then every plan issued before a restart has
// expired. A commit after expiry still succeeds if blockd holds the chunk.

// gcBatch bounds the dead chunks one GC step handles.
const gcBatch = 4096

// GC runs one garbage collection pass over the whole dead set and returns
// the number of chunks deleted from blockd.
func (s *Service) GC(ctx context.Context) (int, error) {
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	s.prunePins()
	if err := s.finishDeletes(ctx); err != nil {
		return 0, err
	}
	// Finish queued releases first, so the dead set is complete.
	if err := s.releaseAll(ctx); err != nil {
		return 0, err
	}
	deleted := 0
	var after []byte
	for {
		var dead []cas.ChunkID
		err := s.st.View(ctx, func(t Txn) error {
			dead = dead[:0]
			return t.Iterate([]byte{kDead}, after, func(k, _ []byte) error {
				id, err := cas.ChunkIDFromBytes(k[1:])
				if err != nil {
					return err
				}
				dead = append(dead, id)
				if len(dead) >= gcBatch {
					return ErrStop
				}
				return nil
			})
		})
		if err != nil {
			return deleted, err
		}
		if len(dead) == 0 {
			return deleted, nil
		}
		last := dead[len(dead)-1]
		after = append(deadKey(last), 0)
		n, err := s.collect(ctx, dead)
		deleted += n
		if err != nil {
			return deleted, err
		}
	}
}

func (s *Service) prunePins() {
	s.pinMu.Lock()
	defer s.pinMu.Unlock()
	s.prunePinsLocked()
}

// prunePinsLocked drops expired pins and upload expectations; the caller
// holds pinMu. Without a GC loop PrepareUpload calls it as the maps grow.
func (s *Service) prunePinsLocked() {
	now := s.now()
	for _, m := range []map[cas.ChunkID]time.Time{s.pins, s.expect} {
		for id, exp := range m {
			if !now.Before(exp) {
				delete(m, id)
			}
		}
	}
}

// collect deletes the unprotected chunks of dead from blockd.
func (s *Service) collect(ctx context.Context, dead []cas.ChunkID) (int, error) {
	now := s.now()
	var mine []cas.ChunkID
	s.pinMu.Lock()
	for _, id := range dead {
		if exp, ok := s.pins[id]; ok && now.Before(exp) {
			continue
		}
		if s.holds[id] > 0 {
			continue
		}
		s.collecting[id] = struct{}{}
		mine = append(mine, id)
	}
	s.pinMu.Unlock()
	defer func() {
		s.pinMu.Lock()
		for _, id := range mine {
			delete(s.collecting, id)
		}
		s.pinMu.Unlock()
	}()
	if len(mine) == 0 {
		return 0, nil
	}
	// Re-check under the collecting mark: a commit may have revived some.
	var gone []cas.ChunkID
	err := s.st.View(ctx, func(t Txn) error {
		for _, id := range mine {
			if _, err := t.Get(chunkKey(id)); !errors.Is(err, ErrNoKey) {
				if err != nil {
					return err
				}
				continue
			}
			if _, err := t.Get(deadKey(id)); err != nil {
				if errors.Is(err, ErrNoKey) {
					continue
				}
				return err
			}
			gone = append(gone, id)
		}
		return nil
	})
	if err != nil || len(gone) == 0 {
		return 0, err
	}
	// The dead set may come from namespace changes not yet synced (an
	// unlink); were they lost to a power loss after blockd deleted the
	// chunks, files would come back naming deleted chunks.
	if err := s.Sync(ctx); err != nil {
		return 0, err
	}
	groups := make([][]cas.ChunkID, len(s.endpoints))
	for _, id := range gone {
		i := s.Place(id)
		groups[i] = append(groups[i], id)
	}
	var done []cas.ChunkID
	var errs []error
	for i, g := range groups {
		if len(g) == 0 {
			continue
		}
		if err := s.cfg.Blocks[i].Store.Delete(ctx, g); err != nil {
			errs = append(errs, fmt.Errorf("%w: blockd %s delete: %v", ErrUnavailable, s.endpoints[i].Name, err))
			continue
		}
		done = append(done, g...)
	}
	for rest := done; len(rest) > 0; {
		part := rest[:min(len(rest), s.batch)]
		rest = rest[len(part):]
		err := s.st.Update(ctx, func(t Txn) error {
			for _, id := range part {
				if err := t.Delete(deadKey(id)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			errs = append(errs, err)
			break
		}
	}
	if len(done) > 0 {
		s.log.Debug("gc deleted chunks", "count", len(done))
	}
	return len(done), errors.Join(errs...)
}

func (s *Service) gcLoop() {
	defer close(s.done)
	wait := time.Until(s.started.Add(s.cfg.TokenTTL))
	wait = max(wait, s.cfg.GCInterval)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	lastSweep := s.now()
	for {
		select {
		case <-s.stop:
			return
		case <-timer.C:
		}
		ctx, cancel := context.WithCancel(context.Background())
		sweep := s.cfg.SweepInterval > 0 && !s.now().Before(lastSweep.Add(s.cfg.SweepInterval))
		go func() {
			select {
			case <-s.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		if n, err := s.GC(ctx); err != nil {
			s.log.Warn("gc pass failed", "deleted", n, "err", err)
		}
		if sweep {
			lastSweep = s.now()
			if n, err := s.Sweep(ctx); err != nil {
				s.log.Warn("sweep failed", "deleted", n, "err", err)
			}
		}
		if err := s.compactStats(ctx); err != nil {
			s.log.Warn("stats compaction failed", "err", err)
		}
		if m, ok := s.st.(Maintainer); ok {
			m.Maintain(s.stop)
		}
		cancel()
		timer.Reset(s.cfg.GCInterval)
	}
}

// DeadChunks returns the number of chunks waiting for GC.
func (s *Service) DeadChunks(ctx context.Context) (int, error) {
	n := 0
	err := s.st.View(ctx, func(t Txn) error {
		return t.Iterate([]byte{kDead}, nil, func(_, _ []byte) error { n++; return nil })
	})
	return n, err
}

// sweepBatch bounds the unknown chunks one Sweep step handles.
const sweepBatch = 4096

// Sweep lists every blockd server and deletes the chunks that no manifest
// references and that are not dead-tracked (GC handles those), not pinned,
// not held by a commit, and not expected from a client that was told to
// upload them within its plan's life: chunks uploaded for commits that never
// came. It returns the number deleted. Like GC, it marks what it deletes as
// collecting and re-checks the counts first, so it never deletes a chunk a
// commit accepted.
func (s *Service) Sweep(ctx context.Context) (int, error) {
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	s.prunePins()
	deleted := 0
	for i, b := range s.cfg.Blocks {
		var batch []cas.ChunkID
		flush := func() error {
			n, err := s.sweepBatch(ctx, i, batch)
			deleted += n
			batch = batch[:0]
			return err
		}
		err := b.Store.List(ctx, func(ci blockd.ChunkInfo) error {
			batch = append(batch, ci.ID)
			if len(batch) >= sweepBatch {
				return flush()
			}
			return nil
		})
		if err == nil && len(batch) > 0 {
			err = flush()
		}
		if err != nil {
			return deleted, fmt.Errorf("%w: sweeping blockd %s: %v", ErrUnavailable, s.endpoints[i].Name, err)
		}
	}
	return deleted, nil
}

func (s *Service) sweepBatch(ctx context.Context, ep int, ids []cas.ChunkID) (int, error) {
	// First filter without marks (cheap): drop chunks metad knows.
	var unknown []cas.ChunkID
	err := s.st.View(ctx, func(t Txn) error {
		for _, id := range ids {
			known := false
			for _, k := range [][]byte{chunkKey(id), deadKey(id)} {
				if _, err := t.Get(k); err == nil {
					known = true
				} else if !errors.Is(err, ErrNoKey) {
					return err
				}
			}
			if !known {
				unknown = append(unknown, id)
			}
		}
		return nil
	})
	if err != nil || len(unknown) == 0 {
		return 0, err
	}
	now := s.now()
	var mine []cas.ChunkID
	s.pinMu.Lock()
	for _, id := range unknown {
		if exp, ok := s.pins[id]; ok && now.Before(exp) {
			continue
		}
		if exp, ok := s.expect[id]; ok && now.Before(exp) {
			continue
		}
		if _, c := s.collecting[id]; c || s.holds[id] > 0 {
			continue
		}
		s.collecting[id] = struct{}{}
		mine = append(mine, id)
	}
	s.pinMu.Unlock()
	defer func() {
		s.pinMu.Lock()
		for _, id := range mine {
			delete(s.collecting, id)
		}
		s.pinMu.Unlock()
	}()
	// Re-check under the marks: a commit may have counted some meanwhile.
	var gone []cas.ChunkID
	err = s.st.View(ctx, func(t Txn) error {
		for _, id := range mine {
			_, err1 := t.Get(chunkKey(id))
			_, err2 := t.Get(deadKey(id))
			if errors.Is(err1, ErrNoKey) && errors.Is(err2, ErrNoKey) {
				gone = append(gone, id)
			} else if err1 != nil && !errors.Is(err1, ErrNoKey) {
				return err1
			}
		}
		return nil
	})
	if err != nil || len(gone) == 0 {
		return 0, err
	}
	if err := s.Sync(ctx); err != nil { // see collect
		return 0, err
	}
	if err := s.cfg.Blocks[ep].Store.Delete(ctx, gone); err != nil {
		return 0, err
	}
	s.log.Info("sweep deleted unreferenced chunks", "blockd", s.endpoints[ep].Name, "count", len(gone))
	return len(gone), nil
}
