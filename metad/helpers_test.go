package metad

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"stasis/blockd"
	"stasis/cas"
)

// memBlocks is a tiny in-memory blockd.PruneStore for unit tests.
type memBlocks struct {
	mu      sync.Mutex
	chunks  map[cas.ChunkID][]byte
	deletes int
	fail    error // returned by every call when set
}

func newMemBlocks() *memBlocks { return &memBlocks{chunks: map[cas.ChunkID][]byte{}} }

var _ blockd.PruneStore = (*memBlocks)(nil)

func (m *memBlocks) Get(_ context.Context, id cas.ChunkID) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return nil, m.fail
	}
	b, ok := m.chunks[id]
	if !ok {
		return nil, blockd.ErrNotFound
	}
	return slices.Clone(b), nil
}

func (m *memBlocks) Missing(_ context.Context, ids []cas.ChunkID) ([]cas.ChunkID, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return nil, m.fail
	}
	var out []cas.ChunkID
	for _, id := range ids {
		if _, ok := m.chunks[id]; !ok {
			out = append(out, id)
		}
	}
	return out, nil
}

func (m *memBlocks) Put(_ context.Context, cs []blockd.Chunk) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	for _, c := range cs {
		m.chunks[c.ID] = slices.Clone(c.Data)
	}
	return nil
}

func (m *memBlocks) Delete(_ context.Context, ids []cas.ChunkID) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	for _, id := range ids {
		if _, ok := m.chunks[id]; ok {
			m.deletes++
		}
		delete(m.chunks, id)
	}
	return nil
}

func (m *memBlocks) List(_ context.Context, fn func(blockd.ChunkInfo) error) error {
	m.mu.Lock()
	ids := make([]cas.ChunkID, 0, len(m.chunks))
	for id := range m.chunks {
		ids = append(ids, id)
	}
	m.mu.Unlock()
	slices.SortFunc(ids, func(a, b cas.ChunkID) int { return slices.Compare(a[:], b[:]) })
	for _, id := range ids {
		if err := fn(blockd.ChunkInfo{ID: id}); err != nil {
			return err
		}
	}
	return nil
}

func (m *memBlocks) has(id cas.ChunkID) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.chunks[id]
	return ok
}

func (m *memBlocks) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.chunks)
}

// testClock is a settable clock.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *testClock { return &testClock{t: time.Unix(1_800_000_000, 0)} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func testKeyring(t testing.TB) *cas.Keyring {
	t.Helper()
	k, err := cas.ParseKeyring(cas.NewSecretFile(1))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// testBadger are small badger options for tests.
func testBadger(t testing.TB) BadgerOptions {
	return BadgerOptions{MemTableSize: 16 << 20, BlockCacheSize: 4 << 20, IndexCacheSize: 2 << 20, ValueLogFileSize: 16 << 20, Logger: testLogger(t)}
}

// testStore, when set, opens the store of every newEnv in place of memory
// or badger: it returns a function that opens the env's store, called again
// by reopen on the same data. RunServiceSuite (export_test.go) sets it to
// run the service tests on another backend.
var testStore func(t testing.TB) func() (Store, error)

type env struct {
	reopenStore func() (Store, error) // with testStore
	s           *Service
	blocks      []*memBlocks
	clock       *testClock
	kr          *cas.Keyring
	dir         string
}

// newEnv opens a Service on a badger store (or memory when mem) with n
// in-memory blockd backends.
func newEnv(t testing.TB, mem bool, n int) *env {
	t.Helper()
	e := &env{clock: newClock(), kr: testKeyring(t)}
	cfg := Config{Keyring: e.kr, Now: e.clock.Now, Logger: testLogger(t), TokenTTL: time.Minute}
	switch {
	case testStore != nil:
		e.reopenStore = testStore(t)
		st, err := e.reopenStore()
		if err != nil {
			t.Fatal(err)
		}
		cfg.Store = st
	case mem:
		cfg.Store = NewMemStore()
	default:
		e.dir = t.TempDir()
		cfg.Dir, cfg.Badger = e.dir, testBadger(t)
	}
	for i := range n {
		b := newMemBlocks()
		e.blocks = append(e.blocks, b)
		cfg.Blocks = append(cfg.Blocks, BlockBackend{Endpoint: Endpoint{Name: fmt.Sprintf("b%d", i), URL: "mem://"}, Store: b})
	}
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.s = s
	t.Cleanup(func() { e.s.Close() })
	return e
}

