package busy_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"stasis/internal/busy"
)

// TestDoHonoursRetryAfter: 503 + Retry-After is retried with the body
// sent again, a bounded number of times; other answers are not retried.
func TestDoHonoursRetryAfter(t *testing.T) {
	var calls atomic.Int32
	var busyFor atomic.Int32
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		body, _ := io.ReadAll(r.Body)
		if busyFor.Add(-1) >= 0 {
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		if r.URL.Path == "/plain503" {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Write(body)
	}))
	defer hs.Close()
	do := func(path string) (*http.Response, []byte) {
		t.Helper()
		req, err := http.NewRequest("POST", hs.URL+path, bytes.NewReader([]byte("payload")))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := busy.Do(hs.Client(), req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}

	busyFor.Store(2)
	calls.Store(0)
	resp, b := do("/")
	if resp.StatusCode != 200 || string(b) != "payload" || calls.Load() != 3 {
		t.Fatalf("after two 503s: status %d body %q calls %d; want 200 payload 3", resp.StatusCode, b, calls.Load())
	}

	busyFor.Store(100)
	calls.Store(0)
	resp, _ = do("/")
	if resp.StatusCode != http.StatusServiceUnavailable || calls.Load() != busy.MaxAttempts {
		t.Fatalf("always busy: status %d calls %d; want 503 after %d", resp.StatusCode, calls.Load(), busy.MaxAttempts)
	}

	busyFor.Store(0)
	calls.Store(0)
	resp, _ = do("/plain503")
	if resp.StatusCode != http.StatusServiceUnavailable || calls.Load() != 1 {
		t.Fatalf("503 without Retry-After: status %d calls %d; want one call", resp.StatusCode, calls.Load())
	}
}
