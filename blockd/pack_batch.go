package blockd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/dgraph-io/badger/v4"

	"stasis/cas"
)

// Batched reads. The chunks of a file written sequentially sit back to back
// in a pack, so a reader asking for the next few MiB of a file asks for one
// contiguous range of a pack. GetMany takes the requested IDs a window at a
// time (up to batchWindowBytes of records, in request order), looks them
// up, sorts the window's records by pack and offset, reads each run of
// neighbouring records with one pread (up to batchRunBytes, bridging gaps
// of up to batchGapBytes — O_DIRECT region padding, dead records), checks
// every record header as Get does, and delivers the window in request
// order. One call holds at most about one window of record bytes.
const (
	batchWindowBytes = 8 << 20
	batchWindowIDs   = 1024
	batchRunBytes    = 8 << 20
	batchGapBytes    = 64 << 10
)

var _ BatchGetter = (*PackStore)(nil)

// batchEntry is one requested ID of a window and where its record is.
type batchEntry struct {
	id    cas.ChunkID
	loc   packLoc
	found bool
	rec   []byte // the record read (header and data), or nil: read it alone
}

// GetMany implements BatchGetter (see the const block above for how).
func (s *PackStore) GetMany(ctx context.Context, ids []cas.ChunkID, fn func(id cas.ChunkID, enc []byte) error) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	var missing []cas.ChunkID
	var buf []byte
	defer func() { putReadBuf(buf) }() // fn saw its bytes only during its call
	win := make([]batchEntry, 0, min(len(ids), batchWindowIDs))
	n := len(ids)
	for len(ids) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		var err error
		win, ids, err = s.lookupWindow(win[:0], ids)
		if err != nil {
			return err
		}
		buf, err = s.readWindow(win, buf)
		if err != nil {
			return err
		}
		present := make([]cas.ChunkID, 0, len(win))
		for _, e := range win {
			if e.found {
				present = append(present, e.id)
			}
		}
		if err := s.awaitDurable(present); err != nil {
			return err
		}
		for i := range win {
			e := &win[i]
			if !e.found {
				missing = append(missing, e.id)
				continue
			}
			enc := []byte(nil)
			if e.rec != nil {
				enc = e.rec[recordHeaderLen:]
			} else {
				// Its pack went away under the batch read (moved by
				// compaction): Get looks it up again.
				enc, err = s.getLocked(e.id)
				if errors.Is(err, ErrNotFound) {
					missing = append(missing, e.id)
					continue
				}
				if err != nil {
					return err
				}
			}
			if err := fn(e.id, enc); err != nil {
				return err
			}
		}
	}
	return missingError(n, missing)
}

// lookupWindow appends to win the locations of the first IDs of ids, up to
// batchWindowIDs of them or batchWindowBytes of records, and returns the
// rest of ids.
func (s *PackStore) lookupWindow(win []batchEntry, ids []cas.ChunkID) ([]batchEntry, []cas.ChunkID, error) {
	err := s.db.View(func(txn *badger.Txn) error {
		var bytes int64
		for len(ids) > 0 && len(win) < batchWindowIDs && (len(win) == 0 || bytes < batchWindowBytes) {
			e := batchEntry{id: ids[0]}
			item, err := txn.Get(chunkKey(e.id))
			switch {
			case errors.Is(err, badger.ErrKeyNotFound):
			case err != nil:
				return err
			default:
				if err := item.Value(func(v []byte) (err error) { e.loc, err = decodeLoc(v); return err }); err != nil {
					return err
				}
				e.found = true
				bytes += e.loc.recLen()
			}
			win = append(win, e)
			ids = ids[1:]
		}
		return nil
	})
	if err != nil {
		return win, ids, fmt.Errorf("blockd: get: %w", err)
	}
	return win, ids, nil
}

