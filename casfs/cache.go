package casfs

import (
	"container/list"
	"context"
	"errors"
	"sync"

	"stasis/cas"
)

// chunkCache is an LRU of decoded chunks bounded by the bytes their buffers
// hold. Concurrent misses for one chunk run a single fetch: each chunk being
// fetched has a flight that later callers wait on, whether it was started by
// get (one chunk) or by getMany (a batch, for read-ahead).
//
// Readers pin the entry they copy from: get returns an entry pinned for the
// caller, who must release it. An entry evicted while pinned keeps its
// buffer until its last release. The buffer of an evicted, unpinned entry
// goes to a free list, and decodes take their buffers from there (buffer),
// so a long sequential read cycles through a cache-sized working set of
// memory the process already touched instead of faulting in fresh pages for
// every chunk and leaving the old ones to the garbage collector (on the VMs
// here a fresh page costs more than the read that fills it). Nothing waits
// for a pin or for a free buffer: without one, buffer allocates.
type chunkCache struct {
	max int64

	mu      sync.Mutex
	cur     int64      // capacity of the cached entries' buffers
	ll      *list.List // front = most recent; values are *cacheEntry
	m       map[cas.ChunkID]*list.Element
	flights map[cas.ChunkID]*flight // chunks being fetched
	free    freeList
}

// cacheEntry is one decoded chunk. data is never modified while the entry
// exists; after the entry is evicted and unpinned, the buffer is reused.
type cacheEntry struct {
	id     cas.ChunkID
	data   []byte
	pins   int  // callers reading data (under chunkCache.mu)
	cached bool // in the LRU; when false and pins is 0, data is recycled
}

// flight is one fetch of one chunk; done is closed once it landed: ent is
// then the chunk's entry, pinned once for each of its waiters, or err is
// set.
type flight struct {
	done    chan struct{}
	waiters int  // callers waiting on done (under chunkCache.mu)
	landed  bool // under chunkCache.mu
	ent     *cacheEntry
	err     error
}

// errNotFetched ends the flight of a chunk that a batch did not deliver
// (absent, corrupt, or the batch failed): its waiters fetch it alone, so
// that each gets its own chunk's error.
var errNotFetched = errors.New("casfs: chunk not delivered by its batch")

func newChunkCache(max int64) *chunkCache {
	return &chunkCache{
		max: max, ll: list.New(), m: make(map[cas.ChunkID]*list.Element), flights: make(map[cas.ChunkID]*flight),
		free: freeList{max: min(max/4, maxFreeBytes)},
	}
}

// maxFreeBytes bounds the free list: enough for the read-ahead in flight.
const maxFreeBytes = 32 << 20

// buffer returns a buffer of length n for a decoded chunk, recycled from an
// evicted entry when one of the right size class is free. Whatever is put
// in it is handed to the cache (land, getMany's deliver), or given back
// with recycle.
func (c *chunkCache) buffer(n int) []byte {
	c.mu.Lock()
	b := c.free.take(n)
	c.mu.Unlock()
	if b == nil {
		b = make([]byte, n, bufferClass(n)*bufferStep)
	}
	return b
}

// recycle gives back a buffer from buffer that was not handed to the cache.
func (c *chunkCache) recycle(b []byte) {
	c.mu.Lock()
	c.free.put(b)
	c.mu.Unlock()
}

// lookup returns a cached chunk's entry, pinned for the caller.
func (c *chunkCache) lookup(id cas.ChunkID) (*cacheEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lookupLocked(id)
}

func (c *chunkCache) lookupLocked(id cas.ChunkID) (*cacheEntry, bool) {
	if e, ok := c.m[id]; ok {
		c.ll.MoveToFront(e)
		ent := e.Value.(*cacheEntry)
		ent.pins++
		return ent, true
	}
	return nil, false
}

// release drops the caller's pin of ent.
func (c *chunkCache) release(ent *cacheEntry) {
	c.mu.Lock()
	c.unpinLocked(ent)
	c.mu.Unlock()
}

func (c *chunkCache) unpinLocked(ent *cacheEntry) {
	if ent.pins <= 0 {
		return // released more often than pinned: a bug, caught by the tests' pinned()
	}
	ent.pins--
	c.recycleLocked(ent)
}

// recycleLocked puts the buffer of an entry that is neither cached nor
// pinned on the free list.
func (c *chunkCache) recycleLocked(ent *cacheEntry) {
	if ent.pins == 0 && !ent.cached && ent.data != nil {
		c.free.put(ent.data)
		ent.data = nil
	}
}

// contains reports whether a chunk is cached or being fetched, without
// touching its recency.
func (c *chunkCache) contains(id cas.ChunkID) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.m[id]
	_, flying := c.flights[id]
	return ok || flying
}

// insertLocked caches data as id's entry and returns the entry (unpinned).
// If id is cached already, data is recycled and the cached entry returned.
// A chunk larger than the whole cache gets an entry that is not cached.
func (c *chunkCache) insertLocked(id cas.ChunkID, data []byte) *cacheEntry {
	if e, ok := c.m[id]; ok {
		c.ll.MoveToFront(e)
		c.free.put(data)
		return e.Value.(*cacheEntry)
	}
	ent := &cacheEntry{id: id, data: data}
	size := int64(cap(data))
	if size > c.max {
		return ent
	}
	ent.cached = true
	c.m[id] = c.ll.PushFront(ent)
	c.cur += size
	for c.cur > c.max {
		e := c.ll.Back()
		old := e.Value.(*cacheEntry)
		c.ll.Remove(e)
		delete(c.m, old.id)
		c.cur -= int64(cap(old.data))
		old.cached = false
		c.recycleLocked(old)
	}
	return ent
}

