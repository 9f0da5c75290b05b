package vswitch

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"
)

// The checkpoint control API (Checkpointer, whose doc comment is the full
// contract). The swap orchestration calls, for epoch E+1:
//
//	BeginCheckpoint(E+1) on every switch instance of the experiment;
//	for each node: FreezePort, pause the node, PortCheckpointed;
//	EndCheckpoint on every instance, saving each returned Log;
//
// then either Resume (the experiment continues) or, after the nodes were
// restored, Restore(log) and Resume on each instance. Epochs must increase
// over an experiment's lifetime. Every switch instance joined by a trunk
// must take part in every checkpoint: EndCheckpoint waits for the end-of-
// epoch marker of every trunk peer.

type ckPhase int

const (
	ckIdle     ckPhase = iota // forwarding; no checkpoint in progress
	ckActive                  // BeginCheckpoint called
	ckEnded                   // EndCheckpoint returned the log; waiting for Resume or Restore
	ckRestored                // Restore called; waiting for Resume
)

func (p ckPhase) String() string {
	return [...]string{"idle", "checkpointing", "checkpointed", "restored"}[p]
}

type ckState struct {
	state        ckPhase
	epoch        uint64 // epoch of the last completed checkpoint or restore
	target       uint64 // checkpoint in progress
	checkpointed map[string]bool
	gapsAtBegin  map[string]uint64
	markerStop   chan struct{}
}

type ctlKind int

const (
	ctlBegin ctlKind = iota
	ctlCut
	ctlCollect
	ctlResume
	ctlRestore
	ctlMarker
)

type ctlMsg struct {
	kind   ctlKind
	epoch  uint64
	frames []*Frame
	reply  chan ctlReply
}

type ctlReply struct {
	entries []LogEntry
	err     error
}

// send hands m to the port's writer goroutine and waits for its reply.
func (pt *port) send(ctx context.Context, m ctlMsg) ctlReply {
	m.reply = make(chan ctlReply, 1)
	select {
	case pt.ctl <- m:
	case <-pt.done:
		return ctlReply{err: fmt.Errorf("%w: port %s", ErrClosed, pt.cfg.Name)}
	case <-ctx.Done():
		return ctlReply{err: fmt.Errorf("vswitch: port %s: %w", pt.cfg.Name, ctx.Err())}
	}
	select {
	case r := <-m.reply:
		return r
	case <-pt.done:
		return ctlReply{err: fmt.Errorf("%w: port %s", ErrClosed, pt.cfg.Name)}
	case <-ctx.Done():
		// The writer is stuck writing to a peer that does not read; the
		// message still takes effect when it gets to it.
		return ctlReply{err: fmt.Errorf("vswitch: port %s: writer busy: %w", pt.cfg.Name, ctx.Err())}
	}
}

// control runs in the writer goroutine.
func (pt *port) control(m ctlMsg, in, out *[]*Frame) {
	sw := pt.sw
	// Frames queued before the message are gated first: the message takes
	// effect at this point of the port's stream.
	drain := func() {
		for {
			*in = (*in)[:0]
			pt.drainQueue(in)
			if len(*in) == 0 {
				return
			}
			pt.process(*in, out)
		}
	}
	// Frames still to replay from the last Resume precede everything.
	for len(pt.replay) > 0 {
		chunk := pt.replay[:min(len(pt.replay), sw.cfg.Batch)]
		pt.replay = pt.replay[len(chunk):]
		_ = pt.write(chunk, true)
	}
	var r ctlReply
	switch m.kind {
	case ctlBegin:
		pt.gate.begin(m.epoch)
	case ctlCut:
		drain()
		pt.gate.doCut()
	case ctlCollect:
		drain()
		if pt.gate.overflow {
			r.err = fmt.Errorf("%w: port %s (MaxInFlight %d)", ErrInFlightLimit, pt.cfg.Name, sw.cfg.MaxInFlight)
		}
		r.entries = make([]LogEntry, len(pt.gate.log))
		for i, f := range pt.gate.log {
			r.entries[i] = LogEntry{Port: pt.cfg.Name, VLAN: f.VLAN, Epoch: f.Epoch, Frame: append([]byte(nil), f.Bytes()...)}
		}
	case ctlResume:
		drain()
		pt.replay = pt.gate.resume()
	case ctlRestore:
		drain()
		for _, f := range pt.gate.restore(m.epoch, m.frames) {
			sw.pool.release(f)
		}
	case ctlMarker:
		drain()
		r.err = pt.carrier.sendMarker(m.epoch)
	}
	m.reply <- r
}

