// Package seqio generates the data of the sequential-I/O benchmarks: casfs's
// BenchmarkWrite (the logic layer alone) and cmd/casfs's BenchmarkSeqIO and
// BenchmarkRSS (through a real mount). Both write the same bytes, so their
// numbers can be compared; the bytes are pinned by a golden test, so results
// stay comparable across commits.
package seqio

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
)

// BlockSize is the size of one block of benchmark data (the benchmarks
// write a file a block at a time).
const BlockSize = 1 << 20

// Kinds are the data kinds, in the order the benchmarks run them:
//   - zero: 80% all-zero 4 KiB pages, the rest random (like a RAM image).
//   - text: 64-byte random runs alternating with 64 bytes of a repeated
//     phrase (LZ4 halves it; nothing repeats across pages).
//   - random: incompressible and unique.
var Kinds = []string{"zero", "text", "random"}

// Fill fills buf with block i of a data kind, deterministically: the same
// kind, i and len(buf) give the same bytes. len(buf) must be a multiple of
// 4 KiB (normally BlockSize).
func Fill(kind string, i int, buf []byte) error {
	if len(buf)%4096 != 0 {
		return fmt.Errorf("seqio: buffer of %d bytes is not a multiple of 4 KiB", len(buf))
	}
	var seed [32]byte
	binary.LittleEndian.PutUint64(seed[:], uint64(i)+1)
	c := rand.NewChaCha8(seed)
	r := rand.New(c)
	switch kind {
	case "random":
		c.Read(buf)
	case "zero":
		clear(buf)
		for p := 0; p < len(buf); p += 4096 {
			if r.IntN(5) == 0 {
				c.Read(buf[p : p+4096])
			}
		}
	case "text":
		phrase := []byte("the quick brown fox jumps over the lazy dog; ")
		for p := 0; p < len(buf); p += 128 {
			c.Read(buf[p : p+64])
			for k := p + 64; k < p+128; k++ {
				buf[k] = phrase[(k-p)%len(phrase)]
			}
		}
	default:
		return fmt.Errorf("seqio: unknown data kind %q (want one of %v)", kind, Kinds)
	}
	return nil
}

// EnvInt returns the positive integer in the environment variable name (a
// benchmark's size knob, e.g. CASFS_BENCH_MIB), or def when it is unset or
// not a positive integer.
func EnvInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
