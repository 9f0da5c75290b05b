package blockd_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"stasis/blockd"
	"stasis/blockd/faultstore"
	"stasis/blockd/storetest"
	"stasis/cas"
	"stasis/internal/syncbuf"
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

// TestBadgerSavedCounts: a clean Close saves the counters and the next open
// uses them without counting; a store left as a crash leaves it (no saved
// counters) is counted; either way Usage is exact.
func TestBadgerSavedCounts(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	var logb syncbuf.Buffer
	open := func() *blockd.BadgerStore {
		t.Helper()
		s, err := blockd.OpenBadger(blockd.BadgerConfig{Dir: dir, Small: true, GCInterval: -1,
			Logger: slog.New(slog.NewTextHandler(&logb, nil))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	counted := func() bool { return strings.Contains(logb.String(), "counting chunks") }
	s := open()
	chunks := storetest.Chunks(22, 30, 7000)
	if err := s.Put(ctx, chunks); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, storetest.IDs(chunks[:5])); err != nil {
		t.Fatal(err)
	}
	stats := s.Stats()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	logb.Reset()
	s = open()
	if counted() {
		t.Fatalf("a cleanly closed store was counted at open:\n%s", logb.String())
	}
	storetest.CheckUsage(t, s, storetest.WantUsage(chunks[5:]), "reopened after a clean close")
	if got := s.Stats(); got != stats {
		t.Fatalf("Stats = %+v, want %+v", got, stats)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	blockd.ForgetCountsForTest(t, dir)
	logb.Reset()
	s = open()
	if !counted() {
		t.Fatalf("a store without saved counters was not counted:\n%s", logb.String())
	}
	storetest.CheckUsage(t, s, storetest.WantUsage(chunks[5:]), "reopened after a crash")
	if got := s.Stats(); got != stats {
		t.Fatalf("Stats = %+v, want %+v", got, stats)
	}
}

// usageChildEnv, when set to a directory, makes TestBadgerUsageAfterKill a
// child that writes to the store there until it is killed.
const usageChildEnv = "BLOCKD_USAGE_CHILD_DIR"

// TestBadgerUsageAfterKill: a store closed cleanly (counters saved) is
// opened by a process that puts and deletes chunks and is SIGKILLed
// mid-stream. The next open must not trust the counters saved before that
// process ran: Usage matches what the store lists.
func TestBadgerUsageAfterKill(t *testing.T) {
	if dir := os.Getenv(usageChildEnv); dir != "" {
		usageChild(dir)
		return
	}
	ctx := context.Background()
	dir := t.TempDir()
	s := openBadger(t, dir)
	if err := s.Put(ctx, storetest.Chunks(23, 20, 5000)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil { // saves the counters
		t.Fatal(err)
	}

	cmd := exec.Command(os.Args[0], "-test.run=^TestBadgerUsageAfterKill$")
	cmd.Env = append(os.Environ(), usageChildEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	ready := make(chan struct{})
	go func() {
		defer close(exited)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "ready" {
				close(ready)
			}
		}
		io.Copy(io.Discard, out)
		cmd.Wait()
	}()
	select {
	case <-ready:
	case <-exited:
		t.Fatalf("child exited early:\n%s", stderr.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("child not ready after 60s:\n%s", stderr.String())
	}
	time.Sleep(100 * time.Millisecond) // mid-stream
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-exited

	s = openBadger(t, dir)
	listed := storetest.ListAll(t, s)
	if len(listed) <= 20 {
		t.Fatalf("the child stored nothing that survived (%d chunks)", len(listed))
	}
	var want blockd.Usage
	for _, info := range listed {
		want.Chunks++
		want.EncodedBytes += uint64(info.EncodedSize)
	}
	storetest.CheckUsage(t, s, want, "after the writer was killed")
}

// usageChild puts and deletes chunks in the store in dir until killed (or
// a minute has passed).
func usageChild(dir string) {
	s, err := blockd.OpenBadger(blockd.BadgerConfig{Dir: dir, Small: true, GCInterval: -1})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx := context.Background()
	deadline := time.Now().Add(time.Minute)
	for i := 0; time.Now().Before(deadline); i++ {
		chunks := storetest.Chunks(uint64(1000+i), 10, 5000)
		if err := s.Put(ctx, chunks); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		if err := s.Delete(ctx, storetest.IDs(chunks[:3])); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		if i == 5 {
			fmt.Println("ready")
		}
	}
	os.Exit(3) // never closed cleanly
}

// TestBadgerUsageRefusedPut: a put refused for lack of space (nothing
// written) leaves Usage as it was.
func TestBadgerUsageRefusedPut(t *testing.T) {
	ctx := context.Background()
	s, err := blockd.OpenBadger(blockd.BadgerConfig{Dir: t.TempDir(), Small: true, GCInterval: -1, MinFreeBytes: 1 << 62})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.Put(ctx, storetest.Chunks(24, 5, 3000)); !errors.Is(err, blockd.ErrNoSpace) {
		t.Fatalf("Put on a \"full\" disk = %v, want ErrNoSpace", err)
	}
	storetest.CheckUsage(t, s, blockd.Usage{}, "after a refused put")
}
