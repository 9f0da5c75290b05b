package vswitch

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"
)

func TestHTTPControlAPI(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sw := newTestSwitch(t, Config{})
	a, b := NewMemPort(16), NewMemPort(16)
	mustAdd(t, sw, PortConfig{Name: "a", VLAN: 3}, a)
	mustAdd(t, sw, PortConfig{Name: "b", VLAN: 3}, b)
	srv := httptest.NewServer(NewHandler(sw))
	defer srv.Close()
	c := &Client{Base: srv.URL, HTTP: &http.Client{Timeout: 10 * time.Second}}

	if err := c.Resume(ctx); !errors.Is(err, ErrCheckpoint) {
		t.Fatalf("resume while idle: %v", err)
	}
	if err := c.BeginCheckpoint(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := c.FreezePort(ctx, "nope"); !errors.Is(err, ErrUnknownPort) {
		t.Fatalf("unknown port: %v", err)
	}
	if err := c.FreezePort(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	// a is still running: its frame to b crosses the line and is logged.
	if err := a.Send(ctx, ethFrame(2, 1, "in flight")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"a", "b"} {
		if err := c.PortCheckpointed(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	lg, err := c.EndCheckpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(lg.Entries) != 1 || lg.Entries[0].Port != "b" || !bytes.Contains(lg.Entries[0].Frame, []byte("in flight")) {
		t.Fatalf("log: %+v", lg)
	}
	// A corrupt log is refused over the wire.
	resp, err := http.Post(srv.URL+"/v1/restore", "application/octet-stream", bytes.NewReader([]byte("STXSWLOG garbage")))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("corrupt log: status %d", resp.StatusCode)
	}
	if err := c.Restore(ctx, lg); err != nil {
		t.Fatal(err)
	}
	if err := c.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if got := recvTimeout(t, b, 2*time.Second); got == nil || !bytes.Contains(got, []byte("in flight")) {
		t.Fatal("the logged frame was not replayed after restore")
	}
}

// NewUnixClient dials its socket for every URL, and reports a missing
// socket as an error.
func TestUnixClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sw := newTestSwitch(t, Config{})
	mustAdd(t, sw, PortConfig{Name: "a", VLAN: 1}, NewMemPort(4))
	path := serveUnix(t, NewHandler(sw))
	c := NewUnixClient(path)
	defer c.CloseIdleConnections()
	if err := c.BeginCheckpoint(ctx, 7); err != nil {
		t.Fatal(err)
	}
	if st, _ := sw.Status(ctx); st.Target != 7 {
		t.Fatalf("the switch behind the socket is checkpointing to %d, want 7", st.Target)
	}
	c.Base = "http://any.host.example:1" // the host is not used to dial
	st, err := c.Status(ctx)
	if err != nil || st.State != StateCheckpointing || st.Target != 7 {
		t.Fatalf("status %+v, %v", st, err)
	}
	missing := NewUnixClient(filepath.Join(t.TempDir(), "none.sock"))
	if _, err := missing.Status(ctx); err == nil || errors.As(err, new(*RemoteError)) {
		t.Fatalf("status over a missing socket: %v, want a dial error", err)
	}
}
