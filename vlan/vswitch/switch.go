package vswitch

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Config holds the switch's knobs. The zero value is valid: every zero
// field takes its default.
type Config struct {
	Logger *slog.Logger
	// Batch is the number of frames read or written per call (default 64).
	Batch int
	// QueueLen is each port's output queue in frames (default 1024).
	QueueLen int
	// PoolFrames is the number of preallocated frame buffers (default 8192,
	// 2 KiB each).
	PoolFrames int
	// DropWhenFull drops a frame whose output queue is full, as a hardware
	// switch does. By default the switch applies backpressure instead: the
	// reading port waits, and no frame is lost inside the switch.
	DropWhenFull bool
	// MACAge is how long a learned address stays valid (default 5 min).
	MACAge time.Duration
	// MaxMACs bounds the address table (default 65536 entries).
	MaxMACs int
	// MaxInFlight bounds, per port, the frames a checkpoint may keep
	// (logged, held or queued); beyond it the checkpoint fails with
	// ErrInFlightLimit (default 65536).
	MaxInFlight int
	// Probe is how long a read on a paused node's port must find nothing
	// before its output counts as drained (default 5 ms).
	Probe time.Duration
	// MarkerInterval is how often end-of-epoch markers are resent on trunks
	// until the checkpoint ends (default 50 ms).
	MarkerInterval time.Duration
}

func (c Config) withDefaults() Config {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.Batch, 64)
	def(&c.QueueLen, 1024)
	def(&c.PoolFrames, 8192)
	def(&c.MaxMACs, 65536)
	def(&c.MaxInFlight, 65536)
	if c.MACAge == 0 {
		c.MACAge = 5 * time.Minute
	}
	if c.Probe == 0 {
		c.Probe = 5 * time.Millisecond
	}
	if c.MarkerInterval == 0 {
		c.MarkerInterval = 50 * time.Millisecond
	}
	return c
}

// Validate checks the configuration (after defaults).
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case c.Batch < 1 || c.Batch > 1024:
		return fmt.Errorf("vswitch: Batch %d out of range 1..1024", c.Batch)
	case c.QueueLen < 1:
		return fmt.Errorf("vswitch: QueueLen %d must be positive", c.QueueLen)
	case c.PoolFrames < 1:
		return fmt.Errorf("vswitch: PoolFrames %d must be positive", c.PoolFrames)
	case c.MaxMACs < 1:
		return fmt.Errorf("vswitch: MaxMACs %d must be positive", c.MaxMACs)
	case c.MaxInFlight < 1:
		return fmt.Errorf("vswitch: MaxInFlight %d must be positive", c.MaxInFlight)
	case c.MACAge < 0 || c.Probe < 0 || c.MarkerInterval < 0:
		return errors.New("vswitch: durations must not be negative")
	}
	return nil
}

// Switch is a userspace Ethernet switch. Create it with New, attach ports
// with AddPort, stop it with Close. All methods are safe for concurrent use.
type Switch struct {
	cfg   Config
	log   *slog.Logger
	pool  *framePool
	table *macTable

	mu     sync.Mutex              // guards byName, ports updates and ck
	byName map[string]*port        // attached ports
	ports  atomic.Pointer[[]*port] // by id; nil for removed ports
	ck     ckState
	closed bool

	done chan struct{}
	wg   sync.WaitGroup
}

// port is one attached Port with its goroutines' state.
type port struct {
	sw      *Switch
	id      int32
	cfg     PortConfig
	p       Port
	carrier epochCarrier // non-nil for epoch-carrying trunks
	vlans   [4096 / 64]uint64
	allVLAN bool

	txq  chan *Frame
	ctl  chan ctlMsg
	done chan struct{}

	// Send side (reader goroutine).
	txEpoch atomic.Uint64
	txReq   atomic.Pointer[txRequest]

	// Receive side (writer goroutine only).
	gate    gate
	replay  []*Frame // frames Resume handed over, written before any other
	scratch []*Frame // tagged copies for Ethernet trunks

	peerMarker atomic.Uint64 // trunks: last end-of-epoch marker received

	stats PortStats
}

type txRequest struct {
	epoch uint64
	done  chan struct{}
}

// PortStats counts what happened on a port.
type PortStats struct {
	RxFrames, RxBytes atomic.Uint64 // read from the port
	TxFrames, TxBytes atomic.Uint64 // written to the port
	TxErrors          atomic.Uint64 // frames lost to write errors
	QueueDrops        atomic.Uint64 // frames dropped on a full output queue (DropWhenFull)
	Filtered          atomic.Uint64 // runts, frames of VLANs the port does not carry
	Logged, Held      atomic.Uint64 // checkpoint bookkeeping
	Replayed          atomic.Uint64 // frames written by Resume
	InFlightDrops     atomic.Uint64 // frames over MaxInFlight
}

