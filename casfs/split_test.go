package casfs

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"

	"stasis/cas"
)

// TestFixedSplitterMatchesSplitter feeds the same stream, in random pieces
// and with random runs of skipped zeros, to fixedSplitter and to
// cas.Splitter (through cdcWriter, feeding every skipped zero) and expects
// identical chunks; the whole zero chunks fixedSplitter hands to hole count
// as zero chunks.
func TestFixedSplitterMatchesSplitter(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 1<<20+333)
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	type chunk struct {
		off  uint64
		data []byte
	}
	const size = 4096
	// The same pieces for both: positive = write that many bytes of data,
	// negative = skip that many zeros.
	var pieces []int
	for left := len(data); left > 0; {
		k := min(left, 1+r.IntN(20000))
		pieces = append(pieces, k)
		left -= k
		if r.IntN(3) == 0 {
			pieces = append(pieces, -(1 + r.IntN(5*size)))
		}
	}
	pieces = append(pieces, -3*size-5) // ends in a skip
	collect := func(w func(emit func(uint64, []byte) error, hole func(uint64, uint64) error) chunkWriter) []chunk {
		var out []chunk
		emit := func(off uint64, b []byte) error {
			out = append(out, chunk{off, bytes.Clone(b)})
			return nil
		}
		hole := func(off, n uint64) error {
			if off%size != 0 || n%size != 0 {
				t.Fatalf("hole [%d +%d) is not whole chunks", off, n)
			}
			for k := uint64(0); k < n; k += size {
				out = append(out, chunk{off + k, make([]byte, size)})
			}
			return nil
		}
		cw := w(emit, hole)
		p := data
		for _, k := range pieces {
			if k < 0 {
				if err := cw.Skip(uint64(-k)); err != nil {
					t.Fatal(err)
				}
				continue
			}
			if n, err := cw.Write(p[:k]); err != nil || n != k {
				t.Fatalf("write: %d %v", n, err)
			}
			p = p[k:]
		}
		if err := cw.Close(); err != nil {
			t.Fatal(err)
		}
		return out
	}
	pol := cas.Fixed(size)
	holes := 0
	got := collect(func(e func(uint64, []byte) error, h func(uint64, uint64) error) chunkWriter {
		return &fixedSplitter{size: size, emit: e, hole: func(off, n uint64) error { holes++; return h(off, n) }}
	})
	if holes == 0 {
		t.Fatal("fixedSplitter never handed skipped chunks to hole")
	}
	want := collect(func(e func(uint64, []byte) error, h func(uint64, uint64) error) chunkWriter {
		// feedMax above every skip: all zeros go through the splitter.
		return &cdcWriter{sp: cas.NewSplitter(pol.New(), e), hole: h, feedMax: 1 << 40}
	})
	if len(got) != len(want) {
		t.Fatalf("%d chunks, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i].off != want[i].off || !bytes.Equal(got[i].data, want[i].data) {
			t.Fatalf("chunk %d differs", i)
		}
	}

	// An emit error is sticky.
	boom := errors.New("boom")
	s := &fixedSplitter{size: 4096, emit: func(uint64, []byte) error { return boom }}
	if _, err := s.Write(data[:8192]); !errors.Is(err, boom) {
		t.Fatalf("write: %v", err)
	}
	if _, err := s.Write(data[:10]); !errors.Is(err, boom) {
		t.Fatalf("second write: %v", err)
	}
	if err := s.Close(); !errors.Is(err, boom) {
		t.Fatalf("close: %v", err)
	}
}