// readWindow reads the records of the found entries of win, a run of
// neighbours per pread, into buf (grown as needed and returned for reuse;
// give it back with putReadBuf), and checks each record's header. An entry
// whose pack is gone keeps a nil rec. Runs are read as whole dioAlign
// blocks into aligned places of buf, so a pack with an O_DIRECT reader
// (PackConfig.DirectReads) is read with it.
func (s *PackStore) readWindow(win []batchEntry, buf []byte) ([]byte, error) {
	order := make([]int, 0, len(win))
	for i, e := range win {
		if e.found {
			order = append(order, i)
		}
	}
	slices.SortFunc(order, func(a, b int) int {
		la, lb := win[a].loc, win[b].loc
		return cmp.Or(cmp.Compare(la.pack, lb.pack), cmp.Compare(la.off, lb.off))
	})
	// Cut runs and size the buffer.
	type run struct {
		pack       uint32
		start, end int64
		first, n   int // in order
	}
	var runs []run
	for k, i := range order {
		l := win[i].loc
		end := l.off + l.recLen()
		if len(runs) > 0 {
			r := &runs[len(runs)-1]
			if r.pack == l.pack && l.off <= r.end+batchGapBytes && max(r.end, end)-r.start <= batchRunBytes {
				r.end = max(r.end, end)
				r.n++
				continue
			}
		}
		runs = append(runs, run{pack: l.pack, start: l.off, end: end, first: k, n: 1})
	}
	var total int64 // whole dioAlign blocks per run
	for _, r := range runs {
		total += alignUp(r.end) - alignDown(r.start)
	}
	if int64(cap(buf)) < total {
		putReadBuf(buf)
		buf = getReadBuf(int(total))
	}
	buf = buf[:total]
	pos := int64(0)
	for _, r := range runs {
		as := alignDown(r.start)
		b := buf[pos : pos+alignUp(r.end)-as]
		pos += int64(len(b))
		err := s.readRun(r.pack, as, b, r.end-as)
		if errors.Is(err, errPackGone) {
			continue // entries keep rec nil: each is read alone
		}
		if err != nil {
			return buf, err
		}
		for _, i := range order[r.first : r.first+r.n] {
			e := &win[i]
			rec := b[e.loc.off-as : e.loc.off-as+e.loc.recLen()]
			if err := checkRecord(rec, e.id, e.loc.encLen); err != nil {
				return buf, fmt.Errorf("pack %s offset %d: %w", packName(e.loc.pack), e.loc.off, err)
			}
			e.rec = rec
		}
	}
	return buf, nil
}

// readRun reads b from pack num at off (both dioAlign-aligned, b in an
// aligned buffer), or returns errPackGone. The first need bytes must be
// there; the rest of b may lie past the end of the pack.
func (s *PackStore) readRun(num uint32, off int64, b []byte, need int64) error {
	s.mu.Lock()
	p := s.packs[num]
	s.mu.Unlock()
	if p == nil {
		return errPackGone
	}
	p.rw.RLock()
	defer p.rw.RUnlock()
	if p.f == nil {
		return errPackGone
	}
	f := p.rf
	if f == nil {
		f = p.f
		p.readAhead(off, int64(len(b)))
	}
	n, err := f.ReadAt(b, off)
	if errors.Is(err, io.EOF) && int64(n) >= need {
		err = nil
	}
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: pack %s ends %d bytes into a %d-byte read at offset %d",
			ErrPackCorrupt, packName(num), n, need, off)
	}
	if err != nil {
		return fmt.Errorf("blockd: read pack %s: %w", packName(num), err)
	}
	return nil
}

func alignDown(n int64) int64 { return n &^ (dioAlign - 1) }

// Buffers for batched reads, aligned for O_DIRECT, pooled by power-of-two
// size class from 1 MiB (readBufMinShift) up to 64 MiB; larger ones are
// not pooled.
const (
	readBufMinShift = 20
	readBufClasses  = 7
)

var readBufs [readBufClasses]sync.Pool

func readBufClass(n int) int {
	c := 0
	for 1<<(readBufMinShift+c) < n {
		c++
	}
	return c
}

func getReadBuf(n int) []byte {
	c := readBufClass(n)
	if c >= readBufClasses {
		return alignedBuf(n)
	}
	if b, ok := readBufs[c].Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return alignedBuf(1 << (readBufMinShift + c))[:n]
}

func putReadBuf(b []byte) {
	if b == nil {
		return
	}
	c := readBufClass(cap(b))
	if c < readBufClasses && cap(b) == 1<<(readBufMinShift+c) {
		b = b[:cap(b)]
		readBufs[c].Put(&b)
	}
}
