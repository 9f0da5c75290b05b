package blockd_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"stasis/blockd"
	"stasis/blockd/faultstore"
	"stasis/blockd/storetest"
	"stasis/cas"
)

const allOps = cas.OpGet | cas.OpHas | cas.OpPut | cas.OpDelete

var testKeys = func() *cas.Keyring {
	k, err := cas.NewKeyring(1, map[uint32][]byte{1: bytes.Repeat([]byte{7}, cas.KeySize)})
	if err != nil {
		panic(err)
	}
	return k
}()

// tokenFor mints tokens granting ops (plus whatever the call needs when ops
// is 0) for scope, valid for a minute.
func tokenFor(ops cas.Op, scope string) blockd.TokenSource {
	return func(op cas.Op) (string, error) {
		grant := ops
		if grant == 0 {
			grant = op
		}
		return testKeys.Mint(cas.Claims{Ops: grant, Subject: "test", Scope: scope, Expiry: time.Now().Add(time.Minute)})
	}
}

type testServer struct {
	url   string
	store blockd.PruneStore
}

func startServer(t testing.TB, store blockd.PruneStore, batchBytes int) testServer {
	t.Helper()
	srv, err := blockd.NewServer(blockd.ServerConfig{Store: store, Keyring: testKeys, Name: "b1", BatchBytes: batchBytes})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	return testServer{url: hs.URL, store: store}
}

func TestClientConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) blockd.PruneStore {
		ts := startServer(t, blockd.NewMemStore(), 0)
		return blockd.NewClient(ts.url, tokenFor(0, "b1"), testHTTP)
	})
}

func TestClientOverBadgerConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) blockd.PruneStore {
		ts := startServer(t, openBadger(t, t.TempDir()), 64<<10)
		c := blockd.NewClient(ts.url, tokenFor(0, "b1"), testHTTP)
		c.MaxRequestBytes = 1 << 20 // several requests per large Put
		return c
	})
}

// rawPut posts body to /v1/put with token and returns the status and the
// decoded JSON response.
func rawPut(t *testing.T, url, token string, body io.Reader) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("POST", url+"/v1/put", body)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := testHTTP.Do(req)
	if err != nil {
		t.Fatalf("put: %v", err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("put response (status %d) is not JSON: %v", resp.StatusCode, err)
	}
	return resp.StatusCode, out
}

func frames(chunks ...blockd.Chunk) []byte {
	var b []byte
	for _, c := range chunks {
		b = blockd.AppendFrame(b, c)
	}
	return b
}

