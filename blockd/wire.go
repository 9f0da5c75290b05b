package blockd

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"stasis/cas"
)

// Wire formats of the HTTP protocol (all under /v1/):
//
//	ID list   (request of missing, get, delete; response of missing):
//	          concatenated 32-byte chunk IDs, no header.
//	frames    (request of put, response of get):
//	          per chunk: 32-byte ID | uvarint n | n bytes of encoded chunk,
//	          n <= cas.MaxEncodedSize; the stream ends at a frame boundary.
//	listing   (response of list): per chunk: 32-byte ID | uvarint encoded size.
//
// Control responses (put results, errors) are JSON.

// MaxIDs is the largest number of IDs one request may carry.
const MaxIDs = 1 << 20

// ErrBadFrame is wrapped by errors reading malformed or truncated frames.
var ErrBadFrame = errors.New("malformed chunk frame")

// AppendFrame appends the frame of c to dst.
func AppendFrame(dst []byte, c Chunk) []byte {
	dst = append(dst, c.ID[:]...)
	dst = binary.AppendUvarint(dst, uint64(len(c.Data)))
	return append(dst, c.Data...)
}

// frameReader reads frames from a stream.
type frameReader struct {
	r *bufio.Reader
}

func newFrameReader(r io.Reader) *frameReader {
	return &frameReader{r: bufio.NewReaderSize(r, 64<<10)}
}

// next reads one frame into a fresh slice. It returns io.EOF at a clean end
// of stream, an error wrapping ErrBadFrame for a malformed or truncated
// frame, and a *RejectError (too-large) for an oversize one, without
// reading its data.
func (f *frameReader) next() (Chunk, error) {
	var c Chunk
	if _, err := io.ReadFull(f.r, c.ID[:]); err != nil {
		if err == io.EOF {
			return c, io.EOF
		}
		return c, fmt.Errorf("%w: truncated chunk id: %w", ErrBadFrame, err)
	}
	n, err := binary.ReadUvarint(f.r)
	if err != nil {
		return c, fmt.Errorf("%w: chunk %s: bad length: %w", ErrBadFrame, c.ID.Short(), noEOF(err))
	}
	if n > cas.MaxEncodedSize {
		return c, &RejectError{ID: c.ID, Reason: ReasonTooLarge,
			Err: fmt.Errorf("%w: frame of %d bytes exceeds %d", cas.ErrChunkTooLarge, n, cas.MaxEncodedSize)}
	}
	c.Data = make([]byte, n)
	if k, err := io.ReadFull(f.r, c.Data); err != nil {
		return c, fmt.Errorf("%w: chunk %s: truncated after %d of %d bytes: %w", ErrBadFrame, c.ID.Short(), k, n, noEOF(err))
	}
	return c, nil
}

// noEOF turns a bare EOF inside a frame into ErrUnexpectedEOF.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// readIDs reads an ID list of at most MaxIDs IDs.
func readIDs(r io.Reader) ([]cas.ChunkID, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxIDs*cas.IDSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxIDs*cas.IDSize {
		return nil, fmt.Errorf("more than %d ids", MaxIDs)
	}
	if len(b)%cas.IDSize != 0 {
		return nil, fmt.Errorf("%w: id list of %d bytes is not a multiple of %d", ErrBadFrame, len(b), cas.IDSize)
	}
	ids := make([]cas.ChunkID, len(b)/cas.IDSize)
	for i := range ids {
		copy(ids[i][:], b[i*cas.IDSize:])
	}
	return ids, nil
}

func appendIDs(dst []byte, ids []cas.ChunkID) []byte {
	for _, id := range ids {
		dst = append(dst, id[:]...)
	}
	return dst
}
