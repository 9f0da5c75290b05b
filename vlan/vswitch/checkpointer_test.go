package vswitch

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A Checkpointer implementation under test: open returns the control API of
// sw, cleaned up when the test ends.
type checkpointerImpl struct {
	name string
	open func(t *testing.T, sw *Switch) Checkpointer
}

var checkpointerImpls = []checkpointerImpl{
	{"switch", func(t *testing.T, sw *Switch) Checkpointer { return sw }},
	{"http", func(t *testing.T, sw *Switch) Checkpointer {
		srv := httptest.NewServer(NewHandler(sw)) // 127.0.0.1
		t.Cleanup(srv.Close)                      // also closes srv.Client's idle connections
		return NewClient(srv.URL, srv.Client())
	}},
	{"unix", func(t *testing.T, sw *Switch) Checkpointer {
		return NewUnixClient(serveUnix(t, NewHandler(sw)))
	}},
}

// serveUnix serves h on a unix socket until the test ends and returns the
// socket's path.
func serveUnix(t *testing.T, h http.Handler) string {
	t.Helper()
	// Not t.TempDir: a socket path must fit in 108 bytes.
	dir, err := os.MkdirTemp("", "vsw")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "ctl.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close() // closes the listener and every connection
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
		os.RemoveAll(dir)
	})
	return path
}

// TestCheckpointer runs one suite of checkpoint scenarios against every
// implementation of Checkpointer: the Switch itself, and Client talking to
// NewHandler over TCP (127.0.0.1) and over a unix socket.
func TestCheckpointer(t *testing.T) {
	for _, impl := range checkpointerImpls {
		t.Run(impl.name, func(t *testing.T) {
			t.Run("CheckpointResume", func(t *testing.T) { testCheckpointResume(t, impl) })
			t.Run("Restore", func(t *testing.T) { testCheckpointRestore(t, impl) })
			t.Run("Abandon", func(t *testing.T) { testCheckpointAbandon(t, impl) })
			t.Run("RetryAfterCancel", func(t *testing.T) { testCheckpointRetry(t, impl) })
			t.Run("Closed", func(t *testing.T) { testCheckpointClosed(t, impl) })
		})
	}
}

// suiteCtx bounds a scenario. It is a failsafe against a hang, not a
// timing assertion: nothing in the suite waits for time to pass.
func suiteCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// cpSetup builds a switch with n MemPorts "a", "b", ... in VLAN 1 (node i
// has MAC 02:00:00:00:00:0i) whose addresses the switch has learned, and
// returns impl's control API for it.
func cpSetup(t *testing.T, impl checkpointerImpl, n int) (*Switch, Checkpointer, []*MemPort) {
	t.Helper()
	ctx := suiteCtx(t)
	sw := newTestSwitch(t, Config{})
	ports := make([]*MemPort, n)
	for i := range ports {
		ports[i] = NewMemPort(16)
		mustAdd(t, sw, PortConfig{Name: string(rune('a' + i)), VLAN: 1}, ports[i])
	}
	// Each node floods a frame; once every other node has it, the switch
	// has learned the sender's address (it learns before it forwards).
	for i, p := range ports {
		if err := p.Send(ctx, ethFrame(0xee, byte(i+1), "learn")); err != nil {
			t.Fatal(err)
		}
		for j, q := range ports {
			if j != i {
				mustRecv(t, ctx, q, "learn")
			}
		}
	}
	return sw, impl.open(t, sw), ports
}

// mustRecv waits for the next frame delivered to p and checks that it
// carries want.
func mustRecv(t *testing.T, ctx context.Context, p *MemPort, want string) {
	t.Helper()
	got, err := p.Recv(ctx)
	if err != nil {
		t.Fatalf("waiting for %q: %v", want, err)
	}
	if !bytes.Contains(got, []byte(want)) {
		t.Fatalf("got frame %q, want %q", got, want)
	}
}

// noDelivery checks that nothing was delivered to p. Only for ports whose
// receive side is cut: the switch writes nothing to them until Resume, so
// the check does not depend on timing.
func noDelivery(t *testing.T, p *MemPort, name string) {
	t.Helper()
	if n := p.Delivered(); n != 0 {
		t.Fatalf("%d frames delivered to %s while it was frozen", n, name)
	}
}

func wantStatus(t *testing.T, ctx context.Context, cp Checkpointer, want Status) {
	t.Helper()
	st, err := cp.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st != want {
		t.Fatalf("status %+v, want %+v", st, want)
	}
}

