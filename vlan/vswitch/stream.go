package vswitch

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// StreamPort is the switch end of a QEMU stream netdev over a unix socket:
// every frame is preceded by its length as a 4-byte big-endian integer. The
// port listens; QEMU connects:
//
//	-netdev stream,id=n0,server=off,addr.type=unix,addr.path=PATH
//
// (-netdev socket uses the same framing.) When the connection drops, as when
// QEMU is killed for a swapout, the port waits for the next one: a restored
// QEMU connects to the same path. Frames written while no peer is connected
// are lost (counted as write errors); the checkpoint protocol writes nothing
// to a frozen port, and Resume waits for the peer (ConnWaiter).
type StreamPort struct {
	ln   *net.UnixListener
	path string

	conn     atomic.Pointer[net.UnixConn]
	connRC   atomic.Pointer[syscall.RawConn]
	mu       sync.Mutex // guards deadline and connected
	deadline time.Time
	connCh   chan struct{} // closed and replaced when a peer connects

	// Reader goroutine only.
	rbuf    []byte
	r, w    int
	rconn   *net.UnixConn
	badLens atomic.Uint64
	closed  atomic.Bool

	// Writer goroutine only.
	wbuf []byte
}

// ListenStream creates the socket at path (removing a stale one) and
// returns a port that accepts one peer at a time.
func ListenStream(path string) (*StreamPort, error) {
	_ = os.Remove(path)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("vswitch: stream port: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	return &StreamPort{
		ln:     ln,
		path:   path,
		connCh: make(chan struct{}),
		rbuf:   make([]byte, 256<<10),
		wbuf:   make([]byte, 0, 256<<10),
	}, nil
}

// Path returns the socket path QEMU connects to.
func (p *StreamPort) Path() string { return p.path }

// WaitConnected implements ConnWaiter.
func (p *StreamPort) WaitConnected(ctx context.Context) error {
	for {
		p.mu.Lock()
		ch := p.connCh
		p.mu.Unlock()
		if p.conn.Load() != nil {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("%w: %s: %w", ErrNotConnected, p.path, ctx.Err())
		}
	}
}

// accept waits for a peer (honouring the read deadline).
func (p *StreamPort) accept() error {
	p.mu.Lock()
	_ = p.ln.SetDeadline(p.deadline)
	p.mu.Unlock()
	c, err := p.ln.AcceptUnix()
	if err != nil {
		return err
	}
	_ = c.SetWriteBuffer(1 << 20)
	_ = c.SetReadBuffer(1 << 20)
	rc, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return err
	}
	p.mu.Lock()
	_ = c.SetReadDeadline(p.deadline)
	p.rconn = c
	p.connRC.Store(&rc)
	p.conn.Store(c)
	close(p.connCh)
	p.connCh = make(chan struct{})
	p.mu.Unlock()
	return nil
}

func (p *StreamPort) dropConn() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.rconn != nil {
		p.rconn.Close()
	}
	p.conn.Store(nil)
	p.connRC.Store(nil)
	p.rconn = nil
	p.r, p.w = 0, 0
}

// ReadBatch implements Port.
func (p *StreamPort) ReadBatch(fs []*Frame) (int, error) {
	for {
		n := p.parse(fs)
		if n > 0 {
			return n, nil
		}
		if p.rconn == nil {
			if err := p.accept(); err != nil {
				if !p.closed.Load() && !errors.Is(err, os.ErrDeadlineExceeded) {
					time.Sleep(10 * time.Millisecond) // e.g. EMFILE: do not spin
				}
				return 0, err
			}
			continue
		}
		if p.r > 0 { // compact
			p.w = copy(p.rbuf, p.rbuf[p.r:p.w])
			p.r = 0
		}
		m, err := p.rconn.Read(p.rbuf[p.w:])
		p.w += m
		if err != nil && m == 0 {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return 0, err
			}
			if errors.Is(err, net.ErrClosed) && p.closed.Load() {
				return 0, err
			}
			// EOF or a broken connection: wait for the next peer.
			p.dropConn()
		}
	}
}

// parse takes complete frames from the buffer.
func (p *StreamPort) parse(fs []*Frame) int {
	n := 0
	for n < len(fs) && p.w-p.r >= 4 {
		ln := int(binary.BigEndian.Uint32(p.rbuf[p.r:]))
		if ln > MaxFrameLen || ln == 0 {
			// The framing is lost: drop the connection.
			p.badLens.Add(1)
			p.dropConn()
			return n
		}
		if p.w-p.r < 4+ln {
			break
		}
		fs[n].SetLen(copy(fs[n].Space(), p.rbuf[p.r+4:p.r+4+ln]))
		p.r += 4 + ln
		n++
	}
	return n
}

// InputBuffered implements InputDrainer: bytes in the port's buffer and in
// the socket.
func (p *StreamPort) InputBuffered() (int, error) {
	n := p.w - p.r
	if rc := p.connRC.Load(); rc != nil {
		k, err := ioctlInt(*rc, unix.SIOCINQ)
		if err != nil {
			return 0, err
		}
		n += k
	}
	return n, nil
}

// Unconsumed implements OutputDrainer: bytes written that QEMU has not read.
func (p *StreamPort) Unconsumed() (int, error) {
	rc := p.connRC.Load()
	if rc == nil {
		return 0, nil
	}
	return ioctlInt(*rc, unix.SIOCOUTQ)
}

// WriteBatch implements Port.
func (p *StreamPort) WriteBatch(fs []*Frame) (int, error) {
	c := p.conn.Load()
	if c == nil {
		return 0, fmt.Errorf("%w: %s", ErrNotConnected, p.path)
	}
	b := p.wbuf[:0]
	for _, f := range fs {
		b = binary.BigEndian.AppendUint32(b, uint32(f.n))
		b = append(b, f.Bytes()...)
	}
	p.wbuf = b[:0]
	if _, err := c.Write(b); err != nil {
		return 0, err
	}
	return len(fs), nil
}

// SetReadDeadline implements Port.
func (p *StreamPort) SetReadDeadline(t time.Time) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.deadline = t
	if p.rconn != nil {
		_ = p.rconn.SetReadDeadline(t)
	}
	return p.ln.SetDeadline(t)
}

// Close implements Port.
func (p *StreamPort) Close() error {
	p.closed.Store(true)
	err := p.ln.Close()
	if c := p.conn.Load(); c != nil {
		c.Close()
	}
	return err
}

var _ io.Closer = (*StreamPort)(nil)
