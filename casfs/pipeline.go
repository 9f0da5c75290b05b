package casfs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"stasis/blockd"
	"stasis/cas"
	"stasis/metad"
)

// A pipeline turns one file's new content, fed in order as chunks (add) and
// reused extents (reuse), into a manifest's extents while uploading only the
// chunks metad reports missing:
//
//	add -> [FS workers: zero-detect, BLAKE3, LZ4] -> collector (in order, batches)
//	    -> uploads (PrepareUpload, Put missing to blockd; Uploads at a time) -> extents
//
// Memory is bounded by FS.mem, a semaphore shared by all pipelines: add
// blocks until the chunk fits. The first error is sticky: later adds return
// it and finish reports it.
type pipeline struct {
	fs     *FS
	ctx    context.Context
	cancel context.CancelFunc
	order  chan *job
	done   chan struct{} // closed when the collector has finished
	group  *errgroup.Group

	next      uint64 // offset the next add/reuse must start at (writer side)
	pending   []*job // added, not yet handed to the workers (writer side)
	pendBytes int
	results   [][]cas.Extent
	resMu     sync.Mutex
	err       atomic.Pointer[error]
	uploading atomic.Int32 // batches handed to uploaders and not yet released
}

// job is one chunk in flight, or a reused extent (ready at once).
type job struct {
	ext    cas.Extent
	buf    []byte // pooled: chunkHeadroom bytes, then raw
	raw    []byte // the chunk's bytes, within buf
	enc    []byte // encoded: pooled (LZ4), or within buf (raw)
	encLZ4 bool   // enc is pooled
	mem    int64
	ready  chan struct{} // closed when ext is final; shared by a dispatch group
	queued bool          // already in an upload of its batch
}

// chunkHeadroom is kept in front of a chunk's bytes, so that a chunk
// stored raw is encoded in place (a codec byte before it, no copy) and the
// raw bytes stay 64-byte aligned.
const chunkHeadroom = 64

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// process detects holes and hashes. Compression waits until metad says
// the chunk is missing: duplicates are never compressed.
func (j *job) process() {
	if cas.IsZero(j.raw) {
		j.ext.Hole = true
		return
	}
	j.ext.ID = cas.Sum(j.raw)
}

// groupBytes is how many chunk bytes one task of the FS workers processes
// (hashing on add, compressing on upload): about one FUSE write. A task per
// chunk woke a worker thread per chunk, which on these VMs cost more than
// hashing a 64 KiB chunk.
const groupBytes = 1 << 20

// encode compresses the chunk, or, when LZ4 does not shrink it, encodes
// it raw in place.
func (j *job) encode() {
	enc, ok := cas.EncodeLZ4(getBuf(len(j.raw))[:0], j.raw)
	if ok {
		j.enc, j.encLZ4 = enc, true
		return
	}
	putBuf(enc)
	j.enc = j.buf[chunkHeadroom-1 : chunkHeadroom+len(j.raw)]
	j.enc[0] = byte(cas.CodecRaw)
}

// errStopped is the sticky error of an aborted pipeline.
var errStopped = errors.New("casfs: write pipeline stopped")

func (f *FS) newPipeline() *pipeline {
	ctx, cancel := context.WithCancel(context.Background())
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(f.cfg.Uploads)
	p := &pipeline{
		fs:     f,
		ctx:    gctx,
		cancel: cancel,
		order:  make(chan *job, 4096),
		done:   make(chan struct{}),
		group:  g,
	}
	go p.collect()
	return p
}

func (p *pipeline) setErr(err error) {
	p.err.CompareAndSwap(nil, &err)
	p.cancel()
}

func (p *pipeline) error() error {
	if e := p.err.Load(); e != nil {
		return *e
	}
	return nil
}

