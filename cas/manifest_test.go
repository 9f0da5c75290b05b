package cas

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

func sampleManifest() Manifest {
	a, b := Sum([]byte("a")), Sum([]byte("b"))
	return Manifest{
		Policy: Fixed(4 << 10),
		Size:   10 << 20,
		Extents: []Extent{
			{Offset: 0, Length: 4096, ID: a},
			{Offset: 4096, Length: 4096, ID: b},
			{Offset: 8192, Length: 4096, Hole: true},
			{Offset: 1 << 20, Length: 4096, ID: a}, // after a gap
			{Offset: 10<<20 - 100, Length: 100, ID: b},
		},
	}
}

func TestManifestRoundTrip(t *testing.T) {
	for _, m := range []Manifest{
		sampleManifest(),
		{Policy: CDC(16 << 10)},                // empty file
		{Policy: CDC(64 << 10), Size: 1 << 40}, // sparse: all gap
		{Policy: Fixed(4 << 20), Size: 4 << 20, Extents: []Extent{{Offset: 0, Length: 4 << 20, ID: Sum(nil)}}},
	} {
		b, err := m.MarshalBinary()
		if err != nil {
			t.Fatalf("Marshal %v: %v", m.Policy, err)
		}
		var got Manifest
		if err := got.UnmarshalBinary(b); err != nil {
			t.Fatalf("Unmarshal: %v", err)
		}
		if got.Policy != m.Policy || got.Size != m.Size || len(got.Extents) != len(m.Extents) ||
			(len(m.Extents) > 0 && !reflect.DeepEqual(got.Extents, m.Extents)) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, m)
		}
		// Every strict prefix is refused, never panics.
		for i := 0; i < len(b); i++ {
			if err := new(Manifest).UnmarshalBinary(b[:i]); !errors.Is(err, ErrBadManifest) {
				t.Fatalf("prefix of %d/%d bytes: %v", i, len(b), err)
			}
		}
		if err := new(Manifest).UnmarshalBinary(append(bytes.Clone(b), 0)); !errors.Is(err, ErrBadManifest) {
			t.Fatalf("trailing byte accepted: %v", err)
		}
	}
}

func TestManifestValidate(t *testing.T) {
	id := Sum([]byte("x"))
	cases := map[string]Manifest{
		"bad policy":    {Policy: Policy{Kind: "nope"}},
		"zero length":   {Policy: Fixed(4096), Size: 10, Extents: []Extent{{Offset: 0, Length: 0, ID: id}}},
		"too long":      {Policy: Fixed(4096), Size: 1 << 30, Extents: []Extent{{Offset: 0, Length: MaxChunkSize + 1, ID: id}}},
		"past size":     {Policy: Fixed(4096), Size: 4095, Extents: []Extent{{Offset: 0, Length: 4096, ID: id}}},
		"overlap":       {Policy: Fixed(4096), Size: 1 << 20, Extents: []Extent{{Offset: 0, Length: 4096, ID: id}, {Offset: 4095, Length: 10, ID: id}}},
		"out of order":  {Policy: Fixed(4096), Size: 1 << 20, Extents: []Extent{{Offset: 8192, Length: 4096, ID: id}, {Offset: 0, Length: 4096, ID: id}}},
		"end overflows": {Policy: Fixed(4096), Size: ^uint64(0), Extents: []Extent{{Offset: ^uint64(0) - 10, Length: 4096, ID: id}}},
	}
	for name, m := range cases {
		if err := m.Validate(); !errors.Is(err, ErrBadManifest) {
			t.Errorf("%s: Validate = %v", name, err)
		}
		if _, err := m.MarshalBinary(); !errors.Is(err, ErrBadManifest) {
			t.Errorf("%s: MarshalBinary = %v", name, err)
		}
	}
	m := sampleManifest()
	if err := m.Validate(); err != nil {
		t.Fatalf("sample: %v", err)
	}
}

func TestManifestUnmarshalRejects(t *testing.T) {
	good, _ := (&Manifest{Policy: Fixed(4096), Size: 8192, Extents: []Extent{{Offset: 0, Length: 4096, ID: Sum(nil)}}}).MarshalBinary()
	flag := bytes.Clone(good)
	flag[len(flag)-IDSize-1] = 7 // the extent's flag byte
	cases := map[string][]byte{
		"empty":        nil,
		"bad magic":    append([]byte("SMF\x02"), good[4:]...),
		"long policy":  append([]byte("SMF\x01\x7f"), bytes.Repeat([]byte("x"), 200)...),
		"bad policy":   append([]byte("SMF\x01\x07fixed:1"), 0, 0),
		"bad flag":     flag,
		"huge count":   append([]byte("SMF\x01\x0afixed:4096\x00"), 0xff, 0xff, 0xff, 0xff, 0x0f),
		"extent > max": append([]byte("SMF\x01\x0afixed:4096\xff\xff\xff\xff\x0f\x01\x00"), 0x80, 0x80, 0x80, 0x04, 1),
	}
	for name, b := range cases {
		var m Manifest
		if err := m.UnmarshalBinary(b); !errors.Is(err, ErrBadManifest) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestManifestFind(t *testing.T) {
	m := sampleManifest()
	cases := map[uint64]int{
		0: 0, 4095: 0, 4096: 1, 8191: 1, 8192: 2, 12287: 2,
		12288: -1, 1<<20 - 1: -1, 1 << 20: 3, 1<<20 + 4095: 3, 1<<20 + 4096: -1,
		10<<20 - 100: 4, 10<<20 - 1: 4, 10 << 20: -1, 1 << 62: -1,
	}
	for off, want := range cases {
		if got := m.Find(off); got != want {
			t.Errorf("Find(%d) = %d, want %d", off, got, want)
		}
	}
	if (&Manifest{}).Find(0) != -1 {
		t.Error("Find on an empty manifest")
	}
	ids := m.ChunkIDs()
	if len(ids) != 2 || ids[0] != Sum([]byte("a")) || ids[1] != Sum([]byte("b")) {
		t.Errorf("ChunkIDs = %v", ids)
	}
}

// FuzzManifestUnmarshal feeds untrusted bytes to the manifest decoder: no
// panic, and what it accepts is valid and re-encodes to the same bytes.
func FuzzManifestUnmarshal(f *testing.F) {
	m := sampleManifest()
	b, _ := m.MarshalBinary()
	f.Add(b)
	f.Add([]byte("SMF\x01"))
	e, _ := (&Manifest{Policy: CDC(16 << 10)}).MarshalBinary()
	f.Add(e)
	f.Fuzz(func(t *testing.T, b []byte) {
		var m Manifest
		if err := m.UnmarshalBinary(b); err != nil {
			if !errors.Is(err, ErrBadManifest) {
				t.Fatalf("error does not wrap ErrBadManifest: %v", err)
			}
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("accepted an invalid manifest: %v", err)
		}
		again, err := m.MarshalBinary()
		if err != nil {
			t.Fatalf("re-marshal: %v", err)
		}
		var m2 Manifest
		if err := m2.UnmarshalBinary(again); err != nil || m2.Size != m.Size || len(m2.Extents) != len(m.Extents) {
			t.Fatalf("re-decode: %v", err)
		}
	})
}