// land ends fl, the flight of id: a fetched chunk is cached first, so that
// no caller finds it neither cached nor in flight, and pinned once for each
// waiter.
func (c *chunkCache) land(id cas.ChunkID, fl *flight, data []byte, err error) {
	c.mu.Lock()
	if err == nil {
		fl.ent = c.insertLocked(id, data)
		fl.ent.pins += fl.waiters
		c.recycleLocked(fl.ent) // uncacheable and nobody waits
	}
	fl.err = err
	fl.landed = true
	if c.flights[id] == fl {
		delete(c.flights, id)
	}
	c.mu.Unlock()
	close(fl.done)
}

// get returns id's entry, pinned for the caller, from the cache or from
// fetch, which runs once for all concurrent callers missing the same chunk
// (or not at all when a batch is fetching it). fetch returns a buffer the
// cache may keep and recycle (one from buffer, or one nobody else holds).
// Fetch errors are not cached. A caller whose ctx ends stops waiting; the
// fetch itself goes on for the others under its own context.
func (c *chunkCache) get(ctx context.Context, id cas.ChunkID, fetch func() ([]byte, error)) (*cacheEntry, error) {
	for {
		c.mu.Lock()
		if ent, ok := c.lookupLocked(id); ok {
			c.mu.Unlock()
			return ent, nil
		}
		fl := c.flights[id]
		if fl == nil {
			fl = &flight{done: make(chan struct{})}
			c.flights[id] = fl
			go func() {
				b, err := fetch()
				c.land(id, fl, b, err)
			}()
		}
		fl.waiters++
		c.mu.Unlock()
		select {
		case <-fl.done:
			if errors.Is(fl.err, errNotFetched) {
				continue // a batch left it out: fetch it alone
			}
			return fl.ent, fl.err
		case <-ctx.Done():
			c.mu.Lock()
			if !fl.landed {
				fl.waiters--
			} else if fl.err == nil {
				c.unpinLocked(fl.ent) // landed meanwhile, pinned for us
			}
			c.mu.Unlock()
			return nil, ctx.Err()
		}
	}
}

// getMany fetches the chunks of ids that are neither cached nor being
// fetched, with one call of fetch, which calls deliver for each chunk it
// got (decoded and verified, in a buffer the cache may keep: one from
// buffer). Callers missing one of them meanwhile wait for the batch; a
// chunk fetch did not deliver is fetched again by its waiters alone.
// getMany returns fetch's error.
func (c *chunkCache) getMany(ids []cas.ChunkID, fetch func(ids []cas.ChunkID, deliver func(id cas.ChunkID, data []byte)) error) error {
	mine := make(map[cas.ChunkID]*flight, len(ids))
	claimed := make([]cas.ChunkID, 0, len(ids))
	c.mu.Lock()
	for _, id := range ids {
		if _, ok := c.m[id]; ok {
			continue
		}
		if _, ok := c.flights[id]; ok {
			continue
		}
		fl := &flight{done: make(chan struct{})}
		c.flights[id] = fl
		mine[id] = fl
		claimed = append(claimed, id)
	}
	c.mu.Unlock()
	if len(claimed) == 0 {
		return nil
	}
	err := fetch(claimed, func(id cas.ChunkID, data []byte) {
		if fl := mine[id]; fl != nil {
			delete(mine, id)
			c.land(id, fl, data, nil)
		} else {
			c.recycle(data)
		}
	})
	for id, fl := range mine {
		c.land(id, fl, nil, errNotFetched)
	}
	return err
}

func (c *chunkCache) usage() (bytes int64, entries int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur, len(c.m)
}

// Buffers are kept in size classes of bufferStep bytes: a buffer of class k
// has capacity k*bufferStep and serves chunks of (k-1)*bufferStep+1 to
// k*bufferStep bytes.
const bufferStep = 4 << 10

func bufferClass(n int) int { return (max(n, 1) + bufferStep - 1) / bufferStep }

// freeList holds recycled chunk buffers by size class, up to max bytes.
type freeList struct {
	max     int64
	bytes   int64
	classes map[int][][]byte
}

// take returns a free buffer of length n from n's class, or nil.
func (l *freeList) take(n int) []byte {
	k := bufferClass(n)
	bufs := l.classes[k]
	if len(bufs) == 0 {
		return nil
	}
	b := bufs[len(bufs)-1]
	bufs[len(bufs)-1] = nil
	l.classes[k] = bufs[:len(bufs)-1]
	l.bytes -= int64(cap(b))
	return b[:n]
}

// put adds b to the list if its capacity is a whole class and the list has
// room; otherwise it is left to the garbage collector.
func (l *freeList) put(b []byte) {
	c := cap(b)
	if c == 0 || c%bufferStep != 0 || l.bytes+int64(c) > l.max {
		return
	}
	if l.classes == nil {
		l.classes = make(map[int][][]byte)
	}
	k := c / bufferStep
	l.classes[k] = append(l.classes[k], b[:0])
	l.bytes += int64(c)
}
