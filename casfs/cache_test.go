package casfs

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"stasis/cas"
)

// testID is the ID of test chunk k (not a real hash: the cache never
// hashes).
func testID(k int) cas.ChunkID {
	var id cas.ChunkID
	binary.LittleEndian.PutUint64(id[:], uint64(k)+1)
	return id
}

// fillChunk writes chunk k's content: its number in every 8 bytes.
func fillChunk(b []byte, k int) {
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], uint64(k))
	}
}

// checkChunk reports whether b holds chunk k's content.
func checkChunk(b []byte, k int) error {
	for i := 0; i+8 <= len(b); i += 8 {
		if v := binary.LittleEndian.Uint64(b[i:]); v != uint64(k) {
			return fmt.Errorf("chunk %d: byte %d holds chunk %d's content", k, i, v)
		}
	}
	return nil
}

// pinned is the number of pins on cached entries.
func (c *chunkCache) pinned() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for e := c.ll.Front(); e != nil; e = e.Next() {
		n += e.Value.(*cacheEntry).pins
	}
	return n
}

// fetchOf returns a fetch function for chunk k of size n.
func fetchOf(c *chunkCache, k, n int) func() ([]byte, error) {
	return func() ([]byte, error) {
		b := c.buffer(n)
		fillChunk(b, k)
		return b, nil
	}
}

// TestCacheRecyclesOnlyUnpinnedBuffers: an evicted entry's buffer is reused
// only after its last pin is released.
func TestCacheRecyclesOnlyUnpinnedBuffers(t *testing.T) {
	const size = 64 << 10
	c := newChunkCache(4 * size)
	ctx := context.Background()
	a, err := c.get(ctx, testID(0), fetchOf(c, 0, size))
	if err != nil {
		t.Fatal(err)
	}
	abuf := &a.data[0]
	// Evict chunk 0 while it is pinned.
	for k := 1; k <= 8; k++ {
		e, err := c.get(ctx, testID(k), fetchOf(c, k, size))
		if err != nil {
			t.Fatal(err)
		}
		c.release(e)
	}
	if c.contains(testID(0)) {
		t.Fatal("chunk 0 still cached after 8 more chunks in a 4-chunk cache")
	}
	// Every buffer handed out now (the free list drained, then fresh ones)
	// must not be chunk 0's.
	for range 16 {
		b := c.buffer(size)
		if &b[0] == abuf {
			t.Fatal("the buffer of a pinned entry was handed out again")
		}
	}
	if err := checkChunk(a.data, 0); err != nil {
		t.Fatal(err)
	}
	c.release(a)
	// Released: its buffer is the free one now.
	if b := c.buffer(size); &b[0] != abuf {
		t.Fatal("the released entry's buffer was not reused")
	}
	if n := c.pinned(); n != 0 {
		t.Fatalf("%d pins left", n)
	}
}

// TestCacheReadersRaceEviction: readers holding pins always see their own
// chunk's bytes while other goroutines evict and refill recycled buffers,
// and no pin is left over. Run with -race: a buffer reused while pinned is
// also a data race.
func TestCacheReadersRaceEviction(t *testing.T) {
	const size = 16 << 10
	c := newChunkCache(8 * size)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 2))
			for range 2000 {
				k := r.IntN(64)
				n := size - 8*r.IntN(8) // a few sizes per class
				e, err := c.get(context.Background(), testID(k), fetchOf(c, k, n))
				if err != nil {
					errs <- err
					return
				}
				if err := checkChunk(e.data, k); err != nil {
					errs <- err
					return
				}
				c.release(e)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := c.pinned(); n != 0 {
		t.Fatalf("%d pins left", n)
	}
	if cur, _ := c.usage(); cur > c.max {
		t.Fatalf("cache holds %d bytes over its bound %d", cur, c.max)
	}
}

