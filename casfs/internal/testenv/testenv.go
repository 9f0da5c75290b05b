// Package testenv starts real casfs environments for tests: a metad Service
// (badger under t.TempDir, or memory), an in-process block store that can be
// told to fail or corrupt, a casfs.FS over them and, on request, a real FUSE
// mount. Everything is torn down in t.Cleanup.
package testenv

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"stasis/blockd"
	"stasis/cas"
	"stasis/casfs"
	"stasis/casfs/fusefs"
	"stasis/internal/mountwatch"
	"stasis/metad"
)

// Blocks is an in-memory blockd.PruneStore with fault injection. Stored
// bytes are copied in and out.
type Blocks struct {
	mu       sync.Mutex
	m        map[cas.ChunkID][]byte
	puts     int
	putCalls int
	failPut  error
	failGet  error
	putDelay time.Duration
}

var _ blockd.PruneStore = (*Blocks)(nil)

// NewBlocks returns an empty store.
func NewBlocks() *Blocks { return &Blocks{m: map[cas.ChunkID][]byte{}} }

// FailPut makes every later Put fail with err (nil: succeed again).
func (b *Blocks) FailPut(err error) { b.mu.Lock(); b.failPut = err; b.mu.Unlock() }

// FailGet makes every later Get fail with err (nil: succeed again).
func (b *Blocks) FailGet(err error) { b.mu.Lock(); b.failGet = err; b.mu.Unlock() }

// Corrupt flips a byte in every stored chunk's encoding.
func (b *Blocks) Corrupt() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for id, v := range b.m {
		v[len(v)-1] ^= 0xff
		b.m[id] = v
	}
}

// Len is the number of stored chunks; Puts counts Put calls.
func (b *Blocks) Len() int { b.mu.Lock(); defer b.mu.Unlock(); return len(b.m) }

// PutCalls is the number of Put calls so far, failed ones included.
func (b *Blocks) PutCalls() int { b.mu.Lock(); defer b.mu.Unlock(); return b.putCalls }

// Puts is the number of successful Put calls so far.
func (b *Blocks) Puts() int { b.mu.Lock(); defer b.mu.Unlock(); return b.puts }

// EncodedBytes sums the stored encodings.
func (b *Blocks) EncodedBytes() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	var n int64
	for _, v := range b.m {
		n += int64(len(v))
	}
	return n
}

// Usage implements blockd.UsageStore, so stats through a test mount
// report stored encoded bytes as a real store does.
func (b *Blocks) Usage(ctx context.Context) (blockd.Usage, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	u := blockd.Usage{Chunks: uint64(len(b.m))}
	for _, v := range b.m {
		u.EncodedBytes += uint64(len(v))
	}
	return u, nil
}

func (b *Blocks) Get(ctx context.Context, id cas.ChunkID) ([]byte, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.failGet != nil {
		return nil, b.failGet
	}
	v, ok := b.m[id]
	if !ok {
		return nil, blockd.ErrNotFound
	}
	return append([]byte(nil), v...), nil
}

func (b *Blocks) Missing(ctx context.Context, ids []cas.ChunkID) ([]cas.ChunkID, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []cas.ChunkID
	for _, id := range ids {
		if _, ok := b.m[id]; !ok {
			out = append(out, id)
		}
	}
	return out, nil
}

// SetPutDelay makes every later Put take at least d (a slow disk).
func (b *Blocks) SetPutDelay(d time.Duration) { b.mu.Lock(); b.putDelay = d; b.mu.Unlock() }

func (b *Blocks) Put(ctx context.Context, chunks []blockd.Chunk) error {
	b.mu.Lock()
	d := b.putDelay
	b.mu.Unlock()
	if d > 0 {
		time.Sleep(d)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.putCalls++
	if b.failPut != nil {
		return b.failPut
	}
	b.puts++
	for _, c := range chunks {
		b.m[c.ID] = append([]byte(nil), c.Data...)
	}
	return nil
}

func (b *Blocks) Delete(ctx context.Context, ids []cas.ChunkID) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, id := range ids {
		delete(b.m, id)
	}
	return nil
}

func (b *Blocks) List(ctx context.Context, fn func(blockd.ChunkInfo) error) error {
	b.mu.Lock()
	infos := make([]blockd.ChunkInfo, 0, len(b.m))
	for id, v := range b.m {
		infos = append(infos, blockd.ChunkInfo{ID: id, EncodedSize: len(v)})
	}
	b.mu.Unlock()
	sort.Slice(infos, func(i, j int) bool { return string(infos[i].ID[:]) < string(infos[j].ID[:]) })
	for _, in := range infos {
		if err := fn(in); err != nil {
			return err
		}
	}
	return nil
}

