package blockd

import (
	"context"
	"sync"

	"stasis/cas"
)

// Verify returns a WriteStore that decodes and re-hashes every chunk of a
// Put before storing any of it: a batch with one bad chunk stores nothing
// and returns that chunk's *RejectError. If s is a PruneStore, so is the
// result (assert it). Reads pass through unchecked. The result is always a
// UsageStore; its Usage is s's, or an error wrapping errors.ErrUnsupported
// if s keeps none.
func Verify(s WriteStore) WriteStore {
	v := verifyStore{WriteStore: s}
	if p, ok := s.(PruneStore); ok {
		return verifyPruneStore{verifyStore: v, p: p}
	}
	return v
}

type verifyStore struct{ WriteStore }

type verifyPruneStore struct {
	verifyStore
	p PruneStore
}

var (
	_ PruneStore = verifyPruneStore{}
	_ UsageStore = verifyStore{}
	_ UsageStore = verifyPruneStore{}
)

// scratch holds decode buffers for verification (up to cas.MaxChunkSize).
var scratch = sync.Pool{New: func() any { return new([]byte) }}

func (v verifyStore) Put(ctx context.Context, chunks []Chunk) error {
	bp := scratch.Get().(*[]byte)
	defer scratch.Put(bp)
	for _, c := range chunks {
		var err error
		if *bp, err = CheckChunk(*bp, c); err != nil {
			return err
		}
	}
	return v.WriteStore.Put(ctx, chunks)
}

func (v verifyPruneStore) Delete(ctx context.Context, ids []cas.ChunkID) error {
	return v.p.Delete(ctx, ids)
}

func (v verifyPruneStore) List(ctx context.Context, fn func(ChunkInfo) error) error {
	return v.p.List(ctx, fn)
}

// Usage passes through to the wrapped store.
func (v verifyStore) Usage(ctx context.Context) (Usage, error) { return UsageOf(ctx, v.WriteStore) }
