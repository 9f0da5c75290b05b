package blockd

import (
	"bytes"
	"encoding/binary"
	"errors"
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

func TestParseFrameHeader(t *testing.T) {
	var id cas.ChunkID
	id[0] = 7
	frame := AppendFrame(nil, Chunk{ID: id, Data: make([]byte, 300)}) // 2-byte length
	for i := 0; i < cas.IDSize+2; i++ {
		if _, _, _, ok, err := parseFrameHeader(frame[:i]); ok || err != nil {
			t.Fatalf("%d bytes: ok %v err %v, want incomplete", i, ok, err)
		}
	}
	got, n, hdr, ok, err := parseFrameHeader(frame)
	if !ok || err != nil || got != id || n != 300 || hdr != cas.IDSize+2 {
		t.Fatalf("parse = %v %d %d %v %v", got, n, hdr, ok, err)
	}
	// Ten continuation bytes are already too many: refused without an
	// eleventh, so a reader that reads at most a header's worth ends.
	bad := append(id[:], bytes.Repeat([]byte{0xff}, 10)...)
	if _, _, _, _, err := parseFrameHeader(bad); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("ten continuation bytes: %v", err)
	}
	big := binary.AppendUvarint(append([]byte(nil), id[:]...), cas.MaxEncodedSize+1)
	var re *RejectError
	if _, _, _, _, err := parseFrameHeader(big); !errors.As(err, &re) || re.Reason != ReasonTooLarge {
		t.Fatalf("oversize: %v", err)
	}
}