func wantErr(t *testing.T, err, want error, what string) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: %v, want %v", what, err, want)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// checkpointWithInFlight runs a checkpoint to epoch 1 on a switch with
// ports a and b in which a frame from a to b crosses the line, repeating
// every call, and returns the log.
func checkpointWithInFlight(t *testing.T, ctx context.Context, cp Checkpointer, a, b *MemPort) *Log {
	t.Helper()
	must(t, cp.BeginCheckpoint(ctx, 1))
	must(t, cp.BeginCheckpoint(ctx, 1)) // repeated
	wantErr(t, cp.BeginCheckpoint(ctx, 2), ErrCheckpoint, "BeginCheckpoint(2) during checkpoint 1")
	wantStatus(t, ctx, cp, Status{Epoch: 0, Target: 1, State: StateCheckpointing})
	must(t, cp.FreezePort(ctx, "b"))
	must(t, cp.FreezePort(ctx, "b")) // repeated
	wantErr(t, cp.FreezePort(ctx, "nope"), ErrUnknownPort, "FreezePort(nope)")
	// a is still running: its frame to b crosses the checkpoint line.
	must(t, a.Send(ctx, ethFrame(2, 1, "in flight")))
	// PortCheckpointed reads everything a sent before it returns.
	must(t, cp.PortCheckpointed(ctx, "a"))
	must(t, cp.PortCheckpointed(ctx, "a")) // repeated
	noDelivery(t, b, "b")
	_, err := cp.EndCheckpoint(ctx)
	wantErr(t, err, ErrCheckpoint, "EndCheckpoint before b is checkpointed")
	must(t, cp.PortCheckpointed(ctx, "b"))
	lg, err := cp.EndCheckpoint(ctx)
	must(t, err)
	if lg.Epoch != 1 || len(lg.Entries) != 1 || lg.Entries[0].Port != "b" || !bytes.Contains(lg.Entries[0].Frame, []byte("in flight")) {
		t.Fatalf("log %+v, want epoch 1 and the frame in flight to b", lg)
	}
	again, err := cp.EndCheckpoint(ctx) // repeated: the same log
	must(t, err)
	if again.Epoch != lg.Epoch || len(again.Entries) != 1 || !bytes.Equal(again.Entries[0].Frame, lg.Entries[0].Frame) {
		t.Fatalf("repeated EndCheckpoint returned %+v, want %+v", again, lg)
	}
	wantStatus(t, ctx, cp, Status{Epoch: 0, Target: 1, State: StateCheckpointed})
	noDelivery(t, b, "b")
	return lg
}

// After a checkpoint, Resume delivers the logged frame once, then normal
// traffic; the epoch is used.
func testCheckpointResume(t *testing.T, impl checkpointerImpl) {
	ctx := suiteCtx(t)
	_, cp, ps := cpSetup(t, impl, 2)
	a, b := ps[0], ps[1]
	wantStatus(t, ctx, cp, Status{State: StateIdle})
	wantErr(t, cp.Resume(ctx), ErrCheckpoint, "Resume while idle")
	_, err := cp.EndCheckpoint(ctx)
	wantErr(t, err, ErrCheckpoint, "EndCheckpoint while idle")
	checkpointWithInFlight(t, ctx, cp, a, b)
	must(t, cp.Resume(ctx))
	wantStatus(t, ctx, cp, Status{Epoch: 1, State: StateIdle})
	wantErr(t, cp.Resume(ctx), ErrCheckpoint, "repeated Resume")
	mustRecv(t, ctx, b, "in flight")
	must(t, a.Send(ctx, ethFrame(2, 1, "after")))
	mustRecv(t, ctx, b, "after") // and not the logged frame again
	wantErr(t, cp.BeginCheckpoint(ctx, 1), ErrCheckpoint, "BeginCheckpoint of a used epoch")
}

// A log restored on a fresh switch (as after a swapin) is replayed once on
// Resume; Restore may be repeated.
func testCheckpointRestore(t *testing.T, impl checkpointerImpl) {
	ctx := suiteCtx(t)
	_, cp, ps := cpSetup(t, impl, 2)
	lg := checkpointWithInFlight(t, ctx, cp, ps[0], ps[1])

	_, cp2, ps2 := cpSetup(t, impl, 2)
	a, b := ps2[0], ps2[1]
	must(t, cp2.Restore(ctx, lg))
	must(t, cp2.Restore(ctx, lg)) // repeated
	wantStatus(t, ctx, cp2, Status{Epoch: 1, State: StateRestored})
	wantErr(t, cp2.BeginCheckpoint(ctx, 2), ErrCheckpoint, "BeginCheckpoint while restored")
	wantErr(t, cp2.Restore(ctx, &Log{Epoch: 1, Entries: []LogEntry{{Port: "zz", VLAN: 1, Frame: make([]byte, 60)}}}), ErrUnknownPort, "Restore naming an unknown port")
	noDelivery(t, b, "b")
	must(t, cp2.Resume(ctx))
	wantStatus(t, ctx, cp2, Status{Epoch: 1, State: StateIdle})
	mustRecv(t, ctx, b, "in flight")
	must(t, a.Send(ctx, ethFrame(2, 1, "after")))
	mustRecv(t, ctx, b, "after")
	must(t, cp2.BeginCheckpoint(ctx, 2))
	for _, p := range []string{"a", "b"} {
		must(t, cp2.PortCheckpointed(ctx, p))
	}
	lg2, err := cp2.EndCheckpoint(ctx)
	must(t, err)
	if len(lg2.Entries) != 0 {
		t.Fatalf("quiet checkpoint logged %+v", lg2.Entries)
	}
	must(t, cp2.Resume(ctx))
}

