package blockd

import (
	"errors"
	"fmt"

	"stasis/cas"
)

// ErrNoSpace means the store is out of space. Stores wrap it (or
// syscall.ENOSPC) around out-of-space failures; the server answers it with
// 507 Insufficient Storage and the client maps that back to ErrNoSpace.
var ErrNoSpace = errors.New("block store out of space")

// Reasons a chunk or request is refused. They appear in server responses,
// in the rejects metric, and in RejectError.Reason.
const (
	ReasonHashMismatch = "hash-mismatch" // content does not hash to the ID
	ReasonCorrupt      = "corrupt"       // the encoding cannot be decoded
	ReasonTooLarge     = "too-large"     // larger than cas.MaxEncodedSize
	ReasonBadFrame     = "bad-frame"     // malformed or truncated framing
)

// RejectError reports a chunk that was refused because its bytes are not a
// valid encoding of the chunk its ID names. Err wraps the cause
// (cas.ErrHashMismatch, cas.ErrCorruptChunk or cas.ErrChunkTooLarge), so
// errors.Is works on it.
type RejectError struct {
	ID     cas.ChunkID
	Reason string
	Err    error
}

func (e *RejectError) Error() string {
	return fmt.Sprintf("chunk %s rejected (%s): %v", e.ID, e.Reason, e.Err)
}

func (e *RejectError) Unwrap() error { return e.Err }

// CheckChunk decodes an encoded chunk and checks that it hashes to its ID,
// using buf as scratch space (it returns buf, possibly grown, for reuse).
// A refusal is a *RejectError.
func CheckChunk(buf []byte, c Chunk) ([]byte, error) {
	if len(c.Data) > cas.MaxEncodedSize {
		return buf, &RejectError{ID: c.ID, Reason: ReasonTooLarge,
			Err: fmt.Errorf("%w: %d encoded bytes", cas.ErrChunkTooLarge, len(c.Data))}
	}
	var out []byte
	var err error
	if len(c.Data) > 0 && cas.Codec(c.Data[0]) == cas.CodecRaw {
		// Hash raw chunks in place: no copy.
		out = buf
		if got := cas.Sum(c.Data[1:]); got != c.ID {
			err = &cas.MismatchError{Want: c.ID, Got: got}
		}
	} else {
		out, err = cas.DecodeVerify(buf[:0], c.ID, c.Data)
	}
	switch {
	case err == nil:
		return out, nil
	case errors.Is(err, cas.ErrHashMismatch):
		return out, &RejectError{ID: c.ID, Reason: ReasonHashMismatch, Err: err}
	case errors.Is(err, cas.ErrChunkTooLarge):
		return out, &RejectError{ID: c.ID, Reason: ReasonTooLarge, Err: err}
	default:
		return out, &RejectError{ID: c.ID, Reason: ReasonCorrupt, Err: err}
	}
}
