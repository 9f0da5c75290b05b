package metad

import (
	"context"
	"errors"
)

// Stats implements API: the base record plus every transaction's delta.
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
	return d.stats(), nil
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
