package casfs

import (
	"container/list"
	"context"
	"sync"

	"golang.org/x/sync/singleflight"

	"stasis/cas"
)

// chunkCache is an LRU of decoded chunks bounded by bytes. Concurrent misses
// for one chunk run a single fetch (singleflight). Cached slices are shared
// and must not be modified.
type chunkCache struct {
	max int64

	mu  sync.Mutex
	cur int64
	ll  *list.List // front = most recent; values are *cacheEntry
	m   map[cas.ChunkID]*list.Element

	sf singleflight.Group
}

type cacheEntry struct {
	id   cas.ChunkID
	data []byte
}

func newChunkCache(max int64) *chunkCache {
	return &chunkCache{max: max, ll: list.New(), m: make(map[cas.ChunkID]*list.Element)}
}

// lookup returns a cached chunk.
func (c *chunkCache) lookup(id cas.ChunkID) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[id]; ok {
		c.ll.MoveToFront(e)
		return e.Value.(*cacheEntry).data, true
	}
	return nil, false
}

// contains reports whether a chunk is cached, without touching its recency.
func (c *chunkCache) contains(id cas.ChunkID) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.m[id]
	return ok
}

func (c *chunkCache) add(id cas.ChunkID, data []byte) {
	size := int64(len(data))
	if size > c.max {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
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

// get returns a chunk from the cache or from fetch, which runs once for
// all concurrent callers missing the same chunk. Fetch errors are not cached.
// A caller whose ctx ends stops waiting; the fetch itself goes on for the
// others under its own context.
func (c *chunkCache) get(ctx context.Context, id cas.ChunkID, fetch func() ([]byte, error)) ([]byte, error) {
	if b, ok := c.lookup(id); ok {
		return b, nil
	}
	ch := c.sf.DoChan(string(id[:]), func() (any, error) {
		if b, ok := c.lookup(id); ok {
			return b, nil
		}
		b, err := fetch()
		if err != nil {
			return nil, err
		}
		c.add(id, b)
		return b, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.([]byte), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (c *chunkCache) usage() (bytes int64, entries int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur, len(c.m)
}
