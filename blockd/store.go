// Package blockd stores chunks by hash and nothing else: a store interface
// ladder with badger and in-memory backends, and an HTTP server and client
// that speak the batch has/put/get/delete protocol with token checks.
package blockd

import (
	"context"
	"errors"
	"fmt"

	"stasis/cas"
)

// Chunk is one encoded chunk (cas.Encode output) and the ID of its raw bytes.
type Chunk struct {
	ID   cas.ChunkID
	Data []byte
}

// ChunkInfo describes a stored chunk without its data.
type ChunkInfo struct {
	ID          cas.ChunkID
	EncodedSize int
}

// ErrNotFound is returned by Get for an absent chunk.
var ErrNotFound = errors.New("chunk not found")

// Store is the read rung of the ladder.
//
// Get returns the encoded bytes of a chunk (the caller owns the slice) or an
// error wrapping ErrNotFound. Missing returns the subset of ids that are not
// stored, in input order. Both see every Put that has returned (read after
// write). Implementations are safe for concurrent use.
type Store interface {
	Get(ctx context.Context, id cas.ChunkID) ([]byte, error)
	Missing(ctx context.Context, ids []cas.ChunkID) ([]cas.ChunkID, error)
}

// WriteStore adds Put. Put stores every chunk of the batch and returns only
// when all of them are durable (synced to stable storage, for persistent
// backends). Putting a chunk that exists is a no-op. A Put that returns an
// error may have stored some chunks of the batch whole, never a partial
// chunk. Put keeps no reference to the chunks' Data after it returns, so
// callers may reuse the buffers. Stores do not verify hashes; see Verify.
type WriteStore interface {
	Store
	Put(ctx context.Context, chunks []Chunk) error
}

// PruneStore adds deletion and enumeration, for garbage collection.
// Delete of an absent chunk is not an error. List calls fn for every stored
// chunk in ID order until fn returns an error, which List returns.
type PruneStore interface {
	WriteStore
	Delete(ctx context.Context, ids []cas.ChunkID) error
	List(ctx context.Context, fn func(ChunkInfo) error) error
}

// Usage is what a store holds: distinct chunks and the sum of their encoded
// sizes (what the chunks occupy before any per-record or file-system
// overhead). Chunks deleted but not yet reclaimed on disk are not counted.
type Usage struct {
	Chunks       uint64 `json:"chunks"`
	EncodedBytes uint64 `json:"encoded_bytes"`
}

// UsageStore reports Usage. It is exact (it counts every Put that has
// returned and every Delete that has returned), cheap (no scan per call),
// and correct after a restart. Implementations are safe for concurrent use.
type UsageStore interface {
	Usage(ctx context.Context) (Usage, error)
}

// BatchGetter is an optional rung for stores that read many chunks faster
// together than one at a time (the pack store reads neighbouring records
// with one large read; the HTTP client fetches them in one request).
//
// GetMany calls fn for every chunk of ids that is stored, in the order of
// ids, with its encoded bytes; enc is valid only during the call (the
// store may reuse the buffer) and is not verified against the ID beyond the
// store's own checks. An ID that appears more than once in ids may be
// delivered once or each time. If some chunks are absent, GetMany delivers
// the others and then returns an error wrapping ErrNotFound that names
// them. Any other error (a damaged record, an I/O error, ctx ending) stops
// GetMany and is returned; the chunks delivered before it were whole. An
// error from fn stops GetMany and is returned as is. GetMany sees every
// Put that has returned, like Get. Implementations bound the memory one
// call holds, whatever the length of ids.
type BatchGetter interface {
	GetMany(ctx context.Context, ids []cas.ChunkID, fn func(id cas.ChunkID, enc []byte) error) error
}

// GetMany reads ids from s with s.GetMany if s is a BatchGetter, else with
// one Get per ID, under the BatchGetter contract.
func GetMany(ctx context.Context, s Store, ids []cas.ChunkID, fn func(id cas.ChunkID, enc []byte) error) error {
	if bg, ok := s.(BatchGetter); ok {
		return bg.GetMany(ctx, ids, fn)
	}
	var missing []cas.ChunkID
	for _, id := range ids {
		enc, err := s.Get(ctx, id)
		if errors.Is(err, ErrNotFound) {
			missing = append(missing, id)
			continue
		}
		if err != nil {
			return err
		}
		if err := fn(id, enc); err != nil {
			return err
		}
	}
	return missingError(len(ids), missing)
}

// missingError is GetMany's error for the absent chunks among n asked for,
// or nil when none is.
func missingError(n int, missing []cas.ChunkID) error {
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("blockd: %d of %d chunks (first %s): %w", len(missing), n, missing[0], ErrNotFound)
}
