package fusefs_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"stasis/blockd"
	"stasis/cas"
	"stasis/casfs"
	"stasis/casfs/embed"
	"stasis/casfs/fusefs"
	"stasis/casfs/internal/testenv"
	"stasis/internal/serve"
	"stasis/metad"
)

// countingStore counts the Puts that reach a block store.
type countingStore struct {
	blockd.WriteStore
	puts *atomic.Int32
}

func (c countingStore) Put(ctx context.Context, chunks []blockd.Chunk) error {
	c.puts.Add(1)
	return c.WriteStore.Put(ctx, chunks)
}

// embedded is an embedded-mode mount (embed.Open under t.TempDir, as
// `casfs mount --data` runs it) whose block store holds quota bytes of
// packs, with the garbage collector's timer off: the test drives GC. It
// counts the puts that reach the block store and the Reclaim runs.
type embedded struct {
	st       *embed.Stores
	mnt      string
	puts     atomic.Int32
	reclaims atomic.Int32
}

func mountEmbedded(t *testing.T, quota int64, reclaim bool) *embedded {
	t.Helper()
	st, err := embed.Open(embed.Config{Dir: t.TempDir(), Small: true, GCInterval: -1, MaxBlockBytes: quota, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	m := &embedded{st: st}
	cfg := casfs.Config{Transport: casfs.StoreTransport{Store: countingStore{st.Blocks, &m.puts}}, StagingDir: st.StagingDir}
	if reclaim {
		cfg.Reclaim = func(ctx context.Context) error {
			m.reclaims.Add(1)
			return st.Reclaim(ctx)
		}
	}
	e := testenv.New(t, testenv.Options{Meta: st.Meta, FS: cfg})
	m.mnt = e.Mount(t, fusefsOptions())
	return m
}

// fillUntilFull writes 2 MiB files of random bytes until one fails, and
// returns the names written and the error (nil if max files fit).
func fillUntilFull(t *testing.T, dir string, seed uint64, max int) ([]string, error) {
	t.Helper()
	var names []string
	for i := range max {
		name := filepath.Join(dir, fmt.Sprintf("f%d-%d", seed, i))
		if err := os.WriteFile(name, randBytes(seed*1000+uint64(i), 2<<20), 0o644); err != nil {
			os.Remove(name)
			return names, err
		}
		names = append(names, name)
	}
	return names, nil
}

// TestEmbeddedFullStoreReclaims: an embedded store fills up (ENOSPC);
// once its files are deleted, writes succeed again on the same mount: the
// write that finds the store full runs one garbage collection pass (metad
// deletes the dead chunks, the pack being written is compacted away) and
// tries again. Before, embedded mode never collected garbage and
// compaction skipped the pack being written: the store stayed full.
func TestEmbeddedFullStoreReclaims(t *testing.T) {
	m := mountEmbedded(t, 24<<20, true)
	names, err := fillUntilFull(t, m.mnt, 1, 100)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("filling the store: %d files, then %v; want ENOSPC", len(names), err)
	}
	if len(names) < 4 {
		t.Fatalf("only %d files fit in the quota", len(names))
	}
	full := m.reclaims.Load()
	if full == 0 {
		t.Fatalf("ENOSPC without a garbage collection pass first")
	}
	for _, n := range names {
		if err := os.Remove(n); err != nil {
			t.Fatal(err)
		}
	}
	again, err := fillUntilFull(t, m.mnt, 2, len(names)-1)
	if err != nil {
		t.Fatalf("after deleting every file, %d of %d writes succeeded, then: %v", len(again), len(names)-1, err)
	}
	if n := m.reclaims.Load() - full; n < 1 || n > 2 {
		t.Fatalf("%d garbage collection passes to write again, want 1 (2 at most)", n)
	}
	for _, n := range again {
		if got, err := os.ReadFile(n); err != nil || len(got) != 2<<20 {
			t.Fatalf("reading %s back: %d bytes, %v", n, len(got), err)
		}
	}
}

// TestEmbeddedFullStoreFailsFast: a write to a full embedded store gets
// ENOSPC after one put and one put after the garbage collection pass, not
// after retrying "out of space" until casfs's retry deadline (30 s, 35
// puts, before).
func TestEmbeddedFullStoreFailsFast(t *testing.T) {
	m := mountEmbedded(t, 8<<20, true)
	names, err := fillUntilFull(t, m.mnt, 3, 100)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("filling the store: %d files, then %v; want ENOSPC", len(names), err)
	}
	before, reclaims := m.puts.Load(), m.reclaims.Load()
	oneMore := filepath.Join(m.mnt, "one-more")
	err = os.WriteFile(oneMore, randBytes(99, 2<<20), 0o644)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("writing to a full store: %v, want ENOSPC", err)
	}
	if puts, runs := m.puts.Load()-before, m.reclaims.Load()-reclaims; puts != 2 || runs != 1 {
		t.Fatalf("ENOSPC after %d puts and %d garbage collection passes, want 2 puts around 1 pass", puts, runs)
	}
	// Space again, so that a flush of the failed file at unmount succeeds.
	for _, n := range append(names, oneMore) {
		if err := os.Remove(n); err != nil {
			t.Fatal(err)
		}
	}
}

