package casfs

import (
	"context"
	"errors"
	"net"
	"net/http"
	"syscall"

	"stasis/blockd"
	"stasis/cas"
	"stasis/metad"
)

// Transport moves encoded chunks to and from the block stores that metad's
// plans name. Put returns only when every chunk is durable on ep; Get
// returns the encoded bytes of a chunk (the caller owns them) or an error
// wrapping blockd.ErrNotFound. The token is the one from the UploadPlan
// (Put) or ReadPlan (Get); in-process transports may ignore it.
// Implementations are safe for concurrent use.
type Transport interface {
	Get(ctx context.Context, ep metad.Endpoint, token string, id cas.ChunkID) ([]byte, error)
	Put(ctx context.Context, ep metad.Endpoint, token string, chunks []blockd.Chunk) error
}

// BatchTransport is an optional Transport rung for read-ahead: GetMany
// fetches many chunks from ep in one call, under the contract of
// blockd.BatchGetter (fn sees each stored chunk's encoded bytes, valid only
// during the call; absent chunks are an error wrapping blockd.ErrNotFound
// after the others were delivered).
type BatchTransport interface {
	GetMany(ctx context.Context, ep metad.Endpoint, token string, ids []cas.ChunkID, fn func(id cas.ChunkID, enc []byte) error) error
}

// StoreTransport is the embedded-mode transport: every endpoint is the one
// in-process store, and tokens are not needed.
type StoreTransport struct {
	Store blockd.WriteStore
}

var (
	_ Transport      = StoreTransport{}
	_ BatchTransport = StoreTransport{}
)

// Get implements Transport.
func (t StoreTransport) Get(ctx context.Context, _ metad.Endpoint, _ string, id cas.ChunkID) ([]byte, error) {
	return t.Store.Get(ctx, id)
}

// Put implements Transport.
func (t StoreTransport) Put(ctx context.Context, _ metad.Endpoint, _ string, chunks []blockd.Chunk) error {
	return t.Store.Put(ctx, chunks)
}

// GetMany implements BatchTransport: a store that is a blockd.BatchGetter
// (the pack store) reads neighbouring chunks together; others are read one
// Get at a time.
func (t StoreTransport) GetMany(ctx context.Context, _ metad.Endpoint, _ string, ids []cas.ChunkID, fn func(cas.ChunkID, []byte) error) error {
	return blockd.GetMany(ctx, t.Store, ids, fn)
}

// ClientFactory builds a blockd client for one endpoint whose calls carry
// token; daemon mode passes a function wrapping blockd.NewClient.
type ClientFactory func(ep metad.Endpoint, token string) blockd.WriteStore

// ClientTransport is the daemon-mode transport: it talks to each endpoint
// through a client made by New for the plan's token.
type ClientTransport struct {
	New ClientFactory
}

var (
	_ Transport      = ClientTransport{}
	_ BatchTransport = ClientTransport{}
)

// Get implements Transport.
func (t ClientTransport) Get(ctx context.Context, ep metad.Endpoint, token string, id cas.ChunkID) ([]byte, error) {
	return t.New(ep, token).Get(ctx, id)
}

// Put implements Transport.
func (t ClientTransport) Put(ctx context.Context, ep metad.Endpoint, token string, chunks []blockd.Chunk) error {
	return t.New(ep, token).Put(ctx, chunks)
}

// GetMany implements BatchTransport: one request when the client is a
// blockd.BatchGetter (blockd.Client is), else one Get per chunk.
func (t ClientTransport) GetMany(ctx context.Context, ep metad.Endpoint, token string, ids []cas.ChunkID, fn func(cas.ChunkID, []byte) error) error {
	return blockd.GetMany(ctx, t.New(ep, token), ids, fn)
}

// transient reports whether err is worth retrying: the service said it is
// unavailable, or the network failed. Corruption, missing data, full disks
// and refused tokens are not transient.
func transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || noSpace(err) {
		return false
	}
	if errors.Is(err, metad.ErrUnavailable) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) {
		return true
	}
	// A blockd still shedding load after the client's own Retry-After
	// waits (internal/busy).
	if se := (*blockd.StatusError)(nil); errors.As(err, &se) && se.Code == http.StatusServiceUnavailable {
		return true
	}
	// A network error. syscall.Errno has the methods of net.Error too: a
	// bare errno (a local disk's, in embedded mode) is not one.
	var ne net.Error
	if errors.As(err, &ne) {
		_, errno := ne.(syscall.Errno)
		return !errno
	}
	return false
}

// noSpace reports whether err says a store is full: blockd's ErrNoSpace
// (a local store, or HTTP 507 from a blockd server), metad's, or the
// errno of a full disk or quota.
func noSpace(err error) bool {
	return errors.Is(err, blockd.ErrNoSpace) || errors.Is(err, metad.ErrNoSpace) ||
		errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// NoSpace reports whether err says a store is full (the errno ENOSPC).
func NoSpace(err error) bool { return noSpace(err) }
