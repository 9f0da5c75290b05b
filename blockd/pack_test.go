package blockd_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"stasis/blockd"
	"stasis/blockd/storetest"
	"stasis/cas"
)

func openPackCfg(t testing.TB, cfg blockd.PackConfig) *blockd.PackStore {
	t.Helper()
	if cfg.GCInterval == 0 {
		cfg.GCInterval = -1
	}
	cfg.Small = true
	s, err := blockd.OpenPack(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// openPack opens a pack store with small packs (256 KiB), so that tests
// cross pack boundaries.
func openPack(t testing.TB, dir string) *blockd.PackStore {
	return openPackCfg(t, blockd.PackConfig{Dir: dir, PackSize: 256 << 10})
}

func TestPackConformance(t *testing.T) {
	var mu sync.Mutex
	dirs := map[blockd.PruneStore]string{}
	storetest.RunOptions(t, func(t *testing.T) blockd.PruneStore {
		dir := t.TempDir()
		s := openPack(t, dir)
		mu.Lock()
		dirs[s] = dir
		mu.Unlock()
		return s
	}, storetest.Options{Reopen: func(t *testing.T, s blockd.PruneStore) blockd.PruneStore {
		mu.Lock()
		dir := dirs[s]
		mu.Unlock()
		if err := s.(*blockd.PackStore).Close(); err != nil {
			t.Fatal(err)
		}
		s2 := openPack(t, dir)
		mu.Lock()
		dirs[s2] = dir
		mu.Unlock()
		return s2
	}})
}

// The conformance suite again with the default (64 MiB when Small) pack
// size, everything in one pack, written through the page cache instead
// of with O_DIRECT.
func TestPackConformanceBuffered(t *testing.T) {
	storetest.Run(t, func(t *testing.T) blockd.PruneStore {
		return openPackCfg(t, blockd.PackConfig{Dir: t.TempDir(), BufferedWrites: true})
	})
}

// The suite over a store that reads batches with O_DIRECT, written both
// ways (buffered packs have unaligned records and an unaligned end).
func TestPackConformanceDirectReads(t *testing.T) {
	for _, buffered := range []bool{false, true} {
		t.Run(fmt.Sprintf("buffered=%v", buffered), func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) blockd.PruneStore {
				return openPackCfg(t, blockd.PackConfig{Dir: t.TempDir(), PackSize: 256 << 10,
					BufferedWrites: buffered, DirectReads: true})
			})
		})
	}
}

// residentBytes is how much of the file at path is in the page cache.
func residentBytes(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	page := os.Getpagesize()
	vec := make([]byte, (len(m)+page-1)/page)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatal("mincore:", e)
	}
	n := 0
	for _, v := range vec {
		n += int(v&1) * page
	}
	return n
}

// With DirectReads a batched read leaves the pack out of the page cache
// (the packs are written with O_DIRECT, so nothing else puts it there);
// without, the same read fills it.
func TestPackDirectReadsBypassPageCache(t *testing.T) {
	ctx := context.Background()
	for _, direct := range []bool{true, false} {
		t.Run(fmt.Sprintf("directreads=%v", direct), func(t *testing.T) {
			s := openPackCfg(t, blockd.PackConfig{Dir: t.TempDir(), DirectReads: direct})
			chunks := storetest.Chunks(40, 64, 64<<10)
			if err := s.Put(ctx, chunks); err != nil {
				t.Fatal(err)
			}
			pk := lastPack(t, s)
			if n := residentBytes(t, pk.Path); n > 64<<10 {
				t.Skipf("%d bytes of the pack cached after an O_DIRECT write: no O_DIRECT here", n)
			}
			n := 0
			err := s.GetMany(ctx, storetest.IDs(chunks), func(cas.ChunkID, []byte) error { n++; return nil })
			if err != nil || n != len(chunks) {
				t.Fatalf("GetMany = %d chunks, %v", n, err)
			}
			res := residentBytes(t, pk.Path)
			t.Logf("%d of %d bytes cached after the read", res, pk.Size)
			if direct && res > 64<<10 || !direct && res < 2<<20 {
				t.Fatalf("%d bytes of the pack in the page cache after GetMany (direct reads %v)", res, direct)
			}
		})
	}
}

