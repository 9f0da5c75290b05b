package vswitch

import (
	"encoding/binary"
	"fmt"
	"net"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The UDP trunk header, big-endian, in front of every datagram:
//
//	magic u16 0x5354 ("ST") | version u8 (1) | kind u8 (0 frame, 1 marker) |
//	vlan u16 | reserved u16 | epoch u64 | seq u64
//
// A frame datagram carries the Ethernet frame after the header; epoch is
// its sender's epoch and seq numbers frames 1, 2, ... per direction. A
// marker (no payload) says the sender switch has finished epoch: it will
// send no more frames of an older epoch; seq is the last frame sent before
// it, so the receiver can tell whether it missed any.
const (
	trunkHdrLen  = 24
	trunkMagic   = 0x5354
	trunkVersion = 1
	trunkFrame   = 0
	trunkMarker  = 1
)

// UDPTrunk joins two switch instances on different hosts over UDP. Both
// ends must be attached with Mode Trunk.
type UDPTrunk struct {
	conn *net.UDPConn
	mm   *mmsgConn

	seq      uint64 // last frame sent; writer goroutine
	nextSeq  uint64 // reader goroutine
	gapCount atomic.Uint64
	bad      atomic.Uint64
	markers  markerRelay
}

// markerRelay passes a trunk's end-of-epoch markers to the switch in order
// with the frames. The switch forwards a batch only after ReadBatch has
// returned it, so a marker read behind frames of the same batch is held and
// passed on at the start of the next ReadBatch call, once the switch has
// forwarded those frames. Passed on at once, it could let EndCheckpoint
// collect a port's log before the peer's last frames of the epoch reached
// that port: they would be logged too late for the saved log, and a restore
// would lose them. Used by the reader goroutine only.
type markerRelay struct {
	fn      func(epoch uint64)
	pending uint64 // highest marker held back; 0 if none
}

// arrived handles a marker read behind `behind` frames of the current
// batch.
func (r *markerRelay) arrived(epoch uint64, behind int) {
	if behind > 0 {
		r.pending = max(r.pending, epoch)
		return
	}
	r.flush()
	if r.fn != nil {
		r.fn(epoch)
	}
}

// flush passes on a held marker; ReadBatch calls it first.
func (r *markerRelay) flush() {
	if e := r.pending; e != 0 {
		r.pending = 0
		if r.fn != nil {
			r.fn(e)
		}
	}
}

// DialUDPTrunk opens a trunk from laddr to the peer switch at raddr.
func DialUDPTrunk(laddr, raddr *net.UDPAddr) (*UDPTrunk, error) {
	c, err := net.DialUDP("udp", laddr, raddr)
	if err != nil {
		return nil, fmt.Errorf("vswitch: trunk to %v: %w", raddr, err)
	}
	return NewUDPTrunk(c)
}

// NewUDPTrunkTo makes a trunk of an unconnected UDP socket (as from
// net.ListenUDP) that sends to peer. The trunk owns conn.
func NewUDPTrunkTo(conn *net.UDPConn, peer *net.UDPAddr) (*UDPTrunk, error) {
	var sa []byte
	if ip4 := peer.IP.To4(); ip4 != nil && conn.LocalAddr().(*net.UDPAddr).IP.To4() != nil {
		var r unix.RawSockaddrInet4
		r.Family = unix.AF_INET
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&r.Port))[:], uint16(peer.Port))
		copy(r.Addr[:], ip4)
		sa = append(sa, unsafe.Slice((*byte)(unsafe.Pointer(&r)), unsafe.Sizeof(r))...)
	} else {
		var r unix.RawSockaddrInet6
		r.Family = unix.AF_INET6
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&r.Port))[:], uint16(peer.Port))
		copy(r.Addr[:], peer.IP.To16())
		sa = append(sa, unsafe.Slice((*byte)(unsafe.Pointer(&r)), unsafe.Sizeof(r))...)
	}
	t, err := NewUDPTrunk(conn)
	if err != nil {
		return nil, err
	}
	t.mm.setName(sa)
	return t, nil
}

