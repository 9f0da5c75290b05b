package metad_test

import (
	"testing"

	"stasis/metad"
	"stasis/metad/storetest"
)

func TestMemStoreConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) metad.Store {
		st := metad.NewMemStore()
		t.Cleanup(func() { st.Close() })
		return st
	})
}

func openBadger(t *testing.T, dir string) metad.Store {
	t.Helper()
	st, err := metad.OpenBadgerStore(dir, metad.BadgerOptions{MemTableSize: 16 << 20, BlockCacheSize: 4 << 20, IndexCacheSize: 2 << 20, ValueLogFileSize: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func TestBadgerStoreConformance(t *testing.T) {
	dirs := map[metad.Store]string{}
	storetest.RunOptions(t, func(t *testing.T) metad.Store {
		dir := t.TempDir()
		st := openBadger(t, dir)
		dirs[st] = dir
		return st
	}, storetest.Options{Reopen: func(t *testing.T, st metad.Store) metad.Store {
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
		return openBadger(t, dirs[st])
	}})
}
