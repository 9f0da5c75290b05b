package casfs

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"

	"stasis/cas"
)

// TestFixedSplitterMatchesSplitter feeds the same stream in random pieces to
// fixedSplitter and cas.Splitter and expects identical chunks.
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
	collect := func(w func(emit func(uint64, []byte) error) chunkWriter) []chunk {
		var out []chunk
		cw := w(func(off uint64, b []byte) error {
			out = append(out, chunk{off, bytes.Clone(b)})
			return nil
		})
		for p := data; len(p) > 0; {
			k := min(len(p), 1+r.IntN(20000))
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
	pol := cas.Fixed(4096)
	got := collect(func(e func(uint64, []byte) error) chunkWriter { return &fixedSplitter{size: 4096, emit: e} })
	want := collect(func(e func(uint64, []byte) error) chunkWriter { return cas.NewSplitter(pol.New(), e) })
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
