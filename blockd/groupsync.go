package blockd

import (
	"sync"
	"sync/atomic"
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
