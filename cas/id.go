package cas

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/zeebo/blake3"
)

// HashName names the hash function behind ChunkID in on-disk formats.
const HashName = "blake3-256"

// IDSize is the length of a ChunkID in bytes.
const IDSize = 32

// ChunkID identifies a chunk by the BLAKE3-256 hash of its raw (uncompressed)
// bytes. It is a value type: comparable, usable as a map key, and its bytes
// are used directly as store keys.
type ChunkID [IDSize]byte

// ErrBadChunkID is returned when a string or byte slice is not a chunk ID.
var ErrBadChunkID = errors.New("cas: malformed chunk id")

// Sum returns the ID of the raw chunk data.
func Sum(data []byte) ChunkID {
	return ChunkID(blake3.Sum256(data))
}

// String returns the lowercase hex form of the ID.
func (id ChunkID) String() string { return hex.EncodeToString(id[:]) }

// Short returns the first 12 hex digits, for logs and error messages.
func (id ChunkID) Short() string { return hex.EncodeToString(id[:6]) }

// MarshalText implements encoding.TextMarshaler (hex), so IDs read naturally in JSON.
func (id ChunkID) MarshalText() ([]byte, error) {
	b := make([]byte, hex.EncodedLen(IDSize))
	hex.Encode(b, id[:])
	return b, nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (id *ChunkID) UnmarshalText(b []byte) error {
	if len(b) != hex.EncodedLen(IDSize) {
		return fmt.Errorf("%w: want %d hex digits, got %d", ErrBadChunkID, hex.EncodedLen(IDSize), len(b))
	}
	if _, err := hex.Decode(id[:], b); err != nil {
		return fmt.Errorf("%w: %v", ErrBadChunkID, err)
	}
	return nil
}

// ParseChunkID parses the hex form produced by String.
func ParseChunkID(s string) (ChunkID, error) {
	var id ChunkID
	err := id.UnmarshalText([]byte(s))
	return id, err
}

// ChunkIDFromBytes copies a 32-byte slice into a ChunkID.
func ChunkIDFromBytes(b []byte) (ChunkID, error) {
	var id ChunkID
	if len(b) != IDSize {
		return id, fmt.Errorf("%w: want %d bytes, got %d", ErrBadChunkID, IDSize, len(b))
	}
	copy(id[:], b)
	return id, nil
}

// zeroBlock is compared against in IsZero; bytes.Equal runs in assembly.
var zeroBlock [64 << 10]byte

// IsZero reports whether b consists only of zero bytes. An all-zero chunk is
// a hole: it is never hashed, stored or uploaded.
func IsZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroBlock))
		if !bytes.Equal(b[:n], zeroBlock[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}
