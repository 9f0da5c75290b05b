package vswitch

import (
	"errors"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mmsghdr is struct mmsghdr; Go's alignment pads it like C's.
type mmsghdr struct {
	Hdr unix.Msghdr
	Len uint32
}

// mmsgConn moves batches of datagrams through a pollable socket with
// recvmmsg and sendmmsg. Every buffer and the closures passed to the raw
// connection are allocated once: a batch costs no allocation.
//
// Each datagram may have a fixed-size prefix (a trunk header): on receive it
// lands in the frame's headroom, on send it comes from hdrs.
type mmsgConn struct {
	rc     syscall.RawConn
	prefix int

	// Receive side, used by one goroutine.
	rhdrs  []mmsghdr
	riov   []unix.Iovec
	rfs    []*Frame
	rn     int
	rerr   error
	readFn func(fd uintptr) bool

	// Send side, used by one goroutine.
	whdrs   []mmsghdr
	wiov    []unix.Iovec
	Hdrs    [][]byte // per-message prefix, len prefix each
	wcount  int
	wsent   int
	werr    error
	writeFn func(fd uintptr) bool
	name    []byte // destination address for unconnected sockets
}

func newMmsgConn(rc syscall.RawConn, batch, prefix int) *mmsgConn {
	c := &mmsgConn{
		rc:     rc,
		prefix: prefix,
		rhdrs:  make([]mmsghdr, batch),
		riov:   make([]unix.Iovec, batch),
		whdrs:  make([]mmsghdr, batch),
		wiov:   make([]unix.Iovec, 2*batch),
		Hdrs:   make([][]byte, batch),
	}
	for i := range c.Hdrs {
		c.Hdrs[i] = make([]byte, prefix)
	}
	c.readFn = c.doRead
	c.writeFn = c.doWrite
	return c
}

// setName sets the destination of every datagram sent (unconnected sockets).
func (c *mmsgConn) setName(sa []byte) { c.name = sa }

// read receives up to len(fs) datagrams; it blocks until at least one is
// available (honouring the connection's deadline). Lengths include the
// prefix: the caller calls parse for each.
func (c *mmsgConn) read(fs []*Frame) (int, error) {
	n := min(len(fs), len(c.rhdrs))
	c.rfs = fs[:n]
	for i, f := range c.rfs {
		c.riov[i].Base = &f.buf[headroom-c.prefix]
		c.riov[i].SetLen(c.prefix + MaxFrameLen)
		h := &c.rhdrs[i].Hdr
		*h = unix.Msghdr{}
		h.Iov = &c.riov[i]
		h.SetIovlen(1)
	}
	c.rn, c.rerr = 0, nil
	err := c.rc.Read(c.readFn)
	c.rfs = nil
	if err != nil {
		return 0, err
	}
	return c.rn, c.rerr
}

func (c *mmsgConn) doRead(fd uintptr) bool {
	r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&c.rhdrs[0])), uintptr(len(c.rfs)), unix.MSG_DONTWAIT, 0, 0)
	switch e {
	case 0:
		c.rn = int(r)
		return true
	case unix.EAGAIN, unix.EINTR:
		return false
	default:
		c.rerr = e
		return true
	}
}

// msgLen returns the length of received datagram i and whether it was
// truncated.
func (c *mmsgConn) msgLen(i int) (int, bool) {
	return int(c.rhdrs[i].Len), c.rhdrs[i].Hdr.Flags&unix.MSG_TRUNC != 0
}

// write sends fs (with c.Hdrs[i] as prefix of datagram i when prefix > 0).
// It stops at the first hard error and returns how many were sent.
func (c *mmsgConn) write(fs []*Frame) (int, error) {
	n := min(len(fs), len(c.whdrs))
	for i, f := range fs[:n] {
		h := &c.whdrs[i].Hdr
		*h = unix.Msghdr{}
		iov := c.wiov[2*i : 2*i+2]
		k := 0
		if c.prefix > 0 {
			iov[0].Base = &c.Hdrs[i][0]
			iov[0].SetLen(c.prefix)
			k++
		}
		b := f.Bytes()
		iov[k].Base = &b[0]
		iov[k].SetLen(len(b))
		k++
		h.Iov = &iov[0]
		h.SetIovlen(k)
		if c.name != nil {
			h.Name = &c.name[0]
			h.Namelen = uint32(len(c.name))
		}
	}
	c.wcount, c.wsent, c.werr = n, 0, nil
	if err := c.rc.Write(c.writeFn); err != nil {
		return c.wsent, err
	}
	return c.wsent, c.werr
}

func (c *mmsgConn) doWrite(fd uintptr) bool {
	for c.wsent < c.wcount {
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&c.whdrs[c.wsent])), uintptr(c.wcount-c.wsent), unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
			c.wsent += int(r)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			c.werr = e
			return true
		}
	}
	return true
}

// ioctlInt runs an int-returning ioctl (SIOCINQ, SIOCOUTQ) on the socket.
func ioctlInt(rc syscall.RawConn, req uint) (int, error) {
	var v int
	var err error
	if cerr := rc.Control(func(fd uintptr) { v, err = unix.IoctlGetInt(int(fd), req) }); cerr != nil {
		return 0, cerr
	}
	return v, err
}

func isConnRefused(err error) bool {
	return errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.ENOENT)
}

// writeEmpty sends one datagram consisting of Hdrs[0] only.
func (c *mmsgConn) writeEmpty() (int, error) {
	h := &c.whdrs[0].Hdr
	*h = unix.Msghdr{}
	c.wiov[0].Base = &c.Hdrs[0][0]
	c.wiov[0].SetLen(c.prefix)
	h.Iov = &c.wiov[0]
	h.SetIovlen(1)
	if c.name != nil {
		h.Name = &c.name[0]
		h.Namelen = uint32(len(c.name))
	}
	c.wcount, c.wsent, c.werr = 1, 0, nil
	if err := c.rc.Write(c.writeFn); err != nil {
		return c.wsent, err
	}
	return c.wsent, c.werr
}
