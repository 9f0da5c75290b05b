package vswitch

import "context"

// Checkpointer is the switch control API an orchestrator uses to cut a
// consistent checkpoint of an experiment's network together with its
// nodes. The in-process *Switch and the HTTP *Client (talking to
// NewHandler) both implement it, with the same semantics; one conformance
// suite (checkpointer_test.go) runs against both.
//
// # Order of calls
//
// For a checkpoint to epoch E (E greater than every epoch used before on
// this switch, whether that checkpoint completed or was abandoned):
//
//  1. BeginCheckpoint(E) on every switch instance of the experiment (all
//     instances joined by trunks take part in every checkpoint).
//  2. For each node: FreezePort(port) just before pausing the node,
//     pause it, then PortCheckpointed(port) once it is paused. FreezePort
//     is optional; PortCheckpointed is required for every node port.
//  3. EndCheckpoint on every instance; save each returned Log with the
//     nodes' state.
//  4. Either Resume (the experiment continues where it was: every frame
//     logged or held is delivered, in order), or, after the nodes were
//     restored from that checkpoint, Restore(log) on a switch with the same
//     ports, then Resume.
//
// Abandoning a checkpoint: Resume at any point after BeginCheckpoint
// (before or after a failed EndCheckpoint, e.g. because a node failed to
// save) brings the switch back to forwarding with nothing lost: frames
// logged as in flight and frames held back are delivered, in order, as
// after a completed checkpoint. The epoch E is used up: the next
// checkpoint needs a greater one.
//
// Status reports where the switch is in this sequence, so an orchestrator
// that restarts can find out what to do next.
//
// # Idempotency
//
// Every call may be repeated with the same arguments, in particular after a
// call whose outcome is unknown (cancelled context, lost HTTP reply):
// BeginCheckpoint(E) while checkpointing to E, FreezePort and
// PortCheckpointed of a port already frozen or checkpointed succeed again
// (FreezePort waits again for the node to take what was written);
// EndCheckpoint after it succeeded returns the same log again, until
// Resume or Restore; Restore(log) after Restore replaces the state with the
// log again. Resume is the exception: once the switch is forwarding
// normally (StateIdle), Resume reports ErrCheckpoint, which after a repeated
// Resume means that the first one took effect.
//
// # Errors
//
// Errors keep their identity across HTTP (errors.Is works on what the
// Client returns):
//   - ErrCheckpoint: the call is not allowed in the current state (see
//     Status), or the epoch does not increase. Nothing changed.
//   - ErrUnknownPort: the port (or a port named in a log) is not attached,
//     or is a trunk where a node port is required. Nothing changed.
//   - ErrCorruptLog: Restore got a damaged log. Nothing changed.
//   - ErrInFlightLimit, ErrTrunkGap: EndCheckpoint cannot produce a complete
//     log (too many frames in flight; a UDP trunk lost frames). The
//     checkpoint stays in progress; abandon it with Resume.
//   - ErrClosed: the switch, or the port, is closed.
//   - A context error (errors.Is(err, context.Canceled) or
//     context.DeadlineExceeded), or a transport error from the Client: the
//     call ended early; see below.
//
// # Cancellation
//
// Calls block until they took effect, bounded by ctx. A call that returns
// because ctx ended may have taken effect partly or fully: a cut
// (FreezePort) takes effect even if the wait for the node to take what was
// written ends; PortCheckpointed has not marked the port checkpointed;
// BeginCheckpoint, Restore and Resume may have reached some ports and not
// others. In every case the switch state stays one that the same call
// completes when repeated, and that Resume can abandon. A Client call whose
// context ends also ends the server's handler through its request context.
type Checkpointer interface {
	// BeginCheckpoint starts a checkpoint to epoch, which must be greater
	// than every epoch this switch used before.
	BeginCheckpoint(ctx context.Context, epoch uint64) error
	// FreezePort cuts the port's receive side (nothing more is written to
	// it until Resume) and waits until the node took what was written
	// before, on ports that can tell (OutputDrainer).
	FreezePort(ctx context.Context, port string) error
	// PortCheckpointed tells the switch that the node behind port is
	// paused: the switch reads what the node sent before it stopped and
	// moves the port to the checkpoint's epoch.
	PortCheckpointed(ctx context.Context, port string) error
	// EndCheckpoint waits for every trunk peer's end of the epoch and
	// returns the in-flight log. Every node port must be checkpointed.
	EndCheckpoint(ctx context.Context) (*Log, error)
	// Restore loads a log saved by EndCheckpoint, after the nodes were
	// restored from the same checkpoint; allowed when idle, after
	// EndCheckpoint or after Restore. Nothing is delivered until Resume.
	Restore(ctx context.Context, lg *Log) error
	// Resume replays the log (and frames held back) and forwards again; it
	// ends a checkpoint, a restore, or abandons a checkpoint in progress.
	Resume(ctx context.Context) error
	// Status reports the switch's checkpoint state.
	Status(ctx context.Context) (Status, error)
}

var (
	_ Checkpointer = (*Switch)(nil)
	_ Checkpointer = (*Client)(nil)
)

// State is where a switch is in the checkpoint sequence.
type State string

const (
	// StateIdle: forwarding, no checkpoint in progress. Allowed:
	// BeginCheckpoint, Restore.
	StateIdle State = "idle"
	// StateCheckpointing: BeginCheckpoint was called. Allowed:
	// BeginCheckpoint (same epoch), FreezePort, PortCheckpointed,
	// EndCheckpoint, Resume (abandons).
	StateCheckpointing State = "checkpointing"
	// StateCheckpointed: EndCheckpoint returned the log; nothing is
	// delivered. Allowed: EndCheckpoint (same log), Restore, Resume.
	StateCheckpointed State = "checkpointed"
	// StateRestored: Restore loaded a log; nothing is delivered. Allowed:
	// Restore, Resume.
	StateRestored State = "restored"
)

// Status is a switch's checkpoint state.
type Status struct {
	// Epoch is the epoch of the last completed (or abandoned) checkpoint or
	// restore.
	Epoch uint64 `json:"epoch"`
	// Target is the epoch of the checkpoint in progress (0 if none).
	Target uint64 `json:"target,omitempty"`
	State  State  `json:"state"`
}
