package metad

import (
	"context"
	"fmt"
	"testing"
)

func TestBadgerStorePersists(t *testing.T) {
	dir := t.TempDir()
	st, err := OpenBadgerStore(dir, testBadger(t))
	if err != nil {
		t.Fatal(err)
	}
	must(t, st.Update(context.Background(), func(tx Txn) error { return tx.Set([]byte("k"), []byte("v")) }))
	id1, _ := st.NextID("s")
	must(t, st.Close())
	st, err = OpenBadgerStore(dir, testBadger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	must(t, st.View(context.Background(), func(tx Txn) error {
		v, err := tx.Get([]byte("k"))
		if string(v) != "v" {
			return fmt.Errorf("after reopen: %q %v", v, err)
		}
		return nil
	}))
	if id2, _ := st.NextID("s"); id2 <= id1 {
		t.Fatalf("sequence went back after reopen: %d then %d", id1, id2)
	}
	if _, err := OpenBadgerStore(dir, testBadger(t)); err == nil {
		t.Fatal("a second open of a locked directory succeeded")
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func eq[T comparable](t testing.TB, got, want []T) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
}
