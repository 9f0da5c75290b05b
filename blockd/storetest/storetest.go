// Package storetest is the conformance suite every blockd store backend
// passes: the Store/WriteStore/PruneStore contracts of blockd/store.go
// (not-found errors, idempotent puts, read after write, list order,
// concurrency, the largest chunk) checked the same way for each.
package storetest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"stasis/blockd"
	"stasis/cas"
)

// Run runs the suite. newStore returns an empty store; it registers its own
// cleanup with t.
func Run(t *testing.T, newStore func(t *testing.T) blockd.PruneStore) {
	RunOptions(t, newStore, Options{})
}

// Options are optional hooks of the suite.
type Options struct {
	// Reopen, for a persistent backend, closes s and opens the same store
	// again (registering cleanup with t). Checks of what must survive a
	// restart (Usage) use it; without it they check a live store only.
	Reopen func(t *testing.T, s blockd.PruneStore) blockd.PruneStore
}

// RunOptions runs the suite with hooks.
func RunOptions(t *testing.T, newStore func(t *testing.T) blockd.PruneStore, o Options) {
	tests := []struct {
		name string
		fn   func(*testing.T, blockd.PruneStore)
	}{
		{"GetMissing", testGetMissing},
		{"PutGet", testPutGet},
		{"GetMany", testGetMany},
		{"IdempotentPut", testIdempotentPut},
		{"Delete", testDelete},
		{"ListOrder", testListOrder},
		{"ListStops", testListStops},
		{"ListDuringDelete", testListDuringDelete},
		{"ReadAfterWrite", testReadAfterWrite},
		{"Concurrency", testConcurrency},
		{"LargeChunk", testLargeChunk},
		{"Canceled", testCanceled},
		{"Stats", testStats},
		{"Usage", func(t *testing.T, s blockd.PruneStore) { testUsage(t, s, o.Reopen) }},
		{"UsageConcurrent", testUsageConcurrent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore(t)) })
	}
}

// Chunks returns n valid encoded chunks of size bytes from seed: half
// compressible (LZ4), half random (raw).
func Chunks(seed uint64, n, size int) []blockd.Chunk {
	r := rand.New(rand.NewPCG(seed, 77))
	out := make([]blockd.Chunk, n)
	for i := range out {
		raw := make([]byte, (size+7)&^7)
		for j := 0; j < len(raw); j += 8 {
			binary.LittleEndian.PutUint64(raw[j:], r.Uint64())
		}
		raw = raw[:size]
		if i%2 == 0 {
			for j := range raw {
				raw[j] &= 3 // compressible
			}
		}
		out[i] = blockd.Chunk{ID: cas.Sum(raw), Data: cas.Encode(nil, raw)}
	}
	return out
}

// IDs returns the chunks' IDs in order.
func IDs(chunks []blockd.Chunk) []cas.ChunkID {
	ids := make([]cas.ChunkID, len(chunks))
	for i, c := range chunks {
		ids[i] = c.ID
	}
	return ids
}

// ListAll returns every listed chunk.
func ListAll(t testing.TB, s blockd.PruneStore) []blockd.ChunkInfo {
	t.Helper()
	var out []blockd.ChunkInfo
	if err := s.List(context.Background(), func(i blockd.ChunkInfo) error {
		out = append(out, i)
		return nil
	}); err != nil {
		t.Fatalf("List: %v", err)
	}
	return out
}

// CheckHolds fails t unless s holds exactly want, each byte for byte.
func CheckHolds(t testing.TB, s blockd.PruneStore, want []blockd.Chunk) {
	t.Helper()
	ctx := context.Background()
	byID := map[cas.ChunkID][]byte{}
	for _, c := range want {
		byID[c.ID] = c.Data
	}
	listed := ListAll(t, s)
	if len(listed) != len(byID) {
		t.Fatalf("store lists %d chunks, want %d", len(listed), len(byID))
	}
	for _, info := range listed {
		data, ok := byID[info.ID]
		if !ok {
			t.Fatalf("store lists unexpected chunk %s", info.ID.Short())
		}
		if info.EncodedSize != len(data) {
			t.Fatalf("chunk %s listed with size %d, want %d", info.ID.Short(), info.EncodedSize, len(data))
		}
		got, err := s.Get(ctx, info.ID)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("Get(%s) = %d bytes, %v", info.ID.Short(), len(got), err)
		}
	}
}

