package metad

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"stasis/cas"
)

// httpEnv serves e.s over a real HTTP listener on 127.0.0.1 and returns a
// Client for it.
func httpEnv(t *testing.T, e *env) (*Client, *httptest.Server) {
	t.Helper()
	srv, err := NewServer(e.s, ServerConfig{Keyring: e.kr, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	return NewClient(ts.URL, e.kr, "test", ts.Client()), ts
}

// apiScenario exercises an API implementation; the Service and the Client
// over HTTP must behave the same.
func apiScenario(t *testing.T, e *env, api API) {
	ctx := context.Background()
	d, err := api.Create(ctx, CreateRequest{Parent: RootIno, Name: "d", Mode: syscall.S_IFDIR | 0o755, Uid: 5})
	must(t, err)
	f, err := api.Create(ctx, CreateRequest{Parent: d.Ino, Name: "f", Mode: syscall.S_IFREG | 0o600, Policy: "fixed:4k"})
	must(t, err)
	if f.Uid != 0 || f.Mode != syscall.S_IFREG|0o600 || f.Nlink != 1 {
		t.Fatalf("create attr %+v", f)
	}
	_, err = api.Create(ctx, CreateRequest{Parent: d.Ino, Name: "f", Mode: syscall.S_IFREG})
	wantErr(t, err, ErrExists)
	_, err = api.Lookup(ctx, Node{Ino: d.Ino}, "a/b")
	wantErr(t, err, ErrInvalid)
	_, err = api.GetAttr(ctx, Node{Ino: 123456})
	wantErr(t, err, ErrNotFound)
	l, err := api.Create(ctx, CreateRequest{Parent: d.Ino, Name: "l", Mode: syscall.S_IFLNK | 0o777, Target: "/x/y"})
	must(t, err)
	if tg, err := api.Readlink(ctx, Node{Ino: l.Ino}); err != nil || tg != "/x/y" {
		t.Fatalf("readlink %q %v", tg, err)
	}
	must(t, api.SetXattr(ctx, f.Ino, "user.k", []byte{0, 1, 2}, 0))
	if v, err := api.GetXattr(ctx, Node{Ino: f.Ino}, "user.k"); err != nil || string(v) != "\x00\x01\x02" {
		t.Fatalf("getxattr %q %v", v, err)
	}
	_, err = api.GetXattr(ctx, Node{Ino: f.Ino}, "user.none")
	wantErr(t, err, ErrNoData)
	if n, err := api.ListXattr(ctx, Node{Ino: f.Ino}); err != nil || len(n) != 1 {
		t.Fatalf("listxattr %v %v", n, err)
	}
	must(t, api.RemoveXattr(ctx, f.Ino, "user.k"))
	// Content.
	data := [][]byte{chunkData(100), chunkData(101)}
	ids := []cas.ChunkID{cas.Sum(data[0]), cas.Sum(data[1])}
	plan, err := api.PrepareUpload(ctx, ids)
	must(t, err)
	if len(plan.Missing) != 2 || plan.Token == "" || len(plan.Endpoints) != len(e.blocks) {
		t.Fatalf("upload plan %+v", plan)
	}
	_, err = api.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(ids...)})
	wantErr(t, err, ErrMissingChunk)
	e.put(t, data...)
	mt := time.Unix(1_700_000_000, 0)
	a, err := api.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(ids...), Mtime: mt})
	must(t, err)
	if a.Size != 8192 || a.Gen != 1 || !a.Mtime.Equal(mt) {
		t.Fatalf("commit attr %+v", a)
	}
	rp, err := api.ReadPlan(ctx, Node{Ino: f.Ino})
	must(t, err)
	if len(rp.Manifest.Extents) != 2 || rp.Manifest.Extents[1].ID != ids[1] || rp.Manifest.Policy != cas.Fixed(4096) || len(rp.Location) != 2 {
		t.Fatalf("read plan %+v", rp)
	}
	for i, x := range rp.Manifest.Extents {
		if !e.blocks[rp.Location[i]].has(x.ID) {
			t.Fatal("read plan points at the wrong endpoint")
		}
	}
	// Open, unlink, release.
	must(t, api.Open(ctx, f.Ino))
	must(t, api.Rename(ctx, d.Ino, "f", RootIno, "g", 0))
	wantErr(t, api.Rename(ctx, RootIno, "d", d.Ino, "x", 0), ErrInvalid)
	must(t, api.Unlink(ctx, RootIno, "g"))
	if a, err := api.GetAttr(ctx, Node{Ino: f.Ino}); err != nil || a.Nlink != 0 {
		t.Fatalf("open unlinked %+v %v", a, err)
	}
	must(t, api.Release(ctx, f.Ino))
	// Snapshots.
	g, err := api.Create(ctx, CreateRequest{Parent: d.Ino, Name: "g", Mode: syscall.S_IFREG | 0o644})
	must(t, err)
	_, err = api.Commit(ctx, CommitRequest{Ino: g.Ino, Manifest: manifestOf(ids[0])})
	must(t, err)
	s, err := api.CreateSnapshot(ctx, d.Ino, "snap")
	must(t, err)
	wantErr(t, api.Unlink(ctx, d.Ino, "g"), nil)
	ents, err := api.ReadDir(ctx, s.Root, "", 0)
	must(t, err)
	if len(ents) != 2 || ents[0].Name != "g" || ents[1].Name != "l" {
		t.Fatalf("snapshot entries %+v", ents)
	}
	list, err := api.ListSnapshots(ctx, d.Ino)
	must(t, err)
	if len(list) != 1 || list[0].ID != s.ID || !list[0].Created.Equal(s.Created) {
		t.Fatalf("list %+v vs %+v", list, s)
	}
	must(t, api.DeleteSnapshot(ctx, d.Ino, "snap"))
	wantErr(t, api.DeleteSnapshot(ctx, d.Ino, "snap"), ErrNotFound)
	must(t, api.Unlink(ctx, d.Ino, "l"))
	must(t, api.Rmdir(ctx, RootIno, "d"))
	st, err := api.Stats(ctx)
	must(t, err)
	if st.Inodes != 1 || st.Chunks != 0 || st.Snapshots != 0 {
		t.Fatalf("stats %+v", st)
	}
	e.fsckClean(t)
}