// NewUDPTrunk makes a trunk of a UDP socket connected to the peer. The
// trunk owns conn.
func NewUDPTrunk(conn *net.UDPConn) (*UDPTrunk, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	// Room for bursts: a checkpoint must not lose frames to a full buffer.
	_ = conn.SetReadBuffer(8 << 20)
	_ = conn.SetWriteBuffer(8 << 20)
	t := &UDPTrunk{conn: conn, mm: newMmsgConn(rc, 256, trunkHdrLen), nextSeq: 1}
	return t, nil
}

// LocalAddr returns the trunk's local address.
func (t *UDPTrunk) LocalAddr() *net.UDPAddr { return t.conn.LocalAddr().(*net.UDPAddr) }

// ReadBatch implements Port.
func (t *UDPTrunk) ReadBatch(fs []*Frame) (int, error) {
	t.markers.flush()
	for {
		n, err := t.mm.read(fs)
		if err != nil {
			if isConnRefused(err) {
				continue // the peer is not up yet
			}
			return 0, err
		}
		out := 0
		for i := 0; i < n; i++ {
			f := fs[i]
			ln, trunc := t.mm.msgLen(i)
			h := f.buf[headroom-trunkHdrLen : headroom]
			if trunc || ln < trunkHdrLen || binary.BigEndian.Uint16(h) != trunkMagic || h[2] != trunkVersion {
				t.bad.Add(1)
				continue
			}
			epoch, seq := binary.BigEndian.Uint64(h[8:]), binary.BigEndian.Uint64(h[16:])
			if h[3] == trunkMarker {
				if seq != t.nextSeq-1 && seq != 0 {
					t.gapCount.Add(1)
				}
				t.markers.arrived(epoch, out)
				continue
			}
			if seq != t.nextSeq && seq != 1 { // 1: the peer restarted
				t.gapCount.Add(1)
			}
			t.nextSeq = seq + 1
			vlan := binary.BigEndian.Uint16(h[4:])
			// Compact: frames are returned in fs[:out] in order.
			if out != i {
				fs[out], fs[i] = fs[i], fs[out]
			}
			g := fs[out]
			g.SetLen(ln - trunkHdrLen)
			g.VLAN, g.Epoch = vlan, epoch
			out++
		}
		if out > 0 {
			return out, nil
		}
	}
}

// WriteBatch implements Port.
func (t *UDPTrunk) WriteBatch(fs []*Frame) (int, error) {
	sent := 0
	for len(fs) > 0 {
		chunk := fs[:min(len(fs), len(t.mm.Hdrs))]
		for i, f := range chunk {
			t.seq++
			putTrunkHdr(t.mm.Hdrs[i], trunkFrame, f.VLAN, f.Epoch, t.seq)
		}
		n, err := t.mm.write(chunk)
		sent += n
		if err != nil {
			// Frames not sent keep no sequence number.
			t.seq -= uint64(len(chunk) - n)
			return sent, err
		}
		fs = fs[n:]
	}
	return sent, nil
}

func putTrunkHdr(h []byte, kind byte, vlan uint16, epoch, seq uint64) {
	binary.BigEndian.PutUint16(h, trunkMagic)
	h[2], h[3] = trunkVersion, kind
	binary.BigEndian.PutUint16(h[4:], vlan)
	binary.BigEndian.PutUint16(h[6:], 0)
	binary.BigEndian.PutUint64(h[8:], epoch)
	binary.BigEndian.PutUint64(h[16:], seq)
}

func (t *UDPTrunk) sendMarker(epoch uint64) error {
	// A marker is a header without payload.
	putTrunkHdr(t.mm.Hdrs[0], trunkMarker, 0, epoch, t.seq)
	_, err := t.mm.writeEmpty()
	return err
}

func (t *UDPTrunk) setMarkerFunc(f func(uint64)) { t.markers.fn = f }
func (t *UDPTrunk) gaps() uint64                 { return t.gapCount.Load() }

// BadDatagrams counts datagrams dropped for a bad header.
func (t *UDPTrunk) BadDatagrams() uint64 { return t.bad.Load() }

// SetReadDeadline implements Port.
func (t *UDPTrunk) SetReadDeadline(tm time.Time) error { return t.conn.SetReadDeadline(tm) }

// Close implements Port.
func (t *UDPTrunk) Close() error { return t.conn.Close() }
