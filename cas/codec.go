package cas

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/pierrec/lz4/v4"
)

// Codec names how a stored chunk's payload is encoded. It is the first byte
// of every encoded chunk, so new codecs can be added without ambiguity.
type Codec byte

const (
	// CodecRaw: the payload is the raw chunk.
	CodecRaw Codec = 0
	// CodecLZ4: a uvarint raw length followed by one LZ4 block.
	CodecLZ4 Codec = 1
)

func (c Codec) String() string {
	switch c {
	case CodecRaw:
		return "raw"
	case CodecLZ4:
		return "lz4"
	}
	return fmt.Sprintf("codec(%d)", byte(c))
}

// MaxChunkSize is the largest raw chunk any chunker produces and any store
// accepts. Decoders refuse to expand past it.
const MaxChunkSize = 4 << 20

// MaxEncodedSize is the largest valid encoded chunk: a raw chunk of
// MaxChunkSize plus its header byte.
const MaxEncodedSize = MaxChunkSize + 1

var (
	// ErrCorruptChunk means encoded bytes could not be decoded.
	ErrCorruptChunk = errors.New("cas: corrupt chunk encoding")
	// ErrChunkTooLarge means a chunk exceeds MaxChunkSize.
	ErrChunkTooLarge = errors.New("cas: chunk too large")
	// ErrHashMismatch means decoded bytes do not hash to the expected ID.
	ErrHashMismatch = errors.New("cas: chunk hash mismatch")
)

// lz4Tables reuses the LZ4 encoder's hash tables (16 KiB each).
var lz4Tables = sync.Pool{New: func() any { return new(lz4Table) }}

// Encode appends the encoding of the raw chunk to dst and returns it. It
// uses LZ4 when that makes the chunk smaller, and stores it raw otherwise;
// it never needs more than 1+len(raw) bytes of dst. An incompressible
// chunk costs a quick scan and one copy. It panics only on programmer
// error (a chunk larger than MaxChunkSize).
func Encode(dst, raw []byte) []byte {
	if out, ok := EncodeLZ4(dst, raw); ok {
		return out
	}
	start := len(dst)
	dst = grow(dst, 1+len(raw))
	dst[start] = byte(CodecRaw)
	copy(dst[start+1:], raw)
	return dst
}

// EncodeLZ4 appends the LZ4 encoding of the raw chunk to dst and returns
// it with true when it is smaller than the raw encoding (1+len(raw) bytes);
// otherwise it returns dst unchanged and false, and the chunk is to be
// stored raw: a CodecRaw byte followed by raw, which a caller holding the
// chunk behind one spare byte can build without a copy. EncodeLZ4 needs at
// most len(raw) bytes of dst. It panics only on programmer error (a chunk
// larger than MaxChunkSize).
func EncodeLZ4(dst, raw []byte) ([]byte, bool) {
	if len(raw) > MaxChunkSize {
		panic(fmt.Sprintf("cas.Encode: %d-byte chunk exceeds MaxChunkSize", len(raw)))
	}
	var hdr [binary.MaxVarintLen32]byte
	h := 1 + binary.PutUvarint(hdr[:], uint64(len(raw)))
	if len(raw) <= h {
		return dst, false
	}
	start := len(dst)
	dst = grow(dst, len(raw))
	buf := dst[start:]
	// The block must be smaller than the raw payload with its header.
	t := lz4Tables.Get().(*lz4Table)
	n := lz4Compress(buf[h:len(raw)], raw, t)
	lz4Tables.Put(t)
	if n == 0 {
		return dst[:start], false
	}
	buf[0] = byte(CodecLZ4)
	copy(buf[1:], hdr[:h-1])
	return dst[:start+h+n], true
}

// EncodedCodec returns the codec of an encoded chunk.
func EncodedCodec(enc []byte) (Codec, error) {
	if len(enc) == 0 {
		return 0, fmt.Errorf("%w: empty", ErrCorruptChunk)
	}
	return Codec(enc[0]), nil
}

// RawSize returns the raw length an encoded chunk decodes to, without decoding it.
func RawSize(enc []byte) (int, error) {
	c, err := EncodedCodec(enc)
	if err != nil {
		return 0, err
	}
	switch c {
	case CodecRaw:
		if len(enc)-1 > MaxChunkSize {
			return 0, ErrChunkTooLarge
		}
		return len(enc) - 1, nil
	case CodecLZ4:
		n, k := binary.Uvarint(enc[1:])
		if k <= 0 {
			return 0, fmt.Errorf("%w: bad length header", ErrCorruptChunk)
		}
		if n > MaxChunkSize {
			return 0, fmt.Errorf("%w: header claims %d bytes", ErrChunkTooLarge, n)
		}
		if n == 0 {
			// Encode stores an empty chunk raw; and lz4's decoder
			// faults on an empty destination (found by FuzzDecode).
			return 0, fmt.Errorf("%w: empty lz4 chunk", ErrCorruptChunk)
		}
		return int(n), nil
	}
	return 0, fmt.Errorf("%w: unknown codec %d", ErrCorruptChunk, enc[0])
}

// Decode appends the raw bytes of an encoded chunk to dst. It never panics
// on malformed input and never allocates more than MaxChunkSize.
func Decode(dst, enc []byte) ([]byte, error) {
	n, err := RawSize(enc)
	if err != nil {
		return dst, err
	}
	switch Codec(enc[0]) {
	case CodecRaw:
		return append(dst, enc[1:]...), nil
	default: // CodecLZ4, validated by RawSize
		_, k := binary.Uvarint(enc[1:])
		start := len(dst)
		dst = grow(dst, n)
		m, err := lz4.UncompressBlock(enc[1+k:], dst[start:start+n])
		if err != nil || m != n {
			return dst[:start], fmt.Errorf("%w: lz4 block decodes to %d of %d bytes", ErrCorruptChunk, m, n)
		}
		return dst[:start+n], nil
	}
}

// DecodeVerify decodes enc and checks that the result hashes to id. A
// mismatch returns an error wrapping ErrHashMismatch.
func DecodeVerify(dst []byte, id ChunkID, enc []byte) ([]byte, error) {
	start := len(dst)
	out, err := Decode(dst, enc)
	if err != nil {
		return out, fmt.Errorf("chunk %s: %w", id.Short(), err)
	}
	if got := Sum(out[start:]); got != id {
		return out[:start], &MismatchError{Want: id, Got: got}
	}
	return out, nil
}

// MismatchError reports a chunk whose content does not match its ID.
type MismatchError struct{ Want, Got ChunkID }

func (e *MismatchError) Error() string {
	return fmt.Sprintf("chunk %s: content hashes to %s", e.Want, e.Got.Short())
}

// Unwrap lets errors.Is(err, ErrHashMismatch) match.
func (e *MismatchError) Unwrap() error { return ErrHashMismatch }

// grow extends b by n bytes of capacity and length, reusing spare capacity.
func grow(b []byte, n int) []byte {
	if cap(b)-len(b) < n {
		nb := make([]byte, len(b), len(b)+n)
		copy(nb, b)
		b = nb
	}
	return b[:len(b)+n]
}