func testGetMissing(t *testing.T, s blockd.PruneStore) {
	ctx := context.Background()
	id := cas.Sum([]byte("absent"))
	if _, err := s.Get(ctx, id); !errors.Is(err, blockd.ErrNotFound) {
		t.Fatalf("Get(absent) = %v, want ErrNotFound", err)
	}
	ids := IDs(Chunks(1, 3, 100))
	m, err := s.Missing(ctx, ids)
	if err != nil || !slices.Equal(m, ids) {
		t.Fatalf("Missing on an empty store = %v, %v", m, err)
	}
	if m, err := s.Missing(ctx, nil); err != nil || len(m) != 0 {
		t.Fatalf("Missing(nil) = %v, %v", m, err)
	}
	if got := ListAll(t, s); len(got) != 0 {
		t.Fatalf("empty store lists %d chunks", len(got))
	}
	if err := s.Put(ctx, nil); err != nil {
		t.Fatalf("Put(nil) = %v", err)
	}
}

func testPutGet(t *testing.T, s blockd.PruneStore) {
	ctx := context.Background()
	chunks := Chunks(2, 10, 5000)
	if err := s.Put(ctx, chunks[:6]); err != nil {
		t.Fatal(err)
	}
	m, err := s.Missing(ctx, IDs(chunks))
	if err != nil || !slices.Equal(m, IDs(chunks[6:])) {
		t.Fatalf("Missing = %v, %v; want the last 4 in input order", m, err)
	}
	// Missing keeps input order, including for a reversed request.
	rev := slices.Clone(IDs(chunks))
	slices.Reverse(rev)
	m, _ = s.Missing(ctx, rev)
	want := slices.Clone(IDs(chunks[6:]))
	slices.Reverse(want)
	if !slices.Equal(m, want) {
		t.Fatal("Missing does not keep input order")
	}
	got, err := s.Get(ctx, chunks[0].ID)
	if err != nil || !bytes.Equal(got, chunks[0].Data) {
		t.Fatalf("Get = %v", err)
	}
	// The caller owns what Get returns, and the store owns its copy of
	// what Put was given.
	clear(got)
	orig := bytes.Clone(chunks[1].Data)
	clear(chunks[1].Data)
	chunks[1].Data = orig
	CheckHolds(t, s, chunks[:6])
}