// reopen closes and reopens the service on the same badger dir and blocks.
func (e *env) reopen(t testing.TB) {
	t.Helper()
	if err := e.s.Close(); err != nil {
		t.Fatal(err)
	}
	cfg := e.s.cfg
	cfg.Store, cfg.Dir = nil, e.dir
	if e.reopenStore != nil {
		st, err := e.reopenStore()
		if err != nil {
			t.Fatal(err)
		}
		cfg.Store, cfg.Dir = st, ""
	}
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.s = s
}

// put stores raw chunks in their placed blockd and returns their IDs.
func (e *env) put(t testing.TB, datas ...[]byte) []cas.ChunkID {
	t.Helper()
	var ids []cas.ChunkID
	for _, d := range datas {
		id := cas.Sum(d)
		b := e.blocks[e.s.Place(id)]
		if err := b.Put(context.Background(), []blockd.Chunk{{ID: id, Data: cas.Encode(nil, d)}}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

func (e *env) has(id cas.ChunkID) bool { return e.blocks[e.s.Place(id)].has(id) }

// manifestOf builds a fixed:4k manifest whose extents are the given chunks
// of 4 KiB each.
func manifestOf(ids ...cas.ChunkID) cas.Manifest {
	m := cas.Manifest{Policy: cas.Fixed(4096), Size: uint64(len(ids)) * 4096}
	for i, id := range ids {
		m.Extents = append(m.Extents, cas.Extent{Offset: uint64(i) * 4096, Length: 4096, ID: id})
	}
	return m
}

func chunkData(i int) []byte {
	b := make([]byte, 4096)
	copy(b, fmt.Sprintf("chunk %d", i))
	return b
}

func (e *env) mkfile(t testing.TB, parent Ino, name string) Attr {
	t.Helper()
	a, err := e.s.Create(context.Background(), CreateRequest{Parent: parent, Name: name, Mode: syscall.S_IFREG | 0o644})
	if err != nil {
		t.Fatalf("create %q: %v", name, err)
	}
	return a
}

func (e *env) mkdir(t testing.TB, parent Ino, name string) Attr {
	t.Helper()
	a, err := e.s.Create(context.Background(), CreateRequest{Parent: parent, Name: name, Mode: syscall.S_IFDIR | 0o755})
	if err != nil {
		t.Fatalf("mkdir %q: %v", name, err)
	}
	return a
}

// fsck runs the checker on the service's store and fails on problems.
func (e *env) fsckClean(t testing.TB) {
	t.Helper()
	rep, err := Fsck(context.Background(), e.s.Store(), FsckOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) > 0 {
		t.Fatalf("fsck found %d problems:\n%s", len(rep.Problems), rep)
	}
}

// referencedPresent checks that every chunk with a reference count is in
// its blockd: GC never deleted a referenced chunk.
func (e *env) referencedPresent(t testing.TB) {
	t.Helper()
	n := 0
	must(t, e.s.Store().View(context.Background(), func(tx Txn) error {
		return tx.Iterate([]byte{kChunk}, nil, func(k, _ []byte) error {
			id, err := cas.ChunkIDFromBytes(k[1:])
			if err != nil {
				return err
			}
			if !e.has(id) {
				return fmt.Errorf("referenced chunk %s is not in blockd", id.Short())
			}
			n++
			return nil
		})
	}))
	if testing.Verbose() {
		t.Logf("%d referenced chunks all present", n)
	}
}
