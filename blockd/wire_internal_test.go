package blockd

import (
	"bytes"
	"io"
	"testing"

	"stasis/cas"
)

func TestFrameBody(t *testing.T) {
	var chunks []Chunk
	for _, n := range []int{0, 1, 127, 128, 300, 70000} {
		raw := bytes.Repeat([]byte{byte(n)}, n)
		chunks = append(chunks, Chunk{ID: cas.Sum(raw), Data: raw})
	}
	var want []byte
	for _, c := range chunks {
		want = AppendFrame(want, c)
	}
	if framesLen(chunks) != int64(len(want)) {
		t.Fatalf("framesLen = %d, want %d", framesLen(chunks), len(want))
	}
	for _, size := range []int{1, 7, 33, 4096, 1 << 20} {
		var got bytes.Buffer
		buf := make([]byte, size)
		fb := newFrameBody(chunks, nil)
		for {
			n, err := fb.Read(buf)
			got.Write(buf[:n])
			if err == io.EOF {
				break
			}
			if err != nil || n == 0 {
				t.Fatalf("Read = %d, %v", n, err)
			}
		}
		if !bytes.Equal(got.Bytes(), want) {
			t.Fatalf("reading in %d-byte pieces gave different frames", size)
		}
	}
	g := &bodyGate{}
	fb := newFrameBody(chunks, g)
	if n, err := fb.Read(make([]byte, 10)); n != 10 || err != nil {
		t.Fatalf("gated body: %d, %v", n, err)
	}
	g.stop()
	if _, err := fb.Read(make([]byte, 10)); err != errAbandoned {
		t.Fatalf("stopped body read: %v", err)
	}
	if n, err := newFrameBody(nil, nil).Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Fatalf("empty body: %d, %v", n, err)
	}
}
