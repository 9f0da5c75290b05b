package fusefs_test

import (
	"bytes"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"stasis/blockd"
	"stasis/cas"
	"stasis/casfs"
	"stasis/casfs/fusefs"
	"stasis/casfs/internal/testenv"
	"stasis/metad"
)

// TestDaemonMode runs casfs the way nodes do in a testbed: metad and blockd
// as HTTP servers on 127.0.0.1 (random ports), two casfs mounts talking to
// metad over HTTP and to blockd directly with the tokens from metad's plans.
func TestDaemonMode(t *testing.T) {
	kr, err := cas.ParseKeyring(cas.NewSecretFile(7))
	if err != nil {
		t.Fatal(err)
	}
	bsrv, err := blockd.NewServer(blockd.ServerConfig{Store: blockd.NewMemStore(), Keyring: kr, Name: "b1"})
	if err != nil {
		t.Fatal(err)
	}
	bhttp := httptest.NewServer(bsrv)
	t.Cleanup(bhttp.Close)
	mint := func(op cas.Op) (string, error) {
		return kr.Mint(cas.Claims{Ops: op, Subject: "metad", Scope: "b1", Expiry: time.Now().Add(time.Minute)})
	}
	svc, err := metad.Open(metad.Config{
		Dir:     t.TempDir(),
		Badger:  metad.BadgerOptions{BlockCacheSize: 4 << 20, IndexCacheSize: 2 << 20, ValueLogFileSize: 16 << 20},
		Keyring: kr,
		Blocks:  []metad.BlockBackend{{Endpoint: metad.Endpoint{Name: "b1", URL: bhttp.URL}, Store: blockd.NewClient(bhttp.URL, mint, nil)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	msrv, err := metad.NewServer(svc, metad.ServerConfig{Keyring: kr})
	if err != nil {
		t.Fatal(err)
	}
	mhttp := httptest.NewServer(msrv)
	t.Cleanup(mhttp.Close)

	node := func(name string) string {
		e := testenv.New(t, testenv.Options{
			Meta: metad.NewClient(mhttp.URL, kr, name, nil),
			FS: casfs.Config{Transport: casfs.ClientTransport{New: func(ep metad.Endpoint, token string) blockd.WriteStore {
				return blockd.NewClient(ep.URL, func(cas.Op) (string, error) { return token, nil }, nil)
			}}},
		})
		return e.Mount(t, fusefs.Options{EntryTimeout: 10 * time.Millisecond, AttrTimeout: 10 * time.Millisecond})
	}
	a, b := node("node-a"), node("node-b")

	data := randBytes(21, 5<<20+99)
	if err := os.MkdirAll(filepath.Join(a, "exp/n1"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(a, "exp/n1/memory"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	got, err := os.ReadFile(filepath.Join(b, "exp/n1/memory"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("node b read %d bytes (%v), want node a's %d", len(got), err, len(data))
	}
	// Rewrite in place on b; a sees it after close.
	f, err := os.OpenFile(filepath.Join(b, "exp/n1/memory"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	patch := randBytes(22, 70000)
	if _, err := f.WriteAt(patch, 1<<20+5); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	copy(data[1<<20+5:], patch)
	time.Sleep(20 * time.Millisecond)
	if got, err := os.ReadFile(filepath.Join(a, "exp/n1/memory")); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("node a after b's rewrite: %d bytes (%v)", len(got), err)
	}
	if err := os.Mkdir(filepath.Join(a, "exp/.snapshots/swap1"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(b, "exp/.snapshots/swap1/n1/memory")); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("snapshot through node b: %d bytes (%v)", len(got), err)
	}
}
