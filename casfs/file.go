package casfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"stasis/cas"
	"stasis/metad"
)

// inode is the local state of a file that is open on this mount or has
// unflushed writes. Its mutex serializes writes, flushes and truncates; reads
// of a clean file only take it to pick up the current read plan.
type inode struct {
	fs   *FS
	node metad.Node

	mu        sync.Mutex
	refs      int             // handles plus in-progress operations
	writers   int             // handles open for writing
	plan      *metad.ReadPlan // committed content; nil until needed or when stale
	cachedGen uint64          // Gen whose data the kernel may hold in its page cache
	w         *writeState     // unflushed writes; nil when clean
}

// writeState is a file's content since its last commit: the committed base
// (inode.plan) valid below baseLimit, overlaid by dirty ranges held in a
// staging file, up to size. While a file with no content but zeros (new,
// truncated to zero, or only extended since) is written in increasing
// offsets (the hypervisor case; also sparse copies, which skip holes, and
// files sized with ftruncate before they are filled), stream is set instead
// and data goes straight into the pipeline without staging.
type writeState struct {
	policy    cas.Policy
	size      uint64
	baseLimit uint64
	mtime     time.Time
	changed   bool
	stream    *stream
	dirty     spans
	staging   *os.File
	err       error // sticky: the content could not be kept; every flush reports it
}

// stream is a file's content being chunked as it is written: everything
// below pos has been fed to sp, and the content from pos up to the file's
// size is zeros.
type stream struct {
	p   *pipeline
	sp  chunkWriter
	pos uint64
	ctx context.Context // of the call feeding sp now (a write or the flush)
}

// chunkWriter cuts a stream into chunks: cas.Splitter (through cdcWriter),
// or fixedSplitter for fixed policies. Skip feeds n zero bytes.
type chunkWriter interface {
	Write(p []byte) (int, error)
	Skip(n uint64) error
	Close() error
}

func newChunkWriter(pol cas.Policy, emit func(off uint64, chunk []byte) error, hole func(off, n uint64) error) chunkWriter {
	if pol.Kind == cas.KindFixed {
		return &fixedSplitter{size: int(pol.Avg), emit: emit, hole: hole}
	}
	c := pol.New()
	return &cdcWriter{sp: cas.NewSplitter(c, emit), hole: hole, feedMax: 2 * uint64(c.MaxSize())}
}

// cdcWriter is a content-defined splitter that can skip zeros. Its cut
// points depend on the bytes, so a short run of zeros is fed through it
// like data (the chunks cut from it are all-zero and become holes in the
// pipeline), and cuts are the same as if the zeros had been written. A run
// of feedMax or more ends the chunk being cut and goes to hole unread, like
// the zeros past the end of a file that rebuildLocked skips; cutting starts
// afresh after it.
type cdcWriter struct {
	sp      *cas.Splitter
	hole    func(off, n uint64) error
	feedMax uint64
	pos     uint64
}

// zeroBlock holds the zeros skips feed: as long as the largest chunk, since
// fixedSplitter pads a partial chunk with up to a chunk's worth. (A zero
// array in BSS: reading it costs no memory.)
var zeroBlock [cas.MaxChunkSize]byte

func (c *cdcWriter) Write(p []byte) (int, error) {
	n, err := c.sp.Write(p)
	c.pos += uint64(n)
	return n, err
}