// New creates a switch.
func New(cfg Config) (*Switch, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	sw := &Switch{
		cfg:    cfg,
		log:    cfg.Logger,
		pool:   newFramePool(cfg.PoolFrames),
		table:  newMACTable(cfg.MaxMACs, int64(cfg.MACAge)),
		byName: make(map[string]*port),
		done:   make(chan struct{}),
	}
	empty := []*port{}
	sw.ports.Store(&empty)
	sw.wg.Add(1)
	go sw.janitor()
	return sw, nil
}

func (sw *Switch) janitor() {
	defer sw.wg.Done()
	t := time.NewTicker(sw.cfg.MACAge/2 + time.Second)
	defer t.Stop()
	for {
		select {
		case <-sw.done:
			return
		case now := <-t.C:
			sw.table.expire(now.UnixNano())
		}
	}
}

// AddPort attaches p and starts forwarding on it. The switch owns p from
// now on and closes it on RemovePort or Close. A port added while a
// checkpoint is in progress is refused.
func (sw *Switch) AddPort(cfg PortConfig, p Port) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	sw.mu.Lock()
	defer sw.mu.Unlock()
	if sw.closed {
		return ErrClosed
	}
	if _, ok := sw.byName[cfg.Name]; ok {
		return fmt.Errorf("%w: %s", ErrPortExists, cfg.Name)
	}
	if sw.ck.state != ckIdle {
		return fmt.Errorf("%w: cannot add port %s during a checkpoint or restore", ErrCheckpoint, cfg.Name)
	}
	old := *sw.ports.Load()
	pt := &port{
		sw:   sw,
		id:   int32(len(old)),
		cfg:  cfg,
		p:    p,
		txq:  make(chan *Frame, sw.cfg.QueueLen),
		ctl:  make(chan ctlMsg),
		done: make(chan struct{}),
	}
	pt.gate.epoch = sw.ck.epoch
	pt.gate.limit = sw.cfg.MaxInFlight
	pt.txEpoch.Store(sw.ck.epoch)
	if c, ok := p.(epochCarrier); ok && cfg.Mode == Trunk {
		pt.carrier = c
		c.setMarkerFunc(func(e uint64) {
			for {
				cur := pt.peerMarker.Load()
				if e <= cur || pt.peerMarker.CompareAndSwap(cur, e) {
					return
				}
			}
		})
	}
	if cfg.Mode == Trunk {
		pt.allVLAN = len(cfg.VLANs) == 0
		for _, v := range cfg.VLANs {
			pt.vlans[v/64] |= 1 << (v % 64)
		}
		if pt.carrier == nil {
			pt.scratch = make([]*Frame, sw.cfg.Batch)
			for i := range pt.scratch {
				pt.scratch[i] = new(Frame)
			}
		}
	} else {
		pt.vlans[cfg.VLAN/64] |= 1 << (cfg.VLAN % 64)
	}
	next := append(slices.Clone(old), pt)
	sw.ports.Store(&next)
	sw.byName[cfg.Name] = pt
	sw.wg.Add(2)
	go pt.readLoop()
	go pt.writeLoop()
	sw.log.Debug("port added", "port", cfg.Name, "mode", cfg.Mode, "vlan", cfg.VLAN)
	return nil
}

// RemovePort detaches and closes the named port.
func (sw *Switch) RemovePort(name string) error {
	sw.mu.Lock()
	pt, ok := sw.byName[name]
	if !ok {
		sw.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrUnknownPort, name)
	}
	if sw.ck.state != ckIdle {
		sw.mu.Unlock()
		return fmt.Errorf("%w: cannot remove port %s during a checkpoint or restore", ErrCheckpoint, name)
	}
	delete(sw.byName, name)
	next := slices.Clone(*sw.ports.Load())
	next[pt.id] = nil
	sw.ports.Store(&next)
	sw.mu.Unlock()
	err := pt.stop()
	sw.table.forgetPort(pt.id)
	return err
}

func (pt *port) stop() error {
	close(pt.done)
	return pt.p.Close()
}

// Close stops forwarding and closes every port.
func (sw *Switch) Close() error {
	sw.mu.Lock()
	if sw.closed {
		sw.mu.Unlock()
		return nil
	}
	sw.closed = true
	var errs []error
	for _, pt := range sw.byName {
		errs = append(errs, pt.stop())
	}
	close(sw.done)
	sw.mu.Unlock()
	sw.wg.Wait()
	return errors.Join(errs...)
}

// Stats returns the named port's counters.
func (sw *Switch) Stats(name string) (*PortStats, error) {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	pt, ok := sw.byName[name]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrUnknownPort, name)
	}
	return &pt.stats, nil
}

