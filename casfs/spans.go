package casfs

import "sort"

// span is a byte range [start, end).
type span struct{ start, end uint64 }

// spans is a sorted set of disjoint, non-adjacent byte ranges.
type spans []span

// add inserts [start, end), merging overlapping and adjacent ranges.
func (s spans) add(start, end uint64) spans {
	if start >= end {
		return s
	}
	// First span that ends at or after start (may merge).
	i := sort.Search(len(s), func(i int) bool { return s[i].end >= start })
	j := i
	for j < len(s) && s[j].start <= end {
		start = min(start, s[j].start)
		end = max(end, s[j].end)
		j++
	}
	if i == j {
		s = append(s, span{})
		copy(s[i+1:], s[i:])
		s[i] = span{start, end}
		return s
	}
	s[i] = span{start, end}
	return append(s[:i+1], s[j:]...)
}

// clip drops everything at or past limit.
func (s spans) clip(limit uint64) spans {
	i := sort.Search(len(s), func(i int) bool { return s[i].end > limit })
	if i < len(s) && s[i].start < limit {
		s[i].end = limit
		i++
	}
	return s[:i]
}

// find returns the index of the span containing off, or of the first span
// after off (len(s) if none), and whether off is inside it.
func (s spans) find(off uint64) (int, bool) {
	i := sort.Search(len(s), func(i int) bool { return s[i].end > off })
	return i, i < len(s) && s[i].start <= off
}

// overlaps reports whether any span intersects [start, end).
func (s spans) overlaps(start, end uint64) bool {
	i, _ := s.find(start)
	return i < len(s) && s[i].start < end
}