// Options configure an Env.
type Options struct {
	// MetaDir persists metad under this badger directory; empty: a fresh
	// one under t.TempDir(); "mem": metad's memory store.
	MetaDir string
	// Blocks to use (shared between Envs for multi-mount tests); nil: new.
	Blocks *Blocks
	// Meta to use instead of opening one (multi-mount tests).
	Meta metad.API
	// FS tunes the casfs config (Meta, StagingDir and, when nil, Transport
	// are filled in).
	FS casfs.Config
	// Policy is metad's default chunker policy (zero: metad's default).
	Policy cas.Policy
}

// Env is a running casfs logic layer.
type Env struct {
	Meta   metad.API
	Svc    *metad.Service // nil when Options.Meta was given
	Blocks *Blocks
	FS     *casfs.FS
}

// Logger returns a logger writing to the test log at level Warn and above
// (Debug with CASFS_TEST_DEBUG set).
func Logger(t testing.TB) *slog.Logger {
	lvl := slog.LevelWarn
	if os.Getenv("CASFS_TEST_DEBUG") != "" {
		lvl = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: lvl}))
}

// LoggerTo logs everything, at every level, to w.
func LoggerTo(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// OpenMeta opens a metad Service over blocks, closed at cleanup.
func OpenMeta(t testing.TB, dir string, blocks blockd.PruneStore, policy cas.Policy) *metad.Service {
	t.Helper()
	kr, err := cas.ParseKeyring(cas.NewSecretFile(1))
	if err != nil {
		t.Fatal(err)
	}
	cfg := metad.Config{
		Keyring:       kr,
		Blocks:        []metad.BlockBackend{{Endpoint: metad.Endpoint{Name: "local", URL: "inproc:"}, Store: blocks}},
		DefaultPolicy: policy,
	}
	if dir != "" {
		cfg.Dir = dir
		cfg.Badger = metad.BadgerOptions{MemTableSize: 16 << 20, BlockCacheSize: 4 << 20, IndexCacheSize: 2 << 20, ValueLogFileSize: 16 << 20}
	} else {
		cfg.Store = metad.NewMemStore()
	}
	svc, err := metad.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	return svc
}

// New starts an Env; it is closed at cleanup (after any mount on it is gone,
// since cleanups run in reverse order).
func New(t testing.TB, o Options) *Env {
	t.Helper()
	e := &Env{Blocks: o.Blocks, Meta: o.Meta}
	if e.Blocks == nil {
		e.Blocks = NewBlocks()
	}
	if e.Meta == nil {
		dir := o.MetaDir
		switch dir {
		case "":
			dir = t.TempDir()
		case "mem":
			dir = ""
		}
		e.Svc = OpenMeta(t, dir, e.Blocks, o.Policy)
		e.Meta = e.Svc
	}
	cfg := o.FS
	cfg.Meta = e.Meta
	if cfg.Transport == nil {
		cfg.Transport = casfs.StoreTransport{Store: e.Blocks}
	}
	if cfg.StagingDir == "" {
		cfg.StagingDir = t.TempDir()
	}
	if cfg.Logger == nil {
		cfg.Logger = Logger(t)
	}
	fsys, err := casfs.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.FS = fsys
	t.Cleanup(func() {
		if err := fsys.Close(context.Background()); err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("closing casfs: %v", err)
		}
	})
	return e
}

// Mount mounts e.FS at a fresh directory and unmounts it at cleanup (lazily
// if the mount is busy, so a failed test never leaves a mount behind). A
// test that hangs has the mount aborted shortly before the test binary's
// deadline (internal/mountwatch).
func (e *Env) Mount(t testing.TB, opts fusefs.Options) string {
	t.Helper()
	mnt := t.TempDir()
	if opts.Logger == nil {
		opts.Logger = Logger(t)
	}
	srv, err := fusefs.Mount(mnt, e.FS, opts)
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	mountwatch.AbortBeforeDeadline(t, mnt)
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Logf("unmount %s: %v; detaching", mnt, err)
			_ = syscall.Unmount(mnt, syscall.MNT_DETACH)
		}
		srv.Wait()
	})
	return mnt
}
