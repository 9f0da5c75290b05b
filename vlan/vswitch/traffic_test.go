package vswitch

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// nodeIO is a node's end of its port.
type nodeIO interface {
	Send(ctx context.Context, frame []byte) error
	Recv(ctx context.Context) ([]byte, error)
}

const testEtherType = 0x88b5 // local experimental

// recvStall is how long a lagging node's receiver stops now and then.
const recvStall = 3 * time.Millisecond

// tnode is a simulated node: it sends sequence-numbered frames to every peer
// in its VLAN and checks that what it receives arrives once, in order.
type tnode struct {
	t    *testing.T
	idx  int
	name string
	vlan uint16
	mac  [6]byte
	io   nodeIO
	sw   int // index of the switch it is attached to
	peer []*tnode

	mu   sync.Mutex
	sent map[int]uint32 // by destination
	recv map[int]uint32 // by source
	snap [2]map[int]uint32

	cancelSend, cancelRecv context.CancelFunc
	wgSend, wgRecv         sync.WaitGroup
}

func makeNodes(t *testing.T, n, vlans, switches int) []*tnode {
	nodes := make([]*tnode, n)
	for i := range nodes {
		nodes[i] = &tnode{t: t, idx: i, name: fmt.Sprintf("n%d", i), vlan: uint16(10 + i%vlans),
			mac: [6]byte{0x02, 0, 0, 0, byte(i >> 8), byte(i)}, sw: (i / 2) % switches,
			sent: map[int]uint32{}, recv: map[int]uint32{}}
	}
	for _, a := range nodes {
		for _, b := range nodes {
			if a != b && a.vlan == b.vlan {
				a.peer = append(a.peer, b)
			}
		}
	}
	return nodes
}

func (n *tnode) frame(dst *tnode, seq uint32, size int) []byte {
	b := make([]byte, size)
	copy(b, dst.mac[:])
	copy(b[6:], n.mac[:])
	binary.BigEndian.PutUint16(b[12:], testEtherType)
	binary.BigEndian.PutUint32(b[14:], uint32(n.idx))
	binary.BigEndian.PutUint32(b[18:], seq)
	for i := 22; i < size; i++ {
		b[i] = byte(seq) ^ byte(i)
	}
	return b
}

func (n *tnode) start(pace time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	n.cancelRecv = cancel
	n.wgRecv.Add(1)
	go func() {
		defer n.wgRecv.Done()
		for k := 1; ; k++ {
			b, err := n.io.Recv(ctx)
			if err != nil {
				return
			}
			n.check(b)
			if n.idx%2 == 1 && k%32 == 0 {
				// A lagging guest: now and then its receiver is off the
				// CPU, so frames queue towards it, also when it is frozen.
				time.Sleep(recvStall)
			}
		}
	}()
	sctx, scancel := context.WithCancel(context.Background())
	n.cancelSend = scancel
	n.wgSend.Add(1)
	go func() {
		defer n.wgSend.Done()
		rng := rand.New(rand.NewPCG(uint64(n.idx), 1))
		for {
			for _, p := range n.peer {
				n.mu.Lock()
				seq := n.sent[p.idx] + 1
				n.mu.Unlock()
				if err := n.io.Send(sctx, n.frame(p, seq, 60+rng.IntN(1400))); err != nil {
					return
				}
				n.mu.Lock()
				n.sent[p.idx] = seq
				n.mu.Unlock()
			}
			select {
			case <-sctx.Done():
				return
			case <-time.After(pace):
			}
		}
	}()
}

