package blockd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"

	"stasis/cas"
	"stasis/internal/busy"
)

// TokenSource returns a bearer token granting op on the server. metad
// passes a function that mints one; casfs one that returns the token of
// metad's plan.
type TokenSource func(op cas.Op) (string, error)

// Client speaks the blockd protocol and implements PruneStore over it.
// Get returns encoded bytes, like every Store; GetRaw decodes and verifies.
// Errors map back to ErrNotFound, ErrNoSpace, the cas.ErrToken* sentinels,
// *RejectError for a refused chunk, and *StatusError for everything else
// the server refused.
type Client struct {
	base   string
	tokens TokenSource
	hc     *http.Client
	// MaxRequestBytes bounds the encoded bytes streamed in one put
	// request; larger Puts use several requests (default 64 MiB).
	MaxRequestBytes int
}

var (
	_ PruneStore  = (*Client)(nil)
	_ UsageStore  = (*Client)(nil)
	_ BatchGetter = (*Client)(nil)
)

// NewClient returns a client of the server at baseURL (e.g.
// "http://127.0.0.1:7001"). hc may be nil for http.DefaultClient.
func NewClient(baseURL string, tokens TokenSource, hc *http.Client) *Client {
	if hc == nil {
		hc = http.DefaultClient
	}
	return &Client{base: strings.TrimRight(baseURL, "/"), tokens: tokens, hc: hc, MaxRequestBytes: 64 << 20}
}

// StatusError is a refusal from the server that has no more specific error.
type StatusError struct {
	Code   int
	Reason string
	Msg    string
	Stored int // for put: chunks of the request that were stored
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("blockd: %d %s: %s", e.Code, e.Reason, e.Msg)
}

// Unwrap maps the server's reason to a sentinel, so errors.Is works.
func (e *StatusError) Unwrap() error {
	switch e.Reason {
	case ReasonNotFound:
		return ErrNotFound
	case ReasonNoSpace:
		return ErrNoSpace
	case ReasonBadFrame:
		return ErrBadFrame
	case ReasonTokenMalformed:
		return cas.ErrTokenMalformed
	case ReasonTokenUnknown:
		return cas.ErrTokenUnknownKey
	case ReasonTokenForged:
		return cas.ErrTokenForged
	case ReasonTokenExpired:
		return cas.ErrTokenExpired
	case ReasonTokenScope:
		return cas.ErrTokenScope
	case ReasonUnsupported:
		return errors.ErrUnsupported
	}
	return nil
}

// responseError turns a non-2xx response into an error.
func responseError(resp *http.Response) error {
	var er errorResponse
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err := json.Unmarshal(body, &er); err != nil || er.Reason == "" {
		return &StatusError{Code: resp.StatusCode, Reason: http.StatusText(resp.StatusCode), Msg: strings.TrimSpace(string(body))}
	}
	se := &StatusError{Code: resp.StatusCode, Reason: er.Reason, Msg: er.Error}
	if er.Stored != nil {
		se.Stored = *er.Stored
	}
	if er.Chunk != nil {
		var cause error
		switch er.Reason {
		case ReasonHashMismatch:
			cause = cas.ErrHashMismatch
		case ReasonCorrupt:
			cause = cas.ErrCorruptChunk
		case ReasonTooLarge:
			cause = cas.ErrChunkTooLarge
		}
		if cause != nil {
			return &RejectError{ID: *er.Chunk, Reason: er.Reason, Err: fmt.Errorf("%w (server: %w)", cause, se)}
		}
	}
	return se
}

