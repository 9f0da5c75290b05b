// Package busy lets the daemons' clients honour load shedding: a daemon
// over its connection caps answers 503 Service Unavailable with
// Retry-After (package serve), and Do waits that long and tries again, a
// bounded number of times.
package busy

import (
	"io"
	"net/http"
	"strconv"
	"time"
)

const (
	// MaxAttempts bounds the tries of one request (the first included).
	MaxAttempts = 6
	// MaxWait bounds one wait, whatever Retry-After asks for.
	MaxWait = 5 * time.Second
)

// RetryAfter returns the wait a 503 response asks for, and false if resp
// is not a 503 with a Retry-After in seconds.
func RetryAfter(resp *http.Response) (time.Duration, bool) {
	if resp.StatusCode != http.StatusServiceUnavailable {
		return 0, false
	}
	secs, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	if err != nil || secs < 0 {
		return 0, false
	}
	return min(time.Duration(secs)*time.Second, MaxWait), true
}

// Do sends req with hc. A 503 with Retry-After is retried after the wait
// it names, up to MaxAttempts tries in all, while req's context lasts and
// if req's body can be sent again (no body, or GetBody set, as
// http.NewRequest does for bytes readers). Any other answer, the last
// 503, or a transport error is returned as is.
func Do(hc *http.Client, req *http.Request) (*http.Response, error) {
	for attempt := 1; ; attempt++ {
		resp, err := hc.Do(req)
		if err != nil {
			return nil, err
		}
		wait, ok := RetryAfter(resp)
		if !ok || attempt == MaxAttempts || req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
			return resp, nil
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		t := time.NewTimer(wait)
		select {
		case <-req.Context().Done():
			t.Stop()
			return nil, req.Context().Err()
		case <-t.C:
		}
		if req.GetBody != nil {
			body, err := req.GetBody()
			if err != nil {
				return nil, err
			}
			req.Body = body
		}
	}
}
