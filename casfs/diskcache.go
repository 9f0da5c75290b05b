package casfs

import (
	"container/list"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"stasis/cas"
)

// diskCache keeps encoded chunks in local files (DIR/ab/<id>), bounded by
// bytes with LRU eviction. It is only a cache: files are written without
// fsync and every chunk read from it is verified against its ID by the
// caller; a bad file is removed and the chunk fetched again. The index is
// rebuilt from the directory at startup.
type diskCache struct {
	dir string
	max int64
	log *slog.Logger

	mu  sync.Mutex
	cur int64
	ll  *list.List // of *diskEntry, front = most recent
	m   map[cas.ChunkID]*list.Element
}

type diskEntry struct {
	id   cas.ChunkID
	size int64
}

func openDiskCache(dir string, max int64, log *slog.Logger) (*diskCache, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("disk cache: %w", err)
	}
	c := &diskCache{dir: dir, max: max, log: log, ll: list.New(), m: map[cas.ChunkID]*list.Element{}}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		id, perr := cas.ParseChunkID(d.Name())
		info, ierr := d.Info()
		if perr != nil || ierr != nil {
			_ = os.Remove(path) // temp files of an interrupted put, strays
			return nil
		}
		c.m[id] = c.ll.PushBack(&diskEntry{id: id, size: info.Size()})
		c.cur += info.Size()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("disk cache: %w", err)
	}
	c.mu.Lock()
	c.evictLocked()
	c.mu.Unlock()
	return c, nil
}

func (c *diskCache) path(id cas.ChunkID) string {
	s := id.String()
	return filepath.Join(c.dir, s[:2], s)
}

// get returns the encoded bytes of a cached chunk.
func (c *diskCache) get(id cas.ChunkID) ([]byte, bool) {
	c.mu.Lock()
	e, ok := c.m[id]
	if ok {
		c.ll.MoveToFront(e)
	}
	c.mu.Unlock()
	if !ok {
		return nil, false
	}
	b, err := os.ReadFile(c.path(id))
	if err != nil {
		c.remove(id)
		return nil, false
	}
	return b, true
}

// put stores a chunk's encoded bytes; failures are logged, not returned.
func (c *diskCache) put(id cas.ChunkID, enc []byte) {
	c.mu.Lock()
	_, ok := c.m[id]
	c.mu.Unlock()
	if ok || int64(len(enc)) > c.max {
		return
	}
	p := c.path(id)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		c.log.Warn("disk cache", "err", err)
		return
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".tmp-*")
	if err != nil {
		c.log.Warn("disk cache", "err", err)
		return
	}
	_, err = tmp.Write(enc)
	err = errors.Join(err, tmp.Close())
	if err == nil {
		err = os.Rename(tmp.Name(), p)
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
		c.log.Warn("disk cache", "err", err)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[id]; !ok {
		c.m[id] = c.ll.PushFront(&diskEntry{id: id, size: int64(len(enc))})
		c.cur += int64(len(enc))
	}
	c.evictLocked()
}

// remove drops a chunk (a bad or vanished file).
func (c *diskCache) remove(id cas.ChunkID) {
	c.mu.Lock()
	if e, ok := c.m[id]; ok {
		c.ll.Remove(e)
		delete(c.m, id)
		c.cur -= e.Value.(*diskEntry).size
	}
	c.mu.Unlock()
	_ = os.Remove(c.path(id))
}

func (c *diskCache) evictLocked() {
	for c.cur > c.max {
		e := c.ll.Back()
		ent := e.Value.(*diskEntry)
		c.ll.Remove(e)
		delete(c.m, ent.id)
		c.cur -= ent.size
		_ = os.Remove(c.path(ent.id))
	}
}

func (c *diskCache) usage() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur
}
