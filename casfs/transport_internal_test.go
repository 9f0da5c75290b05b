package casfs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"testing"

	"stasis/blockd"
	"stasis/metad"
)

// TestTransient pins which failures casfs retries (docs/ARCHITECTURE.md,
// "Error policy"): outages and network errors, never a full store, a local
// errno or a refusal.
func TestTransient(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("x: %w", metad.ErrUnavailable), true},
		{&net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, true},
		{&net.OpError{Op: "read", Net: "tcp", Err: errors.New("i/o timeout")}, true},
		{&blockd.StatusError{Code: 503, Reason: "Service Unavailable"}, true},
		{fmt.Errorf("blockd: put: %w (%w)", blockd.ErrNoSpace, syscall.ENOSPC), false},
		{&blockd.StatusError{Code: 507, Reason: blockd.ReasonNoSpace}, false},
		{fmt.Errorf("pack write: %w", syscall.ENOSPC), false},
		{fmt.Errorf("pack write: %w", syscall.EIO), false},
		{fmt.Errorf("%w", metad.ErrNoSpace), false},
		{blockd.ErrNotFound, false},
		{context.Canceled, false},
	} {
		if got := transient(c.err); got != c.want {
			t.Errorf("transient(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