// add queues one chunk at offset off (which must follow the previous one).
// It copies data, so the caller may reuse it when add returns. It waits
// for pipeline memory as long as ctx (the writer's) allows. Chunks are
// handed to the workers in groups of about groupBytes (dispatch); a group
// smaller than that waits for more adds, a reuse, finish, or its writer
// waiting for memory.
func (p *pipeline) add(ctx context.Context, off uint64, data []byte) error {
	if err := p.error(); err != nil {
		return err
	}
	if off != p.next {
		return fmt.Errorf("casfs: pipeline got offset %d, want %d", off, p.next)
	}
	mem := int64(2*len(data) + 64)
	if !p.fs.mem.TryAcquire(mem) {
		if err := p.waitMem(ctx, mem); err != nil {
			return err
		}
	}
	buf := getBuf(chunkHeadroom + len(data))
	raw := buf[chunkHeadroom:]
	copy(raw, data)
	j := &job{ext: cas.Extent{Offset: off, Length: uint32(len(data))}, buf: buf, raw: raw, mem: mem}
	p.next = off + uint64(len(data))
	p.fs.stats.written.Add(uint64(len(data)))
	p.pending = append(p.pending, j)
	p.pendBytes += len(data)
	if p.pendBytes >= groupBytes {
		return p.dispatch()
	}
	return nil
}

// waitMem acquires mem bytes of pipeline memory, waiting until other
// chunks are uploaded, the pipeline fails, or the writer's ctx ends.
func (p *pipeline) waitMem(ctx context.Context, mem int64) error {
	// Our own pending chunks must move before we wait for memory.
	if err := p.dispatch(); err != nil {
		return err
	}
	// Tell collectors holding partial batches that a writer waits.
	p.fs.starving.signal()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(p.ctx, cancel)
	defer stop()
	if err := p.fs.mem.Acquire(ctx, mem); err != nil {
		return p.errOr(fmt.Errorf("casfs: waiting for write pipeline memory: %w", err))
	}
	return nil
}

// dispatch hands the pending chunks to the workers as one task and queues
// them for the collector, in order.
func (p *pipeline) dispatch() error {
	if len(p.pending) == 0 {
		return nil
	}
	group := p.pending
	p.pending, p.pendBytes = nil, 0
	ready := make(chan struct{})
	for _, j := range group {
		j.ready = ready
	}
	task := func() {
		for _, j := range group {
			j.process()
		}
		close(ready)
	}
	select {
	case p.fs.work <- task:
	case <-p.ctx.Done():
		p.release(group)
		return p.errOr(p.ctx.Err())
	}
	for _, j := range group {
		p.order <- j
	}
	return nil
}

func (p *pipeline) errOr(err error) error {
	if e := p.error(); e != nil {
		return e
	}
	return err
}

// reuse queues an extent of the old manifest that is kept as it is.
func (p *pipeline) reuse(e cas.Extent) error {
	if err := p.error(); err != nil {
		return err
	}
	if e.Offset != p.next {
		return fmt.Errorf("casfs: pipeline reuse at %d, want %d", e.Offset, p.next)
	}
	if err := p.dispatch(); err != nil { // it comes after them
		return err
	}
	p.next = e.End()
	p.order <- &job{ext: e, ready: closedChan}
	return nil
}

