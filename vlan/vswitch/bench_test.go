package vswitch

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// genPort produces copies of a template frame, without allocating, until
// it has produced limit frames; then it blocks until closed.
type genPort struct {
	tmpl   []byte
	left   atomic.Int64
	closed chan struct{}
	once   sync.Once
	dl     deadline
}

func newGenPort(tmpl []byte) *genPort {
	return &genPort{tmpl: tmpl, closed: make(chan struct{}), dl: newDeadline()}
}

func (g *genPort) ReadBatch(fs []*Frame) (int, error) {
	for {
		n := int64(len(fs))
		if left := g.left.Load(); left < n {
			n = left
		}
		if n > 0 && g.left.CompareAndSwap(g.left.Load(), g.left.Load()-n) {
			for _, f := range fs[:n] {
				f.SetLen(copy(f.Space(), g.tmpl))
			}
			return int(n), nil
		}
		if n > 0 {
			continue
		}
		select {
		case <-g.closed:
			return 0, net.ErrClosed
		case <-g.dl.wait():
			return 0, os.ErrDeadlineExceeded
		case <-time.After(time.Millisecond):
		}
	}
}

func (g *genPort) WriteBatch(fs []*Frame) (int, error) { return len(fs), nil }
func (g *genPort) SetReadDeadline(t time.Time) error   { g.dl.set(t); return nil }
func (g *genPort) Close() error                        { g.once.Do(func() { close(g.closed) }); return nil }

// sinkPort counts what it is given; it announces its MAC once at start.
type sinkPort struct {
	hello  []byte
	said   atomic.Bool
	count  atomic.Int64
	bytes  atomic.Int64
	closed chan struct{}
	once   sync.Once
	dl     deadline
}

func newSinkPort(hello []byte) *sinkPort {
	return &sinkPort{hello: hello, closed: make(chan struct{}), dl: newDeadline()}
}

func (s *sinkPort) ReadBatch(fs []*Frame) (int, error) {
	if !s.said.Swap(true) {
		fs[0].SetLen(copy(fs[0].Space(), s.hello))
		return 1, nil
	}
	select {
	case <-s.closed:
		return 0, net.ErrClosed
	case <-s.dl.wait():
		return 0, os.ErrDeadlineExceeded
	}
}

func (s *sinkPort) WriteBatch(fs []*Frame) (int, error) {
	var b int64
	for _, f := range fs {
		b += int64(f.n)
	}
	s.bytes.Add(b)
	s.count.Add(int64(len(fs)))
	return len(fs), nil
}
func (s *sinkPort) SetReadDeadline(t time.Time) error { s.dl.set(t); return nil }
func (s *sinkPort) Close() error                      { s.once.Do(func() { close(s.closed) }); return nil }

// BenchmarkForward measures the switch's forwarding path alone: frames of
// 1500 bytes from an in-memory source port to a learned destination. It
// reports 0 allocs/op: the path recycles fixed buffers.
func BenchmarkForward(b *testing.B) {
	for _, size := range []int{64, 1500} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			sw, err := New(Config{})
			if err != nil {
				b.Fatal(err)
			}
			defer sw.Close()
			tmpl := make([]byte, size)
			copy(tmpl, []byte{0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1})
			binary.BigEndian.PutUint16(tmpl[12:], testEtherType)
			hello := make([]byte, 60)
			copy(hello, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 2})
			gen, sink := newGenPort(tmpl), newSinkPort(hello)
			if err := sw.AddPort(PortConfig{Name: "gen", VLAN: 1}, gen); err != nil {
				b.Fatal(err)
			}
			if err := sw.AddPort(PortConfig{Name: "sink", VLAN: 1}, sink); err != nil {
				b.Fatal(err)
			}
			for !sink.said.Load() {
				time.Sleep(time.Millisecond)
			}
			time.Sleep(10 * time.Millisecond) // the hello is learned
			// Warm up the free list and the goroutines.
			gen.left.Store(10000)
			for sink.count.Load() < 10000 {
				time.Sleep(time.Millisecond)
			}
			start := sink.count.Load()
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			t0 := time.Now()
			gen.left.Store(int64(b.N))
			for sink.count.Load()-start < int64(b.N) {
				time.Sleep(50 * time.Microsecond)
			}
			el := time.Since(t0)
			b.StopTimer()
			fps := float64(b.N) / el.Seconds()
			b.ReportMetric(fps, "frames/s")
			b.ReportMetric(fps*float64(size)*8/1e9, "Gbit/s")
		})
	}
}