// PoolAllocs reports how many frames were allocated because the free list
// was empty (a sign PoolFrames is too small).
func (sw *Switch) PoolAllocs() uint64 { return sw.pool.allocs.Load() }

func (pt *port) carries(vlan uint16) bool {
	if pt.cfg.Mode == Access {
		return vlan == pt.cfg.VLAN
	}
	return pt.allVLAN || pt.vlans[vlan/64]&(1<<(vlan%64)) != 0
}

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, os.ErrClosed)
}

// readLoop reads frames from the port and forwards them. It also performs
// the send side of a checkpoint: once asked (txReq), it reads with a short
// deadline until a read finds nothing, then advances the port's epoch, so
// that every frame the paused node sent before it stopped keeps the old one.
func (pt *port) readLoop() {
	sw := pt.sw
	defer sw.wg.Done()
	batch := make([]*Frame, sw.cfg.Batch)
	defer func() {
		for _, f := range batch {
			if f != nil {
				sw.pool.release(f)
			}
		}
	}()
	probing := false
	var backoff time.Duration
	for {
		for i, f := range batch {
			if f == nil {
				batch[i] = sw.pool.get()
			}
		}
		ep := pt.txEpoch.Load()
		n, err := pt.p.ReadBatch(batch)
		if n > 0 {
			backoff = 0
			ports := *sw.ports.Load()
			now := time.Now().UnixNano()
			for i := 0; i < n; i++ {
				f := batch[i]
				batch[i] = nil
				pt.ingress(f, ep, ports, now)
			}
			if req := pt.txReq.Load(); req != nil {
				// Checkpoint requested: done as soon as the input is empty
				// (a node that still sends is checkpointed between two
				// batches).
				if d, ok := pt.p.(InputDrainer); ok {
					if k, err := d.InputBuffered(); err == nil && k == 0 {
						pt.finishTx(req)
						probing = false
						continue
					}
				}
			}
			if probing {
				_ = pt.p.SetReadDeadline(time.Now().Add(sw.cfg.Probe))
			}
			continue
		}
		select {
		case <-pt.done:
			return
		default:
		}
		switch {
		case err == nil:
			continue
		case isTimeout(err):
			req := pt.txReq.Load()
			if req == nil {
				_ = pt.p.SetReadDeadline(time.Time{})
				if pt.txReq.Load() != nil { // a request raced with the reset
					_ = pt.p.SetReadDeadline(time.Now())
				}
				continue
			}
			if d, ok := pt.p.(InputDrainer); ok {
				if n, err := d.InputBuffered(); err == nil && n == 0 {
					pt.finishTx(req)
					probing = false
					continue
				}
			} else if probing {
				// A whole probe read found nothing: the output is drained.
				pt.finishTx(req)
				probing = false
				continue
			}
			// The kick that woke us proves nothing: read once more.
			probing = true
		case isClosed(err):
			return
		default:
			// A broken connection or a transient error: keep the port alive.
			sw.log.Warn("port read failed", "port", pt.cfg.Name, "err", err)
			backoff = min(max(2*backoff, time.Millisecond), 100*time.Millisecond)
			select {
			case <-pt.done:
				return
			case <-time.After(backoff):
			}
		}
		if probing {
			_ = pt.p.SetReadDeadline(time.Now().Add(sw.cfg.Probe))
		}
	}
}

// finishTx moves the port's sending side to the requested epoch.
func (pt *port) finishTx(req *txRequest) {
	_ = pt.p.SetReadDeadline(time.Time{})
	pt.txEpoch.Store(req.epoch)
	pt.txReq.Store(nil)
	close(req.done)
}

// ingress tags a frame read from pt, learns its source and queues it to its
// destination ports.
func (pt *port) ingress(f *Frame, ep uint64, ports []*port, now int64) {
	sw := pt.sw
	f.src = pt.id
	if f.n < minFrameLen {
		pt.stats.Filtered.Add(1)
		sw.pool.release(f)
		return
	}
	switch {
	case pt.carrier != nil:
		// VLAN and epoch came with the frame.
	case pt.cfg.Mode == Trunk:
		f.Epoch = ep
		if v := f.stripTag(); v != 0 {
			f.VLAN = v
		} else {
			f.VLAN = pt.cfg.VLAN
		}
	default:
		f.Epoch = ep
		f.VLAN = pt.cfg.VLAN
	}
	if f.VLAN == 0 || !pt.carries(f.VLAN) {
		pt.stats.Filtered.Add(1)
		sw.pool.release(f)
		return
	}
	pt.stats.RxFrames.Add(1)
	pt.stats.RxBytes.Add(uint64(f.n))
	sw.table.learn(f.VLAN, f.srcMAC(), pt.id, now)
	dst := f.dst()
	if !isGroup(dst) {
		if id, ok := sw.table.lookup(f.VLAN, dst, now); ok && int(id) < len(ports) && ports[id] != nil {
			if id == pt.id {
				sw.pool.release(f) // the destination is where it came from
				return
			}
			ports[id].enqueue(f)
			return
		}
	}
	// Flood within the VLAN.
	n := int32(0)
	for _, q := range ports {
		if q != nil && q != pt && q.carries(f.VLAN) {
			n++
		}
	}
	if n == 0 {
		sw.pool.release(f)
		return
	}
	f.refs.Store(n)
	for _, q := range ports {
		if q != nil && q != pt && q.carries(f.VLAN) {
			q.enqueue(f)
		}
	}
}

