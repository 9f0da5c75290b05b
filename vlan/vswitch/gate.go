package vswitch

// gate is the checkpoint state of one port's receive side. It decides, for
// every frame on its way to the port, whether it is written now, logged as
// in-flight state, held back, or queued until Resume. It is pure state owned
// by the port's writer goroutine (or a test): no locks, no I/O.
//
// Epochs: epoch is the last checkpoint the receive side has passed. While a
// checkpoint to epoch target is in progress and the side has been cut
// (cut == true), the receive side is in epoch target.
type gate struct {
	epoch  uint64
	target uint64 // checkpoint in progress; 0 if none
	cut    bool   // receive side passed target: deliver nothing until resume
	frozen bool   // deliver nothing until resume (after cut or restore)

	hold    []*Frame // newer-epoch frames waiting for the cut (orphans otherwise)
	pending []*Frame // frames to deliver after resume, not part of the snapshot
	log     []*Frame // in-flight frames: the channel state of the snapshot

	limit    int  // max frames in hold+pending+log
	overflow bool // a frame was dropped because of limit
}

type verdict int

const (
	deliver verdict = iota // write it now
	logged                 // in-flight state, kept in log
	held                   // orphan-to-be, kept in hold
	queued                 // kept in pending until resume
	dropped                // over the limit; the caller releases it
)

func (g *gate) size() int { return len(g.hold) + len(g.pending) + len(g.log) }

// admit classifies f. Except for deliver and dropped, the gate keeps f.
func (g *gate) admit(f *Frame) verdict {
	var q *[]*Frame
	var v verdict
	switch {
	case g.cut && f.Epoch < g.target:
		q, v = &g.log, logged
	case g.cut:
		q, v = &g.pending, queued
	case f.Epoch > g.epoch:
		q, v = &g.hold, held
	case g.frozen:
		q, v = &g.pending, queued
	default:
		return deliver
	}
	if g.limit > 0 && g.size() >= g.limit {
		g.overflow = true
		return dropped
	}
	*q = append(*q, f)
	return v
}

// begin starts a checkpoint to epoch target; beginning the same checkpoint
// again changes nothing.
func (g *gate) begin(target uint64) {
	if g.target == target {
		return
	}
	g.target = target
	g.overflow = false
}

// doCut moves the receive side into the target epoch: held frames were sent
// after the checkpoint and are delivered after resume.
func (g *gate) doCut() {
	if g.cut {
		return
	}
	g.cut = true
	g.frozen = true
	g.pending = append(g.pending, g.hold...)
	clear(g.hold)
	g.hold = g.hold[:0]
}

// resume ends the checkpoint (or the restore) and returns, in order, the
// frames to write before any other: the in-flight log, then frames sent
// after the checkpoint. Frames still held stay held: their senders are in a
// newer epoch than this port.
func (g *gate) resume() []*Frame {
	out := make([]*Frame, 0, len(g.log)+len(g.pending))
	out = append(out, g.log...)
	out = append(out, g.pending...)
	if g.cut {
		g.epoch = g.target
	}
	g.target, g.cut, g.frozen = 0, false, false
	g.log, g.pending = nil, nil
	return out
}

// restore replaces the state with a restored snapshot at epoch: log is the
// channel state to replay; frames queued or held before are returned for the
// caller to release (the restored senders send them again).
func (g *gate) restore(epoch uint64, log []*Frame) (drop []*Frame) {
	drop = append(drop, g.hold...)
	drop = append(drop, g.pending...)
	drop = append(drop, g.log...)
	*g = gate{epoch: epoch, frozen: true, log: log, limit: g.limit}
	return drop
}
