package cas

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"strconv"
	"strings"

	"github.com/zeebo/blake3"
)

// Chunker finds chunk boundaries in a byte stream.
//
// Cut is given data that begins at a chunk boundary and returns the length
// of the first chunk in it. When atEOF is false and data holds no boundary
// yet (and is shorter than MaxSize), Cut returns 0 to ask for more data.
// When atEOF is true it always returns a length in (0, len(data)] for
// non-empty data. A boundary depends only on the bytes from the chunk's start
// to the boundary, so the same stream cut in any feeding pattern yields the
// same chunks. Chunkers are stateless and safe for concurrent use.
type Chunker interface {
	Cut(data []byte, atEOF bool) int
	// MaxSize is the largest chunk Cut returns.
	MaxSize() int
	// Policy is the policy this chunker implements.
	Policy() Policy
}

// PolicyKind names a chunking algorithm in manifests and xattrs.
type PolicyKind string

const (
	// KindFixed cuts at every multiple of Size of the file offset.
	KindFixed PolicyKind = "fixed"
	// KindCDC is FastCDC with normalized chunking (gear hash).
	KindCDC PolicyKind = "cdc"
)

// Policy says how a file is cut into chunks. For KindFixed, Min = Avg = Max =
// the chunk size, a power of two from 4 KiB. For KindCDC, Min <= Avg <= Max,
// Avg a power of two; chunks are at least Min (except the last) and at most Max.
type Policy struct {
	Kind          PolicyKind
	Min, Avg, Max uint32
}

// Fixed returns a fixed-size policy.
func Fixed(size uint32) Policy { return Policy{Kind: KindFixed, Min: size, Avg: size, Max: size} }

// CDC returns a FastCDC policy with min = avg/4 and max = avg*4.
func CDC(avg uint32) Policy { return Policy{Kind: KindCDC, Min: avg / 4, Avg: avg, Max: avg * 4} }

// ErrBadPolicy is wrapped by every policy parse or validation error.
var ErrBadPolicy = errors.New("bad chunker policy")

// Validate checks the policy's parameters.
func (p Policy) Validate() error {
	pow2 := func(x uint32) bool { return x != 0 && x&(x-1) == 0 }
	switch p.Kind {
	case KindFixed:
		if p.Min != p.Avg || p.Avg != p.Max {
			return fmt.Errorf("%w: fixed policy with unequal sizes", ErrBadPolicy)
		}
		if !pow2(p.Avg) || p.Avg < 4<<10 || p.Avg > MaxChunkSize {
			return fmt.Errorf("%w: fixed size %d must be a power of two from 4 KiB to %d KiB", ErrBadPolicy, p.Avg, MaxChunkSize>>10)
		}
	case KindCDC:
		if !pow2(p.Avg) || p.Avg < 1<<10 || p.Min < 64 || p.Min > p.Avg || p.Avg > p.Max || p.Max > MaxChunkSize {
			return fmt.Errorf("%w: cdc needs 64 <= min <= avg <= max <= %d KiB, avg a power of two >= 1 KiB (got %d/%d/%d)",
				ErrBadPolicy, MaxChunkSize>>10, p.Min, p.Avg, p.Max)
		}
	default:
		return fmt.Errorf("%w: unknown kind %q (want fixed or cdc)", ErrBadPolicy, p.Kind)
	}
	return nil
}

// String is the policy's canonical text form, accepted by ParsePolicy:
// "fixed:4096" or "cdc:MIN:AVG:MAX" in bytes.
func (p Policy) String() string {
	if p.Kind == KindFixed {
		return fmt.Sprintf("fixed:%d", p.Avg)
	}
	return fmt.Sprintf("%s:%d:%d:%d", p.Kind, p.Min, p.Avg, p.Max)
}

// ParsePolicy parses "fixed:SIZE", "cdc:AVG" (min avg/4, max 4*avg) or
// "cdc:MIN:AVG:MAX". Sizes are bytes with an optional k/m suffix (KiB/MiB).
func ParsePolicy(s string) (Policy, error) {
	parts := strings.Split(strings.TrimSpace(s), ":")
	sizes := make([]uint32, 0, 3)
	for _, f := range parts[1:] {
		n, err := parseSize(f)
		if err != nil {
			return Policy{}, fmt.Errorf("%w %q: %v", ErrBadPolicy, s, err)
		}
		sizes = append(sizes, n)
	}
	var p Policy
	switch {
	case parts[0] == string(KindFixed) && len(sizes) == 1:
		p = Fixed(sizes[0])
	case parts[0] == string(KindCDC) && len(sizes) == 1:
		p = CDC(sizes[0])
	case parts[0] == string(KindCDC) && len(sizes) == 3:
		p = Policy{Kind: KindCDC, Min: sizes[0], Avg: sizes[1], Max: sizes[2]}
	default:
		return Policy{}, fmt.Errorf("%w %q: want fixed:SIZE, cdc:AVG or cdc:MIN:AVG:MAX", ErrBadPolicy, s)
	}
	return p, p.Validate()
}

func parseSize(s string) (uint32, error) {
	mul := uint64(1)
	switch {
	case strings.HasSuffix(s, "k") || strings.HasSuffix(s, "K"):
		mul, s = 1<<10, s[:len(s)-1]
	case strings.HasSuffix(s, "m") || strings.HasSuffix(s, "M"):
		mul, s = 1<<20, s[:len(s)-1]
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, err
	}
	if n*mul > 1<<31 {
		return 0, fmt.Errorf("size %s too large", s)
	}
	return uint32(n * mul), nil
}

