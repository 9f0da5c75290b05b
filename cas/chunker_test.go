package cas

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

type goldenChunk struct {
	off, n int
	id     string // ChunkID.Short()
}

// The golden tables pin both chunkers on goldenInput. A change to the gear
// table, the masks or the cut rules changes every stored file's chunks, so
// it must be a deliberate, versioned change of the policy name — never a
// silent one. On a mismatch the test prints the table it got.
var goldenFixed64K = []goldenChunk{
	{0, 65536, "af2c0dbfc215"},
	{65536, 65536, "83550f33ca10"},
	{131072, 65536, "9c573ea6464d"},
	{196608, 65536, "8b3c2d08a44d"},
	{262144, 65536, "5d94186b1ff4"},
	{327680, 65536, "839a2ec930ee"},
	{393216, 65536, "97b225e991d0"},
	{458752, 65536, "2ab293b74c22"},
	{524288, 65536, "e188da337833"},
	{589824, 65536, "0e1f29f79d7a"},
	{655360, 65536, "17e2cfd78fa9"},
	{720896, 65536, "3a0b9217f906"},
	{786432, 65536, "3bdeaf8f8e98"},
	{851968, 65536, "3bdeaf8f8e98"},
	{917504, 65536, "fab858548f32"},
	{983040, 65536, "b8db37fca94d"},
}

var goldenCDC16K = []goldenChunk{
	{0, 23232, "61446e6c83bf"},
	{23232, 21323, "3c9e365f4b32"},
	{44555, 17923, "6923e632cc2b"},
	{62478, 24610, "f15a9c345d37"},
	{87088, 17696, "5a0deb33ee9c"},
	{104784, 19248, "c226e296900a"},
	{124032, 17307, "90f26405785d"},
	{141339, 26030, "0ecc7da2366b"},
	{167369, 27290, "64bd63e72b4f"},
	{194659, 20688, "a5e77556cc23"},
	{215347, 18062, "13fd7c62e850"},
	{233409, 16801, "b63282ddfa6c"},
	{250210, 19961, "a1753f7d84be"},
	{270171, 19819, "af9fa135a55e"},
	{289990, 18112, "d8becab83f29"},
	{308102, 5430, "bdb35cca4355"},
	{313532, 16713, "5065c12c98b9"},
	{330245, 17779, "e73056db96f0"},
	{348024, 17471, "e15332c34685"},
	{365495, 19928, "8744cc48ae7f"},
	{385423, 16596, "74b6a72ee459"},
	{402019, 21349, "6fea60c10cf1"},
	{423368, 19889, "9bb6d174442f"},
	{443257, 18018, "f809258dbf37"},
	{461275, 20158, "df776ce54edd"},
	{481433, 20001, "414b975fd9c2"},
	{501434, 15745, "8b895b90c177"},
	{517179, 25463, "f8165fa78c94"},
	{542642, 19580, "c9cc00716736"},
	{562222, 22698, "e8c19ccf8139"},
	{584920, 8961, "7e2288ec079a"},
	{593881, 12918, "26c1792e2b59"},
	{606799, 25267, "1717614615c6"},
	{632066, 17693, "9dbbf2c0548b"},
	{649759, 7601, "422fa4d35c4b"},
	{657360, 17300, "a5f398b6f693"},
	{674660, 16413, "9cf0fd5331df"},
	{691073, 5072, "60a0c9ca64eb"},
	{696145, 28965, "688be77e83d9"},
	{725110, 19543, "83abefd59dc2"},
	{744653, 13388, "a73a54914e00"},
	{758041, 18008, "e5168fdbaf30"},
	{776049, 65536, "11279875de29"},
	{841585, 65536, "3bdeaf8f8e98"},
	{907121, 16429, "ac28bd0ada14"},
	{923550, 17000, "575f5b340e67"},
	{940550, 17000, "575f5b340e67"},
	{957550, 17000, "575f5b340e67"},
	{974550, 17000, "575f5b340e67"},
	{991550, 17000, "575f5b340e67"},
	{1008550, 17000, "575f5b340e67"},
	{1025550, 17000, "575f5b340e67"},
	{1042550, 6026, "f44572e9b985"},
}