func (c *Client) do(ctx context.Context, op cas.Op, method, path string, body io.Reader) (*http.Response, error) {
	tok, err := c.tokens(op)
	if err != nil {
		return nil, fmt.Errorf("blockd: token for %s: %w", op, err)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	resp, err := busy.Do(c.hc, req)
	if err != nil {
		return nil, fmt.Errorf("blockd: %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		return nil, responseError(resp)
	}
	return resp, nil
}

// Get implements Store: the encoded chunk, unverified.
func (c *Client) Get(ctx context.Context, id cas.ChunkID) ([]byte, error) {
	resp, err := c.do(ctx, cas.OpGet, "GET", "/v1/chunks/"+id.String(), nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, cas.MaxEncodedSize+1))
	if err != nil {
		return nil, fmt.Errorf("blockd: get %s: %w", id.Short(), err)
	}
	if len(b) > cas.MaxEncodedSize {
		return nil, fmt.Errorf("blockd: get %s: %w", id.Short(), cas.ErrChunkTooLarge)
	}
	return b, nil
}

// GetRaw fetches a chunk, decodes it and checks its hash, appending the raw
// bytes to dst. A chunk that does not verify is an error wrapping
// cas.ErrHashMismatch or cas.ErrCorruptChunk.
func (c *Client) GetRaw(ctx context.Context, dst []byte, id cas.ChunkID) ([]byte, error) {
	enc, err := c.Get(ctx, id)
	if err != nil {
		return dst, err
	}
	return cas.DecodeVerify(dst, id, enc)
}

// GetMany fetches many chunks in one request and calls fn with each stored
// one, in the order of ids; enc is only valid during the call and is not
// verified. If some chunks are absent, GetMany delivers the others and then
// returns an error wrapping ErrNotFound naming them.
func (c *Client) GetMany(ctx context.Context, ids []cas.ChunkID, fn func(id cas.ChunkID, enc []byte) error) error {
	for len(ids) > 0 {
		n := min(len(ids), MaxIDs)
		if err := c.getMany(ctx, ids[:n], fn); err != nil {
			return err
		}
		ids = ids[n:]
	}
	return nil
}

func (c *Client) getMany(ctx context.Context, ids []cas.ChunkID, fn func(cas.ChunkID, []byte) error) error {
	resp, err := c.do(ctx, cas.OpGet, "POST", "/v1/get", bytes.NewReader(appendIDs(nil, ids)))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	fr := newFrameReader(resp.Body)
	var missing []cas.ChunkID
	var buf []byte
	next := 0
	for {
		ch, err := fr.next(buf)
		buf = ch.Data
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("blockd: get stream: %w", err)
		}
		// Frames come in request order; requested IDs skipped are absent.
		for next < len(ids) && ids[next] != ch.ID {
			missing = append(missing, ids[next])
			next++
		}
		if next == len(ids) {
			return fmt.Errorf("blockd: get stream: %w: unexpected chunk %s", ErrBadFrame, ch.ID.Short())
		}
		next++
		if err := fn(ch.ID, ch.Data); err != nil {
			return err
		}
	}
	missing = append(missing, ids[next:]...)
	return missingError(len(ids), missing)
}

// Missing implements Store.
func (c *Client) Missing(ctx context.Context, ids []cas.ChunkID) ([]cas.ChunkID, error) {
	var out []cas.ChunkID
	for len(ids) > 0 {
		n := min(len(ids), MaxIDs)
		resp, err := c.do(ctx, cas.OpHas, "POST", "/v1/missing", bytes.NewReader(appendIDs(nil, ids[:n])))
		if err != nil {
			return nil, err
		}
		m, err := readIDs(resp.Body)
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("blockd: missing: %w", err)
		}
		out = append(out, m...)
		ids = ids[n:]
	}
	return out, nil
}

// Put implements WriteStore: chunks are streamed in requests of at most
// MaxRequestBytes; each request returns once the server has verified and
// durably stored all of it. A chunk the server refuses is a *RejectError.
func (c *Client) Put(ctx context.Context, chunks []Chunk) error {
	for len(chunks) > 0 {
		n, size := 0, 0
		for n < len(chunks) && (n == 0 || size+len(chunks[n].Data) <= c.MaxRequestBytes) {
			size += len(chunks[n].Data)
			n++
		}
		if err := c.putRequest(ctx, chunks[:n]); err != nil {
			return err
		}
		chunks = chunks[n:]
	}
	return nil
}

func (c *Client) putRequest(ctx context.Context, chunks []Chunk) error {
	tok, err := c.tokens(cas.OpPut)
	if err != nil {
		return fmt.Errorf("blockd: token for %s: %w", cas.OpPut, err)
	}
	// The body is read straight from the chunks: no copy of the data
	// into an intermediate buffer, a known length, and a fresh body for
	// the transport if it must resend the request.
	// The transport may still be reading a body when a refusal arrives;
	// stopping the gate before returning keeps it from touching chunks
	// after Put has returned.
	g := &bodyGate{}
	defer g.stop()
	req, err := http.NewRequestWithContext(ctx, "POST", c.base+"/v1/put", newFrameBody(chunks, g))
	if err != nil {
		return err
	}
	req.ContentLength = framesLen(chunks)
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(newFrameBody(chunks, g)), nil }
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := busy.Do(c.hc, req)
	if err != nil {
		return fmt.Errorf("blockd: POST /v1/put: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return responseError(resp)
	}
	var er errorResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&er); err != nil {
		return fmt.Errorf("blockd: put response: %w", err)
	}
	if er.Stored == nil || *er.Stored != len(chunks) {
		return fmt.Errorf("blockd: put: server acknowledged %v of %d chunks", er.Stored, len(chunks))
	}
	return nil
}

