package vswitch

import (
	"context"
	"net"
	"os"
	"sync"
	"time"
)

// MemPort is an in-memory port: the node side is the test (or a program)
// calling Send and Recv. It is meant for tests and simulations.
type MemPort struct {
	toSwitch   chan []byte
	fromSwitch chan []byte
	dl         deadline
	closeOnce  sync.Once
	closed     chan struct{}
	// Lossy makes WriteBatch drop frames when the node is not reading fast
	// enough instead of waiting (set before use).
	Lossy bool
}

// NewMemPort returns a port whose queues hold up to depth frames each way.
func NewMemPort(depth int) *MemPort {
	return &MemPort{
		toSwitch:   make(chan []byte, depth),
		fromSwitch: make(chan []byte, depth),
		closed:     make(chan struct{}),
		dl:         newDeadline(),
	}
}

// Send queues a frame from the node to the switch; it blocks while the
// queue is full.
func (m *MemPort) Send(ctx context.Context, frame []byte) error {
	b := append([]byte(nil), frame...)
	select {
	case m.toSwitch <- b:
		return nil
	case <-m.closed:
		return net.ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Recv returns the next frame the switch delivered to the node.
func (m *MemPort) Recv(ctx context.Context) ([]byte, error) {
	select {
	case b := <-m.fromSwitch:
		return b, nil
	case <-m.closed:
		return nil, net.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Delivered returns how many frames wait in the node's receive queue.
func (m *MemPort) Delivered() int { return len(m.fromSwitch) }

// ReadBatch implements Port.
func (m *MemPort) ReadBatch(fs []*Frame) (int, error) {
	var b []byte
	select {
	case b = <-m.toSwitch:
	default:
		select {
		case b = <-m.toSwitch:
		case <-m.closed:
			return 0, net.ErrClosed
		case <-m.dl.wait():
			return 0, os.ErrDeadlineExceeded
		}
	}
	n := 0
	for {
		if fs[n].SetBytes(b) {
			n++
		}
		if n == len(fs) {
			return n, nil
		}
		select {
		case b = <-m.toSwitch:
		default:
			if n == 0 {
				return m.ReadBatch(fs)
			}
			return n, nil
		}
	}
}

// Unconsumed implements OutputDrainer: frames delivered but not yet taken
// with Recv.
func (m *MemPort) Unconsumed() (int, error) { return len(m.fromSwitch), nil }

// InputBuffered implements InputDrainer.
func (m *MemPort) InputBuffered() (int, error) { return len(m.toSwitch), nil }

// WriteBatch implements Port.
func (m *MemPort) WriteBatch(fs []*Frame) (int, error) {
	for i, f := range fs {
		b := append([]byte(nil), f.Bytes()...)
		if m.Lossy {
			select {
			case m.fromSwitch <- b:
			default:
			}
			continue
		}
		select {
		case m.fromSwitch <- b:
		case <-m.closed:
			return i, net.ErrClosed
		}
	}
	return len(fs), nil
}

// SetReadDeadline implements Port.
func (m *MemPort) SetReadDeadline(t time.Time) error {
	m.dl.set(t)
	return nil
}

// Close implements Port.
func (m *MemPort) Close() error {
	m.closeOnce.Do(func() { close(m.closed) })
	return nil
}

// deadline is a settable deadline with a channel that closes when it
// passes (as in net.Pipe).
type deadline struct {
	mu     sync.Mutex
	timer  *time.Timer
	cancel chan struct{}
}

func newDeadline() deadline { return deadline{cancel: make(chan struct{})} }

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.cancel // the timer fired: wait for it to close the channel
	}
	d.timer = nil
	closed := false
	select {
	case <-d.cancel:
		closed = true
	default:
	}
	if t.IsZero() {
		if closed {
			d.cancel = make(chan struct{})
		}
		return
	}
	if dur := time.Until(t); dur > 0 {
		if closed {
			d.cancel = make(chan struct{})
		}
		c := d.cancel
		d.timer = time.AfterFunc(dur, func() { close(c) })
		return
	}
	if !closed {
		close(d.cancel)
	}
}

func (d *deadline) wait() chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cancel
}

// memTrunk is one end of an in-memory trunk between two switches.
type memTrunk struct {
	out, in   chan trunkMsg
	dl        deadline
	closed    chan struct{}
	closeOnce *sync.Once
	seq       uint64 // writer side
	nextSeq   uint64 // reader side
	gapCount  uint64
	gapMu     sync.Mutex
	markers   markerRelay
}

type trunkMsg struct {
	data   []byte
	vlan   uint16
	epoch  uint64
	seq    uint64
	marker bool
}

// NewMemTrunk returns the two ends of an in-memory trunk between two
// switches in one process, with depth frames of buffering each way. Attach
// each end to one switch with Mode Trunk.
func NewMemTrunk(depth int) (Port, Port) {
	ab, ba := make(chan trunkMsg, depth), make(chan trunkMsg, depth)
	closed := make(chan struct{})
	once := new(sync.Once)
	a := &memTrunk{out: ab, in: ba, closed: closed, closeOnce: once, dl: newDeadline(), nextSeq: 1}
	b := &memTrunk{out: ba, in: ab, closed: closed, closeOnce: once, dl: newDeadline(), nextSeq: 1}
	return a, b
}

func (t *memTrunk) ReadBatch(fs []*Frame) (int, error) {
	t.markers.flush()
	n := 0
	for n < len(fs) {
		var m trunkMsg
		if n == 0 {
			select {
			case m = <-t.in:
			case <-t.closed:
				return 0, net.ErrClosed
			case <-t.dl.wait():
				return 0, os.ErrDeadlineExceeded
			}
		} else {
			select {
			case m = <-t.in:
			default:
				return n, nil
			}
		}
		if m.marker {
			t.markers.arrived(m.epoch, n)
			continue
		}
		t.gapMu.Lock()
		if m.seq != t.nextSeq {
			t.gapCount++
		}
		t.nextSeq = m.seq + 1
		t.gapMu.Unlock()
		if fs[n].SetBytes(m.data) {
			fs[n].VLAN, fs[n].Epoch = m.vlan, m.epoch
			n++
		}
	}
	return n, nil
}

func (t *memTrunk) WriteBatch(fs []*Frame) (int, error) {
	for i, f := range fs {
		t.seq++
		m := trunkMsg{data: append([]byte(nil), f.Bytes()...), vlan: f.VLAN, epoch: f.Epoch, seq: t.seq}
		select {
		case t.out <- m:
		case <-t.closed:
			return i, net.ErrClosed
		}
	}
	return len(fs), nil
}

func (t *memTrunk) sendMarker(epoch uint64) error {
	select {
	case t.out <- trunkMsg{marker: true, epoch: epoch}:
		return nil
	case <-t.closed:
		return net.ErrClosed
	}
}

func (t *memTrunk) setMarkerFunc(f func(uint64)) { t.markers.fn = f }

func (t *memTrunk) gaps() uint64 {
	t.gapMu.Lock()
	defer t.gapMu.Unlock()
	return t.gapCount
}

func (t *memTrunk) SetReadDeadline(tm time.Time) error {
	t.dl.set(tm)
	return nil
}

func (t *memTrunk) Close() error {
	t.closeOnce.Do(func() { close(t.closed) })
	return nil
}