func cutAll(t *testing.T, p Policy, data []byte) []goldenChunk {
	t.Helper()
	var got []goldenChunk
	err := Split(p.New(), data, func(off int, c []byte) error {
		got = append(got, goldenChunk{off, len(c), Sum(c).Short()})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestGoldenChunks(t *testing.T) {
	data := goldenInput()
	// The input itself is pinned, so a change in the PRNG is told apart
	// from a change in the chunker.
	if got, want := Sum(data).Short(), goldenInputID; got != want {
		t.Fatalf("golden input hashes to %s, want %s", got, want)
	}
	for _, tc := range []struct {
		policy Policy
		want   []goldenChunk
	}{
		{Fixed(64 << 10), goldenFixed64K},
		{CDC(16 << 10), goldenCDC16K},
	} {
		t.Run(tc.policy.String(), func(t *testing.T) {
			got := cutAll(t, tc.policy, data)
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				var b strings.Builder
				for _, c := range got {
					fmt.Fprintf(&b, "\t{%d, %d, %q},\n", c.off, c.n, c.id)
				}
				t.Fatalf("chunks differ from the golden table; got:\n%s", b.String())
			}
		})
	}
}

const goldenInputID = "61ca52c3234b"

func TestCDCSizeBounds(t *testing.T) {
	data := randBytes(7, 4<<20)
	for _, avg := range []uint32{4 << 10, 16 << 10, 64 << 10} {
		p := CDC(avg)
		c := p.New()
		var n, total int
		err := Split(c, data, func(off int, b []byte) error {
			last := off+len(b) == len(data)
			if len(b) > int(p.Max) || (!last && len(b) < int(p.Min)) {
				return fmt.Errorf("chunk at %d has size %d outside [%d,%d]", off, len(b), p.Min, p.Max)
			}
			n++
			total += len(b)
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if total != len(data) {
			t.Fatalf("%s: chunks cover %d of %d bytes", p, total, len(data))
		}
		// Normalized chunking keeps the mean near avg on random data.
		mean := total / n
		if mean < int(avg)/2 || mean > 2*int(avg) {
			t.Errorf("%s: mean chunk size %d is far from avg %d", p, mean, avg)
		}
	}
}

// feed pushes data through a Splitter in the pieces sizes() returns and
// collects the chunks.
func feed(t *testing.T, p Policy, data []byte, sizes func(rest int) int) []goldenChunk {
	t.Helper()
	var got []goldenChunk
	s := NewSplitter(p.New(), func(off uint64, c []byte) error {
		got = append(got, goldenChunk{int(off), len(c), Sum(c).Short()})
		return nil
	})
	for rest := data; len(rest) > 0; {
		k := min(sizes(len(rest)), len(rest))
		n, err := s.Write(rest[:k])
		if err != nil || n != k {
			t.Fatalf("Write(%d) = %d, %v", k, n, err)
		}
		rest = rest[k:]
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return got
}

func TestSplitterFeedingPatterns(t *testing.T) {
	data := goldenInput()
	for _, p := range []Policy{Fixed(4 << 10), Fixed(64 << 10), CDC(4 << 10), CDC(16 << 10), {Kind: KindCDC, Min: 64, Avg: 1 << 10, Max: 1 << 10}} {
		t.Run(p.String(), func(t *testing.T) {
			want := cutAll(t, p, data)
			r := rand.New(rand.NewPCG(3, 4))
			patterns := map[string]func(int) int{
				"whole":        func(rest int) int { return rest },
				"random":       func(int) int { return 1 + r.IntN(3*int(p.Max)) },
				"small-random": func(int) int { return 1 + r.IntN(100) },
				"max-minus-1":  func(int) int { return int(p.Max) - 1 },
				"byte-by-byte": func(int) int { return 1 },
			}
			for name, sizes := range patterns {
				if got := feed(t, p, data, sizes); fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("%s: fed %s: %d chunks differ from Split's %d", p, name, len(got), len(want))
				}
			}
		})
	}
}

func TestSplitterEmptyAndTiny(t *testing.T) {
	for _, p := range []Policy{Fixed(4 << 10), CDC(16 << 10)} {
		if got := feed(t, p, nil, nil); len(got) != 0 {
			t.Errorf("%s: empty stream cut %d chunks", p, len(got))
		}
		got := feed(t, p, []byte("x"), func(int) int { return 1 })
		if len(got) != 1 || got[0].n != 1 {
			t.Errorf("%s: one-byte stream cut %v", p, got)
		}
	}
}

func TestSplitterStickyError(t *testing.T) {
	boom := errors.New("boom")
	calls := 0
	s := NewSplitter(Fixed(4<<10).New(), func(uint64, []byte) error {
		calls++
		if calls == 2 {
			return boom
		}
		return nil
	})
	data := make([]byte, 64<<10)
	if _, err := s.Write(data); !errors.Is(err, boom) {
		t.Fatalf("Write = %v, want boom", err)
	}
	if _, err := s.Write(data); !errors.Is(err, boom) {
		t.Fatalf("second Write = %v, want sticky boom", err)
	}
	if err := s.Close(); !errors.Is(err, boom) {
		t.Fatalf("Close = %v, want sticky boom", err)
	}
	if calls != 2 {
		t.Fatalf("emit called %d times after failing", calls)
	}
}

func TestSplitErrorStops(t *testing.T) {
	boom := errors.New("boom")
	n := 0
	err := Split(Fixed(4<<10).New(), make([]byte, 40<<10), func(int, []byte) error {
		n++
		if n == 3 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) || n != 3 {
		t.Fatalf("Split = %v after %d calls", err, n)
	}
}

func TestFixedCutsAtOffsets(t *testing.T) {
	c := Fixed(4 << 10).New()
	if c.Cut(make([]byte, 100), false) != 0 {
		t.Error("short data without EOF must ask for more")
	}
	if c.Cut(make([]byte, 100), true) != 100 {
		t.Error("short data at EOF is the last chunk")
	}
	if c.Cut(make([]byte, 10000), false) != 4096 {
		t.Error("fixed chunker must cut at the size")
	}
	if c.MaxSize() != 4096 || c.Policy() != Fixed(4096) {
		t.Error("MaxSize/Policy")
	}
	cdc := CDC(16 << 10).New()
	if cdc.MaxSize() != 64<<10 || cdc.Policy() != CDC(16<<10) {
		t.Error("cdc MaxSize/Policy")
	}
	// A run of zeros has no content boundary: CDC cuts it at Max.
	if n := cdc.Cut(make([]byte, 1<<20), false); n != 64<<10 {
		t.Errorf("cdc cut zeros at %d", n)
	}
}

func TestPolicyParse(t *testing.T) {
	good := map[string]Policy{
		"fixed:4096":           Fixed(4096),
		"fixed:64k":            Fixed(64 << 10),
		" fixed:4M ":           Fixed(4 << 20),
		"cdc:16k":              CDC(16 << 10),
		"cdc:4096:16384:65536": CDC(16 << 10),
		"cdc:64:1K:1K":         {Kind: KindCDC, Min: 64, Avg: 1024, Max: 1024},
	}
	for s, want := range good {
		p, err := ParsePolicy(s)
		if err != nil || p != want {
			t.Errorf("ParsePolicy(%q) = %v, %v; want %v", s, p, err, want)
			continue
		}
		back, err := ParsePolicy(p.String())
		if err != nil || back != p {
			t.Errorf("%q: String round trip gave %v, %v", s, back, err)
		}
	}
	for _, s := range []string{
		"", "fixed", "fixed:", "fixed:1000", "fixed:2048", "fixed:8M", "fixed:4k:4k",
		"cdc", "cdc:1000", "cdc:512", "cdc:16k:8k:64k", "cdc:32:1k:4k", "cdc:1k:16k:8M",
		"cdc:4k:16k", "zstd:4k", "fixed:-1", "fixed:99999999999", "fixed:k", "cdc:9999999m",
	} {
		if p, err := ParsePolicy(s); !errors.Is(err, ErrBadPolicy) {
			t.Errorf("ParsePolicy(%q) = %v, %v; want ErrBadPolicy", s, p, err)
		}
	}
	if err := (Policy{Kind: KindFixed, Min: 4096, Avg: 4096, Max: 8192}).Validate(); !errors.Is(err, ErrBadPolicy) {
		t.Errorf("unequal fixed sizes: %v", err)
	}
}

func TestNewPanicsOnlyOnInvalidPolicy(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("New on an invalid policy did not panic")
		}
	}()
	Policy{Kind: "bogus"}.New()
}

func TestIsZero(t *testing.T) {
	for _, n := range []int{0, 1, 7, 4096, 64 << 10, 64<<10 + 1, 1 << 20} {
		b := make([]byte, n)
		if !IsZero(b) {
			t.Errorf("IsZero(%d zeros) = false", n)
		}
		if n == 0 {
			continue
		}
		for _, i := range []int{0, n / 2, n - 1} {
			b[i] = 1
			if IsZero(b) {
				t.Errorf("IsZero(%d bytes, byte %d set) = true", n, i)
			}
			b[i] = 0
		}
	}
}

func TestChunkIDVectors(t *testing.T) {
	// Official BLAKE3 test vectors: the ID is plain BLAKE3-256.
	for in, want := range map[string]string{
		"":    "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
		"abc": "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85",
	} {
		id := Sum([]byte(in))
		if id.String() != want {
			t.Errorf("Sum(%q) = %s, want %s", in, id, want)
		}
		back, err := ParseChunkID(want)
		if err != nil || back != id {
			t.Errorf("ParseChunkID(%s) = %v, %v", want, back, err)
		}
		if id.Short() != want[:12] {
			t.Errorf("Short = %s", id.Short())
		}
		txt, _ := id.MarshalText()
		var u ChunkID
		if err := u.UnmarshalText(txt); err != nil || u != id {
			t.Errorf("text round trip: %v", err)
		}
		fb, err := ChunkIDFromBytes(id[:])
		if err != nil || fb != id {
			t.Errorf("ChunkIDFromBytes: %v", err)
		}
	}
	for _, bad := range []string{"", "abc", strings.Repeat("g", 64), strings.Repeat("0", 63), strings.Repeat("0", 66)} {
		if _, err := ParseChunkID(bad); !errors.Is(err, ErrBadChunkID) {
			t.Errorf("ParseChunkID(%q) = %v", bad, err)
		}
	}
	if _, err := ChunkIDFromBytes(make([]byte, 31)); !errors.Is(err, ErrBadChunkID) {
		t.Errorf("ChunkIDFromBytes(31 bytes) = %v", err)
	}
	if Sum(nil) != Sum([]byte{}) {
		t.Error("nil and empty differ")
	}
}

// FuzzParsePolicy: policies arrive in manifests and xattrs; what parses
// must validate, print back to itself and build a chunker.
func FuzzParsePolicy(f *testing.F) {
	for _, s := range []string{"fixed:4096", "cdc:16k", "cdc:4096:16384:65536", "fixed:4M", "cdc:64:1K:1K", "x:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePolicy(s)
		if err != nil {
			if !errors.Is(err, ErrBadPolicy) {
				t.Fatalf("error does not wrap ErrBadPolicy: %v", err)
			}
			return
		}
		back, err := ParsePolicy(p.String())
		if err != nil || back != p {
			t.Fatalf("%q -> %v -> %v, %v", s, p, back, err)
		}
		if c := p.New(); c.MaxSize() != int(p.Max) {
			t.Fatalf("chunker max %d for %v", c.MaxSize(), p)
		}
	})
}

// Skip cuts at the current position and resumes n bytes on: the chunks are
// those of the part before (as if it ended there) followed by those of the
// part after, shifted by its offset plus n.
func TestSplitterSkip(t *testing.T) {
	data := goldenInput()
	for _, p := range []Policy{Fixed(4 << 10), CDC(4 << 10)} {
		cut := len(data)/3 + 7
		const gap = 1 << 20
		want := cutAll(t, p, data[:cut])
		for _, c := range cutAll(t, p, data[cut:]) {
			c.off += cut + gap
			want = append(want, c)
		}
		var got []goldenChunk
		s := NewSplitter(p.New(), func(off uint64, c []byte) error {
			got = append(got, goldenChunk{int(off), len(c), Sum(c).Short()})
			return nil
		})
		for _, step := range []func() error{
			func() error { _, err := s.Write(data[:cut/2]); return err },
			func() error { _, err := s.Write(data[cut/2 : cut]); return err },
			func() error { return s.Skip(gap) },
			func() error { _, err := s.Write(data[cut:]); return err },
			s.Close,
		} {
			if err := step(); err != nil {
				t.Fatal(err)
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: %d chunks with a skip, want %d:\n got %v\nwant %v", p, len(got), len(want), got, want)
		}
	}
}
