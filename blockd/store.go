// Package blockd stores chunks by hash and nothing else: a store interface
// ladder with badger and in-memory backends, and an HTTP server and client
// that speak the batch has/put/get/delete protocol with token checks.
package blockd

import (
	"context"
	"errors"

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
