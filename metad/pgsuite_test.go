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