func mintT(t *testing.T, k *cas.Keyring, c cas.Claims) string {
	t.Helper()
	tok, err := k.Mint(c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestPutRefusals sends each kind of bad request and checks the status,
// the reason, and that the store is unchanged (or holds exactly the
// acknowledged prefix).
func TestPutRefusals(t *testing.T) {
	good := storetest.Chunks(1, 4, 3000)
	wrongHash := blockd.Chunk{ID: good[0].ID, Data: cas.Encode(nil, []byte("something else"))}
	corrupt := blockd.Chunk{ID: good[0].ID, Data: []byte{byte(cas.CodecLZ4), 0x10, 0xff, 0xff}}
	unknownCodec := blockd.Chunk{ID: good[0].ID, Data: []byte{9, 1, 2, 3}}
	oversize := append(append([]byte(nil), good[0].ID[:]...), binary.AppendUvarint(nil, cas.MaxEncodedSize+1)...)
	oversize = append(oversize, make([]byte, 1000)...)
	putTok := mintT(t, testKeys, cas.Claims{Ops: cas.OpPut, Scope: "b1", Expiry: time.Now().Add(time.Minute)})
	otherKeys, _ := cas.NewKeyring(1, map[uint32][]byte{1: bytes.Repeat([]byte{8}, cas.KeySize)})
	unknownKeys, _ := cas.NewKeyring(9, map[uint32][]byte{9: bytes.Repeat([]byte{7}, cas.KeySize)})
	future := time.Now().Add(time.Minute)
	full := frames(good...)

	cases := []struct {
		name   string
		token  string
		body   []byte
		code   int
		reason string
		stored int // chunks of good[] stored afterwards (a prefix)
	}{
		{"wrong hash first", putTok, frames(wrongHash, good[1]), 422, "hash-mismatch", 0},
		{"wrong hash third", putTok, frames(good[0], good[1], wrongHash, good[3]), 422, "hash-mismatch", 2},
		{"corrupt encoding", putTok, frames(corrupt), 422, "corrupt", 0},
		{"unknown codec", putTok, frames(unknownCodec), 422, "corrupt", 0},
		{"oversize frame", putTok, oversize, 413, "too-large", 0},
		{"oversize after one", putTok, append(frames(good[0]), oversize...), 413, "too-large", 1},
		{"truncated id", putTok, full[:10], 400, "bad-frame", 0},
		{"truncated data", putTok, full[:len(full)-1], 400, "bad-frame", 3},
		{"truncated length", putTok, append(frames(good[0]), append(good[1].ID[:], 0x80)...), 400, "bad-frame", 1},
		{"varint overflow", putTok, append(good[0].ID[:], bytes.Repeat([]byte{0xff}, 11)...), 400, "bad-frame", 0},
		{"no token", "", full, 401, "token-malformed", 0},
		{"garbage token", "v1.garbage", full, 401, "token-malformed", 0},
		{"forged token", mintT(t, otherKeys, cas.Claims{Ops: cas.OpPut, Scope: "b1", Expiry: future}), full, 401, "token-forged", 0},
		{"unknown key", mintT(t, unknownKeys, cas.Claims{Ops: cas.OpPut, Scope: "b1", Expiry: future}), full, 401, "token-unknown-key", 0},
		{"expired token", mintT(t, testKeys, cas.Claims{Ops: cas.OpPut, Scope: "b1", Expiry: time.Now().Add(-time.Second)}), full, 401, "token-expired", 0},
		{"wrong op", mintT(t, testKeys, cas.Claims{Ops: cas.OpGet | cas.OpHas, Scope: "b1", Expiry: future}), full, 403, "token-scope", 0},
		{"wrong scope", mintT(t, testKeys, cas.Claims{Ops: cas.OpPut, Scope: "b2", Expiry: future}), full, 403, "token-scope", 0},
	}
	backends := map[string]func(t *testing.T) blockd.PruneStore{
		"mem":    func(*testing.T) blockd.PruneStore { return blockd.NewMemStore() },
		"badger": func(t *testing.T) blockd.PruneStore { return openBadger(t, t.TempDir()) },
		"pack":   func(t *testing.T) blockd.PruneStore { return openPack(t, t.TempDir()) },
	}
	for _, tc := range cases {
		for bname, newStore := range backends {
			t.Run(bname+"/"+tc.name, func(t *testing.T) {
				mem := newStore(t)
				ts := startServer(t, mem, 1) // tiny batches: every chunk is its own batch
				code, resp := rawPut(t, ts.url, tc.token, bytes.NewReader(tc.body))
				if code != tc.code || resp["reason"] != tc.reason {
					t.Fatalf("status %d reason %v (%v); want %d %s", code, resp["reason"], resp["error"], tc.code, tc.reason)
				}
				if strings.HasPrefix(tc.reason, "token") {
					if _, ok := resp["stored"]; ok {
						t.Fatal("a token refusal reports stored chunks")
					}
				} else if resp["stored"] != float64(tc.stored) {
					t.Fatalf("response says %v stored, want %d", resp["stored"], tc.stored)
				}
				if tc.reason == "hash-mismatch" || tc.reason == "corrupt" || tc.reason == "too-large" {
					if resp["chunk"] != good[0].ID.String() && resp["chunk"] != wrongHash.ID.String() {
						t.Fatalf("refusal names chunk %v", resp["chunk"])
					}
					if !strings.Contains(resp["error"].(string), good[0].ID.String()) {
						t.Fatalf("error %q does not name the chunk", resp["error"])
					}
				}
				storetest.CheckHolds(t, mem, good[:tc.stored])
			})
		}
	}
}

// TestClientErrors checks that refusals map back to sentinels and typed
// errors on the client side.
func TestClientErrors(t *testing.T) {
	ctx := context.Background()
	mem := blockd.NewMemStore()
	ts := startServer(t, mem, 0)
	good := storetest.Chunks(2, 3, 2000)
	c := blockd.NewClient(ts.url, tokenFor(0, "b1"), testHTTP)

	bad := blockd.Chunk{ID: good[1].ID, Data: good[0].Data}
	err := c.Put(ctx, []blockd.Chunk{bad, good[2]})
	var re *blockd.RejectError
	if !errors.As(err, &re) || re.ID != bad.ID || re.Reason != blockd.ReasonHashMismatch || !errors.Is(err, cas.ErrHashMismatch) {
		t.Fatalf("Put of a wrong-hash chunk = %v", err)
	}
	var se *blockd.StatusError
	if !errors.As(err, &se) || se.Code != 422 || se.Stored != 0 {
		t.Fatalf("the RejectError does not carry the status: %v", err)
	}
	storetest.CheckHolds(t, mem, nil)

	if _, err := c.Get(ctx, good[0].ID); !errors.Is(err, blockd.ErrNotFound) {
		t.Fatalf("Get(absent) = %v", err)
	}
	for _, tc := range []struct {
		name string
		tok  blockd.TokenSource
		want error
	}{
		{"expired", func(cas.Op) (string, error) {
			return testKeys.Mint(cas.Claims{Ops: allOps, Scope: "b1", Expiry: time.Now().Add(-time.Minute)})
		}, cas.ErrTokenExpired},
		{"scope", tokenFor(allOps, "elsewhere"), cas.ErrTokenScope},
		{"op", tokenFor(cas.OpGet, "b1"), cas.ErrTokenScope},
		{"malformed", func(cas.Op) (string, error) { return "nope", nil }, cas.ErrTokenMalformed},
	} {
		cc := blockd.NewClient(ts.url, tc.tok, testHTTP)
		if err := cc.Put(ctx, good); !errors.Is(err, tc.want) {
			t.Errorf("%s: Put = %v, want %v", tc.name, err, tc.want)
		}
		if err := cc.Delete(ctx, storetest.IDs(good)); !errors.Is(err, tc.want) && !(tc.name == "op" && errors.Is(err, cas.ErrTokenScope)) {
			t.Errorf("%s: Delete = %v, want %v", tc.name, err, tc.want)
		}
	}
	storetest.CheckHolds(t, mem, nil)
	tokErr := errors.New("metad unreachable")
	if err := blockd.NewClient(ts.url, func(cas.Op) (string, error) { return "", tokErr }, nil).Put(ctx, good); !errors.Is(err, tokErr) {
		t.Fatalf("token source error = %v", err)
	}
	// Delete needs the delete op: a put token cannot delete.
	if err := c.Put(ctx, good); err != nil {
		t.Fatal(err)
	}
	putOnly := blockd.NewClient(ts.url, tokenFor(cas.OpPut|cas.OpHas|cas.OpGet, "b1"), testHTTP)
	if err := putOnly.Delete(ctx, storetest.IDs(good)); !errors.Is(err, cas.ErrTokenScope) {
		t.Fatalf("Delete with a put token = %v", err)
	}
	if err := putOnly.List(ctx, func(blockd.ChunkInfo) error { return nil }); !errors.Is(err, cas.ErrTokenScope) {
		t.Fatalf("List with a put token = %v", err)
	}
	storetest.CheckHolds(t, mem, good)
}

func TestGetRawAndGetMany(t *testing.T) {
	ctx := context.Background()
	mem := blockd.NewMemStore()
	ts := startServer(t, mem, 0)
	c := blockd.NewClient(ts.url, tokenFor(0, "b1"), testHTTP)
	good := storetest.Chunks(3, 5, 10000)
	if err := c.Put(ctx, good); err != nil {
		t.Fatal(err)
	}
	raw, err := c.GetRaw(ctx, []byte("x"), good[0].ID)
	if err != nil || raw[0] != 'x' || cas.Sum(raw[1:]) != good[0].ID {
		t.Fatalf("GetRaw = %v", err)
	}
	// A chunk that rotted in the store (written behind the server's back)
	// is caught by GetRaw.
	rotten := storetest.Chunks(4, 1, 100)[0]
	rotten.Data = cas.Encode(nil, []byte("rot"))
	mem.Put(ctx, []blockd.Chunk{rotten})
	if _, err := c.GetRaw(ctx, nil, rotten.ID); !errors.Is(err, cas.ErrHashMismatch) {
		t.Fatalf("GetRaw of a rotten chunk = %v", err)
	}
	absent := cas.Sum([]byte("absent"))
	want := []cas.ChunkID{good[3].ID, absent, good[0].ID, good[0].ID, good[4].ID}
	var got []cas.ChunkID
	err = c.GetMany(ctx, want, func(id cas.ChunkID, enc []byte) error {
		if _, err := cas.DecodeVerify(nil, id, enc); err != nil {
			return err
		}
		got = append(got, id)
		return nil
	})
	if !errors.Is(err, blockd.ErrNotFound) || !strings.Contains(err.Error(), absent.String()) {
		t.Fatalf("GetMany with an absent chunk = %v", err)
	}
	if len(got) != 4 || got[0] != good[3].ID || got[1] != good[0].ID || got[3] != good[4].ID {
		t.Fatalf("GetMany delivered %v", got)
	}
	if err := c.GetMany(ctx, storetest.IDs(good), func(cas.ChunkID, []byte) error { return nil }); err != nil {
		t.Fatalf("GetMany = %v", err)
	}
	stop := errors.New("stop")
	if err := c.GetMany(ctx, storetest.IDs(good), func(cas.ChunkID, []byte) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("GetMany with a failing fn = %v", err)
	}
}

// TestPutStreams shows the server storing batches while the request body is
// still arriving: it never needs the whole body.
func TestPutStreams(t *testing.T) {
	mem := blockd.NewMemStore()
	fs := faultstore.New(mem)
	ts := startServer(t, fs, 64<<10)
	chunks := storetest.Chunks(5, 40, 64<<10)
	pr, pw := io.Pipe()
	tok, _ := tokenFor(cas.OpPut, "b1")(cas.OpPut)
	done := make(chan map[string]any, 1)
	go func() {
		_, resp := rawPut(t, ts.url, tok, pr)
		done <- resp
	}()
	if _, err := pw.Write(frames(chunks[:20]...)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, _ := mem.Missing(context.Background(), storetest.IDs(chunks[:10]))
		if len(m) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("nothing stored while the request is open: the server is not streaming")
		}
		time.Sleep(5 * time.Millisecond)
	}
	pw.Write(frames(chunks[20:]...))
	pw.Close()
	select {
	case resp := <-done:
		if resp["stored"] != float64(40) {
			t.Fatalf("response %v", resp)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("put did not finish")
	}
	if fs.Calls(faultstore.OpPut) < 10 {
		t.Fatalf("%d store Puts for 40 chunks in 64 KiB batches", fs.Calls(faultstore.OpPut))
	}
	storetest.CheckHolds(t, mem, chunks)
}

// TestPutStoreFailure: a store that fails mid-request (disk full) surfaces
// as 507/ErrNoSpace; whatever it stored is whole and verifies.
func TestPutStoreFailure(t *testing.T) {
	ctx := context.Background()
	mem := blockd.NewMemStore()
	fs := faultstore.New(mem)
	ts := startServer(t, fs, 32<<10)
	c := blockd.NewClient(ts.url, tokenFor(0, "b1"), testHTTP)
	chunks := storetest.Chunks(6, 30, 16<<10)
	fs.FailNth(faultstore.OpPut, 3, faultstore.ErrNoSpace, 1)
	err := c.Put(ctx, chunks)
	var se *blockd.StatusError
	if !errors.Is(err, blockd.ErrNoSpace) || !errors.As(err, &se) || se.Code != http.StatusInsufficientStorage {
		t.Fatalf("Put on a full disk = %v", err)
	}
	var present []blockd.Chunk
	m, _ := mem.Missing(ctx, storetest.IDs(chunks))
	absent := map[cas.ChunkID]bool{}
	for _, id := range m {
		absent[id] = true
	}
	for _, ch := range chunks {
		if !absent[ch.ID] {
			present = append(present, ch)
		}
	}
	if len(present) < se.Stored || len(present) == len(chunks) {
		t.Fatalf("%d chunks present, %d acknowledged, of %d", len(present), se.Stored, len(chunks))
	}
	storetest.CheckHolds(t, mem, present) // whole and verified, nothing else
	fs.FailAll(faultstore.OpGet, errors.New("io error"))
	if _, err := c.Get(ctx, chunks[0].ID); err == nil || errors.Is(err, blockd.ErrNotFound) {
		t.Fatalf("Get on a failing store = %v", err)
	}
	fs.Clear()
	if err := c.Put(ctx, chunks); err != nil {
		t.Fatalf("Put after the disk has room again: %v", err)
	}
	storetest.CheckHolds(t, mem, chunks)
}

func TestHealthAndMetrics(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, blockd.NewMemStore(), 0)
	c := blockd.NewClient(ts.url, tokenFor(0, "b1"), testHTTP)
	chunks := storetest.Chunks(7, 3, 4096)
	if err := c.Put(ctx, chunks); err != nil {
		t.Fatal(err)
	}
	c.Put(ctx, []blockd.Chunk{{ID: chunks[0].ID, Data: chunks[1].Data}})
	get := func(path string) string {
		resp, err := testHTTP.Get(ts.url + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d", path, resp.StatusCode)
		}
		return string(b)
	}
	if get("/healthz") != "ok\n" {
		t.Fatal("healthz")
	}
	m := get("/metrics")
	for _, want := range []string{
		"blockd_chunks 3",
		"blockd_stored_raw_bytes 12288",
		`blockd_rejects_total{reason="hash-mismatch"} 1`,
		`blockd_request_duration_seconds_count{code="200",route="put"} 1`,
		`blockd_request_duration_seconds_count{code="422",route="put"} 1`,
		"blockd_put_chunks_total 3",
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	// No token, no data.
	resp, err := testHTTP.Get(ts.url + "/v1/chunks/" + chunks[0].ID.String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("tokenless get: %d", resp.StatusCode)
	}
}

func TestServerConfig(t *testing.T) {
	for name, cfg := range map[string]blockd.ServerConfig{
		"no store":   {Keyring: testKeys},
		"no keyring": {Store: blockd.NewMemStore()},
		"bad name":   {Store: blockd.NewMemStore(), Keyring: testKeys, Name: "a b"},
		"neg batch":  {Store: blockd.NewMemStore(), Keyring: testKeys, BatchBytes: -1},
	} {
		if _, err := blockd.NewServer(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestBadRequests(t *testing.T) {
	ts := startServer(t, blockd.NewMemStore(), 0)
	tok, _ := tokenFor(allOps, "b1")(0)
	for _, tc := range []struct {
		method, path string
		body         string
		code         int
	}{
		{"GET", "/v1/chunks/xyz", "", 400},
		{"POST", "/v1/missing", "short", 400},
		{"POST", "/v1/get", strings.Repeat("x", 33), 400},
		{"POST", "/v1/delete", strings.Repeat("x", 31), 400},
		{"GET", "/v1/put", "", 405},
	} {
		req, _ := http.NewRequest(tc.method, ts.url+tc.path, strings.NewReader(tc.body))
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := testHTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.code {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, resp.StatusCode, tc.code)
		}
	}
}

// Concurrent clients putting overlapping chunks all succeed.
func TestConcurrentClients(t *testing.T) {
	ctx := context.Background()
	st := openBadger(t, t.TempDir())
	ts := startServer(t, st, 128<<10)
	chunks := storetest.Chunks(8, 64, 32<<10)
	var wg sync.WaitGroup
	for g := range 6 {
		wg.Go(func() {
			c := blockd.NewClient(ts.url, tokenFor(0, "b1"), testHTTP)
			c.MaxRequestBytes = 256 << 10
			if err := c.Put(ctx, chunks[g*8:g*8+24]); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	storetest.CheckHolds(t, st, chunks)
}

// A store failure after a streamed response has started aborts the
// connection: the client sees a broken stream, never a short, clean one.
func TestStreamAborts(t *testing.T) {
	ctx := context.Background()
	mem := blockd.NewMemStore()
	fs := faultstore.New(mem)
	ts := startServer(t, fs, 0)
	c := blockd.NewClient(ts.url, tokenFor(0, "b1"), testHTTP)
	chunks := storetest.Chunks(9, 3000, 64) // a listing longer than one 64 KiB write
	if err := c.Put(ctx, chunks); err != nil {
		t.Fatal(err)
	}
	fs.FailNth(faultstore.OpGet, 2, errors.New("disk read error"), 0)
	n := 0
	err := c.GetMany(ctx, storetest.IDs(chunks[:3]), func(cas.ChunkID, []byte) error { n++; return nil })
	if err == nil || errors.Is(err, blockd.ErrNotFound) || n > 1 {
		t.Fatalf("GetMany over a failing store = %v after %d chunks", err, n)
	}
	fs.FailNth(faultstore.OpGet, 1, errors.New("disk read error"), 0)
	err = c.GetMany(ctx, storetest.IDs(chunks[:3]), func(cas.ChunkID, []byte) error { return nil })
	var se *blockd.StatusError
	if !errors.As(err, &se) || se.Code != 500 {
		t.Fatalf("GetMany failing on the first chunk = %v, want a 500", err)
	}
	// List: fail the store's List after it has produced a first page.
	broken := &failingList{PruneStore: mem, after: 2500}
	ts2 := startServer(t, broken, 0)
	c2 := blockd.NewClient(ts2.url, tokenFor(0, "b1"), testHTTP)
	n = 0
	err = c2.List(ctx, func(blockd.ChunkInfo) error { n++; return nil })
	if err == nil || n >= 3000 {
		t.Fatalf("List over a failing store = %v after %d entries", err, n)
	}
}

// failingList fails List after `after` entries.
type failingList struct {
	blockd.PruneStore
	after int
}

func (f *failingList) List(ctx context.Context, fn func(blockd.ChunkInfo) error) error {
	n := 0
	return f.PruneStore.List(ctx, func(i blockd.ChunkInfo) error {
		if n++; n > f.after {
			return errors.New("list failed")
		}
		return fn(i)
	})
}

// A refusal early in a long put reaches the client promptly: the client
// stops sending and returns the typed error instead of a reset connection.
func TestEarlyRefusalOfLongPut(t *testing.T) {
	mem := blockd.NewMemStore()
	ts := startServer(t, mem, 0)
	c := blockd.NewClient(ts.url, tokenFor(0, "b1"), testHTTP)
	c.MaxRequestBytes = 1 << 30 // one request
	good := storetest.Chunks(10, 1, 1<<20)[0]
	bad := blockd.Chunk{ID: cas.Sum([]byte("x")), Data: good.Data}
	batch := []blockd.Chunk{good, bad}
	for range 150 { // 150 MiB after the bad chunk, more than the server drains
		batch = append(batch, good)
	}
	start := time.Now()
	err := c.Put(context.Background(), batch)
	var re *blockd.RejectError
	if !errors.As(err, &re) || re.ID != bad.ID {
		t.Fatalf("Put = %v, want the RejectError for the second chunk", err)
	}
	t.Logf("refused after %v", time.Since(start))
	storetest.CheckHolds(t, mem, batch[:1]) // the valid prefix only
}

// testHTTP bounds every test request, so a hung server fails the test
// instead of stalling the suite.
var testHTTP = &http.Client{Timeout: time.Minute}

// TestPutStreamPieces feeds put bodies to the handler in awkward pieces
// (one byte at a time, halves, data arriving together with EOF) with
// batches small enough that frames cross batch borders: every whole frame
// is stored, a truncated stream stores exactly its whole frames.
func TestPutStreamPieces(t *testing.T) {
	var good []blockd.Chunk
	for i, size := range []int{1, 100, 3000, 5000, 40, 70000, 2, 9000} {
		good = append(good, storetest.Chunks(uint64(100+i), 1, size)...)
	}
	full := frames(good...)
	putTok := mintT(t, testKeys, cas.Claims{Ops: cas.OpPut, Scope: "b1", Expiry: time.Now().Add(time.Minute)})
	readers := map[string]func(io.Reader) io.Reader{
		"onebyte": iotest.OneByteReader,
		"half":    iotest.HalfReader,
		"dataerr": iotest.DataErrReader,
	}
	for rname, wrap := range readers {
		for _, batch := range []int{1, 1000, 8 << 10} {
			for _, cut := range []int{0, 1, 33, 40} { // bytes cut off the end
				t.Run(fmt.Sprintf("%s/batch=%d/cut=%d", rname, batch, cut), func(t *testing.T) {
					st := blockd.NewMemStore()
					srv, err := blockd.NewServer(blockd.ServerConfig{Store: st, Keyring: testKeys, Name: "b1", BatchBytes: batch})
					if err != nil {
						t.Fatal(err)
					}
					body := full[:len(full)-cut]
					req := httptest.NewRequest("POST", "/v1/put", wrap(bytes.NewReader(body)))
					req.Header.Set("Authorization", "Bearer "+putTok)
					rec := httptest.NewRecorder()
					srv.ServeHTTP(rec, req)
					var resp map[string]any
					if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
						t.Fatalf("status %d, body %q", rec.Code, rec.Body)
					}
					want, wantCode := len(good), 200
					if cut > 0 {
						want, wantCode = len(good)-1, 400
						if resp["reason"] != "bad-frame" {
							t.Fatalf("reason %v", resp["reason"])
						}
					}
					if rec.Code != wantCode || resp["stored"] != float64(want) {
						t.Fatalf("status %d stored %v (%v); want %d %d", rec.Code, resp["stored"], resp["error"], wantCode, want)
					}
					storetest.CheckHolds(t, st, good[:want])
					if n := st.Stats().Chunks; n != int64(want) {
						t.Fatalf("store holds %d chunks, want %d", n, want)
					}
				})
			}
		}
	}
}