// New returns the chunker for a valid policy. It panics on an invalid one;
// call Validate first on untrusted policies.
func (p Policy) New() Chunker {
	if err := p.Validate(); err != nil {
		panic(err)
	}
	if p.Kind == KindFixed {
		return fixedChunker{size: int(p.Avg)}
	}
	b := bits.TrailingZeros32(p.Avg)
	return &cdcChunker{
		policy: p,
		// Normalized chunking: harder to cut before avg, easier after it.
		maskS: ^uint64(0) << (64 - (b + 2)),
		maskL: ^uint64(0) << (64 - (b - 2)),
	}
}

type fixedChunker struct{ size int }

func (c fixedChunker) Cut(data []byte, atEOF bool) int {
	if len(data) >= c.size {
		return c.size
	}
	if atEOF {
		return len(data)
	}
	return 0
}

func (c fixedChunker) MaxSize() int   { return c.size }
func (c fixedChunker) Policy() Policy { return Fixed(uint32(c.size)) }

// cdcChunker is FastCDC (Xia et al., USENIX ATC 2016) with normalized
// chunking level 2. The gear hash's high bits depend on the last 64 bytes.
type cdcChunker struct {
	policy       Policy
	maskS, maskL uint64
}

// gear is the FastCDC gear table: 256 pseudo-random words derived from
// BLAKE3 so that it is reproducible and pinned by the golden tests.
var gear = func() (t [256]uint64) {
	h := blake3.New()
	h.WriteString("stasis fastcdc gear table v1")
	var buf [256 * 8]byte
	h.Digest().Read(buf[:])
	for i := range t {
		t[i] = binary.LittleEndian.Uint64(buf[i*8:])
	}
	return
}()

func (c *cdcChunker) Cut(data []byte, atEOF bool) int {
	n := len(data)
	minS, avg, maxS := int(c.policy.Min), int(c.policy.Avg), int(c.policy.Max)
	if n <= minS {
		if atEOF {
			return n
		}
		return 0
	}
	limit := min(n, maxS)
	normal := min(avg, limit)
	var h uint64
	i := minS
	for ; i < normal; i++ {
		h = h<<1 + gear[data[i]]
		if h&c.maskS == 0 {
			return i + 1
		}
	}
	for ; i < limit; i++ {
		h = h<<1 + gear[data[i]]
		if h&c.maskL == 0 {
			return i + 1
		}
	}
	if limit == maxS || atEOF {
		return limit
	}
	return 0
}

func (c *cdcChunker) MaxSize() int   { return int(c.policy.Max) }
func (c *cdcChunker) Policy() Policy { return c.policy }

// Split cuts a complete buffer into chunks and calls fn with each chunk's
// offset within data and its bytes (a subslice of data).
func Split(c Chunker, data []byte, fn func(off int, chunk []byte) error) error {
	for off := 0; off < len(data); {
		n := c.Cut(data[off:], true)
		if err := fn(off, data[off:off+n]); err != nil {
			return err
		}
		off += n
	}
	return nil
}

// Splitter cuts a stream fed through Write into chunks, buffering at most
// two maximum-size chunks. Emit is called with each chunk's stream offset and
// bytes; the slice is only valid during the call. After an error from emit,
// every later call returns that error.
type Splitter struct {
	c    Chunker
	emit func(off uint64, chunk []byte) error
	buf  []byte
	off  uint64 // stream offset of buf[0]
	err  error
}

// NewSplitter returns a splitter feeding emit.
func NewSplitter(c Chunker, emit func(off uint64, chunk []byte) error) *Splitter {
	return &Splitter{c: c, emit: emit, buf: make([]byte, 0, 2*c.MaxSize())}
}

// Write feeds p to the splitter; it implements io.Writer.
func (s *Splitter) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	total := len(p)
	for len(p) > 0 {
		room := cap(s.buf) - len(s.buf)
		k := min(room, len(p))
		s.buf = append(s.buf, p[:k]...)
		p = p[k:]
		// Cut only a full buffer: scanning a partial one would rescan the
		// same bytes on every small Write (quadratic for byte-sized writes).
		if len(s.buf) < cap(s.buf) {
			continue
		}
		if err := s.drain(false); err != nil {
			return total - len(p), err
		}
	}
	return total, nil
}

// Skip ends the chunk being cut at the current position (emitting what is
// buffered, as Close does) and moves the stream offset on by n bytes that
// are not fed to the chunker: cuts after them start afresh, as at the
// start of a stream. The caller accounts for the skipped bytes (casfs
// stores them as holes).
func (s *Splitter) Skip(n uint64) error {
	if s.err != nil {
		return s.err
	}
	if err := s.drain(true); err != nil {
		return err
	}
	s.off += n
	return nil
}

// Close emits the final chunk.
func (s *Splitter) Close() error {
	if s.err != nil {
		return s.err
	}
	return s.drain(true)
}

func (s *Splitter) drain(atEOF bool) error {
	start := 0
	for start < len(s.buf) {
		n := s.c.Cut(s.buf[start:], atEOF)
		if n == 0 {
			break
		}
		if err := s.emit(s.off, s.buf[start:start+n]); err != nil {
			s.err = err
			return err
		}
		s.off += uint64(n)
		start += n
	}
	s.buf = s.buf[:copy(s.buf, s.buf[start:])]
	return nil
}
