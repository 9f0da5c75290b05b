package vswitch

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"
)

// simNet is a deterministic model of the switch's checkpoint logic: nodes
// send sequence-numbered frames to each other through one FIFO per
// destination (the switch's output queue) and the destination's gate. A
// seeded scheduler interleaves sends, deliveries and checkpoint steps.
type simNet struct {
	t     *testing.T
	rng   *rand.Rand
	n     int
	gates []*gate
	queue [][]*Frame // per destination, frames between sender and gate

	sent    [][]uint32 // sent[s][d]: last sequence number sent
	recv    [][]uint32 // recv[d][s]: last sequence number received
	txEpoch []uint64
	rxEpoch func(d int) uint64

	paused []bool // node stopped (between its checkpoint and resume)
	live   bool   // nodes keep sending after their checkpoint
	snap   []nodeSnap
}

type nodeSnap struct {
	sent []uint32 // at the pause
	recv []uint32 // at the pause (nothing is received after the freeze)
}

func newSimNet(t *testing.T, seed uint64, n int, live bool) *simNet {
	s := &simNet{t: t, rng: rand.New(rand.NewPCG(seed, 7)), n: n, live: live}
	for i := 0; i < n; i++ {
		s.gates = append(s.gates, &gate{limit: 1 << 20})
		s.queue = append(s.queue, nil)
		s.sent = append(s.sent, make([]uint32, n))
		s.recv = append(s.recv, make([]uint32, n))
		s.txEpoch = append(s.txEpoch, 0)
		s.paused = append(s.paused, false)
	}
	s.snap = make([]nodeSnap, n)
	return s
}

func (s *simNet) send(src, dst int) {
	if src == dst || (s.paused[src] && !s.live) {
		return
	}
	s.sent[src][dst]++
	f := new(Frame)
	var b [minFrameLen + 12]byte
	binary.BigEndian.PutUint32(b[minFrameLen:], uint32(src))
	binary.BigEndian.PutUint32(b[minFrameLen+4:], uint32(dst))
	binary.BigEndian.PutUint32(b[minFrameLen+8:], s.sent[src][dst])
	f.SetBytes(b[:])
	f.Epoch = s.txEpoch[src]
	s.queue[dst] = append(s.queue[dst], f)
}

// receive is a frame reaching node d.
func (s *simNet) receive(d int, f *Frame) {
	b := f.Bytes()
	src := int(binary.BigEndian.Uint32(b[minFrameLen:]))
	dst := int(binary.BigEndian.Uint32(b[minFrameLen+4:]))
	seq := binary.BigEndian.Uint32(b[minFrameLen+8:])
	g := s.gates[d]
	if dst != d {
		s.t.Fatalf("frame for %d delivered to %d", dst, d)
	}
	// An orphan: sent in a newer epoch than the receiver is in.
	rx := g.epoch
	if g.cut {
		rx = g.target
	}
	if f.Epoch > rx {
		s.t.Fatalf("orphan: frame %d->%d #%d of epoch %d reached node in epoch %d", src, d, seq, f.Epoch, rx)
	}
	if want := s.recv[d][src] + 1; seq != want {
		s.t.Fatalf("flow %d->%d: got #%d, want #%d (lost, duplicated or reordered)", src, d, seq, want)
	}
	s.recv[d][src] = seq
}

// step moves one frame from a destination queue through its gate.
func (s *simNet) step(d int) {
	if len(s.queue[d]) == 0 {
		return
	}
	f := s.queue[d][0]
	s.queue[d] = s.queue[d][1:]
	if s.gates[d].admit(f) == deliver {
		s.receive(d, f)
	}
}

func (s *simNet) randomTraffic(steps int) {
	for i := 0; i < steps; i++ {
		if s.rng.IntN(2) == 0 {
			s.send(s.rng.IntN(s.n), s.rng.IntN(s.n))
		} else {
			s.step(s.rng.IntN(s.n))
		}
	}
}

func (s *simNet) drainAll() {
	for d := range s.queue {
		for len(s.queue[d]) > 0 {
			s.step(d)
		}
	}
}

