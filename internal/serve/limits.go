package serve

import (
	"fmt"
	"time"

	"github.com/spf13/pflag"
)

// Limits bound what one client can hold of a daemon. A zero field takes
// its default (DefaultLimits); a negative one disables that bound.
type Limits struct {
	// ReadHeaderTimeout bounds the time from a connection's first byte of
	// a request (or its accept) to the end of the request's headers.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds the wait for each read of a request body: the
	// deadline is reset whenever bytes arrive, so a large upload that
	// keeps moving is never cut, a stalled one is.
	ReadTimeout time.Duration
	// MinReadRate (bytes/s) is the average rate a body must keep after
	// its first ReadTimeout: a body read so far to n bytes must be done
	// by start + ReadTimeout + n/MinReadRate. It stops a client that
	// trickles a byte now and then.
	MinReadRate int64
	// IdleTimeout closes a keep-alive connection that waits this long for
	// its next request.
	IdleTimeout time.Duration
	// MaxConns caps connections served at once, MaxConnsPerIP those from
	// one client address. A connection over a cap gets 503 with
	// Retry-After on its first request and is closed.
	MaxConns      int
	MaxConnsPerIP int
	// RetryAfter is the wait a 503 asks for (whole seconds, at least 1).
	RetryAfter time.Duration
}

// DefaultLimits are the limits of a daemon not told otherwise.
var DefaultLimits = Limits{
	ReadHeaderTimeout: 10 * time.Second,
	ReadTimeout:       30 * time.Second,
	MinReadRate:       64 << 10,
	IdleTimeout:       2 * time.Minute,
	MaxConns:          1024,
	MaxConnsPerIP:     256,
	RetryAfter:        time.Second,
}

// Validate fills the defaults of zero fields.
func (l *Limits) Validate() error {
	d := DefaultLimits
	fill := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	fill(&l.ReadHeaderTimeout, d.ReadHeaderTimeout)
	fill(&l.ReadTimeout, d.ReadTimeout)
	fill(&l.IdleTimeout, d.IdleTimeout)
	fill(&l.RetryAfter, d.RetryAfter)
	if l.MinReadRate == 0 {
		l.MinReadRate = d.MinReadRate
	}
	if l.MaxConns == 0 {
		l.MaxConns = d.MaxConns
	}
	if l.MaxConnsPerIP == 0 {
		l.MaxConnsPerIP = d.MaxConnsPerIP
	}
	if l.RetryAfter < 0 {
		return fmt.Errorf("serve: negative RetryAfter %v", l.RetryAfter)
	}
	return nil
}

// AddFlags registers the limits' flags on fs with the defaults shown.
func (l *Limits) AddFlags(fs *pflag.FlagSet) {
	d := DefaultLimits
	fs.DurationVar(&l.ReadHeaderTimeout, "read-header-timeout", d.ReadHeaderTimeout, "longest time a client may take to send a request's headers (negative disables)")
	fs.DurationVar(&l.ReadTimeout, "read-timeout", d.ReadTimeout, "longest wait for the next bytes of a request body; reset as bytes arrive (negative disables)")
	fs.Int64Var(&l.MinReadRate, "min-read-rate", d.MinReadRate, "bytes/s a request body must average after its first --read-timeout (negative disables)")
	fs.DurationVar(&l.IdleTimeout, "idle-timeout", d.IdleTimeout, "close a keep-alive connection idle this long (negative disables)")
	fs.IntVar(&l.MaxConns, "max-conns", d.MaxConns, "connections served at once; more get 503 with Retry-After (negative disables)")
	fs.IntVar(&l.MaxConnsPerIP, "max-conns-per-ip", d.MaxConnsPerIP, "connections served at once from one client address; more get 503 with Retry-After (negative disables)")
}
