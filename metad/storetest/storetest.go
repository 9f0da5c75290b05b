// Package storetest is the conformance suite every metad store backend
// passes: the Store and Txn contracts of metad/store.go (absent keys, read
// own writes, atomic commit and rollback, byte-wise key order, prefix and
// start of Iterate, ErrStop, sequences, retried conflicts, large
// transactions, canceled contexts) checked the same way for each backend.
package storetest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"

	"stasis/metad"
)

// Run runs the suite. open returns an empty store; it registers its own
// cleanup with t.
func Run(t *testing.T, open func(t *testing.T) metad.Store) {
	RunOptions(t, open, Options{})
}

// Options are optional hooks of the suite.
type Options struct {
	// Reopen, for a persistent backend, closes st and opens the same store
	// again (registering cleanup with t). Without it the checks of what
	// survives a restart are skipped.
	Reopen func(t *testing.T, st metad.Store) metad.Store
}

// RunOptions runs the suite with hooks.
func RunOptions(t *testing.T, open func(t *testing.T) metad.Store, o Options) {
	ctx := context.Background()
	t.Run("GetSetDelete", func(t *testing.T) {
		st := open(t)
		if err := st.View(ctx, func(tx metad.Txn) error {
			_, err := tx.Get([]byte("a"))
			if !errors.Is(err, metad.ErrNoKey) {
				return fmt.Errorf("get of absent key: %v, want metad.ErrNoKey", err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		must(t, st.Update(ctx, func(tx metad.Txn) error {
			if err := tx.Set([]byte("a"), []byte("1")); err != nil {
				return err
			}
			v, err := tx.Get([]byte("a")) // read own write
			if err != nil || string(v) != "1" {
				return fmt.Errorf("read own write: %q %v", v, err)
			}
			return nil
		}))
		must(t, st.View(ctx, func(tx metad.Txn) error {
			v, err := tx.Get([]byte("a"))
			if err != nil || string(v) != "1" {
				return fmt.Errorf("after commit: %q %v", v, err)
			}
			return nil
		}))
		must(t, st.Update(ctx, func(tx metad.Txn) error { return tx.Delete([]byte("a")) }))
		must(t, st.View(ctx, func(tx metad.Txn) error {
			if _, err := tx.Get([]byte("a")); !errors.Is(err, metad.ErrNoKey) {
				return fmt.Errorf("after delete: %v", err)
			}
			return nil
		}))
	})
	t.Run("FailedUpdateChangesNothing", func(t *testing.T) {
		st := open(t)
		must(t, st.Update(ctx, func(tx metad.Txn) error { return tx.Set([]byte("k"), []byte("old")) }))
		boom := errors.New("boom")
		err := st.Update(ctx, func(tx metad.Txn) error {
			tx.Set([]byte("k"), []byte("new"))
			tx.Set([]byte("k2"), []byte("x"))
			tx.Delete([]byte("k"))
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("update error %v, want boom", err)
		}
		must(t, st.View(ctx, func(tx metad.Txn) error {
			v, err := tx.Get([]byte("k"))
			if err != nil || string(v) != "old" {
				return fmt.Errorf("k = %q %v after failed update", v, err)
			}
			if _, err := tx.Get([]byte("k2")); !errors.Is(err, metad.ErrNoKey) {
				return fmt.Errorf("k2 exists after failed update")
			}
			return nil
		}))
	})
	t.Run("IterateOrderPrefixStart", func(t *testing.T) {
		st := open(t)
		must(t, st.Update(ctx, func(tx metad.Txn) error {
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
			must(t, st.View(ctx, func(tx metad.Txn) error {
				return tx.Iterate([]byte(prefix), s, func(k, v []byte) error {
					if !bytes.Equal(v, append([]byte("v"), k...)) {
						return fmt.Errorf("value of %q is %q", k, v)
					}
					got = append(got, string(k))
					if len(got) == stopAt {
						return metad.ErrStop
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
		err := st.View(ctx, func(tx metad.Txn) error {
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
					err := st.Update(ctx, func(tx metad.Txn) error {
						v, err := tx.Get([]byte("ctr"))
						if err != nil && !errors.Is(err, metad.ErrNoKey) {
							return err
						}
						return tx.Set([]byte("ctr"), u64(getU64(v)+1))
					})
					if err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		must(t, st.View(ctx, func(tx metad.Txn) error {
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
		must(t, st.Update(ctx, func(tx metad.Txn) error { return tx.Set([]byte("k"), val) }))
		var got []byte
		must(t, st.View(ctx, func(tx metad.Txn) error {
			var err error
			got, err = tx.Get([]byte("k"))
			return err
		}))
		got[0] = 'X' // Get's result belongs to the caller
		must(t, st.View(ctx, func(tx metad.Txn) error {
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
		if err := st.Update(c, func(tx metad.Txn) error { return tx.Set([]byte("k"), nil) }); !errors.Is(err, context.Canceled) {
			t.Fatalf("update with canceled context: %v", err)
		}
		if err := st.View(c, func(tx metad.Txn) error { return nil }); !errors.Is(err, context.Canceled) {
			t.Fatalf("view with canceled context: %v", err)
		}
	})
	t.Run("IterateSeesOwnWrites", func(t *testing.T) {
		// Inside Update, Iterate and Get see the transaction's own sets and
		// deletes merged in key order with what was committed before.
		st := open(t)
		must(t, st.Update(ctx, func(tx metad.Txn) error {
			for _, k := range []string{"p1", "p3", "p5", "q"} {
				if err := tx.Set([]byte(k), []byte("old")); err != nil {
					return err
				}
			}
			return nil
		}))
		must(t, st.Update(ctx, func(tx metad.Txn) error {
			must(t, tx.Set([]byte("p2"), []byte("new")))
			must(t, tx.Set([]byte("p3"), []byte("new")))
			must(t, tx.Delete([]byte("p5")))
			must(t, tx.Set([]byte("p6"), []byte("new")))
			must(t, tx.Delete([]byte("p6")))
			must(t, tx.Set([]byte("p0"), []byte("new")))
			if _, err := tx.Get([]byte("p5")); !errors.Is(err, metad.ErrNoKey) {
				return fmt.Errorf("get of a key deleted in the transaction: %v", err)
			}
			var got []string
			err := tx.Iterate([]byte("p"), []byte("p1"), func(k, v []byte) error {
				got = append(got, string(k)+"="+string(v))
				return nil
			})
			eq(t, got, []string{"p1=old", "p2=new", "p3=new"})
			return err
		}))
		var got []string
		must(t, st.View(ctx, func(tx metad.Txn) error {
			return tx.Iterate([]byte("p"), nil, func(k, v []byte) error {
				got = append(got, string(k)+"="+string(v))
				return nil
			})
		}))
		eq(t, got, []string{"p0=new", "p1=old", "p2=new", "p3=new"})
	})
	t.Run("BinaryKeyOrder", func(t *testing.T) {
		// Keys are compared byte-wise as unsigned bytes (the key layouts of
		// keys.go rely on it), including NUL and 0xff bytes.
		st := open(t)
		keys := [][]byte{{0xff}, {0xff, 0xff}, {0xff, 0x00}, {0x00}, {0x00, 0x00}, {0x7f}, {0x80}, {0x01, 0xff, 0xff}, {0x02}}
		must(t, st.Update(ctx, func(tx metad.Txn) error {
			for _, k := range keys {
				if err := tx.Set(k, k); err != nil {
					return err
				}
			}
			return nil
		}))
		collect := func(prefix []byte) []string {
			var got []string
			must(t, st.View(ctx, func(tx metad.Txn) error {
				return tx.Iterate(prefix, nil, func(k, v []byte) error {
					if !bytes.Equal(k, v) {
						return fmt.Errorf("value of %x is %x", k, v)
					}
					got = append(got, fmt.Sprintf("%x", k))
					return nil
				})
			}))
			return got
		}
		eq(t, collect(nil), []string{"00", "0000", "01ffff", "02", "7f", "80", "ff", "ff00", "ffff"})
		eq(t, collect([]byte{0xff}), []string{"ff", "ff00", "ffff"})
		eq(t, collect([]byte{0xff, 0xff}), []string{"ffff"})
		eq(t, collect([]byte{0x01, 0xff}), []string{"01ffff"})
		eq(t, collect([]byte{0x00}), []string{"00", "0000"})
	})
	t.Run("LongIteration", func(t *testing.T) {
		// An iteration over more keys than a backend fetches at once, with
		// Get calls from inside the callback.
		st := open(t)
		const n = 5000
		must(t, st.Update(ctx, func(tx metad.Txn) error {
			for i := range n {
				if err := tx.Set(append([]byte("L"), u64(uint64(i))...), u64(uint64(i))); err != nil {
					return err
				}
			}
			return nil
		}))
		i := 0
		must(t, st.View(ctx, func(tx metad.Txn) error {
			return tx.Iterate([]byte("L"), nil, func(k, v []byte) error {
				if getU64(k[1:]) != uint64(i) || getU64(v) != uint64(i) {
					return fmt.Errorf("key %d: %x = %x", i, k, v)
				}
				if i%1000 == 0 {
					if w, err := tx.Get(k); err != nil || !bytes.Equal(w, v) {
						return fmt.Errorf("get inside iterate: %x %v", w, err)
					}
				}
				i++
				return nil
			})
		}))
		if i != n {
			t.Fatalf("iterated %d keys, want %d", i, n)
		}
		// Delete them all in one transaction, iterating.
		must(t, st.Update(ctx, func(tx metad.Txn) error {
			var ks [][]byte
			if err := tx.Iterate([]byte("L"), nil, func(k, _ []byte) error { ks = append(ks, bytes.Clone(k)); return nil }); err != nil {
				return err
			}
			for _, k := range ks {
				if err := tx.Delete(k); err != nil {
					return err
				}
			}
			return nil
		}))
		must(t, st.View(ctx, func(tx metad.Txn) error {
			return tx.Iterate([]byte("L"), nil, func(k, _ []byte) error { return fmt.Errorf("key %x left", k) })
		}))
	})
	t.Run("ConcurrentTransfers", func(t *testing.T) {
		// Read two keys, move one unit between them: every View sees the
		// same total (snapshot reads), every Update either commits whole or
		// not at all, and a function that runs more than once is fine.
		st := open(t)
		const accounts, total = 4, 1000
		must(t, st.Update(ctx, func(tx metad.Txn) error {
			for a := range accounts {
				if err := tx.Set([]byte{'A', byte(a)}, u64(total/accounts)); err != nil {
					return err
				}
			}
			return nil
		}))
		var wg sync.WaitGroup
		for w := range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 20 {
					from, to := byte((w+i)%accounts), byte((w+2*i+1)%accounts)
					if from == to {
						continue
					}
					err := st.Update(ctx, func(tx metad.Txn) error {
						a, err := tx.Get([]byte{'A', from})
						if err != nil {
							return err
						}
						b, err := tx.Get([]byte{'A', to})
						if err != nil {
							return err
						}
						if err := tx.Set([]byte{'A', from}, u64(getU64(a)-1)); err != nil {
							return err
						}
						return tx.Set([]byte{'A', to}, u64(getU64(b)+1))
					})
					if err != nil {
						t.Error(err)
						return
					}
					must(t, st.View(ctx, func(tx metad.Txn) error {
						sum := uint64(0)
						err := tx.Iterate([]byte{'A'}, nil, func(_, v []byte) error { sum += getU64(v); return nil })
						if err == nil && sum != total {
							err = fmt.Errorf("a view sees a total of %d, want %d", sum, total)
						}
						return err
					}))
				}
			}()
		}
		wg.Wait()
	})
	t.Run("Reopen", func(t *testing.T) {
		if o.Reopen == nil {
			t.Skip("backend is not persistent")
		}
		st := open(t)
		must(t, st.Update(ctx, func(tx metad.Txn) error { return tx.Set([]byte("k"), []byte("v")) }))
		id1, err := st.NextID("s")
		must(t, err)
		st = o.Reopen(t, st)
		must(t, st.View(ctx, func(tx metad.Txn) error {
			v, err := tx.Get([]byte("k"))
			if string(v) != "v" {
				return fmt.Errorf("after reopen: %q %v", v, err)
			}
			return nil
		}))
		if id2, err := st.NextID("s"); err != nil || id2 <= id1 {
			t.Fatalf("sequence went back after reopen: %d then %d (%v)", id1, id2, err)
		}
	})
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

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func getU64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}
