package cas

import (
	"bytes"
	"strconv"
	"testing"

	"github.com/pierrec/lz4/v4"
)

// lz4Inputs are shapes that exercise the encoder's edges: short inputs
// around the minimum match window, long literal and match runs (length
// bytes of 255), matches at the 64 KiB distance limit and beyond it, and
// mixtures of random and repeated data.
func lz4Inputs() map[string][]byte {
	in := map[string][]byte{}
	for _, n := range []int{0, 1, 4, 11, 12, 13, 14, 15, 16, 19, 20, 31, 64, 255, 270, 4096} {
		in["zeros-"+itoa(n)] = make([]byte, n)
		in["random-"+itoa(n)] = randBytes(uint64(100+n), n)
		in["text-"+itoa(n)] = compressible(n)
	}
	in["zeros-4M"] = make([]byte, MaxChunkSize)
	in["text-64K"] = compressible(64 << 10)
	in["text-1M"] = compressible(1 << 20)
	// A 1 KiB random block repeated at distances 65535, 65536 and 65537:
	// only the first is within LZ4's window.
	for _, d := range []int{65535, 65536, 65537} {
		b := randBytes(uint64(d), d+2048)
		copy(b[d:], b[:1024])
		in["distance-"+itoa(d)] = b
	}
	// Literal runs of every length class between short matches.
	var mixed []byte
	for i := 0; i < 600; i += 7 {
		mixed = append(mixed, randBytes(uint64(i), i)...)
		mixed = append(mixed, bytes.Repeat([]byte("abcd"), 1+i%300)...)
	}
	in["mixed"] = mixed
	// The benchmark's "text": 64 random bytes, then 64 bytes of a phrase.
	page := make([]byte, 64<<10)
	phrase := []byte("the quick brown fox jumps over the lazy dog; ")
	r := randBytes(7, len(page))
	for p := 0; p < len(page); p += 128 {
		copy(page[p:p+64], r[p:])
		for k := p + 64; k < p+128; k++ {
			page[k] = phrase[(k-p)%len(phrase)]
		}
	}
	in["halfrandom"] = page
	// Zero pages with random ones in between (a RAM image).
	ram := make([]byte, 64<<10)
	for p := 0; p < len(ram); p += 4096 {
		if p%(5*4096) == 0 {
			copy(ram[p:p+4096], randBytes(uint64(p), 4096))
		}
	}
	in["ram"] = ram
	return in
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestLZ4CompressDecodes checks that every block the encoder writes is
// decoded to the input by pierrec/lz4 (the reader of stored chunks), for
// every output limit from "plenty" down to "too small": the encoder either
// fits the limit or reports 0, never writes past it.
func TestLZ4CompressDecodes(t *testing.T) {
	var tab lz4Table
	for name, src := range lz4Inputs() {
		t.Run(name, func(t *testing.T) {
			bound := lz4.CompressBlockBound(len(src)) + 16
			dst := make([]byte, bound)
			n := lz4Compress(dst, src, &tab)
			if n == 0 || n > bound {
				t.Fatalf("with a full bound: n = %d", n)
			}
			checkLZ4(t, dst[:n], src)
			// Smaller limits: same block while it fits, 0 after.
			for _, limit := range []int{n, n - 1, n / 2, len(src), 1, 0} {
				if limit < 0 || limit > bound {
					continue
				}
				out := make([]byte, limit+64)
				for i := range out {
					out[i] = 0xAA
				}
				m := lz4Compress(out[:limit], src, &tab)
				if m > limit {
					t.Fatalf("limit %d: wrote %d", limit, m)
				}
				for i := limit; i < len(out); i++ {
					if out[i] != 0xAA {
						t.Fatalf("limit %d: byte %d past the limit was written", limit, i)
					}
				}
				if limit >= n && m != n {
					t.Fatalf("limit %d: n = %d, want %d", limit, m, n)
				}
				if m > 0 {
					checkLZ4(t, out[:m], src)
				}
			}
		})
	}
}

func checkLZ4(t *testing.T, block, want []byte) {
	t.Helper()
	got := make([]byte, len(want))
	if len(want) == 0 {
		return
	}
	m, err := lz4.UncompressBlock(block, got)
	if err != nil || m != len(want) || !bytes.Equal(got, want) {
		t.Fatalf("decode: %d bytes, %v (want %d bytes, equal %v)", m, err, len(want), bytes.Equal(got[:max(0, m)], want[:max(0, m)]))
	}
}

// TestLZ4CompressRatio guards against a regression that still decodes but
// stops finding matches: on compressible data the encoder must do about as
// well as pierrec/lz4's CompressBlock.
func TestLZ4CompressRatio(t *testing.T) {
	var tab lz4Table
	in := lz4Inputs()
	for _, name := range []string{"text-64K", "text-1M", "halfrandom", "ram", "zeros-4M"} {
		src := in[name]
		dst := make([]byte, lz4.CompressBlockBound(len(src)))
		n := lz4Compress(dst, src, &tab)
		ref, err := lz4.CompressBlock(src, make([]byte, len(dst)), nil)
		if err != nil {
			t.Fatal(err)
		}
		if float64(n) > 1.15*float64(ref)+16 {
			t.Errorf("%s: %d bytes, pierrec/lz4 %d", name, n, ref)
		}
	}
}

// TestEncodeShrinksOrRaw pins that Encode uses LZ4 only when it shrinks
// the chunk and stores everything else raw.
func TestEncodeShrinksOrRaw(t *testing.T) {
	for name, src := range lz4Inputs() {
		enc := Encode(nil, src)
		c, _ := EncodedCodec(enc)
		if c == CodecLZ4 && len(enc) >= 1+len(src) {
			t.Errorf("%s: lz4 encoding of %d bytes is %d", name, len(src), len(enc))
		}
		if c == CodecRaw && len(enc) != 1+len(src) {
			t.Errorf("%s: raw encoding of %d bytes is %d", name, len(src), len(enc))
		}
		if got, err := Decode(nil, enc); err != nil || !bytes.Equal(got, src) {
			t.Errorf("%s: round trip: %v", name, err)
		}
	}
}

// FuzzLZ4Compress: any input compresses to a block that decodes to it.
func FuzzLZ4Compress(f *testing.F) {
	f.Add([]byte("hello hello hello hello hello"))
	f.Add(compressible(300))
	f.Add(make([]byte, 100))
	var tab lz4Table
	f.Fuzz(func(t *testing.T, src []byte) {
		dst := make([]byte, lz4.CompressBlockBound(len(src)))
		n := lz4Compress(dst, src, &tab)
		if n == 0 {
			t.Fatalf("no block within the bound for %d bytes", len(src))
		}
		checkLZ4(t, dst[:n], src)
		enc := Encode(nil, src)
		if got, err := Decode(nil, enc); err != nil || !bytes.Equal(got, src) {
			t.Fatalf("Encode round trip: %v", err)
		}
	})
}

// TestEncodeLZ4 pins EncodeLZ4's contract: true with an LZ4 encoding
// smaller than the raw one, or false with dst untouched.
func TestEncodeLZ4(t *testing.T) {
	for name, src := range lz4Inputs() {
		prefix := []byte("pre")
		out, ok := EncodeLZ4(append(make([]byte, 0, 8), prefix...), src)
		if !bytes.Equal(out[:len(prefix)], prefix) {
			t.Fatalf("%s: prefix lost", name)
		}
		enc := out[len(prefix):]
		if !ok {
			if len(enc) != 0 {
				t.Fatalf("%s: false with %d bytes appended", name, len(enc))
			}
			if c, _ := EncodedCodec(Encode(nil, src)); c != CodecRaw {
				t.Fatalf("%s: EncodeLZ4 declined but Encode used %v", name, c)
			}
			continue
		}
		if c, _ := EncodedCodec(enc); c != CodecLZ4 || len(enc) >= 1+len(src) {
			t.Fatalf("%s: codec %v, %d bytes for %d", name, c, len(enc), len(src))
		}
		if got, err := Decode(nil, enc); err != nil || !bytes.Equal(got, src) {
			t.Fatalf("%s: round trip: %v", name, err)
		}
	}
	if _, ok := EncodeLZ4(nil, randBytes(5, 64<<10)); ok {
		t.Fatal("random data compressed")
	}
	if _, ok := EncodeLZ4(nil, make([]byte, 64<<10)); !ok {
		t.Fatal("zeros not compressed")
	}
}
