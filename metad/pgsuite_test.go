package metad_test

import (
	"context"
	"testing"

	"stasis/internal/pgtest"
	"stasis/metad"
	"stasis/metad/pgstore"
)

// TestServiceOnPostgres runs the Service tests on the PostgreSQL store: one
// private server, a database per env.
func TestServiceOnPostgres(t *testing.T) {
	srv := pgtest.Start(t, pgtest.Options{})
	metad.RunServiceSuite(t, func(t testing.TB) func() (metad.Store, error) {
		dsn := srv.NewDatabase(t)
		return func() (metad.Store, error) {
			return pgstore.Open(context.Background(), dsn, pgstore.Options{})
		}
	})
}

// BenchmarkStores compares badger and PostgreSQL in one run, both durable
// at every commit (badger SyncAll; PostgreSQL with fsync and synchronous
// commits), with badger's default SyncCommits mode for reference. Results:
// bench/RESULTS.md.
func BenchmarkStores(b *testing.B) {
	b.Run("badger-all", func(b *testing.B) { metad.BenchStores(b, metad.SyncAll, nil) })
	b.Run("badger-commits", func(b *testing.B) { metad.BenchStores(b, metad.SyncCommits, nil) })
	b.Run("postgres", func(b *testing.B) {
		srv := pgtest.Start(b, pgtest.Options{Durable: true})
		metad.BenchStores(b, metad.SyncNone, func(t testing.TB) func() (metad.Store, error) {
			dsn := srv.NewDatabase(t)
			return func() (metad.Store, error) { return pgstore.Open(context.Background(), dsn, pgstore.Options{}) }
		})
	})
}