// TestCachePinsAcrossFlights: waiters of a slow fetch that give up get no
// pin, waiters that stay get one each, and a batch's deliveries pin the
// entries of callers waiting on them.
func TestCachePinsAcrossFlights(t *testing.T) {
	const size = 8 << 10
	c := newChunkCache(64 * size)
	release := make(chan struct{})
	slow := func() ([]byte, error) {
		<-release
		b := c.buffer(size)
		fillChunk(b, 1)
		return b, nil
	}
	var wg sync.WaitGroup
	results := make(chan error, 10)
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			if i%2 == 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, 20*time.Millisecond)
				defer cancel()
			}
			e, err := c.get(ctx, testID(1), slow)
			if err != nil {
				results <- err
				return
			}
			if err := checkChunk(e.data, 1); err != nil {
				results <- err
				return
			}
			time.Sleep(10 * time.Millisecond)
			c.release(e)
			results <- nil
		}()
	}
	time.Sleep(50 * time.Millisecond) // the impatient half gives up
	close(release)
	wg.Wait()
	close(results)
	var ok, timedOut int
	for err := range results {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, context.DeadlineExceeded):
			timedOut++
		default:
			t.Fatal(err)
		}
	}
	if ok != 5 || timedOut != 5 {
		t.Fatalf("%d reads, %d timeouts; want 5 and 5", ok, timedOut)
	}
	if n := c.pinned(); n != 0 {
		t.Fatalf("%d pins left after the flight", n)
	}

	// A batch: callers waiting on its chunks get them pinned; a chunk it
	// does not deliver is fetched alone by its waiter.
	ids := []cas.ChunkID{testID(10), testID(11), testID(12)}
	delivering := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- c.getMany(ids, func(ids []cas.ChunkID, deliver func(cas.ChunkID, []byte)) error {
			<-delivering
			for k, id := range ids[:2] { // chunk 12 is "absent"
				b := c.buffer(size)
				fillChunk(b, 10+k)
				deliver(id, b)
			}
			return errors.New("chunk 12 not found")
		})
	}()
	for !c.contains(testID(12)) {
		time.Sleep(time.Millisecond)
	}
	waits := make(chan error, 3)
	for k := range 3 {
		go func() {
			e, err := c.get(context.Background(), testID(10+k), fetchOf(c, 10+k, size))
			if err == nil {
				err = checkChunk(e.data, 10+k)
				c.release(e)
			}
			waits <- err
		}()
	}
	time.Sleep(20 * time.Millisecond)
	close(delivering)
	for range 3 {
		if err := <-waits; err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err == nil {
		t.Fatal("getMany did not return its fetch's error")
	}
	if n := c.pinned(); n != 0 {
		t.Fatalf("%d pins left after the batch", n)
	}
}

// TestCacheBoundCountsBuffers: the bound holds for chunks of varied sizes,
// counting the capacity of buffers, and the free list stays within its own.
func TestCacheBoundCountsBuffers(t *testing.T) {
	c := newChunkCache(1 << 20)
	r := rand.New(rand.NewPCG(9, 9))
	for k := range 2000 {
		n := 1 + r.IntN(96<<10)
		e, err := c.get(context.Background(), testID(k), fetchOf(c, k, n))
		if err != nil {
			t.Fatal(err)
		}
		if len(e.data) != n {
			t.Fatalf("chunk of %d bytes has %d", n, len(e.data))
		}
		c.release(e)
		c.mu.Lock()
		var sum int64
		for e := c.ll.Front(); e != nil; e = e.Next() {
			sum += int64(cap(e.Value.(*cacheEntry).data))
		}
		cur, free := c.cur, c.free.bytes
		c.mu.Unlock()
		if sum != cur || cur > c.max {
			t.Fatalf("after %d chunks: buffers hold %d, counted %d, bound %d", k, sum, cur, c.max)
		}
		if free > c.free.max {
			t.Fatalf("free list holds %d, bound %d", free, c.free.max)
		}
	}
}
