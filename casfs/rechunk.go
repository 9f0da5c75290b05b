package casfs

import (
	"context"

	"stasis/cas"
)

// rebuildLocked produces the extents of the file's new content from the
// committed base and the write state, re-chunking only what changed:
//
//   - Extents of the base that lie wholly below baseLimit and touch no dirty
//     range are kept as they are whenever the chunker reaches their start.
//   - Elsewhere the chunker runs over the merged content (staging file over
//     base over zeros). It starts at the start of the base extent holding the
//     first changed byte (the boundary before it) and keeps cutting until a
//     cut lands on the start of an unchanged base extent: with content-defined
//     chunking the cut points re-synchronize there, with fixed chunking at
//     the first aligned block after the change.
//   - Long runs past the base that were never written (a file extended by
//     truncate) become hole extents without being read.
func (in *inode) rebuildLocked(ctx context.Context) ([]cas.Extent, error) {
	w := in.w
	var base []cas.Extent // contiguous from 0 to usable, gaps as holes
	var usable uint64
	if w.baseLimit > 0 {
		plan, err := in.planLocked(ctx)
		if err != nil {
			return nil, err
		}
		limit := min(w.baseLimit, plan.Manifest.Size)
		gapEnd := limit // a gap before the first extent crossing limit reads as zeros
		for _, e := range plan.Manifest.Extents {
			if e.End() > limit {
				gapEnd = min(limit, max(e.Offset, usable))
				break
			}
			base = appendHoles(base, usable, e.Offset)
			base = append(base, e)
			usable = e.End()
		}
		base = appendHoles(base, usable, gapEnd)
		usable = max(usable, gapEnd)
	}
	unchanged := func(e cas.Extent) bool {
		return e.End() <= usable && !w.dirty.overlaps(e.Offset, e.End())
	}

	ch := w.policy.New()
	maxCut := uint64(ch.MaxSize())
	holeStep := uint64(cas.MaxChunkSize) // a multiple of every fixed chunk size
	p := in.fs.newPipeline()
	win := getBuf(int(max(2*maxCut, 1<<20)))
	defer putBuf(win)
	var winOff uint64
	winLen := 0

	var pos uint64
	i := 0
	for pos < w.size {
		for i < len(base) && base[i].Offset < pos {
			i++
		}
		if i < len(base) && base[i].Offset == pos && unchanged(base[i]) {
			if err := p.reuse(base[i]); err != nil {
				p.abort()
				return nil, err
			}
			pos = base[i].End()
			continue
		}
		if pos >= usable {
			// Zeros up to the next dirty byte need not be read.
			j, inside := w.dirty.find(pos)
			if !inside {
				zend := w.size
				if j < len(w.dirty) {
					zend = w.dirty[j].start
				}
				if n := (zend - pos) / holeStep * holeStep; n > 0 {
					if err := p.hole(pos, n); err != nil {
						p.abort()
						return nil, err
					}
					pos += n
					continue
				}
			}
		}
		need := min(pos+maxCut, w.size)
		if pos < winOff || need > winOff+uint64(winLen) {
			winOff = pos
			winLen = int(min(uint64(cap(win)), w.size-pos))
			if _, err := in.readMergedLocked(ctx, win[:winLen], pos); err != nil {
				p.abort()
				return nil, err
			}
		}
		data := win[pos-winOff : winLen]
		n := ch.Cut(data, winOff+uint64(winLen) == w.size)
		if n <= 0 {
			n = len(data) // cannot happen: data holds MaxSize bytes or reaches the end
		}
		if err := p.add(ctx, pos, data[:n]); err != nil {
			p.abort()
			return nil, err
		}
		pos += uint64(n)
	}
	return p.finish()
}

// appendHoles appends hole extents covering [from, to).
func appendHoles(ext []cas.Extent, from, to uint64) []cas.Extent {
	for from < to {
		n := min(to-from, cas.MaxChunkSize)
		ext = append(ext, cas.Extent{Offset: from, Length: uint32(n), Hole: true})
		from += n
	}
	return ext
}
