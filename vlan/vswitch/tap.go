package vswitch

import (
	"fmt"
	"os"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TapPort is a tap device whose character-device side belongs to the
// switch; the kernel side is an ordinary network interface (bring it up,
// move it into a node's namespace, or give it to a bridge). Frames carry no
// packet-information header (IFF_TAP|IFF_NO_PI).
type TapPort struct {
	f    *os.File
	rc   syscall.RawConn
	name string

	rfs    []*Frame
	rn     int
	rerr   error
	readFn func(uintptr) bool

	wfs     []*Frame
	wn      int
	werr    error
	writeFn func(uintptr) bool
}

// OpenTap creates (or attaches to) the tap device name. The device goes
// away when the port is closed unless it was made persistent elsewhere.
func OpenTap(name string) (*TapPort, error) {
	if len(name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("vswitch: tap name %q longer than %d bytes", name, unix.IFNAMSIZ-1)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("vswitch: open /dev/net/tun: %w", err)
	}
	var ifr [unix.IFNAMSIZ + 64]byte
	copy(ifr[:], name)
	*(*uint16)(unsafe.Pointer(&ifr[unix.IFNAMSIZ])) = unix.IFF_TAP | unix.IFF_NO_PI
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&ifr[0]))); e != 0 {
		unix.Close(fd)
		return nil, fmt.Errorf("vswitch: TUNSETIFF %s: %w", name, e)
	}
	f := os.NewFile(uintptr(fd), "/dev/net/tun")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	t := &TapPort{f: f, rc: rc, name: name}
	t.readFn = t.doRead
	t.writeFn = t.doWrite
	return t, nil
}

// Name returns the interface name.
func (t *TapPort) Name() string { return t.name }

// ReadBatch implements Port: one read per frame, as many as are ready.
func (t *TapPort) ReadBatch(fs []*Frame) (int, error) {
	t.rfs, t.rn, t.rerr = fs, 0, nil
	err := t.rc.Read(t.readFn)
	t.rfs = nil
	if err != nil {
		return 0, err
	}
	if t.rn == 0 {
		return 0, t.rerr
	}
	return t.rn, nil
}

func (t *TapPort) doRead(fd uintptr) bool {
	for t.rn < len(t.rfs) {
		f := t.rfs[t.rn]
		n, err := unix.Read(int(fd), f.Space())
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return t.rn > 0
		case err != nil:
			t.rerr = err
			return true
		}
		f.SetLen(n)
		t.rn++
	}
	return true
}

// WriteBatch implements Port.
func (t *TapPort) WriteBatch(fs []*Frame) (int, error) {
	t.wfs, t.wn, t.werr = fs, 0, nil
	err := t.rc.Write(t.writeFn)
	t.wfs = nil
	if err == nil {
		err = t.werr
	}
	return t.wn, err
}

func (t *TapPort) doWrite(fd uintptr) bool {
	for t.wn < len(t.wfs) {
		_, err := unix.Write(int(fd), t.wfs[t.wn].Bytes())
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return false
		case err == unix.EIO:
			// The interface is down: the kernel drops the frame.
			t.wn++
			continue
		case err != nil:
			t.werr = err
			return true
		}
		t.wn++
	}
	return true
}

// SetReadDeadline implements Port.
func (t *TapPort) SetReadDeadline(tm time.Time) error { return t.f.SetReadDeadline(tm) }

// Close implements Port.
func (t *TapPort) Close() error { return t.f.Close() }
