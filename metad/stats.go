package metad

import (
	"context"
	"errors"
	"sync"
	"time"

	"stasis/blockd"
)

// usageTimeout bounds how long Stats waits for one blockd's usage: a
// server that hangs is reported missing rather than stalling Stats (and
// statfs on every casfs mount).
var usageTimeout = 3 * time.Second

// Stats implements API: metad's counts are the base record plus every
// transaction's delta; StoredEncoded and BlockChunks are the sum of the
// blockd servers' Usage, asked of all of them at once. A server that does
// not answer within usageTimeout, fails, or keeps no usage is left out and
// counted in BlocksUnreported (and logged when it starts and stops failing);
// Stats itself fails only if metad's own store does.
func (s *Service) Stats(ctx context.Context) (Stats, error) {
	var d statDelta
	err := s.st.View(ctx, func(t Txn) error {
		var err error
		d, _, err = sumStats(t, 0)
		return err
	})
	if err != nil {
		return Stats{}, err
	}
	if s.deltas.Load() > 4096 {
		if err := s.compactStats(ctx); err != nil {
			s.log.Warn("stats compaction failed", "err", err)
		}
	}
	st := d.stats()
	s.addBlockUsage(ctx, &st)
	if err := ctx.Err(); err != nil {
		return Stats{}, err
	}
	return st, nil
}

// addBlockUsage adds every blockd's Usage to st.
func (s *Service) addBlockUsage(ctx context.Context, st *Stats) {
	type result struct {
		u   blockd.Usage
		err error
	}
	res := make([]result, len(s.cfg.Blocks))
	var wg sync.WaitGroup
	for i, b := range s.cfg.Blocks {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, usageTimeout)
			defer cancel()
			res[i].u, res[i].err = blockd.UsageOf(ctx, b.Store)
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return // the caller gave up; say nothing about the servers
	}
	for i, r := range res {
		name := s.cfg.Blocks[i].Endpoint.Name
		if r.err != nil {
			st.BlocksUnreported++
			if _, was := s.usageDown.Swap(name, true); !was {
				s.log.Warn("blockd usage unavailable: stats leave out its stored bytes", "blockd", name, "err", r.err)
			}
			continue
		}
		if _, was := s.usageDown.LoadAndDelete(name); was {
			s.log.Info("blockd usage available again", "blockd", name)
		}
		st.StoredEncoded += r.u.EncodedBytes
		st.BlockChunks += r.u.Chunks
	}
}

// sumStats adds up the base and the deltas; with limit > 0 it stops after
// that many deltas and returns their keys.
func sumStats(t Txn, limit int) (statDelta, [][]byte, error) {
	var sum statDelta
	var keys [][]byte
	base := statsBaseKey()
	err := t.Iterate([]byte{kStats}, nil, func(k, v []byte) error {
		var d statDelta
		if err := jsonUnmarshal(v, &d); err != nil {
			return err
		}
		sum.add(d)
		if string(k) != string(base) {
			keys = append(keys, append([]byte{}, k...))
			if limit > 0 && len(keys) >= limit {
				return ErrStop
			}
		}
		return nil
	})
	return sum, keys, err
}

// compactStats folds deltas into the base record, a batch per transaction.
func (s *Service) compactStats(ctx context.Context) error {
	s.deltas.Store(0)
	for {
		more := false
		err := s.st.Update(ctx, func(t Txn) error {
			sum, keys, err := sumStats(t, 4096)
			if err != nil {
				return err
			}
			more = len(keys) == 4096
			if len(keys) == 0 {
				return nil
			}
			for _, k := range keys {
				if err := t.Delete(k); err != nil {
					return err
				}
			}
			b, err := jsonMarshal(sum)
			if err != nil {
				return err
			}
			return t.Set(statsBaseKey(), b)
		})
		if err != nil && !errors.Is(err, ErrConflict) {
			return err
		}
		if !more {
			return nil
		}
	}
}