func TestPackReopen(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s := openPack(t, dir)
	chunks := storetest.Chunks(1, 50, 20000)
	for i := 0; i < len(chunks); i += 5 {
		if err := s.Put(ctx, chunks[i:i+5]); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Delete(ctx, storetest.IDs(chunks[:10])); err != nil {
		t.Fatal(err)
	}
	want, wantU := s.Stats(), mustUsage(t, s)
	wantPacks := s.Packs()
	if len(wantPacks) < 3 {
		t.Fatalf("%d packs for ~600 KiB in 256 KiB packs", len(wantPacks))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, chunks[20].ID); !errors.Is(err, blockd.ErrClosed) {
		t.Fatalf("Get after Close = %v", err)
	}
	if err := s.Put(ctx, chunks[:1]); !errors.Is(err, blockd.ErrClosed) {
		t.Fatalf("Put after Close = %v", err)
	}
	s2 := openPack(t, dir)
	storetest.CheckHolds(t, s2, chunks[10:])
	if got := s2.Stats(); got != want {
		t.Fatalf("Stats after reopen = %+v, want %+v", got, want)
	}
	if got := mustUsage(t, s2); got != wantU {
		t.Fatalf("Usage after reopen = %+v, want %+v", got, wantU)
	}
	if got := s2.Packs(); !slices.Equal(got, wantPacks) {
		t.Fatalf("packs after reopen:\n%+v\nwant\n%+v", got, wantPacks)
	}
	// Writing goes on in the last pack.
	if err := s2.Put(ctx, chunks[:10]); err != nil {
		t.Fatal(err)
	}
	storetest.CheckHolds(t, s2, chunks)
}

func mustUsage(t testing.TB, s blockd.UsageStore) blockd.Usage {
	t.Helper()
	u, err := s.Usage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestPackConfig(t *testing.T) {
	for _, cfg := range []blockd.PackConfig{
		{},
		{Dir: t.TempDir(), GCDiscardRatio: 1.5},
		{Dir: t.TempDir(), PackSize: 100},
		{Dir: "/proc/blockd-test", Small: true},
	} {
		if s, err := blockd.OpenPack(cfg); err == nil {
			s.Close()
			t.Errorf("opened with %+v", cfg)
		}
	}
}

func lastPack(t *testing.T, s *blockd.PackStore) blockd.PackInfo {
	t.Helper()
	ps := s.Packs()
	p := ps[len(ps)-1]
	if !p.Current {
		t.Fatalf("last pack %+v is not the current one", p)
	}
	return p
}

// A crash leaves records in the last pack that no index entry names: a
// torn record, and whole records whose index commit never happened. They
// are dropped at open, and nothing unindexed becomes visible.
func TestPackUnindexedTail(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s := openPackCfg(t, blockd.PackConfig{Dir: dir})
	chunks := storetest.Chunks(2, 20, 5000)
	if err := s.Put(ctx, chunks[:10]); err != nil {
		t.Fatal(err)
	}
	p := lastPack(t, s)
	s.Close()

	// Forge a crash: whole records of chunks 10..14 (written and synced,
	// index never committed), then a torn record of chunk 15.
	other := openPackCfg(t, blockd.PackConfig{Dir: t.TempDir()})
	if err := other.Put(ctx, chunks[10:16]); err != nil {
		t.Fatal(err)
	}
	op := lastPack(t, other)
	tail, err := os.ReadFile(op.Path)
	if err != nil {
		t.Fatal(err)
	}
	tail = tail[16 : len(tail)-len(chunks[15].Data)/2] // drop its file header, tear the last record
	f, err := os.OpenFile(p.Path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(tail)
	f.Close()

	s2 := openPackCfg(t, blockd.PackConfig{Dir: dir})
	if got := lastPack(t, s2); got.Size != p.Size {
		t.Fatalf("last pack is %d bytes after reopen, want %d (cut back to its last indexed region)", got.Size, p.Size)
	}
	if fi, _ := os.Stat(p.Path); fi.Size() != p.Size {
		t.Fatalf("pack file is %d bytes, want %d", fi.Size(), p.Size)
	}
	m, err := s2.Missing(ctx, storetest.IDs(chunks))
	if err != nil || !slices.Equal(m, storetest.IDs(chunks[10:])) {
		t.Fatalf("Missing after reopen = %d ids, %v; unindexed records must stay invisible", len(m), err)
	}
	storetest.CheckHolds(t, s2, chunks[:10])
	if err := s2.Put(ctx, chunks[10:]); err != nil {
		t.Fatal(err)
	}
	s2.Close()
	s3 := openPackCfg(t, blockd.PackConfig{Dir: dir})
	storetest.CheckHolds(t, s3, chunks)
}

// A crash right after a new pack file was created, before its header was
// whole: the store starts another pack and loses nothing.
func TestPackTornNewPack(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s := openPack(t, dir)
	chunks := storetest.Chunks(3, 10, 5000)
	if err := s.Put(ctx, chunks); err != nil {
		t.Fatal(err)
	}
	last := lastPack(t, s)
	s.Close()
	torn := filepath.Join(dir, "packs", "99999999.pack")
	if err := os.WriteFile(torn, []byte("STASI"), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = last
	s2 := openPack(t, dir)
	storetest.CheckHolds(t, s2, chunks)
	more := storetest.Chunks(4, 10, 5000)
	if err := s2.Put(ctx, more); err != nil {
		t.Fatalf("put after a torn pack: %v", err)
	}
	storetest.CheckHolds(t, s2, append(slices.Clone(chunks), more...))
	// The torn pack holds nothing and goes at the next compaction.
	if _, err := s2.Compact(ctx, 0.5); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(torn); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("torn empty pack not removed by compaction: %v", err)
	}
	storetest.CheckHolds(t, s2, append(slices.Clone(chunks), more...))
}

// Damage to a pack's structure is an error wrapping ErrPackCorrupt on
// Get: a record header that names another chunk or length (header CRC),
// a pack cut short, a pack file gone. Damaged content (a flipped data
// byte) is what readers catch: the client's GetRaw re-hashes and fails,
// and compaction refuses to move it. Other chunks stay readable.
func TestPackCorruption(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s := openPackCfg(t, blockd.PackConfig{Dir: dir, PackSize: 32 << 10})
	chunks := storetest.Chunks(5, 12, 20000)
	for _, c := range chunks {
		if err := s.Put(ctx, []blockd.Chunk{c}); err != nil {
			t.Fatal(err)
		}
	}
	packs := s.Packs()
	if len(packs) < 4 {
		t.Fatalf("%d packs, want at least 4", len(packs))
	}
	// Where each chunk is: the records are in put order, so find them
	// by their ID in the files.
	where := func(id cas.ChunkID) (string, int64) {
		for _, p := range s.Packs() {
			b, _ := os.ReadFile(p.Path)
			if i := bytes.Index(b, id[:]); i >= 0 {
				return p.Path, int64(i - 8) // the ID is at offset 8 of its record
			}
		}
		t.Fatalf("chunk %s not in any pack", id.Short())
		return "", 0
	}
	patch := func(path string, off int64, b []byte) {
		t.Helper()
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	// 1. A flipped data byte.
	path, off := where(chunks[0].ID)
	old := make([]byte, 1)
	f, _ := os.Open(path)
	f.ReadAt(old, off+44+100)
	f.Close()
	patch(path, off+44+100, []byte{old[0] ^ 0x20})
	// 2. A record header naming another chunk.
	path, off = where(chunks[2].ID)
	patch(path, off+8, chunks[3].ID[:])
	// 3. A pack cut short in the middle of a record.
	path, off = where(chunks[5].ID)
	if err := os.Truncate(path, off+44+10); err != nil {
		t.Fatal(err)
	}

	// 4. A damaged length field.
	path, off = where(chunks[7].ID)
	patch(path, off+4, []byte{0xff})

	for _, i := range []int{2, 5, 7} {
		if _, err := s.Get(ctx, chunks[i].ID); !errors.Is(err, blockd.ErrPackCorrupt) {
			t.Errorf("Get of damaged chunk %d = %v, want ErrPackCorrupt", i, err)
		} else {
			t.Logf("chunk %d: %v", i, err)
		}
	}
	if got, err := s.Get(ctx, chunks[0].ID); err != nil || bytes.Equal(got, chunks[0].Data) {
		t.Errorf("Get of the chunk with a flipped byte = %v (the store hands out what it has)", err)
	}
	// Through Verify and a server: the client's check catches it.
	ts := startServer(t, blockd.Verify(s).(blockd.PruneStore), 0)
	c := blockd.NewClient(ts.url, tokenFor(0, "b1"), testHTTP)
	if _, err := c.GetRaw(ctx, nil, chunks[0].ID); !errors.Is(err, cas.ErrHashMismatch) && !errors.Is(err, cas.ErrCorruptChunk) {
		t.Errorf("client read of a chunk with a flipped byte = %v, want a hash mismatch", err)
	}
	if got, err := c.GetRaw(ctx, nil, chunks[1].ID); err != nil || len(got) != 20000 {
		t.Errorf("undamaged chunk through the server: %d bytes, %v", len(got), err)
	}
	// 5. A pack file gone (found at the next open).
	path, _ = where(chunks[8].ID)
	s.Close()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	s2 := openPackCfg(t, blockd.PackConfig{Dir: dir, PackSize: 32 << 10})
	if _, err := s2.Get(ctx, chunks[8].ID); !errors.Is(err, blockd.ErrPackCorrupt) {
		t.Errorf("Get of a chunk in a removed pack = %v, want ErrPackCorrupt", err)
	}
	for _, i := range []int{1, 3, 4, 6, 10, 11} {
		if got, err := s2.Get(ctx, chunks[i].ID); err != nil || !bytes.Equal(got, chunks[i].Data) {
			t.Errorf("undamaged chunk %d: %v", i, err)
		}
	}
	// Compaction does not turn damage into loss: a pack with a damaged
	// live record stays.
	if err := s2.Delete(ctx, storetest.IDs(chunks[1:2])); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Compact(ctx, 0.01); !errors.Is(err, blockd.ErrPackCorrupt) {
		t.Errorf("Compact over a damaged record = %v, want ErrPackCorrupt", err)
	}
	if _, err := os.Stat(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
}

// GetMany reads runs of neighbouring records across pack boundaries and
// region padding, delivers in request order, and turns a damaged record
// into an error, never into wrong bytes.
func TestPackGetMany(t *testing.T) {
	ctx := context.Background()
	for _, mode := range []struct{ buffered, direct bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
		t.Run(fmt.Sprintf("buffered=%v/directreads=%v", mode.buffered, mode.direct), func(t *testing.T) {
			s := openPackCfg(t, blockd.PackConfig{Dir: t.TempDir(), PackSize: 96 << 10,
				BufferedWrites: mode.buffered, DirectReads: mode.direct})
			chunks := storetest.Chunks(31, 60, 7000)
			for i := 0; i < len(chunks); i += 3 { // regions of 3 records
				if err := s.Put(ctx, chunks[i:i+3]); err != nil {
					t.Fatal(err)
				}
			}
			if n := len(s.Packs()); n < 4 {
				t.Fatalf("%d packs, want at least 4", n)
			}
			byID := map[cas.ChunkID][]byte{}
			for _, c := range chunks {
				byID[c.ID] = c.Data
			}
			check := func(ids []cas.ChunkID) ([]cas.ChunkID, error) {
				var got []cas.ChunkID
				err := s.GetMany(ctx, ids, func(id cas.ChunkID, enc []byte) error {
					if !bytes.Equal(enc, byID[id]) {
						t.Fatalf("chunk %s: wrong bytes", id.Short())
					}
					got = append(got, id)
					return nil
				})
				return got, err
			}
			// Every chunk, in store order and shuffled.
			ids := storetest.IDs(chunks)
			if got, err := check(ids); err != nil || !slices.Equal(got, ids) {
				t.Fatalf("GetMany of all = %d chunks, %v", len(got), err)
			}
			rand.New(rand.NewPCG(1, 2)).Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
			if got, err := check(ids); err != nil || !slices.Equal(got, ids) {
				t.Fatalf("GetMany shuffled = %d chunks, %v", len(got), err)
			}
			// A deleted (absent) chunk in the middle.
			if err := s.Delete(ctx, []cas.ChunkID{chunks[10].ID}); err != nil {
				t.Fatal(err)
			}
			ids = storetest.IDs(chunks[5:20])
			got, err := check(ids)
			if !errors.Is(err, blockd.ErrNotFound) || len(got) != 14 || slices.Contains(got, chunks[10].ID) {
				t.Fatalf("GetMany with a deleted chunk = %d chunks, %v", len(got), err)
			}
			// A damaged record header inside a run: an error, and no
			// chunk after it is delivered from a run that held it.
			pk := s.Packs()[1]
			b, err := os.ReadFile(pk.Path)
			if err != nil {
				t.Fatal(err)
			}
			victim := -1
			for i, c := range chunks {
				if j := bytes.Index(b, c.ID[:]); j >= 0 && i > 0 && i != 10 {
					victim = i
					f, err := os.OpenFile(pk.Path, os.O_WRONLY, 0)
					if err != nil {
						t.Fatal(err)
					}
					f.WriteAt([]byte{b[j-8] ^ 1}, int64(j-8)) // the record magic
					f.Close()
					break
				}
			}
			if victim < 0 {
				t.Fatal("no chunk found in the second pack")
			}
			ids = storetest.IDs(chunks[victim-1 : victim+2])
			got, err = check(ids)
			if !errors.Is(err, blockd.ErrPackCorrupt) || slices.Contains(got, chunks[victim].ID) {
				t.Fatalf("GetMany over a damaged record = %d chunks, %v; want ErrPackCorrupt", len(got), err)
			}
			t.Logf("damaged record: %v", err)
			// The other chunks still read, alone or batched.
			ids = append(storetest.IDs(chunks[:victim]), storetest.IDs(chunks[victim+1:])...)
			ids = slices.DeleteFunc(ids, func(id cas.ChunkID) bool { return id == chunks[10].ID })
			if got, err := check(ids); err != nil || len(got) != len(ids) {
				t.Fatalf("GetMany of undamaged chunks = %d of %d, %v", len(got), len(ids), err)
			}
			// Canceled.
			cctx, cancel := context.WithCancel(ctx)
			cancel()
			if err := s.GetMany(cctx, ids, func(cas.ChunkID, []byte) error { return nil }); !errors.Is(err, context.Canceled) {
				t.Fatalf("GetMany with a canceled ctx = %v", err)
			}
		})
	}
}

// Compaction reclaims dead bytes and removes empty packs; what is live
// survives it and a restart.
func TestPackCompaction(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s := openPackCfg(t, blockd.PackConfig{Dir: dir, PackSize: 256 << 10})
	chunks := storetest.Chunks(6, 120, 16<<10)
	for i := 0; i < len(chunks); i += 10 {
		if err := s.Put(ctx, chunks[i:i+10]); err != nil {
			t.Fatal(err)
		}
	}
	disk := func() (size, dead int64) {
		for _, p := range s.Packs() {
			size += p.Size
			dead += p.DeadBytes()
		}
		return
	}
	before, _ := disk()
	// Delete all of the first 40 (whole packs) and 3 of every 4 after.
	var doomed []cas.ChunkID
	var keep []blockd.Chunk
	for i, c := range chunks {
		if i < 40 || i%4 != 0 {
			doomed = append(doomed, c.ID)
		} else {
			keep = append(keep, c)
		}
	}
	if err := s.Delete(ctx, doomed); err != nil {
		t.Fatal(err)
	}
	_, dead := disk()
	if dead < int64(len(doomed))*(16<<10)/2 {
		t.Fatalf("only %d dead bytes after deleting %d chunks", dead, len(doomed))
	}
	n, err := s.Compact(ctx, 0.5)
	if err != nil {
		t.Fatal(err)
	}
	after, deadAfter := disk()
	t.Logf("compacted %d packs: %d -> %d bytes on disk, dead %d -> %d", n, before, after, dead, deadAfter)
	if n == 0 || after > before/2 {
		t.Fatalf("compaction removed %d packs, %d -> %d bytes", n, before, after)
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "packs"))
	if len(ents) != len(s.Packs()) {
		t.Fatalf("%d files in packs/, store has %d packs", len(ents), len(s.Packs()))
	}
	storetest.CheckHolds(t, s, keep)
	u := mustUsage(t, s)
	if u.Chunks != uint64(len(keep)) {
		t.Fatalf("Usage after compaction = %+v, want %d chunks", u, len(keep))
	}
	s.Close()
	s2 := openPackCfg(t, blockd.PackConfig{Dir: dir, PackSize: 256 << 10})
	storetest.CheckHolds(t, s2, keep)
	if u2 := mustUsage(t, s2); u2 != u {
		t.Fatalf("Usage after reopen = %+v, want %+v", u2, u)
	}
}

// Compaction runs while readers, writers and deleters work: no Get of a
// live chunk fails, and afterwards the store holds exactly what it must.
func TestPackCompactionConcurrent(t *testing.T) {
	ctx := context.Background()
	s := openPackCfg(t, blockd.PackConfig{Dir: t.TempDir(), PackSize: 128 << 10})
	stable := storetest.Chunks(7, 60, 8<<10) // never deleted: read all the time
	doomed := storetest.Chunks(8, 240, 8<<10)
	// Interleave, so every pack has both.
	for i := range stable {
		batch := append([]blockd.Chunk{stable[i]}, doomed[4*i:4*i+4]...)
		if err := s.Put(ctx, batch); err != nil {
			t.Fatal(err)
		}
	}
	fresh := storetest.Chunks(9, 200, 8<<10)
	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	wg.Go(func() { // a batched reader: records move under its runs
		byID := map[cas.ChunkID][]byte{}
		for _, c := range stable {
			byID[c.ID] = c.Data
		}
		for !stop.Load() {
			n := 0
			err := s.GetMany(ctx, storetest.IDs(stable), func(id cas.ChunkID, enc []byte) error {
				n++
				if !bytes.Equal(enc, byID[id]) {
					return fmt.Errorf("GetMany: chunk %s has wrong bytes", id.Short())
				}
				return nil
			})
			if err == nil && n != len(stable) {
				err = fmt.Errorf("GetMany delivered %d of %d chunks", n, len(stable))
			}
			if err != nil {
				errs <- err
				return
			}
		}
	})
	for g := range 3 {
		wg.Go(func() {
			for i := g; !stop.Load(); i++ {
				c := stable[i%len(stable)]
				got, err := s.Get(ctx, c.ID)
				if err != nil || !bytes.Equal(got, c.Data) {
					errs <- err
					return
				}
			}
		})
	}
	wg.Go(func() { // deleter
		for i := 0; i < len(doomed); i += 8 {
			if err := s.Delete(ctx, storetest.IDs(doomed[i:i+8])); err != nil {
				errs <- err
				return
			}
		}
	})
	wg.Go(func() { // writer
		for i := 0; i < len(fresh); i += 4 {
			if err := s.Put(ctx, fresh[i:i+4]); err != nil {
				errs <- err
				return
			}
		}
	})
	compacted := 0
	for range 40 {
		n, err := s.Compact(ctx, 0.3)
		if err != nil {
			t.Fatal(err)
		}
		compacted += n
		time.Sleep(time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("during compaction: %v", err)
	}
	n, err := s.Compact(ctx, 0.3)
	if err != nil {
		t.Fatal(err)
	}
	compacted += n
	t.Logf("%d packs compacted", compacted)
	if compacted == 0 {
		t.Fatal("nothing was compacted")
	}
	storetest.CheckHolds(t, s, append(slices.Clone(stable), fresh...))
	for _, p := range s.Packs() {
		if !p.Current && p.LiveBytes > 0 && float64(p.DeadBytes())/float64(p.Size-16) > 0.3 {
			t.Errorf("pack %d left %d dead of %d after the final compaction", p.Num, p.DeadBytes(), p.Size)
		}
	}
}

// mountTmpfs mounts a tmpfs of size bytes on dir until the test ends.
func mountTmpfs(t *testing.T, dir string, size string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Skipf("cannot mount a tmpfs (%v): the out-of-space test needs root", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
}

// fill puts batches of unique incompressible 64 KiB chunks until a Put
// fails and returns what was acknowledged and the error.
func fill(t *testing.T, s blockd.PruneStore, seed uint64) ([]blockd.Chunk, error) {
	t.Helper()
	block := storetest.Chunks(seed, 2, 64<<10)[1].Data[1:] // random bytes
	var acked []blockd.Chunk
	for i := range 1000 {
		batch := make([]blockd.Chunk, 16)
		for j := range batch {
			raw := bytes.Clone(block)
			binary.LittleEndian.PutUint64(raw, uint64(i*16+j))
			batch[j] = blockd.Chunk{ID: cas.Sum(raw), Data: cas.Encode(nil, raw)}
		}
		if err := s.Put(context.Background(), batch); err != nil {
			return acked, err
		}
		acked = append(acked, batch...)
	}
	t.Fatal("1000 batches of 1 MiB fit on a small file system")
	return nil, nil
}

// The packs' file system fills up: with the margin, Put refuses before
// writing; without it, pwrite fails with ENOSPC (no crash), the failed
// batch is given back, and nothing of it is visible. Deleting and
// compacting makes room again.
func TestPackNoSpace(t *testing.T) {
	ctx := context.Background()
	t.Run("margin", func(t *testing.T) {
		dir := t.TempDir()
		mountTmpfs(t, filepath.Join(dir, "packs"), "24m")
		s := openPackCfg(t, blockd.PackConfig{Dir: dir, PackSize: 4 << 20, MinFreeBytes: 8 << 20})
		acked, err := fill(t, s, 1)
		if !errors.Is(err, blockd.ErrNoSpace) || !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("put on a full file system = %v, want ErrNoSpace and ENOSPC", err)
		}
		var st unix.Statfs_t
		unix.Statfs(filepath.Join(dir, "packs"), &st)
		if free := int64(st.Bavail) * st.Bsize; free < 7<<20 {
			t.Fatalf("only %d bytes left free, want the 8 MiB margin", free)
		}
		t.Logf("%d chunks acknowledged, then: %v", len(acked), err)
		storetest.CheckHolds(t, s, acked)
	})
	for _, buffered := range []bool{false, true} {
		t.Run("enospc/buffered="+strconv.FormatBool(buffered), func(t *testing.T) {
			dir := t.TempDir()
			mountTmpfs(t, filepath.Join(dir, "packs"), "24m")
			s := openPackCfg(t, blockd.PackConfig{Dir: dir, PackSize: 4 << 20, MinFreeBytes: -1, BufferedWrites: buffered})
			acked, err := fill(t, s, 2)
			if !errors.Is(err, blockd.ErrNoSpace) || !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("put on a full file system = %v, want ErrNoSpace and ENOSPC", err)
			}
			t.Logf("%d chunks acknowledged, then: %v", len(acked), err)
			storetest.CheckHolds(t, s, acked)
			// The failed region was given back: the last pack ends at its
			// last region (dead bytes are at most alignment padding).
			p := lastPack(t, s)
			if fi, _ := os.Stat(p.Path); fi.Size() != p.Size || p.DeadBytes() >= 64<<10 {
				t.Fatalf("last pack: file %d bytes, store says %d, %d dead", fi.Size(), p.Size, p.DeadBytes())
			}
			// Free most of it; compaction then makes room for new puts.
			if err := s.Delete(ctx, storetest.IDs(acked[:len(acked)*3/4])); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Compact(ctx, 0.5); err != nil {
				t.Fatal(err)
			}
			more := storetest.Chunks(99, 64, 64<<10)
			if err := s.Put(ctx, more); err != nil {
				t.Fatalf("put after compaction freed space: %v", err)
			}
			storetest.CheckHolds(t, s, append(slices.Clone(acked[len(acked)*3/4:]), more...))
			s.Close()
			s2 := openPackCfg(t, blockd.PackConfig{Dir: dir, PackSize: 4 << 20, MinFreeBytes: -1, BufferedWrites: buffered})
			storetest.CheckHolds(t, s2, append(slices.Clone(acked[len(acked)*3/4:]), more...))
		})
	}
}

// TestPackQuotaCompactsCurrentPack: a store smaller than one pack (the
// embedded case: 256 MiB packs on a small disk) fills up its quota, every
// chunk is deleted, and one compaction makes room again: the current pack,
// all dead, is sealed and removed.
func TestPackQuotaCompactsCurrentPack(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openPackCfg(t, blockd.PackConfig{Dir: dir, PackSize: 64 << 20, MinFreeBytes: -1, MaxBytes: 6 << 20})
	acked, err := fill(t, s, 3)
	if !errors.Is(err, blockd.ErrNoSpace) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("put over the quota = %v, want ErrNoSpace and ENOSPC", err)
	}
	if len(s.Packs()) != 1 || len(acked) == 0 {
		t.Fatalf("%d chunks in %d packs, want some in one", len(acked), len(s.Packs()))
	}
	if err := s.Delete(ctx, storetest.IDs(acked)); err != nil {
		t.Fatal(err)
	}
	if more, err := fill(t, s, 4); len(more) != 0 || !errors.Is(err, blockd.ErrNoSpace) {
		t.Fatalf("after deleting, before compaction: %d chunks stored, then %v; want ErrNoSpace at once (deleted bytes count until compacted)", len(more), err)
	}
	n, err := s.Compact(ctx, 0.5)
	if err != nil || n != 1 {
		t.Fatalf("compaction removed %d packs (%v), want the full current one", n, err)
	}
	more, err := fill(t, s, 5)
	if len(more) < len(acked)*3/4 || !errors.Is(err, blockd.ErrNoSpace) {
		t.Fatalf("after compaction: %d chunks stored (%v), want about the %d of the first fill", len(more), err, len(acked))
	}
	storetest.CheckHolds(t, s, more)
	s.Close()
	s2 := openPackCfg(t, blockd.PackConfig{Dir: dir, PackSize: 64 << 20, MinFreeBytes: -1, MaxBytes: 6 << 20})
	storetest.CheckHolds(t, s2, more)
}

// TestPackGroupCommit: concurrent Puts share syncs.
func TestPackGroupCommit(t *testing.T) {
	s := openPack(t, t.TempDir())
	ctx := context.Background()
	const writers, each = 16, 20
	before := s.Syncs()
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			for _, c := range storetest.Chunks(uint64(1000+g), each, 8<<10) {
				if err := s.Put(ctx, []blockd.Chunk{c}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	syncs := s.Syncs() - before
	t.Logf("%d puts, %d index syncs", writers*each, syncs)
	if syncs < 1 || syncs >= writers*each {
		t.Fatalf("%d puts ran %d syncs; group commit should share them", writers*each, syncs)
	}
}

func TestPackGCLoopStopsOnClose(t *testing.T) {
	s, err := blockd.OpenPack(blockd.PackConfig{Dir: t.TempDir(), Small: true, GCInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	chunks := storetest.Chunks(10, 40, 4000)
	if err := s.Put(ctx, chunks); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // let the loop run a few rounds
	done := make(chan error, 1)
	go func() { done <- s.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close hangs with the compaction loop running")
	}
}

func TestOpenStoreKinds(t *testing.T) {
	ctx := context.Background()
	open := func(dir, kind string) (blockd.DiskStore, string, error) {
		return blockd.OpenStore(blockd.StoreConfig{Dir: dir, Kind: kind, Small: true, GCInterval: -1})
	}
	chunks := storetest.Chunks(11, 4, 3000)

	// A new directory is a pack store by default, and says so.
	dir := filepath.Join(t.TempDir(), "new")
	s, kind, err := open(dir, "")
	if err != nil || kind != blockd.KindPack {
		t.Fatalf("new dir: kind %q, %v", kind, err)
	}
	if _, ok := s.(*blockd.PackStore); !ok {
		t.Fatalf("new dir opened as %T", s)
	}
	if err := s.Put(ctx, chunks); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if b, _ := os.ReadFile(filepath.Join(dir, "STORE")); string(b) != "pack\n" {
		t.Fatalf("STORE = %q", b)
	}
	if _, _, err := open(dir, blockd.KindBadger); !errors.Is(err, blockd.ErrStoreKind) {
		t.Fatalf("pack dir opened as badger: %v", err)
	}
	s, kind, err = open(dir, blockd.KindPack)
	if err != nil || kind != blockd.KindPack {
		t.Fatalf("reopen: %q, %v", kind, err)
	}
	storetest.CheckHolds(t, s, chunks)
	s.Close()

	// A badger directory made before STORE files opens as badger.
	old := t.TempDir()
	b, err := blockd.OpenBadger(blockd.BadgerConfig{Dir: old, Small: true, GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Put(ctx, chunks); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if _, _, err := open(old, blockd.KindPack); !errors.Is(err, blockd.ErrStoreKind) {
		t.Fatalf("legacy badger dir opened as pack: %v", err)
	}
	s, kind, err = open(old, "")
	if err != nil || kind != blockd.KindBadger {
		t.Fatalf("legacy badger dir: kind %q, %v", kind, err)
	}
	storetest.CheckHolds(t, s, chunks)
	s.Close()
	if b, _ := os.ReadFile(filepath.Join(old, "STORE")); string(b) != "badger\n" {
		t.Fatalf("legacy dir STORE = %q", b)
	}
	s, kind, err = open(old, blockd.KindBadger)
	if err != nil || kind != blockd.KindBadger {
		t.Fatalf("badger dir with marker: %q, %v", kind, err)
	}
	storetest.CheckHolds(t, s, chunks)
	s.Close()

	// Asked-for badger on a new dir.
	nb := t.TempDir()
	s, kind, err = open(nb, blockd.KindBadger)
	if err != nil || kind != blockd.KindBadger {
		t.Fatalf("new badger dir: %q, %v", kind, err)
	}
	s.Close()
	if _, _, err := open(nb, ""); err != nil {
		t.Fatal(err)
	}

	// Unknown kinds.
	if _, _, err := open(t.TempDir(), "lsm"); !errors.Is(err, blockd.ErrStoreKind) {
		t.Fatalf("kind lsm: %v", err)
	}
	junk := t.TempDir()
	os.WriteFile(filepath.Join(junk, "STORE"), []byte("zfs\n"), 0o600)
	if _, _, err := open(junk, ""); !errors.Is(err, blockd.ErrStoreKind) {
		t.Fatalf("STORE naming zfs: %v", err)
	}
	if _, _, err := open("", ""); err == nil {
		t.Fatal("opened without a Dir")
	}
}

// The pack store behind a server: puts, gets and usage over HTTP.
func TestPackOverServer(t *testing.T) {
	s := openPack(t, t.TempDir())
	ts := startServer(t, s, 64<<10)
	c := blockd.NewClient(ts.url, tokenFor(0, "b1"), &http.Client{Timeout: time.Minute})
	ctx := context.Background()
	chunks := storetest.Chunks(12, 40, 30000)
	if err := c.Put(ctx, chunks); err != nil {
		t.Fatal(err)
	}
	for _, ch := range chunks {
		if _, err := c.GetRaw(ctx, nil, ch.ID); err != nil {
			t.Fatal(err)
		}
	}
	u, err := c.Usage(ctx)
	if err != nil || u.Chunks != 40 {
		t.Fatalf("usage over HTTP = %+v, %v", u, err)
	}
	storetest.CheckHolds(t, s, chunks)
	// One request of many batches (64 KiB each) is one put session: one
	// index sync (and one pack sync) for the request, not one per batch.
	more := storetest.Chunks(13, 40, 30000)
	before := s.Syncs()
	if err := c.Put(ctx, more); err != nil {
		t.Fatal(err)
	}
	if n := s.Syncs() - before; n != 1 {
		t.Fatalf("%d index syncs for one put request of 40 chunks in 64 KiB batches, want 1", n)
	}
	storetest.CheckHolds(t, s, append(chunks, more...))
	// Duplicates within the request and of stored chunks: stored once.
	if err := c.Put(ctx, append(append(slices.Clone(more[:5]), more[:5]...), chunks[:3]...)); err != nil {
		t.Fatal(err)
	}
	storetest.CheckHolds(t, s, append(chunks, more...))
}

// A put request that fills the disk part-way: 507, the batches stored
// before the full one are whole and acknowledged in the response's count
// only if committed, and nothing else is indexed.
func TestPackPutRequestDiskFull(t *testing.T) {
	for _, buffered := range []bool{false, true} {
		t.Run("buffered="+strconv.FormatBool(buffered), func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			mountTmpfs(t, filepath.Join(dir, "packs"), "3m")
			s := openPackCfg(t, blockd.PackConfig{Dir: dir, PackSize: 1 << 20, MinFreeBytes: -1, BufferedWrites: buffered})
			ts := startServer(t, s, 256<<10)
			c := blockd.NewClient(ts.url, tokenFor(0, "b1"), &http.Client{Timeout: time.Minute})
			c.MaxRequestBytes = 64 << 20
			chunks := storetest.Chunks(14, 64, 64<<10) // ~2.7 MiB stored (half compress)
			chunks = append(chunks, storetest.Chunks(15, 48, 64<<10)...)
			err := c.Put(ctx, chunks)
			var se *blockd.StatusError
			if !errors.Is(err, blockd.ErrNoSpace) || !errors.As(err, &se) || se.Code != http.StatusInsufficientStorage {
				t.Fatalf("put request on a full disk = %v", err)
			}
			m, err := s.Missing(ctx, storetest.IDs(chunks))
			if err != nil {
				t.Fatal(err)
			}
			stored := len(chunks) - len(m)
			t.Logf("%d of %d chunks stored, %d acknowledged: %v", stored, len(chunks), se.Stored, se)
			if stored != se.Stored || stored == len(chunks) {
				t.Fatalf("%d chunks stored, the response says %d", stored, se.Stored)
			}
			// What is stored is a prefix of the request, whole, and
			// survives a restart.
			storetest.CheckHolds(t, s, chunks[:stored])
			s.Close()
			s2 := openPackCfg(t, blockd.PackConfig{Dir: dir, PackSize: 1 << 20, MinFreeBytes: -1, BufferedWrites: buffered})
			storetest.CheckHolds(t, s2, chunks[:stored])
		})
	}
}
