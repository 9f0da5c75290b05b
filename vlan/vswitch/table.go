package vswitch

import (
	"sync"
	"sync/atomic"
)

// macTable maps (VLAN, MAC) to the port the MAC was last seen on. Lookups
// and refreshes of known addresses take only the read lock; a new address
// takes the write lock once.
type macTable struct {
	mu  sync.RWMutex
	m   map[uint64]*macEntry // key: vlan<<48 | mac
	max int
	age int64 // nanoseconds
}

type macEntry struct {
	port atomic.Int32
	seen atomic.Int64 // unix nanoseconds
}

func newMACTable(max int, age int64) *macTable {
	return &macTable{m: make(map[uint64]*macEntry), max: max, age: age}
}

func macKey(vlan uint16, mac uint64) uint64 { return uint64(vlan)<<48 | mac }

// learn records that mac was seen on port at time now.
func (t *macTable) learn(vlan uint16, mac uint64, port int32, now int64) {
	if isGroup(mac) {
		return
	}
	k := macKey(vlan, mac)
	t.mu.RLock()
	e := t.m[k]
	t.mu.RUnlock()
	if e != nil {
		if e.port.Load() != port {
			e.port.Store(port)
		}
		// Refresh at most every millisecond-ish to keep the line cold.
		if now-e.seen.Load() > 1e6 {
			e.seen.Store(now)
		}
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if e = t.m[k]; e == nil {
		if len(t.m) >= t.max {
			return // full: the address stays unknown and is flooded
		}
		e = new(macEntry)
		t.m[k] = e
	}
	e.port.Store(port)
	e.seen.Store(now)
}

// lookup returns the port for mac in vlan, or false if it is unknown or
// aged out.
func (t *macTable) lookup(vlan uint16, mac uint64, now int64) (int32, bool) {
	t.mu.RLock()
	e := t.m[macKey(vlan, mac)]
	t.mu.RUnlock()
	if e == nil || now-e.seen.Load() > t.age {
		return 0, false
	}
	return e.port.Load(), true
}

// forgetPort drops every address learned on port.
func (t *macTable) forgetPort(port int32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, e := range t.m {
		if e.port.Load() == port {
			delete(t.m, k)
		}
	}
}

// expire drops addresses not seen since now-age.
func (t *macTable) expire(now int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, e := range t.m {
		if now-e.seen.Load() > t.age {
			delete(t.m, k)
		}
	}
}

func (t *macTable) len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.m)
}
