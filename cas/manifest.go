package cas

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
)

// Extent maps a byte range of a file to a chunk, or to a hole (zeros).
type Extent struct {
	Offset uint64
	Length uint32
	Hole   bool    // the range reads as zeros; ID is unused
	ID     ChunkID // the chunk holding the range's bytes, when !Hole
}

// End is the offset just past the extent.
func (e Extent) End() uint64 { return e.Offset + uint64(e.Length) }

// Manifest describes a file's content: its size, the chunker policy that cut
// it, and ordered, non-overlapping extents. Ranges below Size not covered by
// any extent read as zeros, like explicit holes.
type Manifest struct {
	Policy  Policy
	Size    uint64
	Extents []Extent
}

// ErrBadManifest is wrapped by manifest decoding and validation errors.
var ErrBadManifest = errors.New("bad manifest")

// Validate checks ordering, bounds and the policy.
func (m *Manifest) Validate() error {
	if err := m.Policy.Validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrBadManifest, err)
	}
	var end uint64
	for i, e := range m.Extents {
		if e.Length == 0 || e.Length > MaxChunkSize {
			return fmt.Errorf("%w: extent %d has length %d", ErrBadManifest, i, e.Length)
		}
		if e.Offset < end {
			return fmt.Errorf("%w: extent %d at %d overlaps or precedes the previous one ending at %d", ErrBadManifest, i, e.Offset, end)
		}
		end = e.End()
		if end < e.Offset || end > m.Size {
			return fmt.Errorf("%w: extent %d ends at %d past size %d", ErrBadManifest, i, end, m.Size)
		}
	}
	return nil
}

// Find returns the index of the extent containing off, or -1 if off lies in
// a gap (which reads as zeros) or at or past the last extent.
func (m *Manifest) Find(off uint64) int {
	i := sort.Search(len(m.Extents), func(i int) bool { return m.Extents[i].End() > off })
	if i < len(m.Extents) && m.Extents[i].Offset <= off {
		return i
	}
	return -1
}

// ChunkIDs returns the distinct chunk IDs the manifest references, in first-use order.
func (m *Manifest) ChunkIDs() []ChunkID {
	seen := make(map[ChunkID]struct{}, len(m.Extents))
	ids := make([]ChunkID, 0, len(m.Extents))
	for _, e := range m.Extents {
		if e.Hole {
			continue
		}
		if _, ok := seen[e.ID]; !ok {
			seen[e.ID] = struct{}{}
			ids = append(ids, e.ID)
		}
	}
	return ids
}

// Manifest binary encoding, version 1:
//
//	"SMF" 0x01
//	uvarint len(policy) | policy.String()
//	uvarint size | uvarint extent count
//	per extent: uvarint gap (offset - previous end) | uvarint length | flag byte (0 chunk, 1 hole) | [32-byte id if chunk]
var manifestMagic = [4]byte{'S', 'M', 'F', 1}

// MarshalBinary encodes the manifest. It validates first.
func (m *Manifest) MarshalBinary() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	ps := m.Policy.String()
	b := make([]byte, 0, 16+len(ps)+len(m.Extents)*(IDSize+8))
	b = append(b, manifestMagic[:]...)
	b = binary.AppendUvarint(b, uint64(len(ps)))
	b = append(b, ps...)
	b = binary.AppendUvarint(b, m.Size)
	b = binary.AppendUvarint(b, uint64(len(m.Extents)))
	var end uint64
	for _, e := range m.Extents {
		b = binary.AppendUvarint(b, e.Offset-end)
		b = binary.AppendUvarint(b, uint64(e.Length))
		if e.Hole {
			b = append(b, 1)
		} else {
			b = append(b, 0)
			b = append(b, e.ID[:]...)
		}
		end = e.End()
	}
	return b, nil
}

// UnmarshalBinary decodes and validates a manifest. It never panics and
// never allocates more than the input can describe.
func (m *Manifest) UnmarshalBinary(b []byte) error {
	*m = Manifest{}
	if len(b) < 4 || [4]byte(b[:4]) != manifestMagic {
		return fmt.Errorf("%w: bad magic", ErrBadManifest)
	}
	r := reader{b: b[4:]}
	pl := r.uvarint()
	if r.err == nil && pl > 64 {
		return fmt.Errorf("%w: policy string too long", ErrBadManifest)
	}
	ps := string(r.bytes(int(pl)))
	m.Size = r.uvarint()
	n := r.uvarint()
	if r.err != nil {
		return fmt.Errorf("%w: %v", ErrBadManifest, r.err)
	}
	pol, err := ParsePolicy(ps)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadManifest, err)
	}
	m.Policy = pol
	if n > uint64(len(r.b))/3 { // every extent takes at least 3 bytes
		return fmt.Errorf("%w: %d extents cannot fit in %d bytes", ErrBadManifest, n, len(r.b))
	}
	m.Extents = make([]Extent, 0, n)
	var end uint64
	for i := uint64(0); i < n && r.err == nil; i++ {
		var e Extent
		e.Offset = end + r.uvarint()
		l := r.uvarint()
		if l > MaxChunkSize {
			return fmt.Errorf("%w: extent %d has length %d", ErrBadManifest, i, l)
		}
		e.Length = uint32(l)
		switch r.byte() {
		case 0:
			copy(e.ID[:], r.bytes(IDSize))
		case 1:
			e.Hole = true
		default:
			if r.err == nil {
				return fmt.Errorf("%w: extent %d has a bad flag", ErrBadManifest, i)
			}
		}
		if e.Offset < end {
			return fmt.Errorf("%w: extent %d offset overflows", ErrBadManifest, i)
		}
		m.Extents = append(m.Extents, e)
		end = e.End()
	}
	if r.err != nil {
		return fmt.Errorf("%w: %v", ErrBadManifest, r.err)
	}
	if len(r.b) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", ErrBadManifest, len(r.b))
	}
	return m.Validate()
}

// reader decodes from a byte slice with a sticky error.
type reader struct {
	b   []byte
	err error
}

var errTruncated = errors.New("truncated")

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errTruncated
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) bytes(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b) {
		r.err = errTruncated
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) byte() byte {
	if b := r.bytes(1); b != nil {
		return b[0]
	}
	return 0xff
}
