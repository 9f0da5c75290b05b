package cas

import (
	"encoding/binary"
	"math/rand/v2"
)

// randBytes returns n bytes from a PCG generator seeded with seed. PCG's
// output is specified, so the bytes are the same on every Go version.
func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	b := make([]byte, (n+7)&^7)
	for i := 0; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b[:n]
}

// goldenInput is the pinned chunker input: 768 KiB of seeded random bytes,
// 128 KiB of zeros, then 128 KiB of a repeating 1000-byte text pattern.
func goldenInput() []byte {
	data := randBytes(1, 768<<10)
	data = append(data, make([]byte, 128<<10)...)
	pat := make([]byte, 1000)
	for i := range pat {
		pat[i] = "stasis golden pattern "[i%22] + byte(i/22)
	}
	for len(data) < 1<<20 {
		data = append(data, pat[:min(len(pat), 1<<20-len(data))]...)
	}
	return data
}