func (c *cdcWriter) Skip(n uint64) error {
	if n >= c.feedMax {
		if err := c.sp.Skip(n); err != nil {
			return err
		}
		if err := c.hole(c.pos, n); err != nil {
			return err
		}
		c.pos += n
		return nil
	}
	for n > 0 {
		k := min(n, uint64(len(zeroBlock)))
		if _, err := c.Write(zeroBlock[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

func (c *cdcWriter) Close() error { return c.sp.Close() }

// fixedSplitter cuts at multiples of size, handing whole chunks of the
// caller's buffer straight to emit (no copy) and buffering only a partial
// chunk between writes. Skipped whole chunks go to hole without data. The
// first error is sticky.
type fixedSplitter struct {
	size int
	emit func(off uint64, chunk []byte) error
	hole func(off, n uint64) error
	buf  []byte
	off  uint64
	err  error
}

// Skip feeds n zeros: it completes a buffered partial chunk with zeros,
// hands whole chunks to hole, and buffers the zeros of a last partial one.
func (s *fixedSplitter) Skip(n uint64) error {
	if s.err != nil {
		return s.err
	}
	if len(s.buf) > 0 {
		k := min(uint64(s.size-len(s.buf)), n)
		s.buf = append(s.buf, zeroBlock[:k]...)
		n -= k
		if len(s.buf) < s.size {
			return nil
		}
		if err := s.put(s.buf); err != nil {
			return err
		}
		s.buf = s.buf[:0]
	}
	if whole := n / uint64(s.size) * uint64(s.size); whole > 0 {
		if s.err = s.hole(s.off, whole); s.err != nil {
			return s.err
		}
		s.off += whole
		n -= whole
	}
	s.buf = append(s.buf, zeroBlock[:n]...)
	return nil
}

func (s *fixedSplitter) put(b []byte) error {
	if s.err = s.emit(s.off, b); s.err == nil {
		s.off += uint64(len(b))
	}
	return s.err
}

func (s *fixedSplitter) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	n := len(p)
	if len(s.buf) > 0 {
		k := min(s.size-len(s.buf), len(p))
		s.buf, p = append(s.buf, p[:k]...), p[k:]
		if len(s.buf) == s.size {
			if err := s.put(s.buf); err != nil {
				return 0, err
			}
			s.buf = s.buf[:0]
		}
	}
	for len(p) >= s.size {
		if err := s.put(p[:s.size]); err != nil {
			return 0, err
		}
		p = p[s.size:]
	}
	s.buf = append(s.buf, p...)
	return n, nil
}

func (s *fixedSplitter) Close() error {
	if s.err != nil || len(s.buf) == 0 {
		return s.err
	}
	return s.put(s.buf)
}

// acquire returns the inode state for n, creating it, with one more reference.
func (f *FS) acquire(n metad.Node) *inode {
	f.mu.Lock()
	defer f.mu.Unlock()
	in := f.inodes[n]
	if in == nil {
		in = &inode{fs: f, node: n, cachedGen: f.gens[n]}
		f.inodes[n] = in
	}
	in.refs++
	return in
}

// put drops a reference; a clean inode without references is forgotten.
func (f *FS) put(in *inode) {
	in.mu.Lock()
	f.mu.Lock()
	in.refs--
	if in.refs == 0 && in.w == nil && f.inodes[in.node] == in {
		delete(f.inodes, in.node)
		// Remember what the kernel may still cache, so that reopening an
		// unchanged file keeps its pages (bounded: forgetting only costs
		// a page-cache refill).
		if len(f.gens) >= maxRememberedGens {
			clear(f.gens)
		}
		f.gens[in.node] = in.cachedGen
	}
	f.mu.Unlock()
	in.mu.Unlock()
}

const maxRememberedGens = 1 << 16

// Handle is an open file.
type Handle struct {
	in       *inode
	writable bool
	created  atomic.Bool // the open created the file and no flush has made that durable yet
	released atomic.Bool
	lastEnd  atomic.Uint64 // end of the previous read, for sequential detection
	raEnd    atomic.Uint64 // read-ahead issued up to here
}

// Open opens a file. keepCache reports that the kernel's cached pages of the
// file are still valid (the content generation did not change since they
// were cached, or the file is in a snapshot).
func (f *FS) Open(ctx context.Context, n metad.Node, flags int) (h *Handle, keepCache bool, err error) {
	writable := flags&syscall.O_ACCMODE != syscall.O_RDONLY
	if n.Snap != metad.LiveSnap && (writable || flags&syscall.O_TRUNC != 0) {
		return nil, false, metad.ErrReadOnly
	}
	attr, err := f.meta.GetAttr(ctx, n)
	if err != nil {
		return nil, false, err
	}
	if attr.Mode&syscall.S_IFMT == syscall.S_IFDIR {
		return nil, false, metad.ErrIsDir
	}
	if n.Snap == metad.LiveSnap {
		if err := f.meta.Open(ctx, n.Ino); err != nil {
			return nil, false, err
		}
	}
	in := f.acquire(n)
	in.mu.Lock()
	defer in.mu.Unlock()
	switch {
	case in.w != nil:
		keepCache = true // the kernel holds our own unflushed writes
	case n.Snap != metad.LiveSnap:
		keepCache = true // snapshot content never changes
	default:
		keepCache = in.cachedGen == attr.Gen
		if in.plan != nil && in.plan.Attr.Gen != attr.Gen {
			in.plan = nil
		}
		in.cachedGen = attr.Gen
	}
	if writable {
		in.writers++
	}
	return &Handle{in: in, writable: writable}, keepCache, nil
}

// Node returns the file the handle is open on.
func (h *Handle) Node() metad.Node { return h.in.node }

// planLocked returns the committed read plan, fetching it when missing or
// when its token is about to expire.
func (in *inode) planLocked(ctx context.Context) (*metad.ReadPlan, error) {
	if in.plan != nil && time.Until(in.plan.Expiry) > 30*time.Second {
		return in.plan, nil
	}
	var plan metad.ReadPlan
	err := in.fs.retry(ctx, "read plan", func(ctx context.Context) error {
		var err error
		plan, err = in.fs.meta.ReadPlan(ctx, in.node)
		return err
	})
	if err != nil {
		return nil, err
	}
	if len(plan.Location) != len(plan.Manifest.Extents) {
		return nil, fmt.Errorf("casfs: read plan of ino %d has %d locations for %d extents", in.node.Ino, len(plan.Location), len(plan.Manifest.Extents))
	}
	if old := in.plan; old != nil && in.w != nil && old.Attr.Gen != plan.Attr.Gen {
		// Another node committed while we hold unflushed writes on the old
		// content: keep reading that content, with the fresh token.
		if len(old.Endpoints) == len(plan.Endpoints) {
			cp := *old
			cp.Token, cp.Expiry, cp.Endpoints = plan.Token, plan.Expiry, plan.Endpoints
			in.plan = &cp
			return in.plan, nil
		}
	}
	in.plan = &plan
	return in.plan, nil
}

// writeStateLocked returns the file's write state, creating it from the
// committed content.
func (in *inode) writeStateLocked(ctx context.Context) (*writeState, error) {
	if in.w != nil {
		return in.w, nil
	}
	plan, err := in.planLocked(ctx)
	if err != nil {
		return nil, err
	}
	size := plan.Manifest.Size
	w := &writeState{size: size, baseLimit: size, mtime: plan.Attr.Mtime}
	if size > 0 && plan.Manifest.Policy.Validate() == nil {
		w.policy = plan.Manifest.Policy
	} else {
		w.policy = in.policy(ctx, plan)
	}
	in.w = w
	return w, nil
}

// policy picks the chunker for new content: the file's own PolicyXattr,
// then the policy metad recorded for it, then the configured default.
func (in *inode) policy(ctx context.Context, plan *metad.ReadPlan) cas.Policy {
	if v, err := in.fs.meta.GetXattr(ctx, in.node, PolicyXattr); err == nil {
		if p, err := cas.ParsePolicy(string(v)); err == nil {
			return p
		}
		in.fs.log.Warn("ignoring bad chunker policy xattr", "ino", in.node.Ino, "value", string(v))
	}
	if plan != nil && plan.Manifest.Policy.Validate() == nil {
		return plan.Manifest.Policy
	}
	return in.fs.cfg.DefaultPolicy
}

// Write writes data at off.
func (h *Handle) Write(ctx context.Context, data []byte, off int64) (int, error) {
	in := h.in
	if in.node.Snap != metad.LiveSnap {
		return 0, metad.ErrReadOnly
	}
	if off < 0 {
		return 0, metad.ErrInvalid
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	w, err := in.writeStateLocked(ctx)
	if err != nil {
		return 0, err
	}
	if w.err != nil {
		return 0, w.err
	}
	if len(data) == 0 {
		return 0, nil
	}
	uoff := uint64(off)
	end := uoff + uint64(len(data))
	if w.stream == nil && w.baseLimit == 0 && len(w.dirty) == 0 {
		// Nothing but zeros so far: stream.
		st := &stream{p: in.fs.newPipeline()}
		st.sp = newChunkWriter(w.policy, func(off uint64, chunk []byte) error { return st.p.add(st.ctx, off, chunk) }, st.p.skipped)
		w.stream = st
	}
	if st := w.stream; st != nil && uoff >= st.pos {
		st.ctx = ctx
		err := st.sp.Skip(uoff - st.pos) // zeros up to here: holes
		if err == nil {
			_, err = st.sp.Write(data)
		}
		if err != nil {
			w.err = fmt.Errorf("casfs: writing ino %d: %w", in.node.Ino, err)
			in.fs.log.Error("write pipeline failed", "ino", in.node.Ino, "err", err)
			return 0, w.err
		}
		st.pos = end
		w.size = max(w.size, end)
		w.mtime, w.changed = time.Now(), true
		return len(data), nil
	}
	if w.stream != nil {
		// Not sequential any more: commit what was streamed, then stage.
		if err := in.endStreamLocked(ctx); err != nil {
			return 0, err
		}
		w = in.w // a new write state: this write is its first change
	}
	w.mtime, w.changed = time.Now(), true
	if w.staging == nil {
		f, err := os.CreateTemp(in.fs.cfg.StagingDir, "casfs-stage-*")
		if err != nil {
			return 0, fmt.Errorf("casfs: staging file: %w", err)
		}
		_ = os.Remove(f.Name())
		w.staging = f
	}
	if _, err := w.staging.WriteAt(data, off); err != nil {
		return 0, fmt.Errorf("casfs: staging write: %w", err)
	}
	in.fs.stats.staged.Add(uint64(len(data)))
	w.dirty = w.dirty.add(uoff, end)
	w.size = max(w.size, end)
	return len(data), nil
}

// endStreamLocked commits the streamed content and reopens the write state
// on top of it, so that a non-sequential write can be staged.
func (in *inode) endStreamLocked(ctx context.Context) error {
	if err := in.flushLocked(ctx); err != nil {
		return err
	}
	_, err := in.writeStateLocked(ctx)
	return err
}

// Read reads into dest at off and returns the byte count (short at EOF).
func (h *Handle) Read(ctx context.Context, dest []byte, off int64) (int, error) {
	in := h.in
	if off < 0 {
		return 0, metad.ErrInvalid
	}
	in.mu.Lock()
	if in.w != nil && in.w.err == nil {
		if in.w.stream != nil {
			if err := in.endStreamLocked(ctx); err != nil {
				in.mu.Unlock()
				return 0, err
			}
		}
		if in.w.err == nil {
			defer in.mu.Unlock()
			return in.readMergedLocked(ctx, dest, uint64(off))
		}
	}
	// No unflushed writes, or they failed: the writer was told (write,
	// close or fsync returned the error) and they are dropped at release,
	// so until then readers see the last committed content, as a remount
	// would, rather than the writer's error.
	plan, err := in.planLocked(ctx)
	in.mu.Unlock()
	if err != nil {
		return 0, err
	}
	uoff := uint64(off)
	size := plan.Manifest.Size
	if uoff >= size {
		return 0, nil
	}
	n := int(min(uint64(len(dest)), size-uoff))
	if err := in.fs.readPlan(ctx, plan, dest[:n], uoff); err != nil {
		return 0, err
	}
	if h.lastEnd.Swap(uoff+uint64(n)) == uoff {
		in.fs.readAhead(plan, uoff+uint64(n), &h.raEnd)
	}
	return n, nil
}

// readMergedLocked reads the uncommitted content: dirty ranges from the
// staging file, the committed base below baseLimit, zeros elsewhere.
func (in *inode) readMergedLocked(ctx context.Context, dest []byte, off uint64) (int, error) {
	w := in.w
	if off >= w.size {
		return 0, nil
	}
	n := int(min(uint64(len(dest)), w.size-off))
	buf := dest[:n]
	var plan *metad.ReadPlan
	for pos := off; pos < off+uint64(n); {
		i, inside := w.dirty.find(pos)
		next := off + uint64(n)
		if inside {
			next = min(next, w.dirty[i].end)
		} else if i < len(w.dirty) {
			next = min(next, w.dirty[i].start)
		}
		part := buf[pos-off : next-off]
		switch {
		case inside:
			if _, err := w.staging.ReadAt(part, int64(pos)); err != nil {
				return 0, fmt.Errorf("casfs: staging read: %w", err)
			}
		default:
			// Committed base below baseLimit, zeros above.
			k := 0
			if pos < w.baseLimit {
				k = int(min(uint64(len(part)), w.baseLimit-pos))
				if plan == nil {
					var err error
					if plan, err = in.planLocked(ctx); err != nil {
						return 0, err
					}
				}
				if err := in.fs.readPlan(ctx, plan, part[:k], pos); err != nil {
					return 0, err
				}
			}
			clear(part[k:])
		}
		pos = next
	}
	return n, nil
}

// readPlan fills dest with the committed content at off; gaps, holes and
// bytes past the manifest read as zeros.
func (f *FS) readPlan(ctx context.Context, plan *metad.ReadPlan, dest []byte, off uint64) error {
	m := &plan.Manifest
	for len(dest) > 0 {
		i := m.Find(off)
		if i < 0 {
			// In a gap: zeros up to the next extent.
			j := nextExtent(m, off)
			k := len(dest)
			if j < len(m.Extents) {
				k = int(min(uint64(k), m.Extents[j].Offset-off))
			}
			clear(dest[:k])
			dest, off = dest[k:], off+uint64(k)
			continue
		}
		e := m.Extents[i]
		k := int(min(uint64(len(dest)), e.End()-off))
		if e.Hole {
			clear(dest[:k])
		} else {
			ent, err := f.chunk(ctx, plan, i)
			if err != nil {
				return err
			}
			start := off - e.Offset
			if uint64(len(ent.data)) < start+uint64(k) {
				n := len(ent.data)
				f.cache.release(ent)
				return fmt.Errorf("casfs: chunk %s holds %d bytes, extent needs %d: %w", e.ID.Short(), n, e.Length, cas.ErrCorruptChunk)
			}
			copy(dest[:k], ent.data[start:])
			f.cache.release(ent)
		}
		dest, off = dest[k:], off+uint64(k)
	}
	return nil
}

// nextExtent returns the index of the first extent starting after off.
func nextExtent(m *cas.Manifest, off uint64) int {
	lo, hi := 0, len(m.Extents)
	for lo < hi {
		mid := (lo + hi) / 2
		if m.Extents[mid].Offset <= off {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}

// chunk returns the cache entry of extent i's chunk, pinned: the caller
// reads its data and then releases it (f.cache.release). Every fetched
// chunk is verified against its ID: corruption is an error, never wrong
// data.
func (f *FS) chunk(ctx context.Context, plan *metad.ReadPlan, i int) (*cacheEntry, error) {
	e := plan.Manifest.Extents[i]
	if ent, ok := f.cache.lookup(e.ID); ok {
		f.stats.cacheHits.Add(1)
		return ent, nil
	}
	loc := int(plan.Location[i])
	if loc >= len(plan.Endpoints) {
		return nil, fmt.Errorf("casfs: read plan names endpoint %d of %d", loc, len(plan.Endpoints))
	}
	ep, token := plan.Endpoints[loc], plan.Token
	return f.cache.get(ctx, e.ID, func() ([]byte, error) {
		if f.disk != nil {
			if enc, ok := f.disk.get(e.ID); ok {
				if data, err := f.decodeOwned(e.ID, enc); err == nil {
					f.stats.diskHits.Add(1)
					return data, nil
				}
				f.log.Warn("dropping bad chunk from the disk cache", "id", e.ID.String())
				f.disk.remove(e.ID)
			}
		}
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), f.cfg.RetryDeadline+5*time.Second)
		defer cancel()
		var enc []byte
		err := f.retry(fctx, "get chunk", func(ctx context.Context) error {
			var err error
			enc, err = f.transport.Get(ctx, ep, token, e.ID)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("get chunk %s from %s: %w", e.ID.Short(), ep.Name, err)
		}
		f.stats.fetchedChunks.Add(1)
		f.stats.fetchedEnc.Add(uint64(len(enc)))
		data, err := f.decodeOwned(e.ID, enc)
		if err != nil {
			f.log.Error("corrupt chunk", "id", e.ID.String(), "endpoint", ep.Name, "err", err)
			return nil, err
		}
		if f.disk != nil {
			f.disk.put(e.ID, enc)
		}
		return data, nil
	})
}

// readAhead fetches, in the background, the chunks of the ReadAheadBytes
// after off that are not cached yet, skipping what was already requested.
// With a BatchTransport it asks for readAheadBatch bytes of neighbouring
// chunks at a time (a block store reads them with one large read); else
// one chunk per fetch.
func (f *FS) readAhead(plan *metad.ReadPlan, off uint64, raEnd *atomic.Uint64) {
	if f.cfg.ReadAheadBytes <= 0 {
		return
	}
	m := &plan.Manifest
	limit := off + uint64(f.cfg.ReadAheadBytes)
	from := max(off, raEnd.Load())
	i := m.Find(from)
	if i < 0 {
		i = nextExtent(m, from)
	}
	bt, batched := f.transport.(BatchTransport)
	if !batched {
		for ; i < len(m.Extents) && m.Extents[i].Offset < limit; i++ {
			e := m.Extents[i]
			if e.Hole || f.cache.contains(e.ID) {
				raEnd.Store(e.End())
				continue
			}
			if !f.prefetch.TryAcquire(1) {
				return
			}
			raEnd.Store(e.End())
			go func(i int) {
				defer f.prefetch.Release(1)
				ctx, cancel := context.WithTimeout(context.Background(), f.cfg.RetryDeadline)
				defer cancel()
				ent, err := f.chunk(ctx, plan, i)
				if err != nil {
					f.log.Debug("read-ahead failed", "err", err)
					return
				}
				f.cache.release(ent)
			}(i)
		}
		return
	}
	// Gather batches of neighbouring extents on one endpoint; a batch
	// goes out once it is full, or the file ends, or the endpoint changes.
	// Batches are a fraction of the window, so that a small window still
	// fills them.
	batchBytes := max(min(readAheadBatch, uint64(f.cfg.ReadAheadBytes)/4), 1)
	var batch []int
	var size uint64
	flush := func(end uint64) bool {
		if len(batch) > 0 {
			if !f.prefetch.TryAcquire(1) {
				return false
			}
			go func(batch []int) {
				defer f.prefetch.Release(1)
				f.fetchBatch(bt, plan, batch)
			}(batch)
		}
		raEnd.Store(end)
		batch, size = nil, 0
		return true
	}
	for ; i < len(m.Extents) && m.Extents[i].Offset < limit; i++ {
		e := m.Extents[i]
		if e.Hole || f.cache.contains(e.ID) {
			if len(batch) == 0 {
				raEnd.Store(e.End())
			}
			continue
		}
		if len(batch) > 0 && plan.Location[batch[0]] != plan.Location[i] {
			if !flush(m.Extents[batch[len(batch)-1]].End()) {
				return
			}
		}
		batch = append(batch, i)
		size += uint64(e.Length)
		if size >= batchBytes {
			if !flush(e.End()) {
				return
			}
		}
	}
	if i == len(m.Extents) && len(batch) > 0 {
		flush(m.Extents[batch[len(batch)-1]].End())
	}
	// Otherwise a partial batch waits for the reader to move on: the
	// next call starts from it.
}

// readAheadBatch is the largest raw size of one read-ahead batch (a
// quarter of ReadAheadBytes when that is smaller).
const readAheadBatch = 4 << 20

// fetchBatch fetches the chunks of the extents idx (all on one endpoint)
// that are neither cached nor being fetched, from the disk cache or with
// GetMany calls, verifying each; a chunk that is not delivered (absent,
// corrupt, or the call failed) is left to a reader's own fetch, which
// reports its error.
func (f *FS) fetchBatch(bt BatchTransport, plan *metad.ReadPlan, idx []int) {
	loc := int(plan.Location[idx[0]])
	if loc >= len(plan.Endpoints) {
		return // chunk reports it
	}
	ep, token := plan.Endpoints[loc], plan.Token
	ids := make([]cas.ChunkID, len(idx))
	for k, i := range idx {
		ids[k] = plan.Manifest.Extents[i].ID
	}
	err := f.cache.getMany(ids, func(ids []cas.ChunkID, deliver func(cas.ChunkID, []byte)) error {
		todo := ids[:0:0]
		for _, id := range ids {
			if f.disk != nil {
				if enc, ok := f.disk.get(id); ok {
					if data, err := f.decodeOwned(id, enc); err == nil {
						f.stats.diskHits.Add(1)
						deliver(id, data)
						continue
					}
					f.log.Warn("dropping bad chunk from the disk cache", "id", id.String())
					f.disk.remove(id)
				}
			}
			todo = append(todo, id)
		}
		if len(todo) == 0 {
			return nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), f.cfg.RetryDeadline)
		defer cancel()
		got := make(map[cas.ChunkID]bool, len(todo))
		return f.retry(ctx, "get chunks", func(ctx context.Context) error {
			rest := todo[:0:0]
			for _, id := range todo {
				if !got[id] {
					rest = append(rest, id)
				}
			}
			return bt.GetMany(ctx, ep, token, rest, func(id cas.ChunkID, enc []byte) error {
				if got[id] {
					return nil
				}
				got[id] = true
				f.stats.fetchedChunks.Add(1)
				f.stats.fetchedEnc.Add(uint64(len(enc)))
				data, err := f.decodeInto(id, enc)
				if err != nil {
					f.log.Error("corrupt chunk", "id", id.String(), "endpoint", ep.Name, "err", err)
					return nil // not delivered: a reader's own fetch reports it
				}
				if f.disk != nil {
					f.disk.put(id, enc)
				}
				deliver(id, data)
				return nil
			})
		})
	})
	if err != nil {
		f.log.Debug("read-ahead batch failed", "endpoint", ep.Name, "err", err)
	}
}

// MarkCreated records that this open created the file (O_CREAT made it):
// the first Flush then makes the file durable even if nothing was written.
func (h *Handle) MarkCreated() { h.created.Store(true) }

// Flush commits the file's unflushed writes; it returns when the content
// and manifest are durable. A commit syncs metad, which makes every earlier
// namespace change durable too (the file's creation, renames, attributes).
// Without writes to commit, Flush syncs metad only when this open created
// the file, so that a file created and closed empty is durable at close like
// any other: a remount after a power loss shows every file as it was last
// successfully closed. Namespace changes made after the close (a rename, a
// chmod) are durable at the next fsync, commit or metad's background flush
// (within about a second).
func (h *Handle) Flush(ctx context.Context) error {
	return h.flush(ctx, h.created.Load())
}

// Fsync is Flush that always makes the file's metadata durable: with no
// writes to commit it syncs metad, so attribute changes, the file's name and
// everything else changed before are on disk when it returns.
func (h *Handle) Fsync(ctx context.Context) error { return h.flush(ctx, true) }

func (h *Handle) flush(ctx context.Context, syncMeta bool) error {
	in := h.in
	in.mu.Lock()
	commits := in.w != nil && in.w.changed && in.w.err == nil
	err := in.flushLocked(ctx)
	in.mu.Unlock()
	if err != nil {
		return err
	}
	if !commits && syncMeta {
		if err := in.fs.SyncMeta(ctx); err != nil {
			return err
		}
	}
	h.created.Store(false)
	return nil
}

// Release closes the handle. Unflushed writes are committed first; an error
// doing so is returned (and logged) and the writes are dropped.
func (h *Handle) Release(ctx context.Context) error {
	if h.released.Swap(true) {
		return nil
	}
	in := h.in
	in.mu.Lock()
	var err error
	if h.writable {
		in.writers--
	}
	if in.writers == 0 {
		err = in.flushLocked(ctx)
		if err != nil {
			in.fs.log.Error("dropping unflushed writes at release", "ino", in.node.Ino, "err", err)
			in.dropLocked()
		}
	}
	in.mu.Unlock()
	if in.node.Snap == metad.LiveSnap {
		if rerr := in.fs.meta.Release(ctx, in.node.Ino); rerr != nil && !errors.Is(rerr, metad.ErrNotFound) {
			err = errors.Join(err, rerr)
		}
	}
	in.fs.put(in)
	return err
}

// dropLocked discards the write state.
func (in *inode) dropLocked() {
	w := in.w
	if w == nil {
		return
	}
	if w.stream != nil {
		w.stream.p.abort()
	}
	if w.staging != nil {
		w.staging.Close()
	}
	in.w = nil
	in.plan = nil
}

// flushLocked commits the write state, if any.
func (in *inode) flushLocked(ctx context.Context) error {
	w := in.w
	if w == nil {
		return nil
	}
	if w.err != nil {
		return w.err
	}
	if !w.changed {
		in.dropLocked()
		return nil
	}
	var exts []cas.Extent
	var err error
	if st := w.stream; st != nil {
		st.ctx = ctx
		err = st.sp.Skip(w.size - st.pos) // a size set past the last write
		if err == nil {
			err = st.sp.Close()
		}
		if err == nil {
			exts, err = st.p.finish()
		} else {
			st.p.abort()
		}
		w.stream = nil
	} else {
		exts, err = in.rebuildLocked(ctx)
	}
	if err != nil {
		w.err = fmt.Errorf("casfs: flushing ino %d: %w", in.node.Ino, err)
		in.fs.log.Error("flush failed", "ino", in.node.Ino, "err", err)
		return w.err
	}
	m := cas.Manifest{Policy: w.policy, Size: w.size, Extents: exts}
	var attr metad.Attr
	err = in.fs.retry(ctx, "commit", func(ctx context.Context) error {
		var err error
		attr, err = in.fs.meta.Commit(ctx, metad.CommitRequest{Ino: in.node.Ino, Manifest: m, Mtime: w.mtime})
		return err
	})
	if err != nil {
		// The content is still whole in the write state when it came from
		// staging; a streamed one is gone, so the error sticks.
		in.fs.log.Error("commit failed", "ino", in.node.Ino, "err", err)
		if len(w.dirty) == 0 {
			w.err = fmt.Errorf("casfs: committing ino %d: %w", in.node.Ino, err)
			return w.err
		}
		return fmt.Errorf("casfs: committing ino %d: %w", in.node.Ino, err)
	}
	if w.staging != nil {
		w.staging.Close()
	}
	in.w = nil
	in.plan = nil
	in.cachedGen = attr.Gen
	return nil
}

// truncate sets a file's size. With no writer open on this mount it is
// committed before truncate returns.
func (f *FS) truncate(ctx context.Context, n metad.Node, size uint64) error {
	in := f.acquire(n)
	defer f.put(in)
	in.mu.Lock()
	defer in.mu.Unlock()
	w, err := in.writeStateLocked(ctx)
	if err != nil {
		return err
	}
	if size == 0 {
		// Start over: this also clears a sticky error and enables streaming.
		if w.stream != nil {
			w.stream.p.abort()
			w.stream = nil
		}
		w.err = nil
		if w.size != 0 || w.baseLimit != 0 {
			w.changed = true
		}
		w.size, w.baseLimit, w.dirty = 0, 0, nil
		if w.staging != nil {
			_ = w.staging.Truncate(0)
		}
		w.mtime = time.Now()
	} else if size != w.size {
		if w.err != nil {
			return w.err
		}
		if w.stream != nil && size < w.stream.pos {
			// Cuts into what was streamed: commit that, then clip.
			if err := in.endStreamLocked(ctx); err != nil {
				return err
			}
			w = in.w
		}
		// A streamed file keeps streaming: zeros from pos to size.
		if size < w.size {
			w.dirty = w.dirty.clip(size)
			w.baseLimit = min(w.baseLimit, size)
		}
		w.size, w.mtime, w.changed = size, time.Now(), true
	}
	if in.writers == 0 {
		return in.flushLocked(ctx)
	}
	return nil
}

// Allocate implements fallocate: mode 0 extends the file with zeros,
// FALLOC_FL_KEEP_SIZE is accepted and does nothing (chunks are allocated on
// write); other modes are not supported.
func (h *Handle) Allocate(ctx context.Context, off, length uint64, mode uint32) error {
	const keepSize = 1
	switch mode {
	case 0:
		a, err := h.in.fs.GetAttr(ctx, h.in.node)
		if err != nil {
			return err
		}
		if off+length > a.Size {
			return h.in.fs.truncate(ctx, h.in.node, off+length)
		}
		return nil
	case keepSize:
		return nil
	}
	return ErrNotSupported
}

// ErrNotSupported is returned for operations casfs does not implement.
var ErrNotSupported = errors.New("casfs: operation not supported")

// decodeOwned decodes an encoded chunk the caller owns and hands over, and
// checks its hash. A raw-coded chunk is used in place (no copy); an LZ4 one
// is decoded into a buffer from the chunk cache.
func (f *FS) decodeOwned(id cas.ChunkID, enc []byte) ([]byte, error) {
	if c, err := cas.EncodedCodec(enc); err == nil && c == cas.CodecRaw && len(enc)-1 <= cas.MaxChunkSize {
		data := enc[1:]
		if got := cas.Sum(data); got != id {
			return nil, &cas.MismatchError{Want: id, Got: got}
		}
		return data, nil
	}
	return f.decodeInto(id, enc)
}

// decodeInto decodes an encoded chunk into a buffer from the chunk cache
// and checks its hash; enc is not retained.
func (f *FS) decodeInto(id cas.ChunkID, enc []byte) ([]byte, error) {
	n, err := cas.RawSize(enc)
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w", id.Short(), err)
	}
	buf := f.cache.buffer(n)
	data, err := cas.DecodeVerify(buf[:0], id, enc)
	if err != nil {
		f.cache.recycle(buf)
		return nil, err
	}
	return data, nil
}