func (pt *port) enqueue(f *Frame) {
	if pt.sw.cfg.DropWhenFull {
		select {
		case pt.txq <- f:
		default:
			pt.stats.QueueDrops.Add(1)
			pt.sw.pool.release(f)
		}
		return
	}
	select {
	case pt.txq <- f:
	case <-pt.done:
		pt.sw.pool.release(f)
	}
}

// writeLoop takes frames from the port's queue, passes them through the
// checkpoint gate and writes them in batches. Control messages are handled
// between batches, in the same goroutine, so that the gate needs no lock.
func (pt *port) writeLoop() {
	sw := pt.sw
	defer sw.wg.Done()
	in := make([]*Frame, 0, sw.cfg.Batch)
	out := make([]*Frame, 0, sw.cfg.Batch)
	defer func() {
		for _, f := range pt.replay {
			sw.pool.release(f)
		}
		for _, f := range pt.gate.restore(0, nil) {
			sw.pool.release(f)
		}
		for {
			select {
			case f := <-pt.txq:
				sw.pool.release(f)
			default:
				return
			}
		}
	}()
	for {
		if len(pt.replay) > 0 {
			// Frames handed over by Resume go first, a batch at a time,
			// so that control messages are still served.
			select {
			case <-pt.done:
				return
			case m := <-pt.ctl:
				pt.control(m, &in, &out)
			default:
				chunk := pt.replay[:min(len(pt.replay), sw.cfg.Batch)]
				pt.replay = pt.replay[len(chunk):]
				if err := pt.write(chunk, true); err != nil {
					sw.log.Warn("replaying frames failed", "port", pt.cfg.Name, "err", err)
				}
			}
			continue
		}
		select {
		case <-pt.done:
			return
		case m := <-pt.ctl:
			pt.control(m, &in, &out)
		case f := <-pt.txq:
			in = append(in[:0], f)
			pt.drainQueue(&in)
			pt.process(in, &out)
		}
	}
}

// drainQueue appends queued frames to in, up to its capacity.
func (pt *port) drainQueue(in *[]*Frame) {
	for len(*in) < cap(*in) {
		select {
		case f := <-pt.txq:
			*in = append(*in, f)
		default:
			return
		}
	}
}

// process gates the frames in and writes the deliverable ones.
func (pt *port) process(in []*Frame, out *[]*Frame) {
	*out = (*out)[:0]
	if pt.carrier != nil {
		*out = append(*out, in...)
	} else {
		for _, f := range in {
			switch pt.gate.admit(f) {
			case deliver:
				*out = append(*out, f)
			case logged:
				pt.stats.Logged.Add(1)
			case held:
				pt.stats.Held.Add(1)
			case dropped:
				pt.stats.InFlightDrops.Add(1)
				pt.sw.pool.release(f)
			}
		}
	}
	pt.write(*out, false)
}

// write sends frames to the port and releases them.
func (pt *port) write(fs []*Frame, replay bool) error {
	sw := pt.sw
	var err error
	for len(fs) > 0 {
		chunk := fs[:min(len(fs), sw.cfg.Batch)]
		fs = fs[len(chunk):]
		w := chunk
		if pt.scratch != nil { // Ethernet trunk: tagged copies
			w = pt.scratch[:0]
			for _, f := range chunk {
				s := pt.scratch[len(w)]
				if s.copyTagged(f, f.VLAN) {
					w = append(w, s)
				} else {
					pt.stats.TxErrors.Add(1)
				}
			}
		}
		var n int
		if err == nil {
			n, err = pt.p.WriteBatch(w)
		}
		var bytes uint64
		for _, f := range w[:n] {
			bytes += uint64(f.n)
		}
		pt.stats.TxFrames.Add(uint64(n))
		pt.stats.TxBytes.Add(bytes)
		if replay {
			pt.stats.Replayed.Add(uint64(n))
		}
		if n < len(w) {
			pt.stats.TxErrors.Add(uint64(len(w) - n))
		}
		for _, f := range chunk {
			sw.pool.release(f)
		}
	}
	if err != nil && !replay {
		sw.log.Debug("port write failed", "port", pt.cfg.Name, "err", err)
	}
	return err
}
