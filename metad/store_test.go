package metad

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
)

// storeConformance is the one suite every Store backend passes.
func storeConformance(t *testing.T, open func(t *testing.T) Store) {
	ctx := context.Background()
	t.Run("GetSetDelete", func(t *testing.T) {
		st := open(t)
		if err := st.View(ctx, func(tx Txn) error {
			_, err := tx.Get([]byte("a"))
			if !errors.Is(err, ErrNoKey) {
				return fmt.Errorf("get of absent key: %v, want ErrNoKey", err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		must(t, st.Update(ctx, func(tx Txn) error {
			if err := tx.Set([]byte("a"), []byte("1")); err != nil {
				return err
			}
			v, err := tx.Get([]byte("a")) // read own write
			if err != nil || string(v) != "1" {
				return fmt.Errorf("read own write: %q %v", v, err)
			}
			return nil
		}))
		must(t, st.View(ctx, func(tx Txn) error {
			v, err := tx.Get([]byte("a"))
			if err != nil || string(v) != "1" {
				return fmt.Errorf("after commit: %q %v", v, err)
			}
			return nil
		}))
		must(t, st.Update(ctx, func(tx Txn) error { return tx.Delete([]byte("a")) }))
		must(t, st.View(ctx, func(tx Txn) error {
			if _, err := tx.Get([]byte("a")); !errors.Is(err, ErrNoKey) {
				return fmt.Errorf("after delete: %v", err)
			}
			return nil
		}))
	})
	t.Run("FailedUpdateChangesNothing", func(t *testing.T) {
		st := open(t)
		must(t, st.Update(ctx, func(tx Txn) error { return tx.Set([]byte("k"), []byte("old")) }))
		boom := errors.New("boom")
		err := st.Update(ctx, func(tx Txn) error {
			tx.Set([]byte("k"), []byte("new"))
			tx.Set([]byte("k2"), []byte("x"))
			tx.Delete([]byte("k"))
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("update error %v, want boom", err)
		}
		must(t, st.View(ctx, func(tx Txn) error {
			v, err := tx.Get([]byte("k"))
			if err != nil || string(v) != "old" {
				return fmt.Errorf("k = %q %v after failed update", v, err)
			}
			if _, err := tx.Get([]byte("k2")); !errors.Is(err, ErrNoKey) {
				return fmt.Errorf("k2 exists after failed update")
			}
			return nil
		}))
	})
	t.Run("IterateOrderPrefixStart", func(t *testing.T) {
		st := open(t)
		must(t, st.Update(ctx, func(tx Txn) error {
			for _, k := range []string{"b3", "a1", "b1", "b2", "c1", "b"} {
				if err := tx.Set([]byte(k), []byte("v"+k)); err != nil {
					return err
				}
			}
			return nil
		}))
		collect := func(prefix, start string, stopAt int) []string {
			var got []string
			var s []byte
			if start != "" {
				s = []byte(start)
			}
			must(t, st.View(ctx, func(tx Txn) error {
				return tx.Iterate([]byte(prefix), s, func(k, v []byte) error {
					if !bytes.Equal(v, append([]byte("v"), k...)) {
						return fmt.Errorf("value of %q is %q", k, v)
					}
					got = append(got, string(k))
					if len(got) == stopAt {
						return ErrStop
					}
					return nil
				})
			}))
			return got
		}
		eq(t, collect("b", "", 0), []string{"b", "b1", "b2", "b3"})
		eq(t, collect("b", "b2", 0), []string{"b2", "b3"})
		eq(t, collect("b", "a", 0), []string{"b", "b1", "b2", "b3"})
		eq(t, collect("b", "", 2), []string{"b", "b1"})
		eq(t, collect("", "", 0), []string{"a1", "b", "b1", "b2", "b3", "c1"})
		eq(t, collect("d", "", 0), nil)
		boom := errors.New("boom")
		err := st.View(ctx, func(tx Txn) error {
			return tx.Iterate([]byte("b"), nil, func(k, v []byte) error { return boom })
		})
		if !errors.Is(err, boom) {
			t.Fatalf("iterate error %v, want boom", err)
		}
	})
	t.Run("NextID", func(t *testing.T) {
		st := open(t)
		seen := map[uint64]bool{}
		var prev uint64
		for range 2500 {
			n, err := st.NextID("x")
			if err != nil {
				t.Fatal(err)
			}
			if n == 0 || n <= prev || seen[n] {
				t.Fatalf("NextID returned %d after %d", n, prev)
			}
			seen[n], prev = true, n
		}
		if n, _ := st.NextID("y"); n == 0 {
			t.Fatal("NextID of a new sequence returned 0")
		}
	})
	t.Run("ConcurrentIncrements", func(t *testing.T) {
		// Read-modify-write of one key from many goroutines: conflicts
		// must be retried, never lost.
		st := open(t)
		var wg sync.WaitGroup
		const workers, each = 8, 25
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range each {
					err := st.Update(ctx, func(tx Txn) error {
						v, err := tx.Get([]byte("ctr"))
						if err != nil && !errors.Is(err, ErrNoKey) {
							return err
						}
						return tx.Set([]byte("ctr"), u64(nil, getU64(v)+1))
					})
					if err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		must(t, st.View(ctx, func(tx Txn) error {
			v, err := tx.Get([]byte("ctr"))
			if err != nil || getU64(v) != workers*each {
				return fmt.Errorf("counter %d (%v), want %d", getU64(v), err, workers*each)
			}
			return nil
		}))
	})
	t.Run("ValuesAreCopied", func(t *testing.T) {
		st := open(t)
		val := []byte("abc")
		must(t, st.Update(ctx, func(tx Txn) error { return tx.Set([]byte("k"), val) }))
		var got []byte
		must(t, st.View(ctx, func(tx Txn) error {
			var err error
			got, err = tx.Get([]byte("k"))
			return err
		}))
		got[0] = 'X' // Get's result belongs to the caller
		must(t, st.View(ctx, func(tx Txn) error {
			v, _ := tx.Get([]byte("k"))
			if string(v) != "abc" {
				return fmt.Errorf("stored value changed to %q", v)
			}
			return nil
		}))
	})
	t.Run("CanceledContext", func(t *testing.T) {
		st := open(t)
		c, cancel := context.WithCancel(ctx)
		cancel()
		if err := st.Update(c, func(tx Txn) error { return tx.Set([]byte("k"), nil) }); !errors.Is(err, context.Canceled) {
			t.Fatalf("update with canceled context: %v", err)
		}
	})
}

func TestMemStoreConformance(t *testing.T) {
	storeConformance(t, func(t *testing.T) Store {
		st := NewMemStore()
		t.Cleanup(func() { st.Close() })
		return st
	})
}

func TestBadgerStoreConformance(t *testing.T) {
	storeConformance(t, func(t *testing.T) Store {
		st, err := OpenBadgerStore(t.TempDir(), testBadger(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	})
}

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
