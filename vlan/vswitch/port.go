package vswitch

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Port is one attachment of the switch: a VM's NIC, a kernel interface or a
// trunk to another switch.
//
// The switch calls ReadBatch from one goroutine and WriteBatch from another,
// concurrently; SetReadDeadline and Close may be called from any goroutine.
type Port interface {
	// ReadBatch blocks until at least one frame is available, fills fs[:n]
	// (with Frame.SetLen or SetBytes) and returns n > 0 with a nil error.
	// Otherwise it returns 0 and an error: one wrapping
	// os.ErrDeadlineExceeded when the read deadline passed, net.ErrClosed
	// (or io.EOF) once the port is closed. A timeout proves that the port
	// had no frame buffered at the moment the read gave up, which is what
	// the switch relies on to drain a paused node's output. Frames longer
	// than MaxFrameLen are dropped by the port.
	ReadBatch(fs []*Frame) (int, error)
	// WriteBatch sends fs in order and returns how many were sent; on error
	// the rest are not sent. It must not modify or retain the frames.
	WriteBatch(fs []*Frame) (int, error)
	// SetReadDeadline sets the deadline for the current and future
	// ReadBatch calls; the zero time means none. It wakes a blocked read.
	SetReadDeadline(t time.Time) error
	// Close releases the port; blocked calls return.
	Close() error
}

// OutputDrainer is implemented by ports whose transport buffers frames that
// were written but not yet taken by the peer (sockets). FreezePort waits
// until Unconsumed reports zero.
//
// A port whose transport buffers written frames must implement it when the
// peer is a node that gets checkpointed: a paused node takes nothing more,
// so a frame still buffered when it pauses is in neither the node's snapshot
// nor the switch's log, and a restore loses it. Without OutputDrainer,
// FreezePort assumes that WriteBatch handed the frames to the peer.
type OutputDrainer interface {
	Unconsumed() (int, error)
}

// ConnWaiter is implemented by ports whose peer connects to them (a QEMU
// stream netdev). Resume waits for the peer before it replays frames.
type ConnWaiter interface {
	WaitConnected(ctx context.Context) error
}

// epochCarrier is a trunk to another switch instance: its frames carry
// their VLAN and sender epoch, and it passes end-of-epoch markers in order
// with the frames.
type epochCarrier interface {
	Port
	// sendMarker sends an end-of-epoch marker after every frame already
	// written. Called only from the port's writer goroutine.
	sendMarker(epoch uint64) error
	// setMarkerFunc registers the function the reader calls, in order with
	// the frames, when the peer's marker for an epoch arrives: only once
	// ReadBatch has returned every frame that preceded the marker, and
	// from within a later ReadBatch call than the one that returned the
	// last of them (the switch forwards a batch before it reads the next;
	// see markerRelay).
	setMarkerFunc(func(epoch uint64))
	// gaps counts frames the trunk found missing or out of order.
	gaps() uint64
}

// PortMode says how a port carries VLANs.
type PortMode int

const (
	// Access ports carry untagged frames of one VLAN.
	Access PortMode = iota
	// Trunk ports carry several VLANs: 802.1Q tags on Ethernet ports, the
	// trunk header on UDP trunks.
	Trunk
)

func (m PortMode) String() string {
	switch m {
	case Access:
		return "access"
	case Trunk:
		return "trunk"
	}
	return fmt.Sprintf("PortMode(%d)", int(m))
}

// PortConfig describes how a port is attached.
type PortConfig struct {
	// Name identifies the port in the control API and in the Log; it must
	// be unique within the switch and stable across a restore.
	Name string
	Mode PortMode
	// VLAN is an access port's VLAN, or an Ethernet trunk's native VLAN
	// for untagged frames (0: drop untagged frames).
	VLAN uint16
	// VLANs lists the VLANs a trunk carries; empty means all.
	VLANs []uint16
}

// Validate checks the configuration.
func (c PortConfig) Validate() error {
	if c.Name == "" || len(c.Name) > 255 {
		return fmt.Errorf("vswitch: port name %q: must be 1..255 bytes", c.Name)
	}
	switch c.Mode {
	case Access:
		if c.VLAN < 1 || c.VLAN > 4094 {
			return fmt.Errorf("vswitch: port %s: access VLAN %d out of range 1..4094", c.Name, c.VLAN)
		}
		if len(c.VLANs) != 0 {
			return fmt.Errorf("vswitch: port %s: VLANs is for trunks only", c.Name)
		}
	case Trunk:
		if c.VLAN > 4094 {
			return fmt.Errorf("vswitch: port %s: native VLAN %d out of range 0..4094", c.Name, c.VLAN)
		}
		for _, v := range c.VLANs {
			if v < 1 || v > 4094 {
				return fmt.Errorf("vswitch: port %s: trunk VLAN %d out of range 1..4094", c.Name, v)
			}
		}
	default:
		return fmt.Errorf("vswitch: port %s: unknown mode %v", c.Name, c.Mode)
	}
	return nil
}

// Errors of the switch and its control API.
var (
	ErrUnknownPort   = errors.New("vswitch: unknown port")
	ErrPortExists    = errors.New("vswitch: port already exists")
	ErrClosed        = errors.New("vswitch: switch closed")
	ErrCheckpoint    = errors.New("vswitch: checkpoint protocol violation")
	ErrInFlightLimit = errors.New("vswitch: in-flight frames exceed the configured limit")
	ErrNotConnected  = errors.New("vswitch: port has no connected peer")
	ErrTrunkGap      = errors.New("vswitch: trunk lost or reordered frames during the checkpoint")
)

// InputDrainer is implemented by ports that can tell how much input is
// buffered (in the kernel and in the port) but not yet returned by
// ReadBatch. It is called only from the goroutine that calls ReadBatch.
// PortCheckpointed uses it to prove that a paused node's output is fully
// read; for other ports a read that times out after Config.Probe is taken
// as the proof.
type InputDrainer interface {
	InputBuffered() (int, error)
}