// An abandoned checkpoint (a node failed to save; EndCheckpoint fails or is
// never called) is undone by Resume: the frame logged as in flight and the
// frame held back are delivered, forwarding goes on, the epoch is used up.
func testCheckpointAbandon(t *testing.T, impl checkpointerImpl) {
	ctx := suiteCtx(t)
	_, cp, ps := cpSetup(t, impl, 3)
	a, b, c := ps[0], ps[1], ps[2]
	must(t, cp.BeginCheckpoint(ctx, 1))
	must(t, cp.FreezePort(ctx, "b"))
	must(t, a.Send(ctx, ethFrame(2, 1, "logged"))) // a (epoch 0) -> b (cut): logged
	must(t, cp.PortCheckpointed(ctx, "a"))
	must(t, a.Send(ctx, ethFrame(3, 1, "held"))) // a (epoch 1) -> c (not cut): held
	must(t, cp.PortCheckpointed(ctx, "b"))
	noDelivery(t, b, "b")
	// c's node failed to save: the checkpoint cannot end.
	_, err := cp.EndCheckpoint(ctx)
	wantErr(t, err, ErrCheckpoint, "EndCheckpoint with c not checkpointed")
	wantStatus(t, ctx, cp, Status{Epoch: 0, Target: 1, State: StateCheckpointing})

	must(t, cp.Resume(ctx))
	wantStatus(t, ctx, cp, Status{Epoch: 1, State: StateIdle})
	mustRecv(t, ctx, b, "logged")
	mustRecv(t, ctx, c, "held")
	must(t, c.Send(ctx, ethFrame(2, 3, "c to b")))
	mustRecv(t, ctx, b, "c to b")
	must(t, b.Send(ctx, ethFrame(1, 2, "b to a")))
	mustRecv(t, ctx, a, "b to a")

	wantErr(t, cp.BeginCheckpoint(ctx, 1), ErrCheckpoint, "BeginCheckpoint of the abandoned epoch")
	must(t, cp.BeginCheckpoint(ctx, 2))
	for _, p := range []string{"a", "b", "c"} {
		must(t, cp.FreezePort(ctx, p))
		must(t, cp.PortCheckpointed(ctx, p))
	}
	lg, err := cp.EndCheckpoint(ctx)
	must(t, err)
	if lg.Epoch != 2 || len(lg.Entries) != 0 {
		t.Fatalf("checkpoint after the abandoned one: %+v", lg)
	}
	must(t, cp.Resume(ctx))
	wantStatus(t, ctx, cp, Status{Epoch: 2, State: StateIdle})
}

// A call whose context ended may or may not have taken effect; repeating
// it with a live context completes it.
func testCheckpointRetry(t *testing.T, impl checkpointerImpl) {
	ctx := suiteCtx(t)
	_, cp, ps := cpSetup(t, impl, 2)
	a, b := ps[0], ps[1]
	dead, cancel := context.WithCancel(ctx)
	cancel()
	canceled := func(err error, what string) {
		t.Helper()
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("%s with a cancelled context: %v, want success or context.Canceled", what, err)
		}
	}
	canceled(cp.BeginCheckpoint(dead, 1), "BeginCheckpoint")
	must(t, cp.BeginCheckpoint(ctx, 1))
	canceled(cp.FreezePort(dead, "b"), "FreezePort")
	must(t, cp.FreezePort(ctx, "b"))
	must(t, a.Send(ctx, ethFrame(2, 1, "in flight")))
	for _, p := range []string{"a", "b"} {
		canceled(cp.PortCheckpointed(dead, p), "PortCheckpointed")
		must(t, cp.PortCheckpointed(ctx, p))
	}
	_, err := cp.EndCheckpoint(dead)
	canceled(err, "EndCheckpoint")
	lg, err := cp.EndCheckpoint(ctx)
	must(t, err)
	if len(lg.Entries) != 1 {
		t.Fatalf("log %+v, want the one frame in flight", lg.Entries)
	}
	canceled(cp.Resume(dead), "Resume")
	st, err := cp.Status(ctx)
	must(t, err)
	if st.State != StateIdle {
		must(t, cp.Resume(ctx))
	}
	wantStatus(t, ctx, cp, Status{Epoch: 1, State: StateIdle})
	mustRecv(t, ctx, b, "in flight")
	must(t, a.Send(ctx, ethFrame(2, 1, "after")))
	mustRecv(t, ctx, b, "after")
}

// A closed switch says so, across the wire too.
func testCheckpointClosed(t *testing.T, impl checkpointerImpl) {
	ctx := suiteCtx(t)
	sw, cp, _ := cpSetup(t, impl, 1)
	must(t, sw.Close())
	_, err := cp.Status(ctx)
	wantErr(t, err, ErrClosed, "Status of a closed switch")
	wantErr(t, cp.BeginCheckpoint(ctx, 1), ErrClosed, "BeginCheckpoint on a closed switch")
}
