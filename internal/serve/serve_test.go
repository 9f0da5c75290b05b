package serve_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"stasis/blockd"
	"stasis/cas"
	"stasis/internal/serve"
	"stasis/metad"
)

// generous bounds every wait of these tests: an attacker connection must
// be closed by then. It is no timing assertion; the limits under test are
// far shorter.
const generous = 30 * time.Second

// daemon is a real blockd or metad HTTP handler with what a client needs.
type daemon struct {
	handler http.Handler
	path    string // a POST route that reads a body
	token   string // valid for path
	// valid makes a well-formed call as a real client would.
	valid func(ctx context.Context, url string, hc *http.Client) error
}

func testKeys(t *testing.T) *cas.Keyring {
	k, err := cas.NewKeyring(1, map[uint32][]byte{1: bytes.Repeat([]byte{7}, cas.KeySize)})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newBlockd(t *testing.T) daemon {
	keys := testKeys(t)
	store, _, err := blockd.OpenStore(blockd.StoreConfig{Dir: t.TempDir(), Small: true, MinFreeBytes: -1, GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	srv, err := blockd.NewServer(blockd.ServerConfig{Store: store, Keyring: keys, Name: "blockd"})
	if err != nil {
		t.Fatal(err)
	}
	tokens := func(op cas.Op) (string, error) {
		return keys.Mint(cas.Claims{Ops: op, Subject: "test", Scope: "blockd", Expiry: time.Now().Add(time.Hour)})
	}
	tok, _ := tokens(cas.OpPut)
	return daemon{handler: srv, path: "/v1/put", token: tok,
		valid: func(ctx context.Context, url string, hc *http.Client) error {
			data := []byte("a chunk that a valid client stores")
			enc := cas.Encode(nil, data)
			c := blockd.NewClient(url, tokens, hc)
			if err := c.Put(ctx, []blockd.Chunk{{ID: cas.Sum(data), Data: enc}}); err != nil {
				return err
			}
			missing, err := c.Missing(ctx, []cas.ChunkID{cas.Sum(data)})
			if err == nil && len(missing) != 0 {
				err = fmt.Errorf("stored chunk reported missing")
			}
			return err
		}}
}

func newMetad(t *testing.T) daemon {
	keys := testKeys(t)
	svc, err := metad.Open(metad.Config{Dir: t.TempDir(), Keyring: keys,
		Blocks: []metad.BlockBackend{{Endpoint: metad.Endpoint{Name: "blockd", URL: "http://127.0.0.1:1"}, Store: blockd.NewMemStore()}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	srv, err := metad.NewServer(svc, metad.ServerConfig{Keyring: keys})
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := keys.Mint(cas.Claims{Ops: cas.OpAdmin, Subject: "test", Scope: metad.AuthScope, Expiry: time.Now().Add(time.Hour)})
	return daemon{handler: srv, path: "/v1/getattr", token: tok,
		valid: func(ctx context.Context, url string, hc *http.Client) error {
			_, err := metad.NewClient(url, keys, "test", hc).GetAttr(ctx, metad.Node{Ino: metad.RootIno})
			return err
		}}
}

// start serves d on 127.0.0.1 (random port) under l until the test ends.
func start(t *testing.T, d daemon, l serve.Limits) (*serve.Server, string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s, err := serve.New(slog.New(slog.DiscardHandler), ln, d.handler, serve.Options{Limits: l})
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return s, "http://" + s.Addr()
}

// clientFrom is an HTTP client whose connections come from ip (any
// 127.0.0.0/8 address is local on Linux), so it counts as another client.
func clientFrom(t *testing.T, ip string) *http.Client {
	tr := &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}).DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: generous}
}

// attacker is a raw connection that sent a request and stalls.
type attacker struct {
	c    net.Conn
	done chan result // what the server sent until it closed the connection
}

type result struct {
	data []byte
	err  error // nil: the server closed the connection
}

// attack opens a connection to addr and sends the start of a request:
// headers (with token unless it is empty) announcing a 100-byte body and
// 10 bytes of it; with partialHeaders only half the header lines. It
// then reads whatever comes back until the connection is closed or the
// generous bound passes.
func attack(t *testing.T, addr, path, token string, partialHeaders bool) *attacker {
	c, err := net.Dial("tcp", strings.TrimPrefix(addr, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	req := "POST " + path + " HTTP/1.1\r\nHost: stasis\r\n"
	if partialHeaders {
		req += "Content-Type: appl"
	} else {
		if token != "" {
			req += "Authorization: Bearer " + token + "\r\n"
		}
		req += "Content-Length: 100\r\n\r\n0123456789"
	}
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	a := &attacker{c: c, done: make(chan result, 1)}
	go func() {
		c.SetReadDeadline(time.Now().Add(generous))
		b, err := io.ReadAll(c)
		if errors.Is(err, net.ErrClosed) || err != nil && strings.Contains(err.Error(), "connection reset") {
			err = nil
		}
		a.done <- result{b, err}
	}()
	return a
}

// closed waits until the server closed a's connection and returns what it
// sent; it fails the test if the connection was still open at the bound.
func (a *attacker) closed(t *testing.T) []byte {
	t.Helper()
	r := <-a.done
	if r.err != nil {
		t.Fatalf("attacker connection not closed by the server: %v", r.err)
	}
	return r.data
}

// eventually polls cond until it holds or the generous bound passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(generous)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("still not %s after %v", what, generous)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func statusOf(t *testing.T, raw []byte) *http.Response {
	t.Helper()
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), nil)
	if err != nil {
		t.Fatalf("reading response %q: %v", raw, err)
	}
	return resp
}

func forEachDaemon(t *testing.T, fn func(t *testing.T, d daemon)) {
	for _, k := range []struct {
		name string
		new  func(*testing.T) daemon
	}{{"blockd", newBlockd}, {"metad", newMetad}} {
		t.Run(k.name, func(t *testing.T) { fn(t, k.new(t)) })
	}
}

// TestSlowBodiesAreCutOff: hundreds of clients that send headers
// announcing a 100-byte body, then part of it (with a valid token, so the
// daemon reads the body), or part of the headers, are cut off once the
// read timeouts pass, and a valid client is served meanwhile.
func TestSlowBodiesAreCutOff(t *testing.T) {
	forEachDaemon(t, func(t *testing.T, d daemon) {
		s, url := start(t, d, serve.Limits{ReadHeaderTimeout: 300 * time.Millisecond, ReadTimeout: 300 * time.Millisecond,
			MaxConns: -1, MaxConnsPerIP: -1})
		var attackers []*attacker
		for range 300 {
			attackers = append(attackers, attack(t, url, d.path, d.token, false))
		}
		for range 50 {
			attackers = append(attackers, attack(t, url, d.path, d.token, true))
		}
		hc := clientFrom(t, "127.0.0.2")
		ctx, cancel := context.WithTimeout(context.Background(), generous)
		defer cancel()
		if err := d.valid(ctx, url, hc); err != nil {
			t.Fatalf("valid client among stalled ones: %v", err)
		}
		var wg sync.WaitGroup
		for _, a := range attackers {
			wg.Go(func() {
				if r := <-a.done; r.err != nil {
					t.Errorf("attacker connection not closed by the server: %v", r.err)
				}
			})
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		hc.CloseIdleConnections()
		eventually(t, "every connection closed server-side", func() bool { return s.Conns().Open == 0 })
		if st := s.Conns(); st.BodyTimeouts < 300 {
			t.Errorf("body timeouts %d, want at least 300 (%+v)", st.BodyTimeouts, st)
		}
	})
}

// TestUnauthenticatedAndOverCap: with read timeouts far beyond the test's
// bound, a request without a token is refused (401) and its connection
// closed without waiting for its body; connections over the per-address
// cap get 503 with Retry-After; a client from another address is served
// while the cap is full.
func TestUnauthenticatedAndOverCap(t *testing.T) {
	forEachDaemon(t, func(t *testing.T, d daemon) {
		const perIP = 20
		s, url := start(t, d, serve.Limits{ReadHeaderTimeout: time.Hour, ReadTimeout: time.Hour, MinReadRate: -1,
			MaxConns: 1000, MaxConnsPerIP: perIP})

		var unauth []*attacker
		for range perIP {
			unauth = append(unauth, attack(t, url, d.path, "", false))
		}
		for _, a := range unauth {
			if resp := statusOf(t, a.closed(t)); resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("request without token: %s, want 401", resp.Status)
			}
		}
		eventually(t, "unauthenticated connections closed server-side", func() bool { return s.Conns().Open == 0 })

		var holders []*attacker
		for range perIP {
			holders = append(holders, attack(t, url, d.path, d.token, false))
		}
		eventually(t, "stalled uploads admitted", func() bool { return s.Conns().Open == perIP })
		for range 5 {
			resp := statusOf(t, attack(t, url, d.path, d.token, false).closed(t))
			if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
				t.Fatalf("over the per-address cap: %s Retry-After %q, want 503 with Retry-After", resp.Status, resp.Header.Get("Retry-After"))
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), generous)
		defer cancel()
		if err := d.valid(ctx, url, clientFrom(t, "127.0.0.2")); err != nil {
			t.Fatalf("valid client from another address while the cap is full: %v", err)
		}
		if st := s.Conns(); st.ShedRequests != 5 || st.BodyTimeouts != 0 {
			t.Errorf("conn stats %+v, want 5 shed requests and no body timeouts", st)
		}
		for _, a := range holders {
			a.c.Close()
		}
	})
}

// TestCutUploadKeepsWholeFrames: an upload cut off by the read deadline
// after a whole frame is answered 400 bad-frame with that frame stored,
// as for any refused put; it was a 500 "store: context canceled", logged
// at ERROR, because net/http cancels the request's context when a body
// read fails.
func TestCutUploadKeepsWholeFrames(t *testing.T) {
	keys := testKeys(t)
	d := newBlockd(t)
	_, url := start(t, d, serve.Limits{ReadTimeout: 300 * time.Millisecond})
	data := []byte("the one whole frame of a stalled upload")
	id := cas.Sum(data)
	enc := cas.Encode(nil, data)
	frame := append(append(id[:], byte(len(enc))), enc...)
	c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /v1/put HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n", d.token, len(frame)+100)
	c.Write(frame)
	c.SetReadDeadline(time.Now().Add(generous))
	raw, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("stalled upload not cut off: %v", err)
	}
	resp := statusOf(t, raw)
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), `"stored":1`) {
		t.Fatalf("cut upload: %s %s, want 400 with the whole frame stored", resp.Status, body)
	}
	tokens := func(op cas.Op) (string, error) {
		return keys.Mint(cas.Claims{Ops: op, Subject: "test", Scope: "blockd", Expiry: time.Now().Add(time.Hour)})
	}
	missing, err := blockd.NewClient(url, tokens, nil).Missing(context.Background(), []cas.ChunkID{id})
	if err != nil || len(missing) != 0 {
		t.Fatalf("the whole frame before the cut: missing %v (%v), want stored", missing, err)
	}
}