// BenchmarkVethKernelBridgeVsSwitch floods 1500-byte frames from one veth
// pair to another, through a kernel bridge and through the userspace switch
// (AF_PACKET ports), in one run, inside a private network namespace. It
// reports the delivered rate; frames the path could not carry are dropped
// by the kernel and reported as loss.
func BenchmarkVethKernelBridgeVsSwitch(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root for network namespaces")
	}
	for _, mode := range []string{"kernel-bridge", "vswitch"} {
		b.Run(mode, func(b *testing.B) { benchVeth(b, mode) })
	}
}

func benchVeth(b *testing.B, mode string) {
	ns := fmt.Sprintf("stswb%04x", os.Getpid()&0xffff)
	newNetns(b, ns)
	ip := func(args ...string) {
		b.Helper()
		run(b, append([]string{"ip", "netns", "exec", ns}, args...)...)
	}
	ip("ip", "link", "add", "va0", "type", "veth", "peer", "name", "va1")
	ip("ip", "link", "add", "vb0", "type", "veth", "peer", "name", "vb1")
	for _, l := range []string{"lo", "va0", "va1", "vb0", "vb1"} {
		ip("ip", "link", "set", l, "up")
	}
	var sw *Switch
	if mode == "kernel-bridge" {
		ip("ip", "link", "add", "br0", "type", "bridge")
		ip("ip", "link", "set", "va1", "master", "br0")
		ip("ip", "link", "set", "vb1", "master", "br0")
		ip("ip", "link", "set", "br0", "up")
	} else {
		var err error
		sw, err = New(Config{})
		if err != nil {
			b.Fatal(err)
		}
		defer sw.Close()
		for _, l := range []string{"va1", "vb1"} {
			var p *PacketPort
			if err := inNetns(ns, func() (err error) { p, err = OpenPacket(l); return err }); err != nil {
				b.Fatal(err)
			}
			if err := sw.AddPort(PortConfig{Name: l, VLAN: 1}, p); err != nil {
				b.Fatal(err)
			}
		}
	}
	var tx, rx *PacketPort
	if err := inNetns(ns, func() (err error) {
		if tx, err = OpenPacket("va0"); err != nil {
			return err
		}
		rx, err = OpenPacket("vb0")
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer tx.Close()
	defer rx.Close()

	pool := newFramePool(256)
	mk := func(dst, src byte, n int) *Frame {
		f := pool.get()
		d := f.Space()[:n]
		copy(d, []byte{0x02, 0, 0, 0, 0, dst, 0x02, 0, 0, 0, 0, src})
		binary.BigEndian.PutUint16(d[12:], testEtherType)
		f.SetLen(n)
		return f
	}
	// The receiver announces itself so that both paths forward unicast.
	if _, err := rx.WriteBatch([]*Frame{mk(0xff, 2, 60)}); err != nil {
		b.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	var got atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		fs := make([]*Frame, 64)
		for i := range fs {
			fs[i] = pool.get()
		}
		for {
			n, err := rx.ReadBatch(fs)
			if err != nil {
				return
			}
			c := 0
			for _, f := range fs[:n] {
				if f.n == 1500 && f.buf[f.off+5] == 2 {
					c++
				}
			}
			got.Add(int64(c))
		}
	}()
	batch := make([]*Frame, 64)
	for i := range batch {
		batch[i] = mk(2, 1, 1500)
	}
	b.SetBytes(1500)
	b.ResetTimer()
	t0 := time.Now()
	sent := 0
	for sent < b.N {
		n := min(len(batch), b.N-sent)
		k, err := tx.WriteBatch(batch[:n])
		if err != nil {
			b.Fatal(err)
		}
		sent += k
	}
	// Wait for the tail to drain.
	last, stable := got.Load(), 0
	for stable < 4 {
		time.Sleep(25 * time.Millisecond)
		if g := got.Load(); g == last {
			stable++
		} else {
			last, stable = g, 0
		}
	}
	el := time.Since(t0) - 100*time.Millisecond
	b.StopTimer()
	rx.Close()
	<-done
	if el <= 0 {
		el = time.Millisecond
	}
	fps := float64(last) / el.Seconds()
	b.ReportMetric(fps, "frames/s")
	b.ReportMetric(fps*1500*8/1e9, "Gbit/s")
	b.ReportMetric(100*(1-float64(last)/float64(b.N)), "loss%")
	if sw != nil {
		if st, err := sw.Stats("va1"); err == nil {
			b.ReportMetric(float64(st.RxFrames.Load()), "sw-rx")
		}
	}
}
