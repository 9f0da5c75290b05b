package hypervisor

import (
	"errors"
	"io"
	"os"
)

// Feed copies the snapshot file r into w, normally the write end of a pipe
// from which a hypervisor process loads it (QEMU's migrate-incoming, xl
// restore), reporting the bytes to p, and closes w when it is done. It is
// the feeder of a verified restore: the consumer gets the bytes as they are
// read, and Feed's result says whether they were whole and verified.
//
// Feed returns nil only when every byte was written to w and r reached
// io.EOF (the size and checksum matched). A read or verification error of r
// (a *VerifyError for a damaged file) is returned in preference to a write
// error, because a consumer that was given damaged bytes usually fails to
// load them, and the damage is the cause to report. Otherwise the first
// write error is returned.
//
// The first write error ends the copy: w is closed at once, so a consumer
// still reading sees the stream end (and fails its load) instead of waiting
// while Feed reads the rest; the rest of r is still read and hashed, so that
// a damaged file is reported as such rather than as the consumer's failure.
// The caller may also close w from another goroutine to make a blocked write
// fail (an *os.File allows that), for example once the consumer gave up.
//
// The caller must not run what the consumer loaded (unpause the guest)
// before Feed returned nil and the consumer reported success.
func Feed(w io.WriteCloser, r *VerifiedReader, p Progress) error {
	p = orNop(p)
	buf := make([]byte, 1<<20)
	var werr error
	for {
		n, rerr := r.Read(buf)
		if n > 0 && werr == nil {
			_, werr = w.Write(buf[:n])
			p.Add(int64(n))
			if werr != nil {
				w.Close()
			}
		}
		if rerr != nil {
			if werr == nil {
				// A failed close may have lost buffered bytes; a close
				// the caller already did (os.ErrClosed) came after every
				// write had succeeded.
				if cerr := w.Close(); cerr != nil && !errors.Is(cerr, os.ErrClosed) {
					werr = cerr
				}
			}
			if rerr == io.EOF {
				return werr
			}
			return rerr
		}
	}
}
