package pgstore_test

import (
	"context"
	"testing"

	"stasis/internal/pgtest"
	"stasis/metad"
	"stasis/metad/pgstore"
	"stasis/metad/storetest"
)

func open(t *testing.T, dsn string) metad.Store {
	t.Helper()
	st, err := pgstore.Open(context.Background(), dsn, pgstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func TestConformance(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{})
	dsns := map[metad.Store]string{}
	storetest.RunOptions(t, func(t *testing.T) metad.Store {
		dsn := srv.NewDatabase(t)
		st := open(t, dsn)
		dsns[st] = dsn
		return st
	}, storetest.Options{Reopen: func(t *testing.T, st metad.Store) metad.Store {
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
		return open(t, dsns[st])
	}})
}