func (n *tnode) check(b []byte) {
	if len(b) < 22 || !bytes.Equal(b[:6], n.mac[:]) || binary.BigEndian.Uint16(b[12:]) != testEtherType {
		return // flooded to us, or not test traffic
	}
	src := int(binary.BigEndian.Uint32(b[14:]))
	seq := binary.BigEndian.Uint32(b[18:])
	n.mu.Lock()
	defer n.mu.Unlock()
	if want := n.recv[src] + 1; seq != want {
		n.t.Errorf("node %s: flow from n%d: got #%d, want #%d (lost, duplicated or reordered)", n.name, src, seq, want)
	}
	for i := 22; i < len(b); i++ {
		if b[i] != byte(seq)^byte(i) {
			n.t.Errorf("node %s: flow from n%d #%d: corrupt payload", n.name, src, seq)
			break
		}
	}
	n.recv[src] = seq
}

func (n *tnode) stopSending() {
	if n.cancelSend != nil {
		n.cancelSend()
		n.wgSend.Wait()
	}
}

// pause stops the node and records its state, as pausing a VM would.
func (n *tnode) pause() {
	n.stopSending()
	// Last words: a burst right before the pause, likely still unread by
	// the switch when PortCheckpointed is called.
	for i := 0; i < 4; i++ {
		for _, p := range n.peer {
			n.mu.Lock()
			seq := n.sent[p.idx] + 1
			n.mu.Unlock()
			if err := n.io.Send(context.Background(), n.frame(p, seq, 1000)); err != nil {
				n.t.Errorf("node %s: last words: %v", n.name, err)
				break
			}
			n.mu.Lock()
			n.sent[p.idx] = seq
			n.mu.Unlock()
		}
	}
	n.cancelRecv()
	n.wgRecv.Wait()
	// A paused VM takes nothing more, and a restore starts it on new ports:
	// what the switch wrote that the node did not take before FreezePort
	// returned is in neither the node's snapshot nor the log.
	if d, ok := n.io.(interface{ Delivered() int }); ok {
		if k := d.Delivered(); k > 0 {
			n.t.Errorf("node %s paused with %d frames written to it but not taken: FreezePort returned too early", n.name, k)
		}
	}
	n.mu.Lock()
	n.snap = [2]map[int]uint32{clone(n.sent), clone(n.recv)}
	n.mu.Unlock()
}

// rollback returns the node to its last snapshot, as restoring a VM would.
func (n *tnode) rollback() {
	n.mu.Lock()
	n.sent, n.recv = clone(n.snap[0]), clone(n.snap[1])
	n.mu.Unlock()
}

func clone(m map[int]uint32) map[int]uint32 {
	c := make(map[int]uint32, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

func (n *tnode) counts(src int) (sent, got uint32) {
	s := n.peerByIdx(src)
	s.mu.Lock()
	sent = s.sent[n.idx]
	s.mu.Unlock()
	n.mu.Lock()
	got = n.recv[src]
	n.mu.Unlock()
	return sent, got
}

func (n *tnode) peerByIdx(i int) *tnode {
	for _, p := range n.peer {
		if p.idx == i {
			return p
		}
	}
	panic("no such peer")
}

// waitFlows waits until every flow has at least min frames received.
func waitFlows(t *testing.T, nodes []*tnode, min uint32, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok := true
		for _, n := range nodes {
			for _, p := range n.peer {
				if _, got := n.counts(p.idx); got < min {
					ok = false
				}
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("traffic did not reach %d frames per flow within %v", min, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// verifyComplete stops the senders and waits until every frame sent was
// received (each exactly once and in order: check runs on arrival).
func verifyComplete(t *testing.T, nodes []*tnode, timeout time.Duration) {
	t.Helper()
	for _, n := range nodes {
		n.stopSending()
	}
	deadline := time.Now().Add(timeout)
	for {
		var missing []string
		for _, n := range nodes {
			for _, p := range n.peer {
				if sent, got := n.counts(p.idx); sent != got {
					missing = append(missing, fmt.Sprintf("%s->%s sent %d got %d", p.name, n.name, sent, got))
				}
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("frames lost: %v", missing)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func stopAll(nodes []*tnode) {
	for _, n := range nodes {
		n.stopSending()
		if n.cancelRecv != nil {
			n.cancelRecv()
			n.wgRecv.Wait()
		}
	}
}
