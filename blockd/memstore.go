package blockd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"stasis/cas"
)

// Stats are a store's totals.
type Stats struct {
	Chunks       int64 // distinct chunks stored
	EncodedBytes int64 // sum of encoded sizes
	RawBytes     int64 // sum of decoded sizes
}

// StatStore is implemented by stores that keep totals cheaply; the server
// exports them as metrics.
type StatStore interface {
	Stats() Stats
}

// MemStore is a PruneStore in a map, for tests and embedded use where
// durability does not matter. It copies data in and out.
type MemStore struct {
	mu     sync.RWMutex
	chunks map[cas.ChunkID][]byte
	stats  Stats
}

var (
	_ PruneStore = (*MemStore)(nil)
	_ StatStore  = (*MemStore)(nil)
	_ UsageStore = (*MemStore)(nil)
)

// NewMemStore returns an empty in-memory store.
func NewMemStore() *MemStore {
	return &MemStore{chunks: map[cas.ChunkID][]byte{}}
}

// Get implements Store.
func (m *MemStore) Get(ctx context.Context, id cas.ChunkID) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.RLock()
	b, ok := m.chunks[id]
	m.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("chunk %s: %w", id, ErrNotFound)
	}
	return bytes.Clone(b), nil
}

// Missing implements Store.
func (m *MemStore) Missing(ctx context.Context, ids []cas.ChunkID) ([]cas.ChunkID, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	var out []cas.ChunkID
	for _, id := range ids {
		if _, ok := m.chunks[id]; !ok {
			out = append(out, id)
		}
	}
	return out, nil
}

// Put implements WriteStore.
func (m *MemStore) Put(ctx context.Context, chunks []Chunk) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range chunks {
		if _, ok := m.chunks[c.ID]; ok {
			continue
		}
		m.chunks[c.ID] = bytes.Clone(c.Data)
		m.stats.add(c.Data, 1)
	}
	return nil
}

// Delete implements PruneStore.
func (m *MemStore) Delete(ctx context.Context, ids []cas.ChunkID) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, id := range ids {
		if b, ok := m.chunks[id]; ok {
			delete(m.chunks, id)
			m.stats.add(b, -1)
		}
	}
	return nil
}

// List implements PruneStore. It works on a snapshot of the IDs, so fn may
// call back into the store.
func (m *MemStore) List(ctx context.Context, fn func(ChunkInfo) error) error {
	m.mu.RLock()
	infos := make([]ChunkInfo, 0, len(m.chunks))
	for id, b := range m.chunks {
		infos = append(infos, ChunkInfo{ID: id, EncodedSize: len(b)})
	}
	m.mu.RUnlock()
	slices.SortFunc(infos, func(a, b ChunkInfo) int { return bytes.Compare(a.ID[:], b.ID[:]) })
	for _, info := range infos {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// Stats implements StatStore.
func (m *MemStore) Stats() Stats {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.stats
}

// Usage implements UsageStore from the counters Put and Delete keep.
func (m *MemStore) Usage(ctx context.Context) (Usage, error) {
	if err := ctx.Err(); err != nil {
		return Usage{}, err
	}
	return m.Stats().usage(), nil
}

// usage converts totals to a Usage. A count below zero (possible for an
// instant while a Put and a Delete of the same chunk update the counters in
// the other order) reads as zero.
func (s Stats) usage() Usage {
	return Usage{Chunks: uint64(max(s.Chunks, 0)), EncodedBytes: uint64(max(s.EncodedBytes, 0))}
}

// UsageOf asks s for its Usage; a store that does not keep one is an error
// wrapping errors.ErrUnsupported. Decorators pass Usage through with it.
func UsageOf(ctx context.Context, s any) (Usage, error) {
	us, ok := s.(UsageStore)
	if !ok {
		return Usage{}, fmt.Errorf("blockd: %T does not report usage: %w", s, errors.ErrUnsupported)
	}
	return us.Usage(ctx)
}

// add counts (sign 1) or uncounts (sign -1) one encoded chunk.
func (s *Stats) add(enc []byte, sign int64) {
	raw, _ := cas.RawSize(enc) // unverified stores may hold junk: count it as 0
	s.Chunks += sign
	s.EncodedBytes += sign * int64(len(enc))
	s.RawBytes += sign * int64(raw)
}
