package blockd_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"stasis/blockd"
	"stasis/blockd/faultstore"
	"stasis/blockd/storetest"
	"stasis/cas"
)

// noUsage hides every method but the PruneStore ones.
type noUsage struct{ blockd.PruneStore }

// usageOnly keeps Usage but no Stats, like a store that counts nothing
// else.
type usageOnly struct {
	blockd.PruneStore
	u blockd.UsageStore
}

func (s usageOnly) Usage(ctx context.Context) (blockd.Usage, error) { return s.u.Usage(ctx) }

func metricsOf(t *testing.T, url string) string {
	t.Helper()
	resp, err := testHTTP.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("metrics: %d, %v", resp.StatusCode, err)
	}
	return string(b)
}

// TestUsageEndpoint: GET /v1/usage over real HTTP answers what the store
// holds (duplicates once, deleted chunks gone), needs the admin (delete)
// op, and says clearly when the store keeps no usage or fails.
func TestUsageEndpoint(t *testing.T) {
	ctx := context.Background()
	mem := blockd.NewMemStore()
	fs := faultstore.New(mem)
	ts := startServer(t, fs, 0)
	c := blockd.NewClient(ts.url, tokenFor(0, "b1"), testHTTP)
	if u, err := c.Usage(ctx); err != nil || u != (blockd.Usage{}) {
		t.Fatalf("Usage of an empty store = %+v, %v", u, err)
	}
	chunks := storetest.Chunks(20, 6, 10000)
	if err := c.Put(ctx, append(chunks, chunks[1])); err != nil {
		t.Fatal(err)
	}
	if err := c.Put(ctx, chunks[:3]); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, []cas.ChunkID{chunks[5].ID, cas.Sum([]byte("absent"))}); err != nil {
		t.Fatal(err)
	}
	want := storetest.WantUsage(chunks[:5])
	if u, err := c.Usage(ctx); err != nil || u != want {
		t.Fatalf("Usage = %+v, %v; want %+v", u, err, want)
	}
	// Compressible chunks are counted by their encoded size.
	var raw uint64
	for range chunks[:5] {
		raw += 10000
	}
	if want.EncodedBytes >= raw {
		t.Fatalf("encoded bytes %d not below raw %d for half-compressible chunks", want.EncodedBytes, raw)
	}
	m := metricsOf(t, ts.url)
	for _, line := range []string{
		fmt.Sprintf("blockd_chunks %d", want.Chunks),
		fmt.Sprintf("blockd_stored_encoded_bytes %d", want.EncodedBytes),
		`blockd_request_duration_seconds_count{code="200",route="usage"} 2`,
	} {
		if !strings.Contains(m, line+"\n") {
			t.Errorf("metrics lack %q", line)
		}
	}

	// Clients of chunks (put, has, get) may not read it; a forged or
	// expired token is refused like on every call.
	for name, tc := range map[string]struct {
		tok  blockd.TokenSource
		want error
	}{
		"chunk ops only": {tokenFor(cas.OpGet|cas.OpHas|cas.OpPut, "b1"), cas.ErrTokenScope},
		"other server":   {tokenFor(cas.OpDelete, "b2"), cas.ErrTokenScope},
		"expired": {func(cas.Op) (string, error) {
			return testKeys.Mint(cas.Claims{Ops: cas.OpDelete, Subject: "t", Scope: "b1", Expiry: time.Unix(1, 0)})
		}, cas.ErrTokenExpired},
		"forged": {func(op cas.Op) (string, error) {
			tok, err := tokenFor(op, "b1")(op)
			return tok[:len(tok)-2] + "AA", err
		}, nil},
	} {
		_, err := blockd.NewClient(ts.url, tc.tok, testHTTP).Usage(ctx)
		var se *blockd.StatusError
		if !errors.As(err, &se) || se.Code/100 != 4 || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("%s: Usage = %v, want a 4xx refusal (%v)", name, err, tc.want)
		}
	}

	// A failing store: 500, and the error says so.
	fs.FailAll(faultstore.OpUsage, errors.New("disk on fire"))
	_, err := c.Usage(ctx)
	var se *blockd.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusInternalServerError || !strings.Contains(se.Msg, "disk on fire") {
		t.Fatalf("Usage of a failing store = %v", err)
	}
	fs.Clear()

	// A store that keeps no usage: 501, errors.ErrUnsupported.
	bare := startServer(t, noUsage{blockd.NewMemStore()}, 0)
	_, err = blockd.NewClient(bare.url, tokenFor(0, "b1"), testHTTP).Usage(ctx)
	if !errors.As(err, &se) || se.Code != http.StatusNotImplemented || !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("Usage of a store without it = %v, want 501 unsupported", err)
	}
	if m := metricsOf(t, bare.url); strings.Contains(m, "blockd_chunks") {
		t.Error("a store without counters exports blockd_chunks")
	}
	// A store with Usage but no Stats still exports the usage gauges.
	only := startServer(t, usageOnly{PruneStore: fs, u: mem}, 0)
	m = metricsOf(t, only.url)
	for _, line := range []string{
		fmt.Sprintf("blockd_chunks %d", want.Chunks),
		fmt.Sprintf("blockd_stored_encoded_bytes %d", want.EncodedBytes),
	} {
		if !strings.Contains(m, line+"\n") {
			t.Errorf("usage-only store: metrics lack %q", line)
		}
	}
}

// TestUsageDecorators: Verify and faultstore pass Usage through, and say
// ErrUnsupported over a store that keeps none.
func TestUsageDecorators(t *testing.T) {
	ctx := context.Background()
	mem := blockd.NewMemStore()
	chunks := storetest.Chunks(21, 4, 5000)
	if err := mem.Put(ctx, chunks); err != nil {
		t.Fatal(err)
	}
	want := storetest.WantUsage(chunks)
	for name, s := range map[string]any{
		"verify":       blockd.Verify(mem),
		"verify prune": blockd.Verify(mem).(blockd.PruneStore),
		"faultstore":   faultstore.New(mem),
	} {
		if u, err := blockd.UsageOf(ctx, s); err != nil || u != want {
			t.Errorf("%s: Usage = %+v, %v; want %+v", name, u, err, want)
		}
	}
	for name, s := range map[string]any{
		"bare":                  noUsage{mem},
		"verify over bare":      blockd.Verify(noUsage{mem}),
		"faultstore over bare":  faultstore.New(noUsage{mem}),
		"verify of write store": blockd.Verify(struct{ blockd.WriteStore }{mem}),
	} {
		if _, err := blockd.UsageOf(ctx, s); !errors.Is(err, errors.ErrUnsupported) {
			t.Errorf("%s: Usage = %v, want ErrUnsupported", name, err)
		}
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := mem.Usage(canceled); !errors.Is(err, context.Canceled) {
		t.Errorf("Usage with a canceled context = %v", err)
	}
}

// TestBadgerUsageClosed: Usage after Close is ErrClosed, not stale counts.
func TestBadgerUsageClosed(t *testing.T) {
	s := openBadger(t, t.TempDir())
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Usage(context.Background()); !errors.Is(err, blockd.ErrClosed) {
		t.Fatalf("Usage after Close = %v", err)
	}
}
