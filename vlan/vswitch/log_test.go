package vswitch

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"reflect"
	"strings"
	"testing"
)

func sampleLog() *Log {
	l := &Log{Epoch: 7}
	for i := 0; i < 5; i++ {
		fr := bytes.Repeat([]byte{byte(i)}, 60+i*300)
		l.Entries = append(l.Entries, LogEntry{Port: "node" + string(rune('a'+i%2)), VLAN: uint16(10 + i), Epoch: 6, Frame: fr})
	}
	return l
}

func TestLogRoundTrip(t *testing.T) {
	for _, l := range []*Log{sampleLog(), {Epoch: 1}} {
		var buf bytes.Buffer
		n, err := l.WriteTo(&buf)
		if err != nil || n != int64(buf.Len()) {
			t.Fatalf("WriteTo: n=%d len=%d err=%v", n, buf.Len(), err)
		}
		got, err := ReadLog(&buf)
		if err != nil {
			t.Fatal(err)
		}
		if got.Epoch != l.Epoch || len(got.Entries) != len(l.Entries) || (len(l.Entries) > 0 && !reflect.DeepEqual(got.Entries, l.Entries)) {
			t.Fatalf("round trip changed the log: %+v", got)
		}
	}
}

func TestLogRefusesTruncatedAndCorrupt(t *testing.T) {
	var buf bytes.Buffer
	if _, err := sampleLog().WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	for cut := 0; cut < len(data); cut++ {
		if _, err := ReadLog(bytes.NewReader(data[:cut])); !errors.Is(err, ErrCorruptLog) {
			t.Fatalf("truncated at %d of %d: err=%v", cut, len(data), err)
		}
	}
	for i := 0; i < len(data); i += 7 {
		bad := bytes.Clone(data)
		bad[i] ^= 0x40
		if _, err := ReadLog(bytes.NewReader(bad)); !errors.Is(err, ErrCorruptLog) {
			t.Fatalf("flipped byte %d: err=%v", i, err)
		}
	}
	if _, err := ReadLog(bytes.NewReader(append(bytes.Clone(data), 0))); !errors.Is(err, ErrCorruptLog) {
		t.Fatalf("trailing byte: err=%v", err)
	}
	// Another version, with a valid header checksum, is refused by version.
	other := bytes.Clone(data)
	other[9] = 2
	binary.BigEndian.PutUint32(other[20:], crc32.Checksum(other[:20], castagnoli))
	if _, err := ReadLog(bytes.NewReader(other)); !errors.Is(err, ErrCorruptLog) || !strings.Contains(err.Error(), "version 2") {
		t.Fatalf("version 2: err=%v", err)
	}
}

func FuzzReadLog(f *testing.F) {
	var buf bytes.Buffer
	_, _ = sampleLog().WriteTo(&buf)
	f.Add(buf.Bytes())
	f.Add([]byte("STXSWLOG"))
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := ReadLog(bytes.NewReader(b))
		if err != nil {
			if !errors.Is(err, ErrCorruptLog) {
				t.Fatalf("error does not wrap ErrCorruptLog: %v", err)
			}
			return
		}
		var out bytes.Buffer
		if _, err := l.WriteTo(&out); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Bytes(), b) {
			t.Fatal("a log that reads back must write the same bytes")
		}
	})
}
