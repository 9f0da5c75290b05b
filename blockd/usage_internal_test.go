package blockd

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/dgraph-io/badger/v4"

	"stasis/cas"
	"stasis/internal/syncbuf"
)

// TestBadgerBadSavedCounts: saved counters that do not parse are not
// trusted: the store counts its chunks instead.
func TestBadgerBadSavedCounts(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := OpenBadger(BadgerConfig{Dir: dir, Small: true, GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	var want Usage
	for i := range 7 {
		raw := bytes.Repeat([]byte{byte(i), 1, 2}, 3000)
		c := Chunk{ID: cas.Sum(raw), Data: cas.Encode(nil, raw)}
		if err := s.Put(ctx, []Chunk{c}); err != nil {
			t.Fatal(err)
		}
		want.Chunks++
		want.EncodedBytes += uint64(len(c.Data))
	}
	for _, bad := range [][]byte{{countsVersion, 1, 2}, append([]byte{countsVersion + 1}, make([]byte, 24)...)} {
		if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(keyCounts, bad) }); err != nil {
			t.Fatal(err)
		}
		s.noSaveCounts = true
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		logb := &syncbuf.Buffer{}
		s, err = OpenBadger(BadgerConfig{Dir: dir, Small: true, GCInterval: -1, Logger: slog.New(slog.NewTextHandler(logb, nil))})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(logb.String(), "saved counters unreadable") {
			t.Errorf("bad saved counters %x: no warning:\n%s", bad, logb.String())
		}
		if u, err := s.Usage(ctx); err != nil || u != want {
			t.Fatalf("bad saved counters %x: Usage = %+v, %v; want %+v", bad, u, err, want)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}