// framesLen is the length of the frames of chunks.
func framesLen(chunks []Chunk) int64 {
	var n int64
	var tmp [binary.MaxVarintLen64]byte
	for _, c := range chunks {
		n += int64(cas.IDSize + binary.PutUvarint(tmp[:], uint64(len(c.Data))) + len(c.Data))
	}
	return n
}

// bodyGate stops frame bodies: once stopped, they read no more.
type bodyGate struct {
	mu      sync.Mutex
	stopped bool
}

// stop waits for a Read in progress and fails every later one.
func (g *bodyGate) stop() {
	g.mu.Lock()
	g.stopped = true
	g.mu.Unlock()
}

var errAbandoned = errors.New("blockd: put request abandoned")

// frameBody reads the frames of chunks without copying them first.
type frameBody struct {
	gate   *bodyGate
	chunks []Chunk
	hdr    [cas.IDSize + binary.MaxVarintLen64]byte
	cur    []byte // unread part of the current frame's header
	data   []byte // unread part of the current frame's data
}

func newFrameBody(chunks []Chunk, g *bodyGate) *frameBody {
	return &frameBody{chunks: chunks, gate: g}
}

func (f *frameBody) Read(p []byte) (int, error) {
	if f.gate != nil {
		f.gate.mu.Lock()
		defer f.gate.mu.Unlock()
		if f.gate.stopped {
			return 0, errAbandoned
		}
	}
	n := 0
	for n < len(p) {
		switch {
		case len(f.cur) > 0:
			k := copy(p[n:], f.cur)
			f.cur = f.cur[k:]
			n += k
		case len(f.data) > 0:
			k := copy(p[n:], f.data)
			f.data = f.data[k:]
			n += k
		case len(f.chunks) > 0:
			c := f.chunks[0]
			f.chunks = f.chunks[1:]
			copy(f.hdr[:], c.ID[:])
			k := binary.PutUvarint(f.hdr[cas.IDSize:], uint64(len(c.Data)))
			f.cur, f.data = f.hdr[:cas.IDSize+k], c.Data
		default:
			if n == 0 {
				return 0, io.EOF
			}
			return n, nil
		}
	}
	return n, nil
}

// Delete implements PruneStore (needs a token granting cas.OpDelete).
func (c *Client) Delete(ctx context.Context, ids []cas.ChunkID) error {
	for len(ids) > 0 {
		n := min(len(ids), MaxIDs)
		resp, err := c.do(ctx, cas.OpDelete, "POST", "/v1/delete", bytes.NewReader(appendIDs(nil, ids[:n])))
		if err != nil {
			return err
		}
		resp.Body.Close()
		ids = ids[n:]
	}
	return nil
}

// List implements PruneStore (needs a token granting cas.OpDelete). The
// listing is streamed; fn runs while the response is read.
func (c *Client) List(ctx context.Context, fn func(ChunkInfo) error) error {
	resp, err := c.do(ctx, cas.OpDelete, "GET", "/v1/list", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	br := bufio.NewReaderSize(resp.Body, 64<<10)
	for {
		var info ChunkInfo
		if _, err := io.ReadFull(br, info.ID[:]); err == io.EOF {
			return nil
		} else if err != nil {
			return fmt.Errorf("blockd: list stream: %w: %w", ErrBadFrame, err)
		}
		n, err := binary.ReadUvarint(br)
		if err != nil || n > cas.MaxEncodedSize {
			return fmt.Errorf("blockd: list stream: %w: bad size (%v)", ErrBadFrame, noEOF(err))
		}
		info.EncodedSize = int(n)
		if err := fn(info); err != nil {
			return err
		}
	}
}

// Usage implements UsageStore: the server store's Usage (needs a token
// granting cas.OpDelete, like List). A server whose store keeps none
// answers an error wrapping errors.ErrUnsupported.
func (c *Client) Usage(ctx context.Context) (Usage, error) {
	resp, err := c.do(ctx, cas.OpDelete, "GET", "/v1/usage", nil)
	if err != nil {
		return Usage{}, err
	}
	defer resp.Body.Close()
	var u Usage
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&u); err != nil {
		return Usage{}, fmt.Errorf("blockd: usage response: %w", err)
	}
	return u, nil
}
