package cas

import (
	"bytes"
	"strconv"
	"testing"

	"github.com/pierrec/lz4/v4"
	"github.com/zeebo/blake3"
)

// compressible is text-like data that LZ4 shrinks about 3x.
func compressible(n int) []byte {
	words := bytes.Fields([]byte("the quick brown fox jumps over a lazy dog while stasis saves guest memory pages into chunks"))
	r := randBytes(21, n)
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		b.Write(words[int(r[i%len(r)])%len(words)])
		b.WriteByte(' ')
	}
	return b.Bytes()[:n]
}

func BenchmarkChunker(b *testing.B) {
	data := randBytes(31, 8<<20)
	for _, p := range []Policy{Fixed(4 << 10), Fixed(64 << 10), CDC(16 << 10), CDC(64 << 10)} {
		c := p.New()
		b.Run(p.String(), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				n := 0
				Split(c, data, func(int, []byte) error { n++; return nil })
			}
		})
	}
}

func BenchmarkSplitter4KWrites(b *testing.B) {
	data := randBytes(32, 8<<20)
	c := CDC(64 << 10).New()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		s := NewSplitter(c, func(uint64, []byte) error { return nil })
		for off := 0; off < len(data); off += 4 << 10 {
			s.Write(data[off : off+4<<10])
		}
		s.Close()
	}
}

func BenchmarkBLAKE3(b *testing.B) {
	for _, size := range []int{4 << 10, 64 << 10} {
		data := randBytes(33, size)
		b.Run(sizeName(size), func(b *testing.B) {
			b.SetBytes(int64(size))
			for b.Loop() {
				blake3.Sum256(data)
			}
		})
	}
}

func BenchmarkCodec(b *testing.B) {
	for _, in := range []struct {
		name string
		raw  []byte
	}{
		{"compressible-64K", compressible(64 << 10)},
		{"random-64K", randBytes(34, 64<<10)},
		{"compressible-4K", compressible(4 << 10)},
		{"random-4K", randBytes(35, 4<<10)},
	} {
		enc := Encode(nil, in.raw)
		b.Run("Encode/"+in.name, func(b *testing.B) {
			b.SetBytes(int64(len(in.raw)))
			buf := make([]byte, 0, 2*len(in.raw))
			for b.Loop() {
				Encode(buf[:0], in.raw)
			}
			b.ReportMetric(float64(len(enc))/float64(len(in.raw)), "ratio")
		})
		b.Run("Decode/"+in.name, func(b *testing.B) {
			b.SetBytes(int64(len(in.raw)))
			buf := make([]byte, 0, len(in.raw))
			for b.Loop() {
				if _, err := Decode(buf[:0], enc); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkIsZero(b *testing.B) {
	for _, size := range []int{4 << 10, 64 << 10} {
		data := make([]byte, size)
		b.Run(sizeName(size), func(b *testing.B) {
			b.SetBytes(int64(size))
			for b.Loop() {
				if !IsZero(data) {
					b.Fatal("not zero")
				}
			}
		})
	}
}

func sizeName(n int) string { return strconv.Itoa(n>>10) + "K" }

// BenchmarkLZ4 compares the chunk encoder's LZ4 with pierrec/lz4's
// CompressBlock on the same inputs (block compression only, no header).
func BenchmarkLZ4(b *testing.B) {
	in := lz4Inputs()
	for _, name := range []string{"text-64K", "halfrandom", "ram", "random-4096"} {
		src := in[name]
		if name == "random-4096" {
			src = randBytes(77, 64<<10)
			name = "random-64K"
		}
		dst := make([]byte, lz4.CompressBlockBound(len(src)))
		b.Run("cas/"+name, func(b *testing.B) {
			var t lz4Table
			b.SetBytes(int64(len(src)))
			n := 0
			for b.Loop() {
				n = lz4Compress(dst[:len(src)], src, &t)
			}
			if n == 0 {
				n = len(src)
			}
			b.ReportMetric(float64(n)/float64(len(src)), "ratio")
		})
		b.Run("pierrec/"+name, func(b *testing.B) {
			var c lz4.Compressor
			b.SetBytes(int64(len(src)))
			n := 0
			for b.Loop() {
				n, _ = c.CompressBlock(src, dst)
			}
			if n == 0 {
				n = len(src)
			}
			b.ReportMetric(float64(n)/float64(len(src)), "ratio")
		})
	}
}
