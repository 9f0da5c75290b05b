package faultstore_test

import (
	"context"
	"errors"
	"syscall"
	"testing"

	"stasis/blockd"
	"stasis/blockd/faultstore"
	"stasis/blockd/storetest"
)

func TestPassThroughConforms(t *testing.T) {
	storetest.Run(t, func(*testing.T) blockd.PruneStore { return faultstore.New(blockd.NewMemStore()) })
}

func TestFailures(t *testing.T) {
	ctx := context.Background()
	mem := blockd.NewMemStore()
	s := faultstore.New(mem)
	chunks := storetest.Chunks(1, 6, 100)

	s.FailNth(faultstore.OpPut, 2, faultstore.ErrNoSpace, 2)
	if err := s.Put(ctx, chunks[:1]); err != nil {
		t.Fatalf("first Put = %v", err)
	}
	err := s.Put(ctx, chunks[1:])
	if !errors.Is(err, faultstore.ErrInjected) || !errors.Is(err, blockd.ErrNoSpace) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("second Put = %v, want injected ENOSPC", err)
	}
	storetest.CheckHolds(t, mem, chunks[:3]) // the partial prefix, whole
	if err := s.Put(ctx, chunks[3:]); err != nil {
		t.Fatalf("third Put = %v (the rule fires once)", err)
	}
	if s.Calls(faultstore.OpPut) != 3 {
		t.Fatalf("Calls = %d", s.Calls(faultstore.OpPut))
	}

	boom := errors.New("boom")
	for _, op := range []faultstore.Op{faultstore.OpGet, faultstore.OpMissing, faultstore.OpDelete, faultstore.OpList} {
		s.FailAll(op, boom)
	}
	for range 2 {
		if _, err := s.Get(ctx, chunks[0].ID); !errors.Is(err, boom) {
			t.Fatalf("Get = %v", err)
		}
		if _, err := s.Missing(ctx, storetest.IDs(chunks)); !errors.Is(err, boom) {
			t.Fatalf("Missing = %v", err)
		}
		if err := s.Delete(ctx, storetest.IDs(chunks)); !errors.Is(err, boom) {
			t.Fatalf("Delete = %v", err)
		}
		if err := s.List(ctx, func(blockd.ChunkInfo) error { return nil }); !errors.Is(err, boom) {
			t.Fatalf("List = %v", err)
		}
	}
	storetest.CheckHolds(t, mem, chunks) // the failed Delete removed nothing
	s.Clear()
	if _, err := s.Get(ctx, chunks[0].ID); err != nil {
		t.Fatalf("Get after Clear = %v", err)
	}
}
