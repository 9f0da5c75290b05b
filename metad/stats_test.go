package metad

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"stasis/blockd"
	"stasis/cas"
	"stasis/internal/syncbuf"
)

// gate is a blockd HTTP front that can hang or refuse: what a wedged or
// failing server looks like to metad.
type gate struct {
	h    http.Handler
	mode atomic.Int32 // 0 pass, 1 hang until release is closed, 2 answer 500
	rel  chan struct{}
}

func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch g.mode.Load() {
	case 1:
		select {
		case <-g.rel:
		case <-r.Context().Done():
		}
		return
	case 2:
		http.Error(w, "broken", http.StatusInternalServerError)
		return
	}
	g.h.ServeHTTP(w, r)
}

type testBlockd struct {
	name  string
	store *blockd.BadgerStore
	hs    *httptest.Server
	gate  *gate
}

// startBlockd serves a badger blockd store over HTTP on 127.0.0.1.
func startBlockd(t *testing.T, kr *cas.Keyring, name string) *testBlockd {
	t.Helper()
	st, err := blockd.OpenBadger(blockd.BadgerConfig{Dir: t.TempDir(), Small: true, GCInterval: -1, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	srv, err := blockd.NewServer(blockd.ServerConfig{Store: st, Keyring: kr, Name: name, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{h: srv, rel: make(chan struct{})}
	hs := httptest.NewServer(g)
	t.Cleanup(func() { close(g.rel); hs.Close() })
	return &testBlockd{name: name, store: st, hs: hs, gate: g}
}

func blockTokens(kr *cas.Keyring, scope string) blockd.TokenSource {
	return func(op cas.Op) (string, error) {
		return kr.Mint(cas.Claims{Ops: op, Subject: "metad", Scope: scope, Expiry: time.Now().Add(time.Minute)})
	}
}

// usageEnv is a Service over real blockd servers reached over HTTP.
type usageEnv struct {
	s      *Service
	kr     *cas.Keyring
	blocks []*testBlockd
	log    *syncbuf.Buffer
}

func newUsageEnv(t *testing.T, n int) *usageEnv {
	t.Helper()
	e := &usageEnv{kr: testKeyring(t), log: &syncbuf.Buffer{}}
	hc := &http.Client{Timeout: time.Minute}
	cfg := Config{Store: NewMemStore(), Keyring: e.kr, TokenTTL: time.Minute,
		Logger: slog.New(slog.NewTextHandler(e.log, nil))}
	for i := range n {
		b := startBlockd(t, e.kr, fmt.Sprintf("b%d", i))
		e.blocks = append(e.blocks, b)
		cfg.Blocks = append(cfg.Blocks, BlockBackend{Endpoint: Endpoint{Name: b.name, URL: b.hs.URL},
			Store: blockd.NewClient(b.hs.URL, blockTokens(e.kr, b.name), hc)})
	}
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	e.s = s
	return e
}

// write creates a file of the given raw chunks through the real write path:
// prepare, upload the missing ones to their blockd with the plan's token,
// commit.
func (e *usageEnv) write(t *testing.T, name string, raws ...[]byte) {
	t.Helper()
	ctx := context.Background()
	a, err := e.s.Create(ctx, CreateRequest{Parent: RootIno, Name: name, Mode: syscall.S_IFREG | 0o644})
	must(t, err)
	var ids []cas.ChunkID
	byID := map[cas.ChunkID][]byte{}
	for _, r := range raws {
		id := cas.Sum(r)
		ids = append(ids, id)
		byID[id] = r
	}
	e.upload(t, ids, byID)
	_, err = e.s.Commit(ctx, CommitRequest{Ino: a.Ino, Manifest: manifestOf(ids...), Mtime: time.Now()})
	must(t, err)
}

func (e *usageEnv) upload(t *testing.T, ids []cas.ChunkID, byID map[cas.ChunkID][]byte) {
	t.Helper()
	ctx := context.Background()
	plan, err := e.s.PrepareUpload(ctx, ids)
	must(t, err)
	for _, m := range plan.Missing {
		ep := plan.Endpoints[m.Endpoint]
		c := blockd.NewClient(ep.URL, func(cas.Op) (string, error) { return plan.Token, nil }, nil)
		must(t, c.Put(ctx, []blockd.Chunk{{ID: m.ID, Data: cas.Encode(nil, byID[m.ID])}}))
	}
}

// compressible returns a 4 KiB chunk that LZ4 shrinks a lot.
func compressible(i int) []byte {
	p := []byte(fmt.Sprintf("usage chunk %d;", i))
	return bytes.Repeat(p, 4096/len(p)+1)[:4096]
}

func (e *usageEnv) stats(t *testing.T) Stats {
	t.Helper()
	st, err := e.s.Stats(context.Background())
	must(t, err)
	return st
}

func (b *testBlockd) usage(t *testing.T) blockd.Usage {
	t.Helper()
	u, err := b.store.Usage(context.Background())
	must(t, err)
	return u
}

// TestStatsSumTwoBlockds: StoredEncoded and BlockChunks are the sum of two
// real blockd servers' usage (over HTTP), exact after uploads and deletes;
// a chunk uploaded but never committed counts until it is swept.
func TestStatsSumTwoBlockds(t *testing.T) {
	e := newUsageEnv(t, 2)
	ctx := context.Background()
	if st := e.stats(t); st.StoredEncoded != 0 || st.BlockChunks != 0 || st.BlocksUnreported != 0 {
		t.Fatalf("empty stats = %+v", st)
	}
	var raws [][]byte
	var enc uint64
	for i := range 16 {
		raws = append(raws, compressible(i))
		enc += uint64(len(cas.Encode(nil, raws[i])))
	}
	e.write(t, "f", raws...)
	u0, u1 := e.blocks[0].usage(t), e.blocks[1].usage(t)
	if u0.Chunks == 0 || u1.Chunks == 0 {
		t.Fatalf("placement put every chunk on one server: %+v %+v", u0, u1)
	}
	st := e.stats(t)
	if st.StoredEncoded != enc || st.StoredEncoded != u0.EncodedBytes+u1.EncodedBytes || st.BlockChunks != 16 ||
		st.Chunks != 16 || st.StoredRaw != 16*4096 || st.BlocksUnreported != 0 {
		t.Fatalf("stats = %+v, want 16 chunks, %d encoded bytes (%+v + %+v)", st, enc, u0, u1)
	}
	if st.StoredEncoded*4 > st.StoredRaw {
		t.Fatalf("compressible chunks stored in %d of %d raw bytes", st.StoredEncoded, st.StoredRaw)
	}

	// Uploaded, never committed: blockd holds it, metad does not count it.
	extra := compressible(100)
	xid := cas.Sum(extra)
	e.upload(t, []cas.ChunkID{xid}, map[cas.ChunkID][]byte{xid: extra})
	st = e.stats(t)
	if st.BlockChunks != 17 || st.Chunks != 16 || st.StoredEncoded != enc+uint64(len(cas.Encode(nil, extra))) {
		t.Fatalf("after an uncommitted upload: %+v", st)
	}
	// Deleting the file and collecting: blockd's counts go down.
	must(t, e.s.Unlink(ctx, RootIno, "f"))
	if _, err := e.s.GC(ctx); err != nil {
		t.Fatal(err)
	}
	st = e.stats(t)
	if st.Chunks != 0 || st.BlockChunks != 1 || st.StoredEncoded != uint64(len(cas.Encode(nil, extra))) {
		t.Fatalf("after deleting the file and GC: %+v", st)
	}

	// Over metad's HTTP API and metrics too.
	srv, err := NewServer(e.s, ServerConfig{Keyring: e.kr, Logger: testLogger(t)})
	must(t, err)
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	cst, err := NewClient(ts.URL, e.kr, "test", ts.Client()).Stats(ctx)
	must(t, err)
	if cst != st {
		t.Fatalf("stats over HTTP = %+v, want %+v", cst, st)
	}
	resp, err := ts.Client().Get(ts.URL + "/metrics")
	must(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, line := range []string{
		fmt.Sprintf("metad_stored_encoded_bytes %d\n", st.StoredEncoded),
		"metad_block_chunks 1\n",
		"metad_blocks_unreported 0\n",
	} {
		if !strings.Contains(string(body), line) {
			t.Errorf("metrics lack %q", line)
		}
	}
}

// TestStatsBlockdDown: with one blockd hung, failing, or gone, Stats still
// answers (within the usage timeout), counts the reachable server, reports
// one unreported server, and logs the name once per outage.
func TestStatsBlockdDown(t *testing.T) {
	old := usageTimeout
	usageTimeout = 300 * time.Millisecond
	t.Cleanup(func() { usageTimeout = old })
	e := newUsageEnv(t, 2)
	var raws [][]byte
	for i := range 16 {
		raws = append(raws, compressible(i))
	}
	e.write(t, "f", raws...)
	full := e.stats(t)
	u0 := e.blocks[0].usage(t)
	b1 := e.blocks[1]
	check := func(what string) {
		t.Helper()
		start := time.Now()
		st := e.stats(t)
		if d := time.Since(start); d > 10*usageTimeout {
			t.Errorf("%s: Stats took %v", what, d)
		}
		want := full
		want.StoredEncoded, want.BlockChunks, want.BlocksUnreported = u0.EncodedBytes, u0.Chunks, 1
		if st != want {
			t.Fatalf("%s: stats = %+v, want %+v", what, st, want)
		}
	}

	b1.gate.mode.Store(1)
	check("hung blockd")
	check("hung blockd, again")
	if n := strings.Count(e.log.String(), "blockd usage unavailable"); n != 1 || !strings.Contains(e.log.String(), "blockd=b1") {
		t.Fatalf("want one warning naming b1, log:\n%s", e.log.String())
	}
	b1.gate.mode.Store(2)
	check("failing blockd")
	b1.gate.mode.Store(0)
	if st := e.stats(t); st != full {
		t.Fatalf("after recovery: %+v, want %+v", st, full)
	}
	if !strings.Contains(e.log.String(), "blockd usage available again") {
		t.Fatalf("recovery not logged:\n%s", e.log.String())
	}
	b1.hs.Close() // gone: connection refused
	check("stopped blockd")
	if n := strings.Count(e.log.String(), "blockd usage unavailable"); n != 2 {
		t.Fatalf("want a second warning for the second outage, log:\n%s", e.log.String())
	}

	// A caller that gives up gets its context's error, not partial stats.
	b1.gate.mode.Store(1)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := e.s.Stats(ctx); err == nil {
		t.Fatal("Stats with a canceled context succeeded")
	}
}

// TestStatsBlockWithoutUsage: a block store that keeps no usage is
// reported, not an error.
func TestStatsBlockWithoutUsage(t *testing.T) {
	e := newEnv(t, true, 2) // memBlocks keep no usage
	st, err := e.s.Stats(context.Background())
	must(t, err)
	if st.BlocksUnreported != 2 || st.StoredEncoded != 0 {
		t.Fatalf("stats = %+v, want 2 unreported servers", st)
	}
}
