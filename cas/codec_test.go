package cas

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

func TestCodecRoundTrip(t *testing.T) {
	text := bytes.Repeat([]byte("all work and no play makes jack a dull boy. "), 2000)
	cases := []struct {
		name string
		raw  []byte
		want Codec
	}{
		{"empty", nil, CodecRaw},
		{"one byte", []byte{7}, CodecRaw},
		{"compressible", text, CodecLZ4},
		{"zeros", make([]byte, 64<<10), CodecLZ4},
		{"random", randBytes(11, 64<<10), CodecRaw},
		{"random 4k", randBytes(12, 4<<10), CodecRaw},
		{"max size random", randBytes(13, MaxChunkSize), CodecRaw},
		{"max size zeros", make([]byte, MaxChunkSize), CodecLZ4},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			enc := Encode(nil, tc.raw)
			if c, err := EncodedCodec(enc); err != nil || c != tc.want {
				t.Fatalf("codec = %v, %v; want %v", c, err, tc.want)
			}
			if tc.want == CodecRaw && len(enc) != 1+len(tc.raw) {
				t.Fatalf("raw encoding is %d bytes for %d", len(enc), len(tc.raw))
			}
			if tc.want == CodecLZ4 && len(enc) >= len(tc.raw) {
				t.Fatalf("lz4 encoding %d bytes does not shrink %d", len(enc), len(tc.raw))
			}
			if len(enc) > MaxEncodedSize {
				t.Fatalf("encoding of %d bytes exceeds MaxEncodedSize", len(enc))
			}
			if n, err := RawSize(enc); err != nil || n != len(tc.raw) {
				t.Fatalf("RawSize = %d, %v", n, err)
			}
			prefix := []byte("prefix")
			dec, err := Decode(append([]byte(nil), prefix...), enc)
			if err != nil || !bytes.Equal(dec[:len(prefix)], prefix) || !bytes.Equal(dec[len(prefix):], tc.raw) {
				t.Fatalf("Decode: %v (len %d)", err, len(dec))
			}
			id := Sum(tc.raw)
			if out, err := DecodeVerify(nil, id, enc); err != nil || !bytes.Equal(out, tc.raw) {
				t.Fatalf("DecodeVerify: %v", err)
			}
			// Encode appends: a non-empty dst is kept.
			enc2 := Encode([]byte("hdr"), tc.raw)
			if !bytes.Equal(enc2[:3], []byte("hdr")) || !bytes.Equal(enc2[3:], enc) {
				t.Fatal("Encode with a prefix differs")
			}
		})
	}
}

func TestDecodeVerifyMismatch(t *testing.T) {
	raw := bytes.Repeat([]byte("chunk"), 1000)
	enc := Encode(nil, raw)
	other := Sum([]byte("other"))
	out, err := DecodeVerify([]byte("keep"), other, enc)
	var me *MismatchError
	if !errors.Is(err, ErrHashMismatch) || !errors.As(err, &me) || me.Want != other || me.Got != Sum(raw) {
		t.Fatalf("DecodeVerify with the wrong id = %v", err)
	}
	if string(out) != "keep" {
		t.Fatalf("a failed DecodeVerify left %d bytes appended", len(out)-4)
	}
	// A flipped payload bit is caught either by the decoder or by the hash.
	for i := 1; i < len(enc); i += 7 {
		bad := bytes.Clone(enc)
		bad[i] ^= 0x10
		if _, err := DecodeVerify(nil, Sum(raw), bad); err == nil {
			t.Fatalf("flipping byte %d went unnoticed", i)
		} else if !errors.Is(err, ErrHashMismatch) && !errors.Is(err, ErrCorruptChunk) && !errors.Is(err, ErrChunkTooLarge) {
			t.Fatalf("flipping byte %d: unexpected error %v", i, err)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	lz := Encode(nil, bytes.Repeat([]byte("abcd"), 4096))
	big := binary.AppendUvarint([]byte{byte(CodecLZ4)}, MaxChunkSize+1)
	cases := map[string]struct {
		enc  []byte
		want error
	}{
		"empty":           {nil, ErrCorruptChunk},
		"unknown codec":   {[]byte{9, 1, 2, 3}, ErrCorruptChunk},
		"lz4 no header":   {[]byte{byte(CodecLZ4)}, ErrCorruptChunk},
		"lz4 empty claim": {[]byte{byte(CodecLZ4), 0, 0x10, 0x41}, ErrCorruptChunk},
		"lz4 bad varint":  {[]byte{byte(CodecLZ4), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, ErrCorruptChunk},
		"lz4 too large":   {append(big, 0), ErrChunkTooLarge},
		"lz4 truncated":   {lz[:len(lz)/2], ErrCorruptChunk},
		"lz4 short claim": {append(binary.AppendUvarint([]byte{byte(CodecLZ4)}, 10), lz[3:]...), ErrCorruptChunk},
		"lz4 long claim":  {append(binary.AppendUvarint([]byte{byte(CodecLZ4)}, 1<<20), lz[4:]...), ErrCorruptChunk},
		"raw too large":   {make([]byte, MaxEncodedSize+1), ErrChunkTooLarge},
	}
	for name, tc := range cases {
		out, err := Decode([]byte("x"), tc.enc)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: Decode = %v, want %v", name, err, tc.want)
		}
		if string(out) != "x" {
			t.Errorf("%s: failed Decode appended %d bytes", name, len(out)-1)
		}
	}
}

func TestEncodePanicsOnOversize(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("Encode of an oversize chunk did not panic")
		}
	}()
	Encode(nil, make([]byte, MaxChunkSize+1))
}

func TestCodecString(t *testing.T) {
	if CodecRaw.String() != "raw" || CodecLZ4.String() != "lz4" || Codec(9).String() != "codec(9)" {
		t.Error("Codec.String")
	}
}

// FuzzDecode feeds untrusted bytes to the decoder: it must never panic,
// never return more than MaxChunkSize bytes, and agree with RawSize.
func FuzzDecode(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0})
	f.Add(Encode(nil, []byte("hello hello hello hello hello hello")))
	f.Add(Encode(nil, make([]byte, 4096)))
	f.Add(Encode(nil, randBytes(5, 100)))
	f.Add([]byte{1, 0x80, 0x80, 0x80, 0x02, 0x00})
	f.Fuzz(func(t *testing.T, enc []byte) {
		out, err := Decode(nil, enc)
		if err != nil {
			if !errors.Is(err, ErrCorruptChunk) && !errors.Is(err, ErrChunkTooLarge) {
				t.Fatalf("unexpected error type: %v", err)
			}
			if len(out) != 0 {
				t.Fatalf("error with %d bytes of output", len(out))
			}
			return
		}
		if len(out) > MaxChunkSize {
			t.Fatalf("decoded %d bytes", len(out))
		}
		if n, err := RawSize(enc); err != nil || n != len(out) {
			t.Fatalf("RawSize = %d, %v; decoded %d", n, err, len(out))
		}
		// What decodes re-encodes to something that decodes the same.
		again, err := Decode(nil, Encode(nil, out))
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("re-encode round trip: %v", err)
		}
	})
}
