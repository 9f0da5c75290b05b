package vswitch

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"
)

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func newTestSwitch(t *testing.T, cfg Config) *Switch {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	if cfg.PoolFrames == 0 {
		cfg.PoolFrames = 512
	}
	sw, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sw.Close() })
	return sw
}

// fabric builds the switches of a test and attaches every node to its
// switch, setting the node's io. It is called again to rebuild everything
// for a restore, as a swapin would on new hosts.
type fabric func(t *testing.T, nodes []*tnode) []*Switch

// memFabric is n switches in a chain joined by in-memory trunks; nodes use
// MemPorts.
func memFabric(n int) fabric {
	return func(t *testing.T, nodes []*tnode) []*Switch {
		sws := make([]*Switch, n)
		for i := range sws {
			sws[i] = newTestSwitch(t, Config{})
		}
		for i := 0; i+1 < n; i++ {
			a, b := NewMemTrunk(1024)
			mustAdd(t, sws[i], PortConfig{Name: "trunk-next", Mode: Trunk}, a)
			mustAdd(t, sws[i+1], PortConfig{Name: "trunk-prev", Mode: Trunk}, b)
		}
		for _, nd := range nodes {
			mp := NewMemPort(256)
			var p Port = mp
			if nd.idx%2 == 1 {
				// A lagging reader, without InputDrainer: the switch must
				// rely on read timeouts to drain the paused node.
				p = slowPort{mp, 300 * time.Microsecond}
			}
			mustAdd(t, sws[nd.sw], PortConfig{Name: nd.name, VLAN: nd.vlan}, p)
			nd.io = mp
		}
		return sws
	}
}

func mustAdd(t *testing.T, sw *Switch, cfg PortConfig, p Port) {
	t.Helper()
	if err := sw.AddPort(cfg, p); err != nil {
		t.Fatal(err)
	}
}

