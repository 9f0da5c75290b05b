package metad

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"stasis/blockd"
	"stasis/cas"
	"stasis/internal/badgersync"
)

// Durability modes. A power loss cannot be simulated on this machine (no
// dm-flakey, no VM to cut), so these tests check what can be checked: which
// calls sync, that a sync comes after the writes it must cover and before
// what depends on it, that nothing syncs when nothing is unsynced, that the
// background flusher syncs within its window, and that a failed sync
// surfaces and sticks. That a transaction survives SIGKILL unsynced is
// tested with a real process in cmd/metad (TestSIGKILLUnsyncedNamespace).

func openSyncStore(t *testing.T, mode SyncMode, every time.Duration) (*BadgerStore, string) {
	t.Helper()
	dir := t.TempDir()
	o := testBadger(t)
	o.Sync, o.FlushInterval = mode, every
	st, err := OpenBadgerStore(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st, dir
}

func ignoreNoKey(err error) error {
	if errors.Is(err, ErrNoKey) {
		return nil
	}
	return err
}

func setKey(t *testing.T, st Store, k string, v []byte) {
	t.Helper()
	if err := st.Update(context.Background(), func(tx Txn) error { return tx.Set([]byte(k), v) }); err != nil {
		t.Fatal(err)
	}
}

func TestBadgerSyncCommits(t *testing.T) {
	ctx := context.Background()
	st, dir := openSyncStore(t, SyncCommits, time.Hour)
	if st.Unsynced() || st.Syncs() != 0 {
		t.Fatalf("fresh store: unsynced %v, syncs %d", st.Unsynced(), st.Syncs())
	}
	// An update that writes nothing (Release of a linked inode) commits
	// nothing and leaves nothing to sync.
	if err := st.Update(ctx, func(tx Txn) error { _, err := tx.Get([]byte("x")); return ignoreNoKey(err) }); err != nil || st.Unsynced() {
		t.Fatalf("update without writes: %v, unsynced %v", err, st.Unsynced())
	}
	if err := st.Sync(ctx); err != nil || st.Syncs() != 0 {
		t.Fatalf("sync with nothing written: %v, %d disk syncs; want none", err, st.Syncs())
	}
	for i := range 100 {
		setKey(t, st, fmt.Sprintf("k%03d", i), []byte("v"))
	}
	if !st.Unsynced() || st.Syncs() != 0 {
		t.Fatalf("after 100 updates: unsynced %v, syncs %d; want unsynced and no sync", st.Unsynced(), st.Syncs())
	}
	if err := st.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if st.Unsynced() || st.Syncs() != 1 {
		t.Fatalf("after Sync: unsynced %v, syncs %d; want 1 sync", st.Unsynced(), st.Syncs())
	}
	if err := st.Sync(ctx); err != nil || st.Syncs() != 1 {
		t.Fatalf("second Sync without writes: %v, %d syncs; want still 1", err, st.Syncs())
	}
	// Concurrent writers each wait for a sync covering their own write; they
	// share disk syncs, never skip one.
	before := st.Syncs()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 16 {
		wg.Go(func() {
			for i := range 10 {
				k := []byte(fmt.Sprintf("g%02d-%d", g, i))
				if err := st.Update(ctx, func(tx Txn) error { return tx.Set(k, []byte("v")) }); err != nil {
					errs <- err
					return
				}
				if err := st.Sync(ctx); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if st.Unsynced() {
		t.Fatal("unsynced transactions after every writer synced")
	}
	if n := st.Syncs() - before; n < 1 || n > 160 {
		t.Fatalf("%d disk syncs for 160 synced updates", n)
	}
	t.Logf("160 concurrent update+sync pairs took %d disk syncs", st.Syncs()-before)
	// The writes are there after a reopen.
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st2, err := OpenBadgerStore(dir, testBadger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	n := 0
	if err := st2.View(ctx, func(tx Txn) error {
		return tx.Iterate(nil, nil, func(k, _ []byte) error {
			if k[0] == 'k' || k[0] == 'g' {
				n++
			}
			return nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	if n != 260 {
		t.Fatalf("reopened store holds %d of 260 keys", n)
	}
}

// A transaction that puts a value into the value log is synced before
// Update returns (the pointer must not reach the disk without the value).
func TestBadgerSyncBigValue(t *testing.T) {
	st, _ := openSyncStore(t, SyncCommits, time.Hour)
	setKey(t, st, "small", make([]byte, st.vlogMin-1))
	if !st.Unsynced() || st.Syncs() != 0 {
		t.Fatalf("small value: unsynced %v, syncs %d; want unsynced", st.Unsynced(), st.Syncs())
	}
	setKey(t, st, "big", make([]byte, st.vlogMin))
	if st.Unsynced() || st.Syncs() != 1 || st.vlogDirty.Load() {
		t.Fatalf("value-log value: unsynced %v, syncs %d, vlog dirty %v; want synced at once", st.Unsynced(), st.Syncs(), st.vlogDirty.Load())
	}
}

func TestBadgerFlusher(t *testing.T) {
	st, _ := openSyncStore(t, SyncCommits, 20*time.Millisecond)
	setKey(t, st, "a", []byte("1"))
	deadline := time.Now().Add(10 * time.Second)
	for st.Unsynced() {
		if time.Now().After(deadline) {
			t.Fatal("background flusher did not sync within 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st.Syncs() != 1 {
		t.Fatalf("%d syncs for one unsynced transaction", st.Syncs())
	}
	// Nothing unsynced: the flusher leaves the disk alone.
	time.Sleep(150 * time.Millisecond)
	if st.Syncs() != 1 {
		t.Fatalf("flusher synced %d times with nothing to sync", st.Syncs()-1)
	}
}

func TestBadgerSyncOtherModes(t *testing.T) {
	for _, mode := range []SyncMode{SyncNone, SyncAll} {
		t.Run(mode.String(), func(t *testing.T) {
			st, _ := openSyncStore(t, mode, 0)
			setKey(t, st, "a", []byte("1"))
			if err := st.Sync(context.Background()); err != nil || st.Unsynced() || st.Syncs() != 0 || st.stopFlush != nil {
				t.Fatalf("Sync %v, unsynced %v, syncs %d, flusher %v: want a no-op", err, st.Unsynced(), st.Syncs(), st.stopFlush != nil)
			}
		})
	}
	if _, err := OpenBadgerStore(t.TempDir(), BadgerOptions{Sync: SyncAll + 1}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("unknown sync mode: %v, want ErrInvalid", err)
	}
	if _, err := OpenBadgerStore(t.TempDir(), BadgerOptions{FlushInterval: -time.Second}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("negative flush interval: %v, want ErrInvalid", err)
	}
	for _, s := range []string{"none", "commits", "all"} {
		if m, err := ParseSyncMode(s); err != nil || m.String() != s {
			t.Fatalf("ParseSyncMode(%q) = %v, %v", s, m, err)
		}
	}
	if _, err := ParseSyncMode("always"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("ParseSyncMode(always): %v", err)
	}
}

// After a failed disk sync nobody can tell what reached the disk: the
// error sticks, and commits report it.
func TestBadgerSyncErrorSticks(t *testing.T) {
	ctx := context.Background()
	st, dir := openSyncStore(t, SyncCommits, time.Hour)
	blocks := newMemBlocks()
	s, err := Open(Config{Store: st, Keyring: testKeyring(t), Logger: testLogger(t),
		Blocks: []BlockBackend{{Endpoint: Endpoint{Name: "b0", URL: "mem://"}, Store: blocks}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	f, err := s.Create(ctx, CreateRequest{Parent: RootIno, Name: "f", Mode: syscall.S_IFREG | 0o644})
	if err != nil {
		t.Fatal(err)
	}
	st.syncer = badgersync.New(filepath.Join(dir, "gone")) // the next sync cannot list the store
	if err := s.Sync(ctx); err == nil {
		t.Fatal("Sync succeeded though the store could not be synced")
	}
	st.syncer = badgersync.New(dir)
	if _, err := s.Create(ctx, CreateRequest{Parent: RootIno, Name: "g", Mode: syscall.S_IFREG | 0o644}); err != nil {
		t.Fatal(err) // namespace changes still commit (and survive a process crash)
	}
	if err := s.Sync(ctx); err == nil {
		t.Fatal("Sync succeeded after an earlier sync failed")
	}
	d := chunkData(1)
	id := cas.Sum(d)
	if err := blocks.Put(ctx, []blockd.Chunk{{ID: id, Data: cas.Encode(nil, d)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(id)}); err == nil || !strings.Contains(err.Error(), "not synced") {
		t.Fatalf("commit with a broken sync: %v", err)
	}
}

// syncLog wraps a Store, records committed updates and syncs in order, and
// makes Sync fail while err is set.
type syncLog struct {
	Store
	mu     sync.Mutex
	events []string
	err    error
}

func (l *syncLog) add(ev string) { l.mu.Lock(); l.events = append(l.events, ev); l.mu.Unlock() }

func (l *syncLog) Update(ctx context.Context, fn func(Txn) error) error {
	err := l.Store.Update(ctx, fn)
	if err == nil {
		l.add("update")
	}
	return err
}

func (l *syncLog) Sync(context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, "sync")
	return l.err
}

func (l *syncLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	ev := l.events
	l.events = nil
	return ev
}

// deleteLog is a memBlocks that records deletes in a syncLog.
type deleteLog struct {
	*memBlocks
	log *syncLog
}

func (d deleteLog) Delete(ctx context.Context, ids []cas.ChunkID) error {
	d.log.add("blockd-delete")
	return d.memBlocks.Delete(ctx, ids)
}

func countOf(ev []string, what string) int {
	n := 0
	for _, e := range ev {
		if e == what {
			n++
		}
	}
	return n
}

// TestServiceSyncPoints checks which Service calls sync: namespace changes
// do not; commits, snapshot creation and deletion, Sync itself and GC (before
// it deletes chunks from blockd) do, after the writes they cover.
func TestServiceSyncPoints(t *testing.T) {
	ctx := context.Background()
	lg := &syncLog{Store: NewMemStore()}
	blocks := newMemBlocks()
	s, err := Open(Config{Store: lg, Keyring: testKeyring(t), Logger: testLogger(t),
		Blocks: []BlockBackend{{Endpoint: Endpoint{Name: "b0", URL: "mem://"}, Store: deleteLog{blocks, lg}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	lg.take()

	// Namespace changes: no sync.
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	dir, err := s.Create(ctx, CreateRequest{Parent: RootIno, Name: "d", Mode: syscall.S_IFDIR | 0o755})
	must(err)
	f, err := s.Create(ctx, CreateRequest{Parent: dir.Ino, Name: "f", Mode: syscall.S_IFREG | 0o644})
	must(err)
	_, err = s.Create(ctx, CreateRequest{Parent: dir.Ino, Name: "l", Mode: syscall.S_IFLNK | 0o777, Target: "f"})
	must(err)
	mode, now := uint32(0o600), time.Unix(1_700_000_000, 0)
	_, err = s.SetAttr(ctx, f.Ino, SetAttrRequest{Mode: &mode, Mtime: &now})
	must(err)
	must(s.SetXattr(ctx, f.Ino, "user.a", []byte("1"), 0))
	must(s.RemoveXattr(ctx, f.Ino, "user.a"))
	_, err = s.Link(ctx, f.Ino, RootIno, "hard")
	must(err)
	must(s.Rename(ctx, dir.Ino, "l", RootIno, "l2", 0))
	must(s.Unlink(ctx, RootIno, "l2"))
	_, err = s.Create(ctx, CreateRequest{Parent: RootIno, Name: "e", Mode: syscall.S_IFDIR | 0o755})
	must(err)
	must(s.Rmdir(ctx, RootIno, "e"))
	ev := lg.take()
	if countOf(ev, "sync") != 0 || countOf(ev, "update") < 11 {
		t.Fatalf("namespace changes: events %v; want updates and no sync", ev)
	}

	// A commit syncs after its last update.
	d := chunkData(7)
	id := cas.Sum(d)
	must(blocks.Put(ctx, []blockd.Chunk{{ID: id, Data: cas.Encode(nil, d)}}))
	_, err = s.Commit(ctx, CommitRequest{Ino: f.Ino, Manifest: manifestOf(id)})
	must(err)
	if ev := lg.take(); len(ev) < 2 || ev[len(ev)-1] != "sync" || ev[len(ev)-2] != "update" || countOf(ev, "sync") != 1 {
		t.Fatalf("commit: events %v; want update(s) then one sync", ev)
	}

	// Snapshots.
	_, err = s.CreateSnapshot(ctx, dir.Ino, "s1")
	must(err)
	if ev := lg.take(); len(ev) == 0 || ev[len(ev)-1] != "sync" || countOf(ev, "sync") != 1 {
		t.Fatalf("snapshot create: events %v; want a sync last", ev)
	}
	must(s.DeleteSnapshot(ctx, dir.Ino, "s1"))
	if ev := lg.take(); len(ev) < 2 || ev[0] != "update" || ev[1] != "sync" {
		t.Fatalf("snapshot delete: events %v; want the deletion's update, then a sync", ev)
	}

	// Explicit Sync.
	must(s.Sync(ctx))
	if ev := lg.take(); len(ev) != 1 || ev[0] != "sync" {
		t.Fatalf("Sync: events %v", ev)
	}

	// GC syncs the unlinks that killed a chunk before blockd deletes it; a
	// failed sync deletes nothing.
	must(s.Unlink(ctx, dir.Ino, "f"))
	must(s.Unlink(ctx, RootIno, "hard"))
	lg.take()
	lg.err = errors.New("disk on fire")
	if _, err := s.GC(ctx); err == nil || !blocks.has(id) {
		t.Fatalf("GC with a failing sync: %v, chunk still in blockd %v; want an error and the chunk kept", err, blocks.has(id))
	}
	if ev := lg.take(); countOf(ev, "blockd-delete") != 0 {
		t.Fatalf("GC deleted from blockd after a failed sync: %v", ev)
	}
	if err := s.Sync(ctx); err == nil {
		t.Fatal("Sync hid the store's sync error")
	}
	if _, err := s.CreateSnapshot(ctx, RootIno, "s2"); err == nil {
		t.Fatal("CreateSnapshot hid the store's sync error")
	}
	lg.err = nil
	lg.take()
	n, err := s.GC(ctx)
	must(err)
	ev = lg.take()
	del := -1
	for i, e := range ev {
		if e == "blockd-delete" {
			del = i
			break
		}
	}
	if n != 1 || del < 1 || ev[del-1] != "sync" {
		t.Fatalf("GC deleted %d; events %v; want a sync right before the blockd delete", n, ev)
	}
}

// TestSyncHTTP: POST /v1/sync syncs the daemon's store, and /metrics shows
// the store's sync state.
func TestSyncHTTP(t *testing.T) {
	ctx := context.Background()
	st, _ := openSyncStore(t, SyncCommits, time.Hour)
	e := &env{clock: newClock(), kr: testKeyring(t)}
	b := newMemBlocks()
	e.blocks = []*memBlocks{b}
	s, err := Open(Config{Store: st, Keyring: e.kr, Logger: testLogger(t),
		Blocks: []BlockBackend{{Endpoint: Endpoint{Name: "b0", URL: "mem://"}, Store: b}}})
	if err != nil {
		t.Fatal(err)
	}
	e.s = s
	defer s.Close()
	c, ts := httpEnv(t, e)
	if _, err := c.Create(ctx, CreateRequest{Parent: RootIno, Name: "f", Mode: syscall.S_IFREG | 0o644}); err != nil {
		t.Fatal(err)
	}
	metric := func(name string) string {
		t.Helper()
		r, err := ts.Client().Get(ts.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer r.Body.Close()
		body, _ := io.ReadAll(r.Body)
		for _, line := range strings.Split(string(body), "\n") {
			if v, ok := strings.CutPrefix(line, name+" "); ok {
				return v
			}
		}
		t.Fatalf("no metric %s", name)
		return ""
	}
	if got := metric("metad_store_unsynced"); got != "1" {
		t.Fatalf("metad_store_unsynced = %s after a create, want 1", got)
	}
	before := st.Syncs()
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if st.Unsynced() || st.Syncs() != before+1 {
		t.Fatalf("after POST /v1/sync: unsynced %v, %d new syncs", st.Unsynced(), st.Syncs()-before)
	}
	if got := metric("metad_store_unsynced"); got != "0" {
		t.Fatalf("metad_store_unsynced = %s after sync, want 0", got)
	}
	if got := metric("metad_store_syncs_total"); got != fmt.Sprint(st.Syncs()) {
		t.Fatalf("metad_store_syncs_total = %s, want %d", got, st.Syncs())
	}
	// A bad body is refused like on every endpoint.
	req, _ := http.NewRequest(http.MethodPost, ts.URL+"/v1/sync", strings.NewReader("{}"))
	r, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("sync without a token: status %d", r.StatusCode)
	}
}

// TestBadgerValueLogGCSyncs: in SyncCommits mode a value-log GC that moves
// values syncs them before the old file may go (an iterator holds it), and
// the values read back, also after a reopen.
func TestBadgerValueLogGCSyncs(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	o := testBadger(t)
	o.Sync, o.FlushInterval = SyncCommits, time.Hour
	o.ValueLogFileSize, o.MemTableSize = 1<<20, 8<<20
	var st *BadgerStore
	var big []byte
	// Versions of a value-log value spread over several table flushes (each
	// reopen flushes the memtable), so compaction drops the old ones and
	// records their value-log space as garbage.
	for round := range 8 {
		var err error
		if st, err = OpenBadgerStore(dir, o); err != nil {
			t.Fatal(err)
		}
		big = make([]byte, st.vlogMin+10)
		for i := range 2 {
			big[0], big[1] = byte(round), byte(i)
			setKey(t, st, "big", big)
		}
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
	}
	vlogs := func() int {
		m, err := filepath.Glob(filepath.Join(dir, "*.vlog"))
		if err != nil {
			t.Fatal(err)
		}
		return len(m)
	}
	st, err := OpenBadgerStore(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { st.Close() }()
	files := vlogs()
	rewrote := false
	for range 50 {
		if err := st.db.Flatten(1); err != nil {
			t.Fatal(err)
		}
		before := st.Syncs()
		err := st.runValueLogGC()
		if err == nil {
			rewrote = true
			if st.Syncs() != before+1 || st.Unsynced() {
				t.Fatalf("value-log GC rewrote without a sync: %d syncs, unsynced %v", st.Syncs()-before, st.Unsynced())
			}
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !rewrote {
		t.Fatal("badger never rewrote a value-log file; the test did not exercise the GC")
	}
	if n := vlogs(); n >= files {
		t.Fatalf("%d value-log files after GC, %d before: the rewritten file was not deleted when the iterator closed", n, files)
	}
	check := func(st *BadgerStore) {
		t.Helper()
		if err := st.View(ctx, func(tx Txn) error {
			v, err := tx.Get([]byte("big"))
			if err == nil && (len(v) != len(big) || v[0] != big[0] || v[1] != big[1]) {
				err = fmt.Errorf("value of %d bytes starting %v, want %d starting %v", len(v), v[:2], len(big), big[:2])
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	check(st)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if st, err = OpenBadgerStore(dir, o); err != nil {
		t.Fatal(err)
	}
	check(st)
}