func TestAPIScenarioService(t *testing.T) {
	e := newEnv(t, false, 2)
	apiScenario(t, e, e.s)
}

func TestAPIScenarioHTTP(t *testing.T) {
	e := newEnv(t, false, 2)
	c, _ := httpEnv(t, e)
	apiScenario(t, e, c)
}

func TestHTTPBadRequests(t *testing.T) {
	e := newEnv(t, true, 1)
	c, ts := httpEnv(t, e)
	ctx := context.Background()
	tok := func(c cas.Claims) string {
		s, err := e.kr.Mint(c)
		must(t, err)
		return s
	}
	good := tok(cas.Claims{Ops: cas.OpAdmin, Scope: AuthScope, Expiry: time.Now().Add(time.Minute)})
	other, _ := cas.ParseKeyring(cas.NewSecretFile(1))
	forged, _ := other.Mint(cas.Claims{Ops: cas.OpAdmin, Scope: AuthScope, Expiry: time.Now().Add(time.Minute)})
	post := func(path, auth, body string) (int, errorBody) {
		req, _ := http.NewRequest(http.MethodPost, ts.URL+path, strings.NewReader(body))
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		r, err := ts.Client().Do(req)
		must(t, err)
		defer r.Body.Close()
		b, _ := io.ReadAll(r.Body)
		var eb errorBody
		json.Unmarshal(b, &eb)
		return r.StatusCode, eb
	}
	create := `{"parent":1,"name":"x","mode":33188}`
	for _, tc := range []struct {
		name, path, auth, body string
		status                 int
		code                   string
	}{
		{"no token", "/v1/create", "", create, 401, "unauthorized"},
		{"forged", "/v1/create", forged, create, 401, "unauthorized"},
		{"expired", "/v1/create", tok(cas.Claims{Ops: cas.OpAdmin, Scope: AuthScope, Expiry: time.Now().Add(-time.Second)}), create, 401, "unauthorized"},
		{"wrong op", "/v1/create", tok(cas.Claims{Ops: cas.OpGet | cas.OpPut, Scope: AuthScope, Expiry: time.Now().Add(time.Minute)}), create, 401, "unauthorized"},
		{"wrong scope", "/v1/create", tok(cas.Claims{Ops: cas.OpAdmin, Scope: "b0", Expiry: time.Now().Add(time.Minute)}), create, 401, "unauthorized"},
		{"garbage token", "/v1/create", "v1.AAAA", create, 401, "unauthorized"},
		{"malformed json", "/v1/create", good, `{"parent":1,"name":`, 400, "invalid"},
		{"wrong type", "/v1/create", good, `{"parent":"one","name":"x"}`, 400, "invalid"},
		{"unknown field", "/v1/create", good, `{"parent":1,"name":"x","bogus":1}`, 400, "invalid"},
		{"trailing", "/v1/create", good, create + `{}`, 400, "invalid"},
		{"slash", "/v1/create", good, `{"parent":1,"name":"a/b","mode":33188}`, 400, "invalid"},
		{"nul", "/v1/create", good, `{"parent":1,"name":"a\u0000b","mode":33188}`, 400, "invalid"},
		{"long", "/v1/create", good, `{"parent":1,"name":"` + strings.Repeat("n", 256) + `","mode":33188}`, 400, "invalid"},
		{"unknown inode", "/v1/getattr", good, `{"node":{"snap":0,"ino":999}}`, 404, "not_found"},
		{"bad chunk id", "/v1/prepare", good, `{"ids":["abc"]}`, 400, "invalid"},
		{"bad manifest", "/v1/commit", good, `{"ino":1,"manifest":{"Policy":{"Kind":"nope"},"Size":0}}`, 400, "invalid"},
	} {
		status, eb := post(tc.path, tc.auth, tc.body)
		if status != tc.status || eb.Code != tc.code || eb.Error == "" {
			t.Errorf("%s: HTTP %d %+v, want %d %s", tc.name, status, eb, tc.status, tc.code)
		}
	}
	// Nothing was created by any of them.
	ents, err := c.ReadDir(ctx, Node{Ino: RootIno}, "", 0)
	must(t, err)
	if len(ents) != 0 {
		t.Fatalf("bad requests created %+v", ents)
	}
	// Unknown method, wrong verb.
	if s, _ := post("/v1/nope", good, "{}"); s != 404 {
		t.Errorf("unknown method: HTTP %d", s)
	}
	r, err := ts.Client().Get(ts.URL + "/v1/create")
	must(t, err)
	r.Body.Close()
	if r.StatusCode != 405 {
		t.Errorf("GET on a method: HTTP %d", r.StatusCode)
	}
	// healthz and metrics need no token.
	for _, p := range []string{"/healthz", "/metrics"} {
		r, err := ts.Client().Get(ts.URL + p)
		must(t, err)
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if r.StatusCode != 200 {
			t.Fatalf("%s: HTTP %d", p, r.StatusCode)
		}
		if p == "/metrics" && !strings.Contains(string(b), `metad_requests_total{code="unauthorized",method="create"}`) {
			t.Fatalf("metrics lack request counts:\n%s", b)
		}
	}
	// The client maps a rejected token to ErrUnauthorized.
	bad := NewClient(ts.URL, other, "intruder", ts.Client())
	_, err = bad.Stats(ctx)
	wantErr(t, err, ErrUnauthorized)
	// And a dead server to ErrUnavailable.
	ts.Close()
	_, err = c.Stats(ctx)
	wantErr(t, err, ErrUnavailable)
}

func TestClientRenewsToken(t *testing.T) {
	e := newEnv(t, true, 1)
	c, _ := httpEnv(t, e)
	now := time.Now()
	c.now = func() time.Time { return now }
	_, err := c.Stats(context.Background())
	must(t, err)
	first := c.token
	now = now.Add(clientTokenTTL - time.Minute) // close to expiry: renew
	_, err = c.Stats(context.Background())
	must(t, err)
	if c.token == first {
		t.Fatal("client did not renew its token near expiry")
	}
}
