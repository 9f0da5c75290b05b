package vswitch

import (
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DgramPort is the switch end of a QEMU datagram netdev over unix sockets,
// one frame per datagram:
//
//	-netdev dgram,id=n0,local.type=unix,local.path=VM.sock,remote.type=unix,remote.path=SWITCH.sock
//
// The port binds SWITCH.sock (localPath) and sends to VM.sock (peerPath).
// Frames sent while QEMU is not running are lost (counted as write errors).
type DgramPort struct {
	conn *net.UnixConn
	rc   syscall.RawConn
	mm   *mmsgConn
	path string
}

// NewDgramPort binds localPath (removing a stale socket file) and sends to
// peerPath.
func NewDgramPort(localPath, peerPath string) (*DgramPort, error) {
	if len(peerPath) >= len(unix.RawSockaddrUnix{}.Path) {
		return nil, fmt.Errorf("vswitch: dgram peer path %q too long", peerPath)
	}
	_ = os.Remove(localPath)
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: localPath, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("vswitch: dgram port: %w", err)
	}
	_ = conn.SetReadBuffer(4 << 20)
	_ = conn.SetWriteBuffer(4 << 20)
	rc, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, err
	}
	var sa unix.RawSockaddrUnix
	sa.Family = unix.AF_UNIX
	for i := 0; i < len(peerPath); i++ {
		sa.Path[i] = int8(peerPath[i])
	}
	name := unsafe.Slice((*byte)(unsafe.Pointer(&sa)), 2+len(peerPath)+1)
	p := &DgramPort{conn: conn, rc: rc, mm: newMmsgConn(rc, 64, 0), path: localPath}
	p.mm.setName(append([]byte(nil), name...))
	return p, nil
}

// ReadBatch implements Port.
func (p *DgramPort) ReadBatch(fs []*Frame) (int, error) { return readFrames(p.mm, fs) }

// WriteBatch implements Port.
func (p *DgramPort) WriteBatch(fs []*Frame) (int, error) { return writeFrames(p.mm, fs) }

// InputBuffered implements InputDrainer.
func (p *DgramPort) InputBuffered() (int, error) {
	return ioctlInt(p.rc, unix.SIOCINQ)
}

// Unconsumed implements OutputDrainer.
func (p *DgramPort) Unconsumed() (int, error) {
	return ioctlInt(p.rc, unix.SIOCOUTQ)
}

// SetReadDeadline implements Port.
func (p *DgramPort) SetReadDeadline(t time.Time) error { return p.conn.SetReadDeadline(t) }

// Close implements Port.
func (p *DgramPort) Close() error {
	err := p.conn.Close()
	_ = os.Remove(p.path)
	return err
}

// readFrames is ReadBatch for a port that carries one bare frame per
// datagram (no prefix): DgramPort and PacketPort. It blocks until at least
// one frame arrived, drops empty and truncated datagrams, and returns the
// frames in fs[:n] in order. It allocates nothing.
func readFrames(mm *mmsgConn, fs []*Frame) (int, error) {
	for {
		n, err := mm.read(fs)
		if err != nil {
			return 0, err
		}
		out := 0
		for i := 0; i < n; i++ {
			ln, trunc := mm.msgLen(i)
			if trunc || ln == 0 {
				continue
			}
			if out != i {
				fs[out], fs[i] = fs[i], fs[out]
			}
			fs[out].SetLen(ln)
			out++
		}
		if out > 0 {
			return out, nil
		}
	}
}

// writeFrames is WriteBatch for a port that carries one bare frame per
// datagram: it sends all of fs, a batch at a time, and stops at the first
// error, returning how many were sent. It allocates nothing.
func writeFrames(mm *mmsgConn, fs []*Frame) (int, error) {
	sent := 0
	for len(fs) > 0 {
		n, err := mm.write(fs)
		sent += n
		if err != nil {
			return sent, err
		}
		fs = fs[n:]
	}
	return sent, nil
}
