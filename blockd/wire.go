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

// maxFrameHeader is the longest frame header: ID and uvarint length.
const maxFrameHeader = cas.IDSize + binary.MaxVarintLen64

// parseFrameHeader parses the frame header at the start of b: the chunk ID,
// the data length n and the header's length. ok is false if b does not
// hold a whole header yet. A malformed length is an error wrapping
// ErrBadFrame, an oversize one a *RejectError (too-large).
func parseFrameHeader(b []byte) (id cas.ChunkID, n, hdr int, ok bool, err error) {
	if len(b) < cas.IDSize {
		return id, 0, 0, false, nil
	}
	copy(id[:], b)
	v, k := binary.Uvarint(b[cas.IDSize:])
	switch {
	case k == 0 && len(b) < maxFrameHeader:
		return id, 0, 0, false, nil
	case k <= 0: // ten bytes and no end, or too big for 64 bits
		return id, 0, 0, false, fmt.Errorf("%w: chunk %s: bad length: varint overflows", ErrBadFrame, id.Short())
	case v > cas.MaxEncodedSize:
		return id, 0, 0, false, &RejectError{ID: id, Reason: ReasonTooLarge,
			Err: fmt.Errorf("%w: frame of %d bytes exceeds %d", cas.ErrChunkTooLarge, v, cas.MaxEncodedSize)}
	}
	return id, int(v), cas.IDSize + k, true, nil
}

// frameReader reads frames from a stream.
type frameReader struct {
	r *bufio.Reader
}

func newFrameReader(r io.Reader) *frameReader {
	return &frameReader{r: bufio.NewReaderSize(r, 64<<10)}
}

// header reads the ID and length of the next frame. It returns io.EOF at
// a clean end of stream, an error wrapping ErrBadFrame for a malformed or
// truncated header, and a *RejectError (too-large) for an oversize frame.
func (f *frameReader) header() (cas.ChunkID, int, error) {
	var id cas.ChunkID
	if _, err := io.ReadFull(f.r, id[:]); err != nil {
		if err == io.EOF {
			return id, 0, io.EOF
		}
		return id, 0, fmt.Errorf("%w: truncated chunk id: %w", ErrBadFrame, err)
	}
	n, err := binary.ReadUvarint(f.r)
	if err != nil {
		return id, 0, fmt.Errorf("%w: chunk %s: bad length: %w", ErrBadFrame, id.Short(), noEOF(err))
	}
	if n > cas.MaxEncodedSize {
		return id, 0, &RejectError{ID: id, Reason: ReasonTooLarge,
			Err: fmt.Errorf("%w: frame of %d bytes exceeds %d", cas.ErrChunkTooLarge, n, cas.MaxEncodedSize)}
	}
	return id, int(n), nil
}

// body reads the n data bytes of the frame of id into dst[:n].
func (f *frameReader) body(id cas.ChunkID, dst []byte) error {
	if k, err := io.ReadFull(f.r, dst); err != nil {
		return fmt.Errorf("%w: chunk %s: truncated after %d of %d bytes: %w", ErrBadFrame, id.Short(), k, len(dst), noEOF(err))
	}
	return nil
}

// next reads a whole frame, reusing buf for its data when it is big enough.
func (f *frameReader) next(buf []byte) (Chunk, error) {
	id, n, err := f.header()
	if err != nil {
		return Chunk{ID: id}, err
	}
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	c := Chunk{ID: id, Data: buf[:n]}
	return c, f.body(id, c.Data)
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
