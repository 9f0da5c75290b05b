package vswitch

import (
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// PacketPort attaches the switch to an existing kernel interface (a veth
// end, a tap that QEMU opened with -netdev tap) through an AF_PACKET
// socket. It reads every frame arriving on the interface and transmits on
// it; frames the interface sends itself are ignored.
type PacketPort struct {
	f  *os.File
	rc syscall.RawConn
	mm *mmsgConn
}

// packetIgnoreOutgoing is PACKET_IGNORE_OUTGOING (Linux 4.20).
const packetIgnoreOutgoing = 23

// OpenPacket opens an AF_PACKET port on the interface named ifname.
func OpenPacket(ifname string) (*PacketPort, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("vswitch: packet port: %w", err)
	}
	proto := htons(unix.ETH_P_ALL)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, int(proto))
	if err != nil {
		return nil, fmt.Errorf("vswitch: packet socket: %w", err)
	}
	fail := func(what string, err error) (*PacketPort, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("vswitch: packet port %s: %s: %w", ifname, what, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, packetIgnoreOutgoing, 1); err != nil {
		return fail("PACKET_IGNORE_OUTGOING", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 8<<20)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
		return fail("bind", err)
	}
	f := os.NewFile(uintptr(fd), "packet:"+ifname)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &PacketPort{f: f, rc: rc, mm: newMmsgConn(rc, 256, 0)}, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// ReadBatch implements Port.
func (p *PacketPort) ReadBatch(fs []*Frame) (int, error) { return readFrames(p.mm, fs) }

// WriteBatch implements Port.
func (p *PacketPort) WriteBatch(fs []*Frame) (int, error) { return writeFrames(p.mm, fs) }

// InputBuffered implements InputDrainer.
func (p *PacketPort) InputBuffered() (int, error) { return ioctlInt(p.rc, unix.SIOCINQ) }

// SetReadDeadline implements Port.
func (p *PacketPort) SetReadDeadline(t time.Time) error { return p.f.SetReadDeadline(t) }

// Close implements Port.
func (p *PacketPort) Close() error { return p.f.Close() }