// checkpoint runs one checkpoint to epoch with random interleaving of the
// nodes' freeze and pause steps and of traffic.
func (s *simNet) checkpoint(epoch uint64) {
	for _, g := range s.gates {
		g.begin(epoch)
	}
	type stage int
	st := make([]stage, s.n) // 0 running, 1 frozen, 2 checkpointed
	left := 2 * s.n
	for left > 0 {
		s.randomTraffic(s.rng.IntN(8))
		i := s.rng.IntN(s.n)
		switch st[i] {
		case 0:
			s.gates[i].doCut() // FreezePort
			st[i], left = 1, left-1
		case 1:
			// The node pauses: snapshot, then PortCheckpointed moves its
			// sending side; frames it sent before are still queued and
			// keep the old epoch.
			s.snap[i] = nodeSnap{sent: append([]uint32(nil), s.sent[i]...), recv: append([]uint32(nil), s.recv[i]...)}
			s.paused[i] = true
			s.txEpoch[i] = epoch
			st[i], left = 2, left-1
		}
	}
	// EndCheckpoint: all old-epoch frames reach their gates.
	s.randomTraffic(20)
	s.drainAll()
}

func (s *simNet) resume() {
	for d, g := range s.gates {
		for _, f := range g.resume() {
			s.receive(d, f)
		}
		s.paused[d] = false
	}
}

// restore rolls every node back to its snapshot and replays the log on a
// fresh set of gates, as a new switch would after swapin.
func (s *simNet) restore(epoch uint64) {
	for d, g := range s.gates {
		log := append([]*Frame(nil), g.log...)
		// The log goes through the file format, like the real thing.
		s.gates[d] = &gate{limit: 1 << 20}
		s.gates[d].restore(epoch, log)
		s.queue[d] = nil
		s.sent[d] = append([]uint32(nil), s.snap[d].sent...)
		s.recv[d] = append([]uint32(nil), s.snap[d].recv...)
		s.txEpoch[d] = epoch
	}
	s.resume()
}

func (s *simNet) verifyComplete() {
	s.drainAll()
	for src := 0; src < s.n; src++ {
		for d := 0; d < s.n; d++ {
			if s.recv[d][src] != s.sent[src][d] {
				s.t.Fatalf("flow %d->%d: sent %d, received %d", src, d, s.sent[src][d], s.recv[d][src])
			}
		}
	}
}

func TestGateSimulation(t *testing.T) {
	for _, live := range []bool{false, true} {
		for _, restore := range []bool{false, true} {
			t.Run(fmt.Sprintf("live=%v,restore=%v", live, restore), func(t *testing.T) {
				for seed := uint64(1); seed <= 300; seed++ {
					s := newSimNet(t, seed, 2+int(seed%5), live)
					s.randomTraffic(200)
					for epoch := uint64(1); epoch <= 3; epoch++ {
						s.checkpoint(epoch)
						if restore {
							s.restore(epoch)
						} else {
							s.resume()
						}
						s.randomTraffic(100)
					}
					s.verifyComplete()
				}
			})
		}
	}
}

// TestGateLogsOnlyCrossingFrames pins the rules on a hand-made schedule.
func TestGateLogsOnlyCrossingFrames(t *testing.T) {
	g := &gate{limit: 10}
	fr := func(e uint64) *Frame { f := new(Frame); f.Epoch = e; return f }
	if v := g.admit(fr(0)); v != deliver {
		t.Fatalf("same epoch before checkpoint: %v", v)
	}
	g.begin(1)
	if v := g.admit(fr(1)); v != held {
		t.Fatalf("newer epoch to a port not yet cut: %v, want held", v)
	}
	if v := g.admit(fr(0)); v != deliver {
		t.Fatalf("old epoch before the cut: %v", v)
	}
	g.doCut()
	if v := g.admit(fr(0)); v != logged {
		t.Fatalf("old epoch after the cut: %v, want logged", v)
	}
	if v := g.admit(fr(1)); v != queued {
		t.Fatalf("new epoch after the cut: %v, want queued", v)
	}
	out := g.resume()
	if len(out) != 3 || out[0].Epoch != 0 || out[1].Epoch != 1 || out[2].Epoch != 1 {
		t.Fatalf("resume order: %d frames", len(out))
	}
	if g.epoch != 1 || g.admit(fr(1)) != deliver {
		t.Fatal("after resume the port is in epoch 1 and delivers")
	}
	// The limit.
	g.begin(2)
	g.doCut()
	for i := 0; i < 10; i++ {
		g.admit(fr(1))
	}
	if v := g.admit(fr(1)); v != dropped || !g.overflow {
		t.Fatalf("over the limit: %v overflow=%v", v, g.overflow)
	}
}
