package casfs

import (
	"container/list"
	"context"
	"errors"
	"sync"

	"stasis/cas"
)

// chunkCache is an LRU of decoded chunks bounded by bytes. Concurrent misses
// for one chunk run a single fetch: each chunk being fetched has a flight
// that later callers wait on, whether it was started by get (one chunk) or
// by getMany (a batch, for read-ahead). Cached slices are shared and must
// not be modified.
type chunkCache struct {
	max int64

	mu      sync.Mutex
	cur     int64
	ll      *list.List // front = most recent; values are *cacheEntry
	m       map[cas.ChunkID]*list.Element
	flights map[cas.ChunkID]*flight // chunks being fetched
}

type cacheEntry struct {
	id   cas.ChunkID
	data []byte
}

// flight is one fetch of one chunk; done is closed once data or err is set.
type flight struct {
	done chan struct{}
	data []byte
	err  error
}

// errNotFetched ends the flight of a chunk that a batch did not deliver
// (absent, corrupt, or the batch failed): its waiters fetch it alone, so
// that each gets its own chunk's error.
var errNotFetched = errors.New("casfs: chunk not delivered by its batch")

func newChunkCache(max int64) *chunkCache {
	return &chunkCache{max: max, ll: list.New(), m: make(map[cas.ChunkID]*list.Element), flights: make(map[cas.ChunkID]*flight)}
}

// lookup returns a cached chunk.
func (c *chunkCache) lookup(id cas.ChunkID) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lookupLocked(id)
}

func (c *chunkCache) lookupLocked(id cas.ChunkID) ([]byte, bool) {
	if e, ok := c.m[id]; ok {
		c.ll.MoveToFront(e)
		return e.Value.(*cacheEntry).data, true
	}
	return nil, false
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

func (c *chunkCache) add(id cas.ChunkID, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.addLocked(id, data)
}

func (c *chunkCache) addLocked(id cas.ChunkID, data []byte) {
	size := int64(len(data))
	if size > c.max {
		return
	}
	if e, ok := c.m[id]; ok {
		c.ll.MoveToFront(e)
		return
	}
	c.m[id] = c.ll.PushFront(&cacheEntry{id: id, data: data})
	c.cur += size
	for c.cur > c.max {
		e := c.ll.Back()
		ent := e.Value.(*cacheEntry)
		c.ll.Remove(e)
		delete(c.m, ent.id)
		c.cur -= int64(len(ent.data))
	}
}

// land ends fl, the flight of id: a fetched chunk is cached first, so that
// no caller finds it neither cached nor in flight.
func (c *chunkCache) land(id cas.ChunkID, fl *flight, data []byte, err error) {
	c.mu.Lock()
	if err == nil {
		c.addLocked(id, data)
	}
	if c.flights[id] == fl {
		delete(c.flights, id)
	}
	c.mu.Unlock()
	fl.data, fl.err = data, err
	close(fl.done)
}

// get returns a chunk from the cache or from fetch, which runs once for
// all concurrent callers missing the same chunk (or not at all when a
// batch is fetching it). Fetch errors are not cached. A caller whose ctx
// ends stops waiting; the fetch itself goes on for the others under its
// own context.
func (c *chunkCache) get(ctx context.Context, id cas.ChunkID, fetch func() ([]byte, error)) ([]byte, error) {
	for {
		c.mu.Lock()
		if b, ok := c.lookupLocked(id); ok {
			c.mu.Unlock()
			return b, nil
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
		c.mu.Unlock()
		select {
		case <-fl.done:
			if errors.Is(fl.err, errNotFetched) {
				continue // a batch left it out: fetch it alone
			}
			return fl.data, fl.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// getMany fetches the chunks of ids that are neither cached nor being
// fetched, with one call of fetch, which calls deliver for each chunk it
// got (decoded and verified). Callers missing one of them meanwhile wait
// for the batch; a chunk fetch did not deliver is fetched again by its
// waiters alone. getMany returns fetch's error.
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