// participants returns the ports that take part in checkpoints (all but
// epoch-carrying trunks) and the trunks. The caller holds sw.mu.
func (sw *Switch) participantsLocked() (parts, trunks []*port) {
	for _, pt := range sw.byName {
		if pt.carrier != nil {
			trunks = append(trunks, pt)
		} else {
			parts = append(parts, pt)
		}
	}
	sort.Slice(parts, func(i, j int) bool { return parts[i].id < parts[j].id })
	sort.Slice(trunks, func(i, j int) bool { return trunks[i].id < trunks[j].id })
	return parts, trunks
}

// BeginCheckpoint starts a checkpoint to epoch, which must be greater than
// the switch's current epoch.
func (sw *Switch) BeginCheckpoint(ctx context.Context, epoch uint64) error {
	sw.mu.Lock()
	if sw.closed {
		sw.mu.Unlock()
		return ErrClosed
	}
	// A repeated call (its first reply lost, or its context ended before
	// every port had begun) begins the ports again: begin is idempotent.
	repeat := sw.ck.state == ckActive && sw.ck.target == epoch
	if sw.ck.state != ckIdle && !repeat {
		sw.mu.Unlock()
		return fmt.Errorf("%w: BeginCheckpoint(%d) while %v", ErrCheckpoint, epoch, sw.ck.state)
	}
	if epoch <= sw.ck.epoch {
		sw.mu.Unlock()
		return fmt.Errorf("%w: epoch %d is not after the current epoch %d", ErrCheckpoint, epoch, sw.ck.epoch)
	}
	parts, trunks := sw.participantsLocked()
	if !repeat {
		sw.ck.state = ckActive
		sw.ck.target = epoch
		sw.ck.checkpointed = make(map[string]bool)
		sw.ck.gapsAtBegin = make(map[string]uint64)
		for _, pt := range trunks {
			sw.ck.gapsAtBegin[pt.cfg.Name] = pt.carrier.gaps()
		}
	}
	sw.mu.Unlock()

	var errs []error
	for _, pt := range parts {
		errs = append(errs, pt.send(ctx, ctlMsg{kind: ctlBegin, epoch: epoch}).err)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	sw.log.Info("checkpoint begun", "epoch", epoch, "ports", len(parts), "trunks", len(trunks))
	sw.maybeStartMarkers()
	return nil
}

func (sw *Switch) activePort(name, op string) (*port, uint64, error) {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	if sw.ck.state != ckActive {
		return nil, 0, fmt.Errorf("%w: %s(%s) while %v", ErrCheckpoint, op, name, sw.ck.state)
	}
	pt, ok := sw.byName[name]
	if !ok {
		return nil, 0, fmt.Errorf("%w: %s", ErrUnknownPort, name)
	}
	if pt.carrier != nil {
		return nil, 0, fmt.Errorf("%w: %s(%s): trunks are not checkpointed", ErrCheckpoint, op, name)
	}
	return pt, sw.ck.target, nil
}

// FreezePort cuts the port's receive side: nothing more is written to it
// until Resume; frames for it from senders not yet checkpointed are logged.
// Call it just before pausing the node behind the port. It returns when the
// node has taken everything written before (for ports that can tell, see
// OutputDrainer) or ctx ends.
func (sw *Switch) FreezePort(ctx context.Context, name string) error {
	pt, _, err := sw.activePort(name, "FreezePort")
	if err != nil {
		return err
	}
	// The cut is sent every time: a cut port ignores it, and a call whose
	// context ended may not have delivered it.
	if err := pt.send(ctx, ctlMsg{kind: ctlCut}).err; err != nil {
		return err
	}
	d, ok := pt.p.(OutputDrainer)
	if !ok {
		return nil
	}
	for {
		n, err := d.Unconsumed()
		if err != nil || n == 0 {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("vswitch: port %s: peer did not take %d queued bytes: %w", name, n, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
}

// PortCheckpointed tells the switch that the node behind the port is paused
// and its state saved (or being saved). The switch reads what the node sent
// before it stopped, then moves the port's sending side to the checkpoint's
// epoch; it cuts the receive side too if FreezePort was not called.
func (sw *Switch) PortCheckpointed(ctx context.Context, name string) error {
	pt, target, err := sw.activePort(name, "PortCheckpointed")
	if err != nil {
		return err
	}
	sw.mu.Lock()
	done := sw.ck.checkpointed[name]
	sw.mu.Unlock()
	if done {
		return nil
	}
	// Cut the receive side (again: a cut port ignores it; FreezePort may
	// not have been called, or its context ended before the cut arrived).
	if err := pt.send(ctx, ctlMsg{kind: ctlCut}).err; err != nil {
		return err
	}
	req := &txRequest{epoch: target, done: make(chan struct{})}
	pt.txReq.Store(req)
	if err := pt.p.SetReadDeadline(time.Now()); err != nil { // wake the reader
		pt.txReq.CompareAndSwap(req, nil)
		return fmt.Errorf("vswitch: port %s: %w", name, err)
	}
	select {
	case <-req.done:
	case <-pt.done:
		return fmt.Errorf("%w: port %s", ErrClosed, name)
	case <-ctx.Done():
		if pt.txReq.CompareAndSwap(req, nil) {
			return fmt.Errorf("vswitch: port %s: output not drained: %w", name, ctx.Err())
		}
		<-req.done // the reader is finishing it
	}
	sw.mu.Lock()
	sw.ck.checkpointed[name] = true
	sw.mu.Unlock()
	sw.maybeStartMarkers()
	return nil
}

// maybeStartMarkers starts sending end-of-epoch markers on every trunk once
// every local port is checkpointed: from then on this switch sends no frame
// of the old epoch.
func (sw *Switch) maybeStartMarkers() {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	if sw.ck.state != ckActive || sw.ck.markerStop != nil {
		return
	}
	parts, trunks := sw.participantsLocked()
	if len(sw.ck.checkpointed) < len(parts) {
		return
	}
	stop := make(chan struct{})
	sw.ck.markerStop = stop
	if len(trunks) == 0 {
		return
	}
	epoch := sw.ck.target
	sw.wg.Add(1)
	go func() {
		defer sw.wg.Done()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			select {
			case <-stop:
			case <-sw.done:
			}
			cancel()
		}()
		t := time.NewTicker(sw.cfg.MarkerInterval)
		defer t.Stop()
		for {
			for _, pt := range trunks {
				if err := pt.send(ctx, ctlMsg{kind: ctlMarker, epoch: epoch}).err; err != nil && ctx.Err() == nil {
					sw.log.Warn("sending end-of-epoch marker failed", "port", pt.cfg.Name, "epoch", epoch, "err", err)
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

func (sw *Switch) stopMarkersLocked() {
	if sw.ck.markerStop != nil {
		close(sw.ck.markerStop)
		sw.ck.markerStop = nil
	}
}

// EndCheckpoint waits until every trunk peer has finished the epoch and
// returns the in-flight log: the frames that crossed the checkpoint line,
// in order per port. Every local port must have been checkpointed. The
// switch keeps delivering nothing to the ports until Resume.
func (sw *Switch) EndCheckpoint(ctx context.Context) (*Log, error) {
	sw.mu.Lock()
	// After EndCheckpoint succeeded, the ports still hold the log (until
	// Resume or Restore) and it can no longer change: every sender is in
	// the new epoch and every trunk peer finished the old one. A repeated
	// call collects it again.
	if sw.ck.state != ckActive && sw.ck.state != ckEnded {
		sw.mu.Unlock()
		return nil, fmt.Errorf("%w: EndCheckpoint while %v", ErrCheckpoint, sw.ck.state)
	}
	parts, trunks := sw.participantsLocked()
	var missing []string
	for _, pt := range parts {
		if !sw.ck.checkpointed[pt.cfg.Name] {
			missing = append(missing, pt.cfg.Name)
		}
	}
	target := sw.ck.target
	gaps := sw.ck.gapsAtBegin
	sw.mu.Unlock()
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: EndCheckpoint before ports %v were checkpointed", ErrCheckpoint, missing)
	}
	for _, pt := range trunks {
		for pt.peerMarker.Load() < target {
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("vswitch: trunk %s: no end-of-epoch marker for epoch %d from the peer: %w", pt.cfg.Name, target, ctx.Err())
			case <-pt.done:
				return nil, fmt.Errorf("%w: trunk %s", ErrClosed, pt.cfg.Name)
			case <-time.After(time.Millisecond):
			}
		}
	}
	var errs []error
	lg := &Log{Epoch: target}
	for _, pt := range parts {
		r := pt.send(ctx, ctlMsg{kind: ctlCollect})
		errs = append(errs, r.err)
		lg.Entries = append(lg.Entries, r.entries...)
	}
	for _, pt := range trunks {
		if g := pt.carrier.gaps(); g != gaps[pt.cfg.Name] {
			errs = append(errs, fmt.Errorf("%w: trunk %s: %d gaps", ErrTrunkGap, pt.cfg.Name, g-gaps[pt.cfg.Name]))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	sw.mu.Lock()
	sw.ck.state = ckEnded
	sw.mu.Unlock()
	sw.log.Info("checkpoint ended", "epoch", target, "inflight", len(lg.Entries))
	return lg, nil
}

// Restore loads a log saved by EndCheckpoint, after the nodes were
// restored from the same checkpoint: the switch moves to the log's epoch,
// drops frames sent after the checkpoint (the restored senders send them
// again), and delivers nothing until Resume, which replays the log. It is
// allowed when no checkpoint is in progress, after EndCheckpoint, and after
// Restore (which it repeats). Every port named in the log must be attached.
func (sw *Switch) Restore(ctx context.Context, lg *Log) error {
	if lg == nil {
		return errors.New("vswitch: Restore: nil log")
	}
	sw.mu.Lock()
	if sw.ck.state == ckActive {
		sw.mu.Unlock()
		return fmt.Errorf("%w: Restore while %v", ErrCheckpoint, sw.ck.state)
	}
	perPort := make(map[string][]LogEntry)
	for i, e := range lg.Entries {
		pt, ok := sw.byName[e.Port]
		if !ok || pt.carrier != nil {
			sw.mu.Unlock()
			return fmt.Errorf("%w: log entry %d names port %q, which is not an attached node port", ErrUnknownPort, i, e.Port)
		}
		if len(e.Frame) > MaxFrameLen || len(e.Frame) < minFrameLen {
			sw.mu.Unlock()
			return fmt.Errorf("%w: log entry %d: frame of %d bytes", ErrCorruptLog, i, len(e.Frame))
		}
		perPort[e.Port] = append(perPort[e.Port], e)
	}
	parts, trunks := sw.participantsLocked()
	sw.stopMarkersLocked()
	sw.ck.state = ckRestored
	sw.ck.epoch = lg.Epoch
	sw.ck.target = 0
	sw.mu.Unlock()

	var errs []error
	for _, pt := range parts {
		fs := make([]*Frame, 0, len(perPort[pt.cfg.Name]))
		for _, e := range perPort[pt.cfg.Name] {
			f := sw.pool.get()
			f.SetBytes(e.Frame)
			f.VLAN, f.Epoch, f.src = e.VLAN, e.Epoch, -1
			fs = append(fs, f)
		}
		pt.txEpoch.Store(lg.Epoch)
		errs = append(errs, pt.send(ctx, ctlMsg{kind: ctlRestore, epoch: lg.Epoch, frames: fs}).err)
	}
	for _, pt := range trunks {
		pt.peerMarker.Store(lg.Epoch)
	}
	sw.log.Info("restored", "epoch", lg.Epoch, "inflight", len(lg.Entries))
	return errors.Join(errs...)
}

// Resume ends a checkpoint (after EndCheckpoint) or a restore: each port
// first gets its logged in-flight frames, in order, then the frames sent to
// it after the checkpoint, then normal traffic. Ports whose peer connects
// to them (ConnWaiter) are waited for before frames are replayed to them.
// The replay is handed to each port's writer and proceeds as fast as the
// node takes frames: Resume does not wait for it, so the nodes may be
// continued before or after Resume.
//
// Resume during a checkpoint (after a failed EndCheckpoint, or when the
// swapout is abandoned) aborts it: the epoch is used up, and every frame
// logged, held or queued is delivered as if the checkpoint had ended.
func (sw *Switch) Resume(ctx context.Context) error {
	sw.mu.Lock()
	if sw.ck.state == ckIdle {
		sw.mu.Unlock()
		return fmt.Errorf("%w: Resume while %v", ErrCheckpoint, sw.ck.state)
	}
	aborting := sw.ck.state == ckActive
	restored := sw.ck.state == ckRestored
	target := sw.ck.target
	parts, _ := sw.participantsLocked()
	sw.mu.Unlock()

	if aborting {
		// Abandon the checkpoint: every port moves to its epoch now, so
		// that held frames are released and nothing waits for a cut.
		sw.log.Warn("checkpoint aborted by Resume", "epoch", target)
		for _, pt := range parts {
			if err := pt.send(ctx, ctlMsg{kind: ctlCut}).err; err != nil {
				return fmt.Errorf("vswitch: Resume: aborting the checkpoint: %w", err)
			}
			pt.txEpoch.Store(target)
		}
		sw.mu.Lock()
		sw.ck.state = ckEnded
		sw.mu.Unlock()
	}

	// After a Restore the restored nodes connect to their ports any
	// moment: wait for them, so the log is replayed to them. Undoing a
	// checkpoint of a running network does not wait: a port without its
	// peer now lost it (the node died), and would never connect again.
	for _, pt := range parts {
		if !restored {
			break
		}
		if w, ok := pt.p.(ConnWaiter); ok {
			if err := w.WaitConnected(ctx); err != nil {
				return fmt.Errorf("vswitch: Resume: port %s: %w", pt.cfg.Name, err)
			}
		}
	}
	var errs []error
	for _, pt := range parts {
		if err := pt.send(ctx, ctlMsg{kind: ctlResume}).err; err != nil {
			errs = append(errs, fmt.Errorf("vswitch: Resume: port %s: %w", pt.cfg.Name, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		// Some ports may still be frozen: stay in this state, so that a
		// repeated Resume reaches them (resuming a port twice is harmless).
		return err
	}
	sw.mu.Lock()
	if sw.ck.state == ckEnded {
		sw.ck.epoch = sw.ck.target
	}
	sw.ck.state = ckIdle
	sw.ck.target = 0
	sw.stopMarkersLocked()
	sw.mu.Unlock()
	sw.log.Info("resumed", "epoch", sw.Epoch())
	return nil
}

// Status implements Checkpointer.
func (sw *Switch) Status(ctx context.Context) (Status, error) {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	if sw.closed {
		return Status{}, ErrClosed
	}
	return Status{Epoch: sw.ck.epoch, Target: sw.ck.target, State: State(sw.ck.state.String())}, nil
}

// Epoch returns the epoch of the last completed checkpoint or restore.
func (sw *Switch) Epoch() uint64 {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	return sw.ck.epoch
}
