package vswitch

import (
	"encoding/binary"
	"sync/atomic"
)

const (
	frameBufSize = 2048
	// headroom is reserved in front of every frame so that a trunk header
	// can be read into the same buffer, in front of the frame.
	headroom = 64
	// MaxFrameLen is the longest Ethernet frame (without FCS) a port can
	// carry; ports drop and count longer ones.
	MaxFrameLen = frameBufSize - headroom
	// minFrameLen is an Ethernet header: destination, source, type.
	minFrameLen = 14
)

// Frame is one Ethernet frame in a fixed-size buffer. Frames come from the
// switch's free list; a Port fills them in ReadBatch and must not keep or
// modify them after WriteBatch returns (a flooded frame is shared by all the
// ports it goes to).
type Frame struct {
	buf [frameBufSize]byte
	off int
	n   int
	// VLAN is the frame's VLAN id (1..4094). Trunk ports that carry it set
	// it on read; the switch sets it for access ports.
	VLAN uint16
	// Epoch is the checkpoint epoch of the frame's sender. Epoch-carrying
	// trunks set it on read; the switch sets it for every other port.
	Epoch uint64

	src  int32 // ingress port id
	refs atomic.Int32
}

// Bytes returns the frame's contents.
func (f *Frame) Bytes() []byte { return f.buf[f.off : f.off+f.n] }

// Len returns the frame's length in bytes.
func (f *Frame) Len() int { return f.n }

// Space returns the buffer a port reads a frame into (MaxFrameLen bytes);
// call SetLen with the number of bytes read.
func (f *Frame) Space() []byte { return f.buf[headroom:] }

// SetLen sets the frame to the first n bytes of Space.
func (f *Frame) SetLen(n int) {
	f.off = headroom
	f.n = n
}

// SetBytes copies b into the frame; it reports false when b is longer than
// MaxFrameLen.
func (f *Frame) SetBytes(b []byte) bool {
	if len(b) > MaxFrameLen {
		return false
	}
	f.SetLen(copy(f.buf[headroom:], b))
	return true
}

func (f *Frame) dst() uint64 { return mac48(f.buf[f.off:]) }
func (f *Frame) srcMAC() uint64 {
	return mac48(f.buf[f.off+6:])
}

func mac48(b []byte) uint64 {
	_ = b[5]
	return uint64(binary.BigEndian.Uint16(b))<<32 | uint64(binary.BigEndian.Uint32(b[2:]))
}

// isGroup reports whether a MAC (as from mac48) is broadcast or multicast.
func isGroup(mac uint64) bool { return mac&(1<<40) != 0 }

const (
	etherTypeVLAN = 0x8100
)

// stripTag removes an 802.1Q tag in place and returns its VLAN id, or 0 if
// the frame carries no tag.
func (f *Frame) stripTag() uint16 {
	b := f.buf[f.off : f.off+f.n]
	if len(b) < minFrameLen+4 || binary.BigEndian.Uint16(b[12:]) != etherTypeVLAN {
		return 0
	}
	vid := binary.BigEndian.Uint16(b[14:]) & 0x0fff
	copy(f.buf[f.off+4:f.off+16], f.buf[f.off:f.off+12])
	f.off += 4
	f.n -= 4
	return vid
}

// copyTagged writes src with an 802.1Q tag for vlan into f.
func (f *Frame) copyTagged(src *Frame, vlan uint16) bool {
	b := src.Bytes()
	if len(b)+4 > MaxFrameLen || len(b) < 12 {
		return false
	}
	d := f.buf[headroom:]
	copy(d, b[:12])
	binary.BigEndian.PutUint16(d[12:], etherTypeVLAN)
	binary.BigEndian.PutUint16(d[14:], vlan&0x0fff)
	copy(d[16:], b[12:])
	f.SetLen(len(b) + 4)
	f.VLAN, f.Epoch = src.VLAN, src.Epoch
	return true
}

// framePool is a free list of frames. get never fails: when the list is
// empty it allocates (counted), and put drops frames the list has no room
// for, so the steady state recycles a bounded set of buffers.
type framePool struct {
	free   chan *Frame
	allocs atomic.Uint64
}

func newFramePool(n int) *framePool {
	p := &framePool{free: make(chan *Frame, n)}
	for i := 0; i < n; i++ {
		p.free <- new(Frame)
	}
	return p
}

func (p *framePool) get() *Frame {
	var f *Frame
	select {
	case f = <-p.free:
	default:
		p.allocs.Add(1)
		f = new(Frame)
	}
	f.off, f.n, f.VLAN, f.Epoch, f.src = headroom, 0, 0, 0, -1
	f.refs.Store(1)
	return f
}

// release drops one reference; the last one returns the frame to the list.
func (p *framePool) release(f *Frame) {
	if f.refs.Add(-1) != 0 {
		return
	}
	select {
	case p.free <- f:
	default:
	}
}