// hole queues n zero bytes at off, never read, as hole extents (of at most
// cas.MaxChunkSize, a multiple of every fixed chunk size).
func (p *pipeline) hole(off, n uint64) error {
	for n > 0 {
		k := min(n, cas.MaxChunkSize)
		if err := p.reuse(cas.Extent{Offset: off, Length: uint32(k), Hole: true}); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}

// skipped is hole for the zeros a stream's writer skipped: they count as
// written hole bytes, as zeros it had written would.
func (p *pipeline) skipped(off, n uint64) error {
	if err := p.hole(off, n); err != nil {
		return err
	}
	p.fs.stats.written.Add(n)
	p.fs.stats.holeBytes.Add(n)
	return nil
}

// collect drains jobs in order into batches and hands them to uploaders.
// A batch goes out when full, when no job arrived for Config.BatchIdle, or at
// once when a writer (of any file) waits for pipeline memory and none of
// this pipeline's batches is uploading (then only flushing can free
// memory). A writer that is merely slower than the workers, or waits for
// them, does not cut batches short: each batch costs a PrepareUpload and
// a block store fsync, so small ones are expensive.
func (p *pipeline) collect() {
	defer close(p.done)
	var (
		batch []*job
		bytes int64
		seen  uint64 // starvation generation already acted on
	)
	idle := time.NewTimer(time.Hour)
	defer idle.Stop()
	flush := func() {
		if len(batch) == 0 {
			return
		}
		b := batch
		batch, bytes = nil, 0
		p.resMu.Lock()
		k := len(p.results)
		p.results = append(p.results, nil)
		p.resMu.Unlock()
		if p.error() != nil {
			p.release(b)
			return
		}
		p.uploading.Add(1)
		p.group.Go(func() error {
			defer p.uploading.Add(-1)
			ext, err := p.upload(b)
			p.release(b)
			if err != nil {
				p.setErr(err)
				return err
			}
			p.resMu.Lock()
			p.results[k] = ext
			p.resMu.Unlock()
			return nil
		})
	}
	for {
		var j *job
		var ok bool
		if len(batch) > 0 {
			starved, gen := p.fs.starving.wait()
			if gen != seen {
				seen = gen
				if p.uploading.Load() == 0 {
					flush()
					continue
				}
			}
			idle.Reset(p.fs.cfg.BatchIdle)
			select {
			case j, ok = <-p.order:
			case <-starved:
				continue
			case <-idle.C:
				flush()
				continue
			}
		} else {
			j, ok = <-p.order
			_, seen = p.fs.starving.wait() // older waits were for other batches
		}
		if !ok {
			break
		}
		<-j.ready
		batch = append(batch, j)
		if j.raw != nil { // reused extents upload nothing
			bytes += int64(j.ext.Length)
		}
		if len(batch) >= p.fs.cfg.BatchChunks || bytes >= p.fs.cfg.BatchBytes {
			flush()
		}
	}
	flush()
}

func (p *pipeline) release(b []*job) {
	for _, j := range b {
		if j.raw != nil {
			if j.encLZ4 {
				putBuf(j.enc)
			}
			putBuf(j.buf)
			j.buf, j.raw, j.enc = nil, nil, nil
			p.fs.mem.Release(j.mem)
		}
	}
}

// upload negotiates one batch with metad and puts the missing chunks.
func (p *pipeline) upload(b []*job) ([]cas.Extent, error) {
	f := p.fs
	first := make(map[cas.ChunkID]*job, len(b))
	var ids []cas.ChunkID
	for _, j := range b {
		if j.raw == nil || j.ext.Hole {
			continue
		}
		if _, ok := first[j.ext.ID]; !ok {
			first[j.ext.ID] = j
			ids = append(ids, j.ext.ID)
		}
	}
	if len(ids) > 0 {
		var plan metad.UploadPlan
		err := f.retry(p.ctx, "prepare upload", func(ctx context.Context) error {
			var err error
			plan, err = f.meta.PrepareUpload(ctx, ids)
			return err
		})
		if err != nil {
			return nil, err
		}
		missing := make(map[cas.ChunkID]bool, len(plan.Missing))
		var toEncode []*job
		for _, m := range plan.Missing {
			j, ok := first[m.ID]
			if !ok {
				return nil, fmt.Errorf("casfs: metad reported chunk %s missing that was not offered", m.ID.Short())
			}
			if int(m.Endpoint) >= len(plan.Endpoints) {
				return nil, fmt.Errorf("casfs: metad named endpoint %d of %d", m.Endpoint, len(plan.Endpoints))
			}
			if !missing[m.ID] {
				missing[m.ID] = true
				toEncode = append(toEncode, j)
			}
		}
		f.encodeAll(toEncode)
		byEP := map[uint16][]blockd.Chunk{}
		for _, m := range plan.Missing {
			if j := first[m.ID]; j.enc != nil && !j.queued {
				j.queued = true
				byEP[m.Endpoint] = append(byEP[m.Endpoint], blockd.Chunk{ID: m.ID, Data: j.enc})
			}
		}
		f.log.Debug("upload batch", "chunks", len(b), "offered", len(ids), "missing", len(plan.Missing), "endpoints", len(plan.Endpoints))
		for ep, chunks := range byEP {
			err := f.putChunks(p.ctx, plan.Endpoints[ep], plan.Token, chunks)
			if err != nil {
				return nil, fmt.Errorf("upload to %s: %w", plan.Endpoints[ep].Name, err)
			}
			for _, c := range chunks {
				f.stats.uploadedChunks.Add(1)
				f.stats.uploadedRaw.Add(uint64(first[c.ID].ext.Length))
				f.stats.uploadedEnc.Add(uint64(len(c.Data)))
			}
		}
		for _, j := range b {
			if j.raw != nil && !j.ext.Hole && !missing[j.ext.ID] {
				f.stats.dupChunks.Add(1)
				f.stats.dupBytes.Add(uint64(j.ext.Length))
			}
		}
		// A chunk repeated within the batch is uploaded once; count the rest.
		for _, j := range b {
			if j.raw != nil && !j.ext.Hole && missing[j.ext.ID] && first[j.ext.ID] != j {
				f.stats.dupChunks.Add(1)
				f.stats.dupBytes.Add(uint64(j.ext.Length))
			}
		}
	}
	ext := make([]cas.Extent, len(b))
	for i, j := range b {
		ext[i] = j.ext
		if j.raw != nil && j.ext.Hole {
			f.stats.holeBytes.Add(uint64(j.ext.Length))
		}
	}
	return ext, nil
}

// encodeAll compresses jobs on the FS workers, about groupBytes of chunks
// per task, and returns when all are done.
func (f *FS) encodeAll(jobs []*job) {
	var wg sync.WaitGroup
	for len(jobs) > 0 {
		n, size := 0, 0
		for n < len(jobs) && size < groupBytes {
			size += len(jobs[n].raw)
			n++
		}
		group := jobs[:n]
		jobs = jobs[n:]
		wg.Add(1)
		f.work <- func() {
			for _, j := range group {
				j.encode()
			}
			wg.Done()
		}
	}
	wg.Wait()
}

// finish waits for every queued chunk to be uploaded and returns the
// extents in file order, adjacent holes merged.
func (p *pipeline) finish() ([]cas.Extent, error) {
	if err := p.dispatch(); err != nil {
		p.abort()
		return nil, err
	}
	close(p.order)
	<-p.done
	gerr := p.group.Wait()
	p.cancel()
	if err := p.error(); err != nil {
		return nil, err
	}
	if gerr != nil {
		return nil, gerr
	}
	var out []cas.Extent
	for _, r := range p.results {
		for _, e := range r {
			if n := len(out); n > 0 && e.Hole && out[n-1].Hole && out[n-1].End() == e.Offset &&
				uint64(out[n-1].Length)+uint64(e.Length) <= cas.MaxChunkSize {
				out[n-1].Length += e.Length
				continue
			}
			out = append(out, e)
		}
	}
	return out, nil
}

// abort stops the pipeline and drops its work.
func (p *pipeline) abort() {
	p.setErr(errStopped)
	p.release(p.pending) // never dispatched
	p.pending, p.pendBytes = nil, 0
	close(p.order)
	<-p.done
	_ = p.group.Wait()
}

// signal is a broadcast of "a writer waits for pipeline memory" with a
// generation count, so that a collector that looks at it late still sees
// that it happened.
type signal struct {
	mu  sync.Mutex
	ch  chan struct{}
	gen uint64
}

// wait returns a channel closed at the next signal and the current generation.
func (s *signal) wait() (<-chan struct{}, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch == nil {
		s.ch = make(chan struct{})
	}
	return s.ch, s.gen
}

func (s *signal) signal() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch != nil {
		close(s.ch)
		s.ch = nil
	}
	s.gen++
}

// Buffers for chunk bytes, by size class: a power of two (4 KiB up to
// MaxChunkSize) plus bufSlack bytes, so that a chunk with its headroom, or
// its encoding, fits the class of its raw size.
var bufPools [24]sync.Pool

const bufSlack = chunkHeadroom

func sizeClass(n int) int {
	c := 12 // 4 KiB minimum
	for 1<<c+bufSlack < n {
		c++
	}
	return c
}

func getBuf(n int) []byte {
	c := sizeClass(n)
	if c < len(bufPools) {
		if b, ok := bufPools[c].Get().(*[]byte); ok {
			return (*b)[:n]
		}
	}
	return make([]byte, n, 1<<c+bufSlack)
}

func putBuf(b []byte) {
	if b == nil {
		return
	}
	c := sizeClass(cap(b))
	if c < len(bufPools) && cap(b) == 1<<c+bufSlack {
		b = b[:0]
		bufPools[c].Put(&b)
	}
}
