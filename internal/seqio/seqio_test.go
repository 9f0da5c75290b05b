package seqio

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"
)

// TestFillGolden pins the benchmark data: these are the SHA-256 sums of the
// blocks the benchmarks wrote when their results in bench/RESULTS.md were
// measured. A change here makes new numbers incomparable with old ones.
func TestFillGolden(t *testing.T) {
	golden := []struct {
		kind string
		i    int
		sum  string
	}{
		{"zero", 0, "852b0a22d776553564b799cfa723ad8bbeab53de7ceadd918e1141dc8fe56417"},
		{"zero", 1, "c8dc948d1d9038b26e45688f6d2724693bd40cee814cb1e15341d0ef06e0f801"},
		{"zero", 1023, "622d260dbd87f3c8390abd3fba342071982c1b322ffea6eb6fd6e6299493d1c5"},
		{"text", 0, "9cc9d4ecd3e74c075c3fae3178a8f99752986476d0fa7c3dcd41d330c8ea84e4"},
		{"text", 1, "398013f06e459b413ac613cc598747f4befeb4a9947692d19b48bf8b6c4c79fe"},
		{"text", 1023, "787907bcaabf74c8e51659bb1440747d277cb2cf4d324cc9539a7e7e987bea18"},
		{"random", 0, "8f12def7f340d1552b6470e531778151d9bd619d5677f1c17f16e3b3a6b825b1"},
		{"random", 1, "967b72b409270bb5169ebe9613793058d305c0ad5f42a828c6188a40343c613f"},
		{"random", 1023, "ed5be6596cbdae0a7d517dda4e16426cbcfba9e73f59aced3159ebcd39adcd91"},
	}
	buf := make([]byte, BlockSize)
	for _, g := range golden {
		for j := range buf {
			buf[j] = 0xa5 // Fill must overwrite every byte
		}
		if err := Fill(g.kind, g.i, buf); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(buf)
		if got := hex.EncodeToString(sum[:]); got != g.sum {
			t.Errorf("%s block %d: sha256 %s, want %s", g.kind, g.i, got, g.sum)
		}
	}
}

// TestFillShape checks what the kinds promise: zero is about 80% zero
// pages, text has its phrase in every other 64 bytes, random has neither.
func TestFillShape(t *testing.T) {
	buf := make([]byte, BlockSize)
	zeroPages := func() int {
		n := 0
		for p := 0; p < len(buf); p += 4096 {
			allZero := true
			for _, b := range buf[p : p+4096] {
				if b != 0 {
					allZero = false
					break
				}
			}
			if allZero {
				n++
			}
		}
		return n
	}
	Fill("zero", 3, buf)
	if n := zeroPages(); n < 180 || n > 230 { // 256 pages, 80% expected
		t.Errorf("zero: %d of 256 pages zero, want about 205", n)
	}
	Fill("text", 3, buf)
	if string(buf[64:128]) != string(buf[64+128:128+128]) || string(buf[0:64]) == string(buf[128:192]) {
		t.Error("text: phrase runs differ or random runs repeat")
	}
	Fill("random", 3, buf)
	if n := zeroPages(); n != 0 {
		t.Errorf("random: %d zero pages", n)
	}
}

func TestFillRefusesBadInput(t *testing.T) {
	if err := Fill("ones", 0, make([]byte, 4096)); err == nil {
		t.Error("unknown kind accepted")
	}
	if err := Fill("text", 0, make([]byte, 1000)); err == nil {
		t.Error("buffer not a multiple of 4 KiB accepted")
	}
}

func TestEnvInt(t *testing.T) {
	for _, c := range []struct {
		v    string
		want int
	}{{"", 7}, {"12", 12}, {"0", 7}, {"-3", 7}, {"x", 7}, {"12x", 7}} {
		t.Setenv("SEQIO_TEST_N", c.v)
		if got := EnvInt("SEQIO_TEST_N", 7); got != c.want {
			t.Errorf("EnvInt(%q) = %d, want %d", c.v, got, c.want)
		}
	}
}