// runCheckpoints drives traffic through a fabric across checkpoints, each
// followed by a plain resume or by a restore onto a freshly built fabric,
// and checks that no frame is lost, duplicated or reordered per flow.
func runCheckpoints(t *testing.T, build fabric, nodes []*tnode, restore bool) []*Switch {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sws := build(t, nodes)
	defer stopAll(nodes)
	const pace = 500 * time.Microsecond
	for _, n := range nodes {
		n.start(pace)
	}
	waitFlows(t, nodes, 20, 20*time.Second)
	var logged int
	rng := rand.New(rand.NewPCG(1, 2))
	for epoch := uint64(1); epoch <= 3; epoch++ {
		for _, sw := range sws {
			if err := sw.BeginCheckpoint(ctx, epoch); err != nil {
				t.Fatal(err)
			}
		}
		order := rng.Perm(len(nodes))
		checkpoint := func(n *tnode) {
			if err := sws[n.sw].PortCheckpointed(ctx, n.name); err != nil {
				t.Fatal(err)
			}
		}
		if epoch%2 == 1 {
			// Node by node: freeze, pause, checkpointed, with traffic between.
			for _, i := range order {
				n := nodes[i]
				if err := sws[n.sw].FreezePort(ctx, n.name); err != nil {
					t.Fatal(err)
				}
				time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond)
				n.pause()
				checkpoint(n)
			}
		} else {
			// All receive sides first, then the senders keep going a while:
			// their frames cross the checkpoint line and must be logged.
			for _, i := range order {
				if err := sws[nodes[i].sw].FreezePort(ctx, nodes[i].name); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(20 * time.Millisecond)
			for _, i := range order {
				nodes[i].pause()
				checkpoint(nodes[i])
			}
		}
		logs := make([]*Log, len(sws))
		errs := make([]error, len(sws))
		var wg sync.WaitGroup
		for i, sw := range sws {
			wg.Add(1)
			go func() {
				defer wg.Done()
				logs[i], errs[i] = sw.EndCheckpoint(ctx)
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		for i, l := range logs {
			// Through the file format, as the log would be saved.
			var buf bytes.Buffer
			if _, err := l.WriteTo(&buf); err != nil {
				t.Fatal(err)
			}
			var err error
			if logs[i], err = ReadLog(&buf); err != nil {
				t.Fatal(err)
			}
			if logs[i].Epoch != epoch {
				t.Fatalf("log epoch %d, want %d", logs[i].Epoch, epoch)
			}
			logged += len(l.Entries)
		}
		if restore {
			for _, sw := range sws {
				if err := sw.Close(); err != nil {
					t.Fatal(err)
				}
			}
			for _, n := range nodes {
				n.rollback()
			}
			sws = build(t, nodes)
			for i, sw := range sws {
				if err := sw.Restore(ctx, logs[i]); err != nil {
					t.Fatal(err)
				}
			}
		}
		for _, sw := range sws {
			if err := sw.Resume(ctx); err != nil {
				t.Fatal(err)
			}
			if sw.Epoch() != epoch {
				t.Fatalf("switch epoch %d after resume, want %d", sw.Epoch(), epoch)
			}
		}
		for _, n := range nodes {
			n.start(pace)
		}
		waitFlows(t, nodes, uint32(20*(epoch+1)), 20*time.Second)
	}
	verifyComplete(t, nodes, 20*time.Second)
	if logged == 0 {
		t.Fatal("no frame was in flight at any checkpoint: the test did not exercise the log")
	}
	t.Logf("%d in-flight frames logged over 3 checkpoints", logged)
	return sws
}

func TestCheckpointOneSwitch(t *testing.T) {
	for _, restore := range []bool{false, true} {
		name := "resume"
		if restore {
			name = "restore"
		}
		t.Run(name, func(t *testing.T) {
			runCheckpoints(t, memFabric(1), makeNodes(t, 6, 2, 1), restore)
		})
	}
}

func TestCheckpointTwoSwitchesMemTrunk(t *testing.T) {
	for _, restore := range []bool{false, true} {
		name := "resume"
		if restore {
			name = "restore"
		}
		t.Run(name, func(t *testing.T) {
			runCheckpoints(t, memFabric(2), makeNodes(t, 6, 2, 2), restore)
		})
	}
}

func ethFrame(dst, src byte, payload string) []byte {
	b := make([]byte, 14, 60)
	b[0], b[5] = 0x02, dst
	b[6], b[11] = 0x02, src
	b[12], b[13] = 0x88, 0xb5
	b = append(b, payload...)
	return b[:max(len(b), 60)]
}

func recvTimeout(t *testing.T, p *MemPort, d time.Duration) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	b, err := p.Recv(ctx)
	if err != nil {
		return nil
	}
	return b
}

func TestLearningFloodingAndVLANs(t *testing.T) {
	sw := newTestSwitch(t, Config{})
	a, b, c, d := NewMemPort(16), NewMemPort(16), NewMemPort(16), NewMemPort(16)
	mustAdd(t, sw, PortConfig{Name: "a", VLAN: 10}, a)
	mustAdd(t, sw, PortConfig{Name: "b", VLAN: 10}, b)
	mustAdd(t, sw, PortConfig{Name: "c", VLAN: 10}, c)
	mustAdd(t, sw, PortConfig{Name: "d", VLAN: 20}, d)
	ctx := context.Background()
	// Unknown destination: flooded to b and c, not to d (other VLAN).
	if err := a.Send(ctx, ethFrame(2, 1, "hello")); err != nil {
		t.Fatal(err)
	}
	if recvTimeout(t, b, time.Second) == nil || recvTimeout(t, c, time.Second) == nil {
		t.Fatal("flood did not reach every port of the VLAN")
	}
	// b answers: a's address is known, so only a gets it.
	if err := b.Send(ctx, ethFrame(1, 2, "reply")); err != nil {
		t.Fatal(err)
	}
	if got := recvTimeout(t, a, time.Second); got == nil || got[5] != 1 {
		t.Fatal("a did not get the reply")
	}
	// a to b is now unicast.
	if err := a.Send(ctx, ethFrame(2, 1, "unicast")); err != nil {
		t.Fatal(err)
	}
	if recvTimeout(t, b, time.Second) == nil {
		t.Fatal("b did not get the unicast frame")
	}
	if got := recvTimeout(t, c, 50*time.Millisecond); got != nil {
		t.Fatal("c got a frame for b after b's address was learned")
	}
	if got := recvTimeout(t, d, 50*time.Millisecond); got != nil {
		t.Fatal("a frame crossed VLANs")
	}
	// Broadcast from d reaches nobody else.
	bc := ethFrame(0xff, 4, "bcast")
	copy(bc, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	if err := d.Send(ctx, bc); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*MemPort{a, b, c} {
		if recvTimeout(t, p, 50*time.Millisecond) != nil {
			t.Fatal("broadcast crossed VLANs")
		}
	}
	// A runt is counted and dropped.
	_ = a.Send(ctx, []byte{1, 2, 3})
	time.Sleep(20 * time.Millisecond)
	st, _ := sw.Stats("a")
	if st.Filtered.Load() != 1 {
		t.Fatalf("filtered=%d, want 1", st.Filtered.Load())
	}
}

// TestOrphanIsHeld: a sender that keeps running after its checkpoint (a
// live checkpoint) must not reach a port that has not checkpointed yet.
func TestOrphanIsHeld(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sw := newTestSwitch(t, Config{})
	a, b := NewMemPort(16), NewMemPort(16)
	mustAdd(t, sw, PortConfig{Name: "a", VLAN: 1}, a)
	mustAdd(t, sw, PortConfig{Name: "b", VLAN: 1}, b)
	_ = b.Send(ctx, ethFrame(9, 2, "learn b"))
	recvTimeout(t, a, time.Second)
	if err := sw.BeginCheckpoint(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := sw.PortCheckpointed(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	_ = a.Send(ctx, ethFrame(2, 1, "after a's checkpoint"))
	if got := recvTimeout(t, b, 100*time.Millisecond); got != nil {
		t.Fatal("orphan frame reached b before b checkpointed")
	}
	if err := sw.PortCheckpointed(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if got := recvTimeout(t, b, 50*time.Millisecond); got != nil {
		t.Fatal("a frame reached b while it is checkpointed")
	}
	lg, err := sw.EndCheckpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(lg.Entries) != 0 {
		t.Fatalf("a post-checkpoint frame was logged: %d entries", len(lg.Entries))
	}
	if err := sw.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if got := recvTimeout(t, b, time.Second); got == nil || !bytes.Contains(got, []byte("after a's")) {
		t.Fatal("the held frame was not delivered after resume")
	}
	if st, _ := sw.Stats("b"); st.Held.Load() != 1 {
		t.Fatalf("held=%d, want 1", st.Held.Load())
	}
}

func TestControlProtocolErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sw := newTestSwitch(t, Config{})
	mustAdd(t, sw, PortConfig{Name: "a", VLAN: 1}, NewMemPort(4))
	mustAdd(t, sw, PortConfig{Name: "b", VLAN: 1}, NewMemPort(4))
	if _, err := sw.EndCheckpoint(ctx); !errors.Is(err, ErrCheckpoint) {
		t.Fatalf("End without Begin: %v", err)
	}
	if err := sw.Resume(ctx); !errors.Is(err, ErrCheckpoint) {
		t.Fatalf("Resume without checkpoint: %v", err)
	}
	if err := sw.PortCheckpointed(ctx, "a"); !errors.Is(err, ErrCheckpoint) {
		t.Fatalf("PortCheckpointed without Begin: %v", err)
	}
	if err := sw.BeginCheckpoint(ctx, 0); !errors.Is(err, ErrCheckpoint) {
		t.Fatalf("epoch 0: %v", err)
	}
	if err := sw.BeginCheckpoint(ctx, 3); err != nil {
		t.Fatal(err)
	}
	if err := sw.BeginCheckpoint(ctx, 4); !errors.Is(err, ErrCheckpoint) {
		t.Fatalf("nested Begin: %v", err)
	}
	if err := sw.PortCheckpointed(ctx, "zz"); !errors.Is(err, ErrUnknownPort) {
		t.Fatalf("unknown port: %v", err)
	}
	if err := sw.AddPort(PortConfig{Name: "c", VLAN: 1}, NewMemPort(4)); !errors.Is(err, ErrCheckpoint) {
		t.Fatalf("AddPort during a checkpoint: %v", err)
	}
	if err := sw.PortCheckpointed(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := sw.EndCheckpoint(ctx); !errors.Is(err, ErrCheckpoint) {
		t.Fatalf("End with b not checkpointed: %v", err)
	}
	if err := sw.PortCheckpointed(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if _, err := sw.EndCheckpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if err := sw.Restore(ctx, &Log{Epoch: 3, Entries: []LogEntry{{Port: "nope", VLAN: 1, Frame: make([]byte, 60)}}}); !errors.Is(err, ErrUnknownPort) {
		t.Fatalf("restore naming an unknown port: %v", err)
	}
	if err := sw.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if err := sw.BeginCheckpoint(ctx, 3); !errors.Is(err, ErrCheckpoint) {
		t.Fatalf("reused epoch: %v", err)
	}
	if err := (PortConfig{Name: "x", VLAN: 4095}).Validate(); err == nil {
		t.Fatal("VLAN 4095 accepted")
	}
	if err := (Config{Batch: -1}).Validate(); err == nil {
		t.Fatal("negative batch accepted")
	}
}

// TestInFlightLimit: a checkpoint that would keep more frames than allowed
// fails instead of growing without bound.
func TestInFlightLimit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sw := newTestSwitch(t, Config{MaxInFlight: 5})
	a, b := NewMemPort(64), NewMemPort(64)
	mustAdd(t, sw, PortConfig{Name: "a", VLAN: 1}, a)
	mustAdd(t, sw, PortConfig{Name: "b", VLAN: 1}, b)
	if err := sw.BeginCheckpoint(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := sw.FreezePort(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		_ = a.Send(ctx, ethFrame(2, 1, "x"))
	}
	if err := sw.PortCheckpointed(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := sw.PortCheckpointed(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if _, err := sw.EndCheckpoint(ctx); !errors.Is(err, ErrInFlightLimit) {
		t.Fatalf("err=%v, want ErrInFlightLimit", err)
	}
}

// slowPort delays every read, so that frames pile up in front of the switch.
// It hides the MemPort's InputDrainer on purpose: PortCheckpointed must then
// drain the paused node's output with read timeouts.
//
// It keeps OutputDrainer. The MemPort buffers written frames until the node
// takes them, as a socket does, and a port whose transport buffers must say
// so: without Unconsumed, FreezePort cannot wait for the node, and frames
// still queued when the node pauses are in neither its snapshot nor the
// log, so a restore (onto new ports) loses them. A real VM port (StreamPort,
// DgramPort) reports them; hiding it modelled a port that does not exist.
type slowPort struct {
	p     *MemPort
	delay time.Duration
}

func (s slowPort) ReadBatch(fs []*Frame) (int, error) {
	time.Sleep(s.delay)
	return s.p.ReadBatch(fs[:min(len(fs), 4)])
}
func (s slowPort) WriteBatch(fs []*Frame) (int, error) { return s.p.WriteBatch(fs) }
func (s slowPort) Unconsumed() (int, error)            { return s.p.Unconsumed() }
func (s slowPort) SetReadDeadline(t time.Time) error   { return s.p.SetReadDeadline(t) }
func (s slowPort) Close() error                        { return s.p.Close() }

// TestDot1QTrunk: an Ethernet trunk port carries 802.1Q tags; access ports
// do not.
func TestDot1QTrunk(t *testing.T) {
	sw := newTestSwitch(t, Config{})
	acc, tr := NewMemPort(8), NewMemPort(8)
	mustAdd(t, sw, PortConfig{Name: "acc", VLAN: 42}, acc)
	mustAdd(t, sw, PortConfig{Name: "tr", Mode: Trunk, VLANs: []uint16{42}}, tr)
	ctx := context.Background()
	_ = acc.Send(ctx, ethFrame(2, 1, "to the trunk"))
	got := recvTimeout(t, tr, time.Second)
	if got == nil || got[12] != 0x81 || got[13] != 0x00 || (int(got[14])<<8|int(got[15]))&0xfff != 42 || !bytes.Contains(got, []byte("to the trunk")) {
		t.Fatalf("trunk got %x, want a frame tagged with VLAN 42", got)
	}
	tagged := func(vlan uint16, payload string) []byte {
		f := ethFrame(1, 2, payload)
		return append(append(append([]byte(nil), f[:12]...), 0x81, 0, byte(vlan>>8), byte(vlan)), f[12:]...)
	}
	_ = tr.Send(ctx, tagged(42, "from the trunk"))
	got = recvTimeout(t, acc, time.Second)
	if got == nil || got[12] != 0x88 || !bytes.Contains(got, []byte("from the trunk")) {
		t.Fatalf("access port got %x, want the untagged frame", got)
	}
	_ = tr.Send(ctx, tagged(43, "wrong vlan"))
	if got := recvTimeout(t, acc, 50*time.Millisecond); got != nil {
		t.Fatal("a frame of a VLAN the trunk does not carry was forwarded")
	}
}

// TestResumeAbortsCheckpoint: an abandoned checkpoint releases every frame
// it logged or held, and the switch can checkpoint again.
func TestResumeAbortsCheckpoint(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sw := newTestSwitch(t, Config{})
	a, b, c := NewMemPort(16), NewMemPort(16), NewMemPort(16)
	mustAdd(t, sw, PortConfig{Name: "a", VLAN: 1}, a)
	mustAdd(t, sw, PortConfig{Name: "b", VLAN: 1}, b)
	mustAdd(t, sw, PortConfig{Name: "c", VLAN: 1}, c)
	for i, p := range []*MemPort{a, b, c} { // learn every address
		_ = p.Send(ctx, ethFrame(0xee, byte(i+1), "hello"))
	}
	time.Sleep(50 * time.Millisecond)
	for _, p := range []*MemPort{a, b, c} {
		for recvTimeout(t, p, 20*time.Millisecond) != nil {
		}
	}
	if err := sw.BeginCheckpoint(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := sw.FreezePort(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	_ = a.Send(ctx, ethFrame(2, 1, "logged")) // a (old epoch) -> b (cut)
	if err := sw.PortCheckpointed(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	_ = a.Send(ctx, ethFrame(3, 1, "held")) // a (new epoch) -> c (not cut)
	if recvTimeout(t, b, 50*time.Millisecond) != nil || recvTimeout(t, c, 50*time.Millisecond) != nil {
		t.Fatal("a frame crossed the checkpoint line")
	}
	if err := sw.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if got := recvTimeout(t, b, time.Second); !bytes.Contains(got, []byte("logged")) {
		t.Fatalf("b got %q after the abort", got)
	}
	if got := recvTimeout(t, c, time.Second); !bytes.Contains(got, []byte("held")) {
		t.Fatalf("c got %q after the abort", got)
	}
	_ = c.Send(ctx, ethFrame(2, 3, "normal"))
	if got := recvTimeout(t, b, time.Second); !bytes.Contains(got, []byte("normal")) {
		t.Fatalf("forwarding after the abort: b got %q", got)
	}
	if err := sw.BeginCheckpoint(ctx, 2); err != nil {
		t.Fatal(err)
	}
}

// TestFreezePortWaitsForNode: FreezePort on a port that buffers written
// frames (OutputDrainer) returns only once the node has taken them, so that
// a node paused right after it has nothing in transit towards it that its
// snapshot and the log would both miss.
func TestFreezePortWaitsForNode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sw := newTestSwitch(t, Config{})
	a, b := NewMemPort(16), NewMemPort(16)
	mustAdd(t, sw, PortConfig{Name: "a", VLAN: 1}, a)
	mustAdd(t, sw, PortConfig{Name: "b", VLAN: 1}, b)
	_ = b.Send(ctx, ethFrame(9, 2, "learn b"))
	if recvTimeout(t, a, time.Second) == nil {
		t.Fatal("a did not get b's flood")
	}
	if err := sw.BeginCheckpoint(ctx, 1); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		_ = a.Send(ctx, ethFrame(2, 1, "before the freeze"))
	}
	for deadline := time.Now().Add(5 * time.Second); b.Delivered() < 3; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("b has %d of 3 frames", b.Delivered())
		}
	}
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	err := sw.FreezePort(short, "b")
	cancelShort()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("FreezePort with 3 frames untaken: err=%v, want a deadline error", err)
	}
	// The cut took effect anyway: a frame from a (still in epoch 0) is
	// logged, not written.
	_ = a.Send(ctx, ethFrame(2, 1, "after the freeze"))
	done := make(chan error, 1)
	go func() { done <- sw.FreezePort(ctx, "b") }()
	select {
	case err := <-done:
		t.Fatalf("FreezePort returned (%v) while b still had %d frames to take", err, b.Delivered())
	case <-time.After(30 * time.Millisecond):
	}
	for i := 0; i < 3; i++ {
		if got := recvTimeout(t, b, time.Second); !bytes.Contains(got, []byte("before the freeze")) {
			t.Fatalf("b frame %d: %q", i, got)
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("FreezePort after b took its frames: %v", err)
	}
	if got := recvTimeout(t, b, 50*time.Millisecond); got != nil {
		t.Fatalf("b got %q after its receive side was cut", got)
	}
	for _, p := range []string{"a", "b"} {
		if err := sw.PortCheckpointed(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	lg, err := sw.EndCheckpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(lg.Entries) != 1 || lg.Entries[0].Port != "b" || !bytes.Contains(lg.Entries[0].Frame, []byte("after the freeze")) {
		t.Fatalf("log %+v, want the one frame sent after the freeze, for b", lg.Entries)
	}
}
