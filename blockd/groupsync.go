package blockd

import (
	"sync"
	"sync/atomic"

	"stasis/cas"
)

// groupSync shares one sync among concurrent writers (group commit). A
// caller of Sync has finished its write; it joins the pending round, whose
// sync has not started yet, so that sync covers its write. One goroutine at
// a time runs rounds back to back; writers that arrive while a sync is in
// progress all join the next round and share its single sync.
type groupSync struct {
	sync    func() error
	mu      sync.Mutex
	pending *syncRound // the round that has not started; nil if none
	running bool       // a goroutine is running rounds
	syncs   atomic.Int64
}

type syncRound struct {
	done chan struct{}
	err  error
}

func newGroupSync(sync func() error) *groupSync { return &groupSync{sync: sync} }

// Sync returns once a sync that started after the call has completed, with
// that sync's error.
func (g *groupSync) Sync() error {
	g.mu.Lock()
	r := g.pending
	if r == nil {
		r = &syncRound{done: make(chan struct{})}
		g.pending = r
	}
	if !g.running {
		g.running = true
		go g.run()
	}
	g.mu.Unlock()
	<-r.done
	return r.err
}

// Kick starts a sync in the background if none is running, and returns at
// once. Writers kick after each part of a longer write so that most of it
// is already on its way to disk when they finally call Sync.
func (g *groupSync) Kick() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.running {
		return
	}
	if g.pending == nil {
		g.pending = &syncRound{done: make(chan struct{})}
	}
	g.running = true
	go g.run()
}

func (g *groupSync) run() {
	for {
		g.mu.Lock()
		r := g.pending
		g.pending = nil
		if r == nil {
			g.running = false
			g.mu.Unlock()
			return
		}
		g.mu.Unlock()
		r.err = g.sync()
		g.syncs.Add(1)
		close(r.done)
	}
}

// Count is the number of syncs run so far.
func (g *groupSync) Count() int64 { return g.syncs.Load() }

// pendingSet counts chunks a Put has made visible (committed to the index)
// whose sync has not finished yet: they may still be lost by a crash, so
// Get and Missing wait for a sync before reporting one, and no caller is
// told a chunk exists that a crash could still lose. Safe for concurrent
// use; the zero value is ready.
type pendingSet struct {
	mu sync.Mutex
	m  map[cas.ChunkID]int
}

// add changes the count of each id by delta (+1 when visible, -1 when its
// sync finished).
func (p *pendingSet) add(ids []cas.ChunkID, delta int) {
	if len(ids) == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m = map[cas.ChunkID]int{}
	}
	for _, id := range ids {
		if p.m[id] += delta; p.m[id] <= 0 {
			delete(p.m, id)
		}
	}
}

// anyOf reports whether any of ids is pending.
func (p *pendingSet) anyOf(ids []cas.ChunkID) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.m) == 0 {
		return false
	}
	for _, id := range ids {
		if p.m[id] > 0 {
			return true
		}
	}
	return false
}

// len is the number of pending chunks.
func (p *pendingSet) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.m)
}