// TestFullStoreWithoutReclaimFailsFast: without a Reclaim (as in daemon
// mode), a store refusing a put for lack of space gets exactly one put.
func TestFullStoreWithoutReclaimFailsFast(t *testing.T) {
	e, mnt := mount(t, testenv.Options{})
	e.Blocks.FailPut(fmt.Errorf("blockd: put: %w (%w)", blockd.ErrNoSpace, syscall.ENOSPC))
	err := os.WriteFile(filepath.Join(mnt, "f"), randBytes(5, 1<<20), 0o644)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("writing to a full store: %v, want ENOSPC", err)
	}
	if n := e.Blocks.PutCalls(); n != 1 {
		t.Fatalf("%d puts to a full store, want 1 (no retries)", n)
	}
	// Space again, so that the failed file's flush at unmount succeeds.
	e.Blocks.FailPut(nil)
}

// TestDaemonFullBlockdIsENOSPC: in daemon mode a full blockd answers 507,
// which reaches the writer as ENOSPC (it was EIO), through a real mount
// over metad and blockd servers on 127.0.0.1.
func TestDaemonFullBlockdIsENOSPC(t *testing.T) {
	kr, err := cas.ParseKeyring(cas.NewSecretFile(7))
	if err != nil {
		t.Fatal(err)
	}
	store, _, err := blockd.OpenStore(blockd.StoreConfig{Dir: t.TempDir(), Small: true, GCInterval: -1, MaxBytes: 6 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	bsrv, err := blockd.NewServer(blockd.ServerConfig{Store: store, Keyring: kr, Name: "b1"})
	if err != nil {
		t.Fatal(err)
	}
	burl := serveHTTP(t, bsrv)
	mint := func(op cas.Op) (string, error) {
		return kr.Mint(cas.Claims{Ops: op, Subject: "metad", Scope: "b1", Expiry: time.Now().Add(time.Minute)})
	}
	svc, err := metad.Open(metad.Config{
		Dir:     t.TempDir(),
		Badger:  metad.BadgerOptions{BlockCacheSize: 4 << 20, IndexCacheSize: 2 << 20, ValueLogFileSize: 16 << 20},
		Keyring: kr,
		Blocks:  []metad.BlockBackend{{Endpoint: metad.Endpoint{Name: "b1", URL: burl}, Store: blockd.NewClient(burl, mint, nil)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	msrv, err := metad.NewServer(svc, metad.ServerConfig{Keyring: kr})
	if err != nil {
		t.Fatal(err)
	}
	murl := serveHTTP(t, msrv)
	e := testenv.New(t, testenv.Options{
		Meta: metad.NewClient(murl, kr, "node", nil),
		FS: casfs.Config{Transport: casfs.ClientTransport{New: func(ep metad.Endpoint, token string) blockd.WriteStore {
			return blockd.NewClient(ep.URL, func(cas.Op) (string, error) { return token, nil }, nil)
		}}},
	})
	mnt := e.Mount(t, fusefs.Options{})
	names, err := fillUntilFull(t, mnt, 4, 100)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("filling blockd: %d files, then %v; want ENOSPC", len(names), err)
	}
	if len(names) == 0 {
		t.Fatalf("nothing fit in blockd's quota")
	}
}

// serveHTTP serves h with package serve (as the daemons do) on 127.0.0.1,
// a random port, until the test ends, and returns its URL.
func serveHTTP(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s, err := serve.New(testenv.Logger(t), ln, h, serve.Options{})
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
	return "http://" + s.Addr()
}
