package pgtest

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestStartQueryStop(t *testing.T) {
	s := Start(t, Options{})
	ctx := context.Background()
	for range 2 {
		c, err := pgx.Connect(ctx, s.NewDatabase(t))
		if err != nil {
			t.Fatal(err)
		}
		var n int
		if err := c.QueryRow(ctx, "SELECT 40 + 2").Scan(&n); err != nil || n != 42 {
			t.Fatalf("SELECT 40 + 2: %d %v", n, err)
		}
		c.Close(ctx)
	}
}