// testGetMany checks the BatchGetter contract through blockd.GetMany (the
// store's own GetMany if it has one): request order, absent chunks skipped
// then reported, a repeated ID, fn's error, chunks from several Puts.
func testGetMany(t *testing.T, s blockd.PruneStore) {
	ctx := context.Background()
	chunks := Chunks(21, 40, 9000)
	for i := 0; i < len(chunks); i += 7 {
		if err := s.Put(ctx, chunks[i:min(i+7, len(chunks))]); err != nil {
			t.Fatal(err)
		}
	}
	absent := Chunks(22, 2, 100)
	ids := IDs(chunks)
	// Out of store order, with two absent IDs and one repeated.
	slices.Reverse(ids[10:30])
	ids = slices.Insert(ids, 5, absent[0].ID)
	ids = slices.Insert(ids, 20, absent[1].ID)
	ids = append(ids, chunks[3].ID)
	byID := map[cas.ChunkID][]byte{}
	for _, c := range chunks {
		byID[c.ID] = c.Data
	}
	var got []cas.ChunkID
	err := blockd.GetMany(ctx, s, ids, func(id cas.ChunkID, enc []byte) error {
		if !bytes.Equal(enc, byID[id]) {
			return fmt.Errorf("chunk %s: wrong bytes", id.Short())
		}
		if len(got) > 0 && got[len(got)-1] == id {
			return fmt.Errorf("chunk %s delivered twice in a row", id.Short())
		}
		got = append(got, id)
		return nil
	})
	if !errors.Is(err, blockd.ErrNotFound) {
		t.Fatalf("GetMany with absent chunks = %v, want ErrNotFound", err)
	}
	var want []cas.ChunkID
	for _, id := range ids {
		if byID[id] != nil {
			want = append(want, id)
		}
	}
	// The repeated ID (last) may be delivered once or twice.
	if !slices.Equal(got, want) && !slices.Equal(got, want[:len(want)-1]) {
		t.Fatalf("GetMany delivered %d chunks, want %d in request order", len(got), len(want))
	}
	if err := blockd.GetMany(ctx, s, IDs(chunks), func(cas.ChunkID, []byte) error { return nil }); err != nil {
		t.Fatalf("GetMany of stored chunks = %v", err)
	}
	if err := blockd.GetMany(ctx, s, nil, func(cas.ChunkID, []byte) error { return errors.New("called") }); err != nil {
		t.Fatalf("GetMany(nil) = %v", err)
	}
	stop := errors.New("stop")
	n := 0
	err = blockd.GetMany(ctx, s, IDs(chunks), func(cas.ChunkID, []byte) error {
		n++
		if n == 3 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || n != 3 {
		t.Fatalf("GetMany with fn failing at the 3rd chunk = %v after %d calls", err, n)
	}
}

func testIdempotentPut(t *testing.T, s blockd.PruneStore) {
	ctx := context.Background()
	chunks := Chunks(3, 4, 3000)
	batch := append(slices.Clone(chunks), chunks[0], chunks[2]) // duplicates in one batch
	for range 3 {
		if err := s.Put(ctx, batch); err != nil {
			t.Fatal(err)
		}
	}
	CheckHolds(t, s, chunks)
}

func testDelete(t *testing.T, s blockd.PruneStore) {
	ctx := context.Background()
	chunks := Chunks(4, 6, 2000)
	if err := s.Put(ctx, chunks); err != nil {
		t.Fatal(err)
	}
	absent := cas.Sum([]byte("never stored"))
	if err := s.Delete(ctx, []cas.ChunkID{chunks[1].ID, absent, chunks[4].ID, chunks[1].ID}); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if err := s.Delete(ctx, nil); err != nil {
		t.Fatalf("Delete(nil): %v", err)
	}
	if _, err := s.Get(ctx, chunks[1].ID); !errors.Is(err, blockd.ErrNotFound) {
		t.Fatalf("Get(deleted) = %v", err)
	}
	m, _ := s.Missing(ctx, IDs(chunks))
	if !slices.Equal(m, []cas.ChunkID{chunks[1].ID, chunks[4].ID}) {
		t.Fatalf("Missing after delete = %v", m)
	}
	CheckHolds(t, s, []blockd.Chunk{chunks[0], chunks[2], chunks[3], chunks[5]})
	// A deleted chunk can be stored again.
	if err := s.Put(ctx, chunks[1:2]); err != nil {
		t.Fatal(err)
	}
	CheckHolds(t, s, []blockd.Chunk{chunks[0], chunks[1], chunks[2], chunks[3], chunks[5]})
}

func testListOrder(t *testing.T, s blockd.PruneStore) {
	ctx := context.Background()
	chunks := Chunks(5, 2500, 64) // more than one page of a paging List
	for i := 0; i < len(chunks); i += 500 {
		if err := s.Put(ctx, chunks[i:i+500]); err != nil {
			t.Fatal(err)
		}
	}
	got := ListAll(t, s)
	if len(got) != len(chunks) {
		t.Fatalf("listed %d of %d", len(got), len(chunks))
	}
	for i := 1; i < len(got); i++ {
		if bytes.Compare(got[i-1].ID[:], got[i].ID[:]) >= 0 {
			t.Fatalf("List out of order at %d", i)
		}
	}
	CheckHolds(t, s, chunks)
}

func testListStops(t *testing.T, s blockd.PruneStore) {
	ctx := context.Background()
	if err := s.Put(ctx, Chunks(6, 20, 100)); err != nil {
		t.Fatal(err)
	}
	stop := errors.New("stop")
	n := 0
	err := s.List(ctx, func(blockd.ChunkInfo) error {
		n++
		if n == 5 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || n != 5 {
		t.Fatalf("List = %v after %d calls; want stop after 5", err, n)
	}
}

// A garbage collector lists and deletes in the same pass.
func testListDuringDelete(t *testing.T, s blockd.PruneStore) {
	ctx := context.Background()
	chunks := Chunks(7, 1500, 50)
	if err := s.Put(ctx, chunks); err != nil {
		t.Fatal(err)
	}
	var keep []blockd.Chunk
	byID := map[cas.ChunkID]blockd.Chunk{}
	for _, c := range chunks {
		byID[c.ID] = c
	}
	i := 0
	var doomed []cas.ChunkID
	err := s.List(ctx, func(info blockd.ChunkInfo) error {
		i++
		if i%2 == 1 {
			keep = append(keep, byID[info.ID])
			return nil
		}
		// Delete in batches, as a collector does, including chunks
		// not yet listed by this pass (the listing may or may not
		// include them; it must not fail or repeat).
		doomed = append(doomed, info.ID)
		if len(doomed) == 64 {
			err := s.Delete(ctx, doomed)
			doomed = doomed[:0]
			return err
		}
		return nil
	})
	if err == nil {
		err = s.Delete(ctx, doomed)
	}
	if err != nil {
		t.Fatal(err)
	}
	if i != len(chunks) {
		t.Fatalf("listed %d of %d while deleting", i, len(chunks))
	}
	CheckHolds(t, s, keep)
}

func testReadAfterWrite(t *testing.T, s blockd.PruneStore) {
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for _, c := range Chunks(uint64(100+g), 20, 1000) {
				if err := s.Put(ctx, []blockd.Chunk{c}); err != nil {
					errs <- err
					return
				}
				got, err := s.Get(ctx, c.ID)
				if err != nil || !bytes.Equal(got, c.Data) {
					errs <- fmt.Errorf("read after write of %s: %v", c.ID.Short(), err)
					return
				}
				if m, err := s.Missing(ctx, []cas.ChunkID{c.ID}); err != nil || len(m) != 0 {
					errs <- fmt.Errorf("Missing after write of %s: %v, %v", c.ID.Short(), m, err)
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
}

func testConcurrency(t *testing.T, s blockd.PruneStore) {
	ctx := context.Background()
	chunks := Chunks(8, 200, 700)
	doomed := Chunks(9, 50, 700)
	if err := s.Put(ctx, doomed); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 8 {
		wg.Go(func() {
			// Overlapping batches: every goroutine puts every chunk, in
			// a different order and batch size.
			r := rand.New(rand.NewPCG(uint64(g), 1))
			order := r.Perm(len(chunks))
			for i := 0; i < len(order); {
				n := 1 + r.IntN(20)
				var batch []blockd.Chunk
				for _, k := range order[i:min(i+n, len(order))] {
					batch = append(batch, chunks[k])
				}
				i += n
				if err := s.Put(ctx, batch); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for g := range 2 {
		wg.Go(func() {
			for _, c := range doomed[g*25 : g*25+25] {
				if err := s.Delete(ctx, []cas.ChunkID{c.ID}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Go(func() {
		for range 5 {
			if err := s.List(ctx, func(blockd.ChunkInfo) error { return nil }); err != nil {
				errs <- err
				return
			}
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	CheckHolds(t, s, chunks)
}

func testLargeChunk(t *testing.T, s blockd.PruneStore) {
	ctx := context.Background()
	raw := make([]byte, cas.MaxChunkSize)
	r := rand.New(rand.NewPCG(10, 10))
	for i := range raw {
		raw[i] = byte(r.Uint32())
	}
	c := blockd.Chunk{ID: cas.Sum(raw), Data: cas.Encode(nil, raw)}
	if len(c.Data) != cas.MaxEncodedSize {
		t.Fatalf("encoded %d bytes, want the maximum %d", len(c.Data), cas.MaxEncodedSize)
	}
	small := Chunks(11, 3, 10)
	if err := s.Put(ctx, append([]blockd.Chunk{c}, small...)); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	if dec, err := cas.DecodeVerify(nil, c.ID, got); err != nil || len(dec) != len(raw) {
		t.Fatalf("largest chunk does not verify after a round trip: %v", err)
	}
	CheckHolds(t, s, append([]blockd.Chunk{c}, small...))
}

func testCanceled(t *testing.T, s blockd.PruneStore) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	chunks := Chunks(12, 2, 100)
	if err := s.Put(ctx, chunks); !errors.Is(err, context.Canceled) {
		t.Fatalf("Put with a canceled context = %v", err)
	}
	if _, err := s.Get(ctx, chunks[0].ID); !errors.Is(err, context.Canceled) {
		t.Fatalf("Get with a canceled context = %v", err)
	}
	CheckHolds(t, s, nil)
}

func testStats(t *testing.T, s blockd.PruneStore) {
	ss, ok := s.(blockd.StatStore)
	if !ok {
		return // optional interface; nothing to check
	}
	ctx := context.Background()
	chunks := Chunks(13, 10, 4096)
	if err := s.Put(ctx, append(chunks, chunks[0])); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, []cas.ChunkID{chunks[9].ID}); err != nil {
		t.Fatal(err)
	}
	var want blockd.Stats
	for _, c := range chunks[:9] {
		want.Chunks++
		want.EncodedBytes += int64(len(c.Data))
		want.RawBytes += 4096
	}
	if got := ss.Stats(); got != want {
		t.Fatalf("Stats = %+v, want %+v", got, want)
	}
}

// WantUsage is the Usage of a store holding exactly chunks (distinct IDs).
func WantUsage(chunks []blockd.Chunk) blockd.Usage {
	var u blockd.Usage
	seen := map[cas.ChunkID]bool{}
	for _, c := range chunks {
		if !seen[c.ID] {
			seen[c.ID] = true
			u.Chunks++
			u.EncodedBytes += uint64(len(c.Data))
		}
	}
	return u
}

// CheckUsage fails t unless s reports Usage want, and want is also what s
// lists (so the counters agree with the stored chunks).
func CheckUsage(t testing.TB, s blockd.PruneStore, want blockd.Usage, when string) {
	t.Helper()
	got, err := blockd.UsageOf(context.Background(), s)
	if err != nil {
		t.Fatalf("%s: Usage: %v", when, err)
	}
	if got != want {
		t.Fatalf("%s: Usage = %+v, want %+v", when, got, want)
	}
	var listed blockd.Usage
	for _, info := range ListAll(t, s) {
		listed.Chunks++
		listed.EncodedBytes += uint64(info.EncodedSize)
	}
	if listed != want {
		t.Fatalf("%s: the store lists %+v, Usage says %+v", when, listed, want)
	}
}

func testUsage(t *testing.T, s blockd.PruneStore, reopen func(*testing.T, blockd.PruneStore) blockd.PruneStore) {
	if _, ok := s.(blockd.UsageStore); !ok {
		t.Skipf("%T does not implement UsageStore", s)
	}
	ctx := context.Background()
	CheckUsage(t, s, blockd.Usage{}, "empty store")
	chunks := Chunks(14, 12, 6000) // half compressed, half raw
	if err := s.Put(ctx, chunks[:8]); err != nil {
		t.Fatal(err)
	}
	CheckUsage(t, s, WantUsage(chunks[:8]), "after a put")
	// Duplicates, within a batch and of stored chunks, count once.
	if err := s.Put(ctx, append([]blockd.Chunk{chunks[0], chunks[8], chunks[0]}, chunks[1:9]...)); err != nil {
		t.Fatal(err)
	}
	CheckUsage(t, s, WantUsage(chunks[:9]), "after a put of duplicates")
	absent := cas.Sum([]byte("never stored"))
	if err := s.Delete(ctx, []cas.ChunkID{chunks[2].ID, absent, chunks[2].ID, chunks[5].ID}); err != nil {
		t.Fatal(err)
	}
	held := []blockd.Chunk{chunks[0], chunks[1], chunks[3], chunks[4], chunks[6], chunks[7], chunks[8]}
	CheckUsage(t, s, WantUsage(held), "after a delete")
	if err := s.Delete(ctx, []cas.ChunkID{chunks[2].ID, absent, chunks[10].ID}); err != nil {
		t.Fatal(err)
	}
	CheckUsage(t, s, WantUsage(held), "after a delete of absent chunks")
	// A chunk deleted and put again counts again.
	if err := s.Put(ctx, chunks[5:6]); err != nil {
		t.Fatal(err)
	}
	held = append(held, chunks[5])
	CheckUsage(t, s, WantUsage(held), "after a put of a deleted chunk")
	if reopen == nil {
		return
	}
	s = reopen(t, s)
	CheckUsage(t, s, WantUsage(held), "after reopening")
	if err := s.Put(ctx, chunks[9:]); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, IDs(chunks[:2])); err != nil {
		t.Fatal(err)
	}
	held = append(held[2:], chunks[9:]...)
	CheckUsage(t, s, WantUsage(held), "after a put and a delete on the reopened store")
	s = reopen(t, s)
	CheckUsage(t, s, WantUsage(held), "after reopening again")
}

// testUsageConcurrent races Puts and Deletes of the same chunks: once all
// have returned, Usage counts what the store holds, each chunk once.
func testUsageConcurrent(t *testing.T, s blockd.PruneStore) {
	if _, ok := s.(blockd.UsageStore); !ok {
		t.Skipf("%T does not implement UsageStore", s)
	}
	ctx := context.Background()
	chunks := Chunks(15, 40, 3000)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 6 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 2))
			for range 30 {
				k := r.IntN(len(chunks) - 4)
				var err error
				if g%3 == 2 {
					err = s.Delete(ctx, IDs(chunks[k:k+4]))
				} else {
					err = s.Put(ctx, chunks[k:k+4])
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Go(func() { // readers see no absurd values meanwhile
		for range 50 {
			u, err := blockd.UsageOf(ctx, s)
			if err != nil {
				errs <- err
				return
			}
			if u.Chunks > uint64(len(chunks)) {
				errs <- fmt.Errorf("Usage during the race = %+v, more than the %d chunks put", u, len(chunks))
				return
			}
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	byID := map[cas.ChunkID]blockd.Chunk{}
	for _, c := range chunks {
		byID[c.ID] = c
	}
	var held []blockd.Chunk
	for _, info := range ListAll(t, s) {
		held = append(held, byID[info.ID])
	}
	CheckUsage(t, s, WantUsage(held), "after racing puts and deletes")
}
