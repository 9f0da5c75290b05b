package main

import (
	"context"
	"strings"
	"syscall"
	"testing"

	"stasis/blockd"
	"stasis/cas"
	"stasis/metad"
)

// TestFsckCommand damages a store's reference counts and checks that
// "metad fsck" exits 2 naming the problem, "--repair" fixes it, and a clean
// store exits 0.
func TestFsckCommand(t *testing.T) {
	ctx := context.Background()
	data := t.TempDir()
	_, keys := writeSecret(t)
	blocks := blockd.NewMemStore()
	open := func() *metad.Service {
		s, err := metad.Open(metad.Config{Dir: data, Keyring: keys, Badger: metad.BadgerOptions{MemTableSize: 16 << 20},
			Blocks: []metad.BlockBackend{{Endpoint: metad.Endpoint{Name: "b0"}, Store: blocks}}})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open()
	raw := chunk(1)
	id := cas.Sum(raw)
	if err := blocks.Put(ctx, []blockd.Chunk{{ID: id, Data: cas.Encode(nil, raw)}}); err != nil {
		t.Fatal(err)
	}
	f, err := s.Create(ctx, metad.CreateRequest{Parent: metad.RootIno, Name: "f", Mode: syscall.S_IFREG | 0o644})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Commit(ctx, metad.CommitRequest{Ino: f.Ino, Manifest: manifestOf(id, id)}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if code, out := runFsckCmd(t, data); code != 0 {
		t.Fatalf("clean store: exit %d\n%s", code, out)
	}
	// Damage: the chunk's count says 3 instead of 1.
	st, err := metad.OpenBadgerStore(data, metad.BadgerOptions{MemTableSize: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	err = st.Update(ctx, func(tx metad.Txn) error {
		v := make([]byte, 12)
		v[7], v[11] = 3, 0x10
		return tx.Set(append([]byte{'c'}, id[:]...), v)
	})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	code, out := runFsckCmd(t, data)
	if code != 2 || !strings.Contains(out, "reference count 3, want 1") {
		t.Fatalf("damaged store: exit %d\n%s", code, out)
	}
	cmd := []string{"fsck", "--data", data, "--repair"}
	if code, out := runMetad(t, cmd...); code != 0 || !strings.Contains(out, "repaired") {
		t.Fatalf("repair: exit %d\n%s", code, out)
	}
	if code, out := runFsckCmd(t, data); code != 0 {
		t.Fatalf("after repair: exit %d\n%s", code, out)
	}
}
