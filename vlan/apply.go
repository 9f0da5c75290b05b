package vlan

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// Config configures an Applier.
type Config struct {
	// Logger receives progress at debug level and a summary at info level;
	// nil discards.
	Logger *slog.Logger
	// Parallelism is how many namespaces are created at once; 0 means
	// GOMAXPROCS.
	Parallelism int
	// TrunkNetns names the network namespace (in /run/netns) that holds
	// the dot1q backend's trunk interface. Empty means the namespace Up is
	// called from, the host's. It is the only namespace outside the
	// experiment's own that Up touches: tests point it at a namespace of
	// their own, so they never change the host's.
	TrunkNetns string
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if c.Parallelism < 0 {
		return fmt.Errorf("vlan: Parallelism %d < 0", c.Parallelism)
	}
	if n := c.TrunkNetns; strings.Contains(n, "/") || n == "." || n == ".." {
		return fmt.Errorf("vlan: TrunkNetns %q is not a namespace name", n)
	}
	return nil
}

// Applier realizes plans through netlink. It needs CAP_NET_ADMIN and
// CAP_SYS_ADMIN (to create and mount namespaces), i.e. root. Its methods
// may be called concurrently for different experiments; two concurrent
// calls for one experiment are not coordinated.
type Applier struct {
	log        *slog.Logger
	par        int
	trunkNetns string
	// fault, if set, is called at named points of Up; an error it returns
	// fails Up there. Tests use it to prove rollback.
	fault func(point string) error
}

// NewApplier returns an Applier for cfg.
func NewApplier(cfg Config) (*Applier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a := &Applier{log: cfg.Logger, par: cfg.Parallelism, trunkNetns: cfg.TrunkNetns}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.par == 0 {
		a.par = runtime.GOMAXPROCS(0)
	}
	return a, nil
}

// Counts counts kernel objects.
type Counts struct {
	Namespaces int `json:"namespaces"`
	Links      int `json:"links"`
	Addresses  int `json:"addresses"`
	Qdiscs     int `json:"qdiscs"`
}

func (c Counts) String() string {
	return fmt.Sprintf("%d namespaces, %d links, %d addresses, %d qdiscs", c.Namespaces, c.Links, c.Addresses, c.Qdiscs)
}

// Phase is the time one step of Up or Down took.
type Phase struct {
	Name     string        `json:"name"`
	Duration time.Duration `json:"duration"`
}

// Result reports what Up or Down did.
type Result struct {
	// Created counts objects Up created.
	Created Counts `json:"created"`
	// Changed counts existing objects Up corrected (brought up, moved to
	// the right bridge, a qdisc replaced).
	Changed Counts `json:"changed"`
	// Removed counts what Down deleted: namespaces, and the 802.1Q
	// subinterfaces it deleted one by one.
	Removed Counts `json:"removed"`
	// Phases is where the time went.
	Phases []Phase `json:"phases"`
	// NamespaceWait is the part of the "nodes" phase spent waiting for
	// node namespaces to be created.
	NamespaceWait time.Duration `json:"namespace_wait"`
	// NetlinkBatches counts netlink round trips: batches of requests sent
	// with one sendmsg each, whose answers were then read.
	NetlinkBatches int `json:"netlink_batches"`
}

func (r *Result) phase(name string, start time.Time) time.Time {
	now := time.Now()
	r.Phases = append(r.Phases, Phase{Name: name, Duration: now.Sub(start)})
	return now
}

// ErrConflict is wrapped by Up's errors when something that is not part of
// the experiment's network is in the way (an interface of the wrong kind or
// with a planned name).
var ErrConflict = errors.New("conflicting object")

// firstIndex is the lowest interface index Up assigns. A fresh namespace
// holds only the loopback (index 1) and perhaps fallback tunnel devices,
// so indices from here on are free; in namespaces that existed, Up uses
// indices above the highest one present.
const firstIndex = 1000

// upTx is the state of one Up: open namespaces and what was created, so a
// failure can undo it.
type upTx struct {
	a   *Applier
	p   *Plan
	res *Result

	sw    *nsHandle
	nodes map[string]*nsHandle // by namespace name
	state map[*nsHandle]*nsState
	next  map[*nsHandle]int32 // next free interface index

	// created links in namespaces that existed before this Up, newest
	// last; links in namespaces this Up created go with the namespace.
	undo []undoLink
	// vlans created in the switch namespace (deleted first on rollback,
	// so their VLAN ids on the trunk are free again at once).
	vlans []int32
}

type undoLink struct {
	ns    *nsHandle
	index int32
	what  string
}

func (tx *upTx) allocIndex(h *nsHandle) int32 {
	i, ok := tx.next[h]
	if !ok {
		i = max(firstIndex, tx.state[h].maxIndex+1)
	}
	tx.next[h] = i + 1
	return i
}

// created notes a link created in h, for rollback. It is called only for
// links the kernel confirmed, so a rollback never deletes a link that
// some other creator got first.
func (tx *upTx) created(h *nsHandle, index int32, what string) {
	tx.res.Created.Links++
	if !h.created {
		tx.undo = append(tx.undo, undoLink{ns: h, index: index, what: what})
	}
}

func (a *Applier) checkFault(point string) error {
	if a.fault != nil {
		if err := a.fault(point); err != nil {
			return fmt.Errorf("fault at %s: %w", point, err)
		}
	}
	return nil
}

// Up realizes plan p on this host. Objects that exist already are kept and
// corrected where needed, so applying a plan twice changes nothing. If Up
// fails, it deletes every namespace and link it created before returning;
// changes it made to objects that existed before (an address added, a
// link brought up, a qdisc replaced) are not undone. When Up returns, the
// links are up and the bridges forward.
//
// Node namespaces are created in the background, Parallelism at a time,
// while the calling goroutine builds the switch side; each node is wired
// to its LANs as soon as its namespace is ready.
func (a *Applier) Up(ctx context.Context, p *Plan) (res *Result, err error) {
	if p == nil {
		return nil, errors.New("vlan: nil plan")
	}
	if err := prepareNetnsDir(); err != nil {
		return nil, err
	}
	res = &Result{}
	tx := &upTx{
		a: a, p: p, res: res,
		nodes: map[string]*nsHandle{},
		state: map[*nsHandle]*nsState{},
		next:  map[*nsHandle]int32{},
	}
	defer tx.closeAll()
	defer func() {
		if err == nil {
			return
		}
		if rerr := tx.rollback(); rerr != nil {
			err = errors.Join(err, fmt.Errorf("rollback incomplete: %w", rerr))
		}
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	start := time.Now()
	t := start
	if err := tx.openSwitch(); err != nil {
		return res, err
	}
	t = res.phase("switch", t)

	ready := make(chan nodeNS, len(p.Namespaces))
	go tx.createNodes(ctx, ready)
	// Runs before the rollback: wait for the workers and take every
	// namespace they made, so none escapes the rollback.
	defer func() {
		cancel()
		for n := range ready {
			tx.addNode(n)
		}
	}()

	bridges, err := tx.switchBase()
	if err != nil {
		return res, err
	}
	t = res.phase("bridges", t)

	byNode := map[string][]*Veth{}
	for i := range p.Veths {
		v := &p.Veths[i]
		byNode[v.Namespace] = append(byNode[v.Namespace], v)
	}
	for remaining := len(p.Namespaces); remaining > 0; {
		w := time.Now()
		n, ok := <-ready
		res.NamespaceWait += time.Since(w)
		if !ok {
			if err := ctx.Err(); err != nil {
				return res, err
			}
			return res, errors.New("vlan: namespace creation stopped early")
		}
		group := []nodeNS{n}
	more:
		for {
			select {
			case n, ok := <-ready:
				if !ok {
					break more
				}
				group = append(group, n)
			default:
				break more
			}
		}
		remaining -= len(group)
		hs := make([]*nsHandle, 0, len(group))
		var errs []error
		for _, n := range group {
			tx.addNode(n)
			if n.err != nil {
				errs = append(errs, n.err)
				continue
			}
			hs = append(hs, n.h)
		}
		if err := errors.Join(errs...); err != nil {
			return res, err
		}
		if err := tx.connect(ctx, hs, bridges, byNode); err != nil {
			return res, err
		}
		if err := tx.configure(ctx, hs, byNode); err != nil {
			return res, err
		}
	}
	t = res.phase("nodes", t)
	if err := tx.syncSwitch(); err != nil {
		return res, err
	}
	res.phase("sync", t)
	a.log.Info("vlan: experiment network up", "experiment", p.Experiment, "backend", p.Backend,
		"created", res.Created.String(), "changed", res.Changed.String(), "took", time.Since(start))
	return res, nil
}

// openOrCreate creates namespace name or, if it exists, opens it and reads
// its state.
func openOrCreate(name string, setup func() error) (*nsHandle, *nsState, error) {
	h, err := createNetns(name, setup)
	if err == nil {
		return h, freshState(), nil
	}
	if !errors.Is(err, errNsExists) {
		return nil, nil, err
	}
	h, err = openNetns(name)
	if errors.Is(err, errNsStale) {
		// Left by a crash between creating and mounting: replace it.
		if err := deleteNetns(name); err != nil {
			return nil, nil, err
		}
		h, err = createNetns(name, setup)
		if err != nil {
			return nil, nil, err
		}
		return h, freshState(), nil
	}
	if err != nil {
		return nil, nil, err
	}
	st, err := observe(h)
	if err != nil {
		return h, nil, err
	}
	return h, st, nil
}

// openSwitch creates or opens the switch namespace.
func (tx *upTx) openSwitch() error {
	h, st, err := openOrCreate(tx.p.Switch, switchSysctls)
	if h != nil {
		tx.sw = h
		tx.state[h] = st
		if h.created {
			tx.res.Created.Namespaces++
		}
	}
	if err == nil && h.created {
		err = tx.a.checkFault("netns " + h.name)
	}
	return err
}

// nodeNS is a node namespace, ready (or failed), from createNodes.
type nodeNS struct {
	h   *nsHandle
	st  *nsState
	err error
}

// createNodes creates or opens every node namespace, Parallelism at a
// time, and sends each to ready; it closes ready when done. After the
// first failure it starts no more.
func (tx *upTx) createNodes(ctx context.Context, ready chan<- nodeNS) {
	defer close(ready)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(tx.a.par)
	for _, ns := range tx.p.Namespaces {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			if err := gctx.Err(); err != nil {
				return err
			}
			h, st, err := openOrCreate(ns.Name, nil)
			if err == nil && h.created {
				err = tx.a.checkFault("netns " + ns.Name)
			}
			ready <- nodeNS{h: h, st: st, err: err}
			return err
		})
	}
	_ = g.Wait() // errors went to ready
}

// addNode records a namespace from createNodes.
func (tx *upTx) addNode(n nodeNS) {
	if n.h == nil {
		return
	}
	tx.nodes[n.h.name] = n.h
	tx.state[n.h] = n.st
	if n.h.created {
		tx.res.Created.Namespaces++
	}
}

// switchSysctls runs inside a new switch namespace: no IPv6 there, so
// bridges and ports neither get link-local addresses nor send router
// solicitations and MLD reports into the experiment's LANs.
func switchSysctls() error {
	for _, f := range []string{"all", "default"} {
		err := os.WriteFile("/proc/sys/net/ipv6/conf/"+f+"/disable_ipv6", []byte("1"), 0)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("disable IPv6 in switch namespace: %w", err)
		}
	}
	return nil
}

func (tx *upTx) nodeList() []*nsHandle {
	out := make([]*nsHandle, 0, len(tx.p.Namespaces))
	for _, ns := range tx.p.Namespaces {
		if h := tx.nodes[ns.Name]; h != nil {
			out = append(out, h)
		}
	}
	return out
}

// switchBase creates the bridges, the taps and the VLAN subinterfaces in
// the switch namespace, and returns the bridges' indices by name.
func (tx *upTx) switchBase() (map[string]int32, error) {
	p, sw := tx.p, tx.sw
	sst := tx.state[sw]
	var msgs []nlMsg
	bridges := map[string]int32{}
	for _, b := range p.Bridges {
		if l := sst.links[b.Name]; l != nil {
			if l.kind != "bridge" {
				return nil, fmt.Errorf("%w: %s/%s (LAN %s) exists and is a %s, not a bridge", ErrConflict, sw.name, b.Name, b.LAN, l.kind)
			}
			bridges[b.Name] = l.index
			if !l.up {
				msgs = append(msgs, setLinkMsg(l.index, 0, "bring up bridge "+b.Name))
				tx.changed(&tx.res.Changed.Links, msgs)
			}
			continue
		}
		idx := tx.allocIndex(sw)
		bridges[b.Name] = idx
		m := newBridgeMsg(b.Name, idx)
		m.onOK = func() { tx.created(sw, idx, "bridge "+b.Name) }
		msgs = append(msgs, m)
		sst.links[b.Name] = &linkState{index: idx, kind: "bridge", up: true, created: true}
	}

	// Taps: ioctls from a thread in the switch namespace, then enslaved
	// in the batch below.
	type tapNew struct {
		name  string
		index int32
	}
	var taps []tapNew
	for _, t := range p.Taps {
		br := bridges[t.Bridge]
		if l := sst.links[t.Name]; l != nil {
			if l.kind != "tuntap" {
				return nil, fmt.Errorf("%w: %s/%s (tap of %s/%s) exists and is a %s", ErrConflict, sw.name, t.Name, t.Node, t.Interface, l.kind)
			}
			if l.master != br || !l.up {
				msgs = append(msgs, setLinkMsg(l.index, br, "attach tap "+t.Name))
				tx.changed(&tx.res.Changed.Links, msgs)
			}
			msgs = append(msgs, tx.tbf(l, t.Rate, "tap "+t.Name)...)
			continue
		}
		idx := tx.allocIndex(sw)
		taps = append(taps, tapNew{t.Name, idx})
		sst.links[t.Name] = &linkState{index: idx, kind: "tuntap", master: br, up: true, created: true}
		msgs = append(msgs, setLinkMsg(idx, br, "attach tap "+t.Name))
		if t.Rate != 0 {
			msgs = append(msgs, newTbfMsg(tbfSpec{idx, t.Rate}, "tbf on tap "+t.Name))
			tx.res.Created.Qdiscs++
		}
	}
	if len(taps) > 0 {
		err := inNetns(sw.fd, func() error {
			for _, t := range taps {
				if err := createTap(t.name, t.index); err != nil {
					return err
				}
				tx.created(sw, t.index, "tap "+t.name)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	if err := tx.createVLANs(bridges, &msgs); err != nil {
		return nil, err
	}
	if err := tx.a.checkFault("switch"); err != nil {
		return nil, err
	}
	return bridges, batchErr(sw.nl.exec(msgs))
}

// connect creates, in one batch in the switch namespace, the veth pairs of
// the nodes hs (both ends, the node end directly in its namespace) and the
// switch-side qdiscs.
func (tx *upTx) connect(ctx context.Context, hs []*nsHandle, bridges map[string]int32, byNode map[string][]*Veth) error {
	sw := tx.sw
	sst := tx.state[sw]
	var msgs []nlMsg
	for _, node := range hs {
		nst := tx.state[node]
		for _, v := range byNode[node.name] {
			br := bridges[v.Bridge]
			se, ne := sst.links[v.SwitchEnd], nst.links[v.Name]
			switch {
			case se != nil && ne != nil && se.kind == "veth" && ne.kind == "veth" && se.peer == ne.index:
				if se.master != br || !se.up {
					msgs = append(msgs, setLinkMsg(se.index, br, "attach "+v.SwitchEnd))
					tx.changed(&tx.res.Changed.Links, msgs)
				}
				msgs = append(msgs, tx.tbf(se, v.Rate, "switch end "+v.SwitchEnd)...)
				continue
			case ne != nil:
				return fmt.Errorf("%w: %s/%s exists and is not the link to LAN %s", ErrConflict, v.Namespace, v.Name, v.LAN)
			case se != nil:
				// A switch end without its node end: stale (its node's
				// namespace is gone and the kernel is destroying it);
				// replace it.
				del := delLinkMsg(se.index, "delete stale "+v.SwitchEnd)
				del.okErrno = unix.ENODEV
				msgs = append(msgs, del)
				tx.changed(&tx.res.Changed.Links, msgs)
			}
			idx, peerIdx := tx.allocIndex(sw), tx.allocIndex(node)
			m := newVethMsg(vethSpec{
				name: v.SwitchEnd, index: idx, master: br,
				peerName: v.Name, peerIndex: peerIdx, peerNsFd: node.fd, peerMAC: v.MAC,
				description: fmt.Sprintf("%s/%s <-> %s/%s", sw.name, v.SwitchEnd, v.Namespace, v.Name),
			})
			m.onOK = func() { tx.created(sw, idx, "veth "+v.SwitchEnd) }
			msgs = append(msgs, m)
			sst.links[v.SwitchEnd] = &linkState{index: idx, kind: "veth", master: br, up: true, peer: peerIdx, created: true}
			nst.links[v.Name] = &linkState{index: peerIdx, kind: "veth", created: true, addrs: map[netip.Prefix]bool{}}
			if v.Rate != 0 {
				msgs = append(msgs, newTbfMsg(tbfSpec{idx, v.Rate}, "tbf on "+v.SwitchEnd))
				tx.res.Created.Qdiscs++
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return batchErr(sw.nl.exec(msgs))
}

// configure brings up each node's loopback and interfaces, adds addresses
// and node-side qdiscs, and settles the interfaces' carrier: one batch per
// node namespace.
func (tx *upTx) configure(ctx context.Context, hs []*nsHandle, byNode map[string][]*Veth) error {
	for _, h := range hs {
		if err := ctx.Err(); err != nil {
			return err
		}
		st := tx.state[h]
		var msgs []nlMsg
		if lo := st.links["lo"]; h.created || (lo != nil && !lo.up) {
			idx := int32(1)
			if lo != nil {
				idx = lo.index
			}
			msgs = append(msgs, setLinkMsg(idx, 0, "bring up lo in "+h.name))
		}
		for _, v := range byNode[h.name] {
			l := st.links[v.Name]
			if !l.up {
				msgs = append(msgs, setLinkMsg(l.index, 0, "bring up "+v.Name))
				if !l.created {
					tx.changed(&tx.res.Changed.Links, msgs)
				}
			}
			if v.Address.IsValid() && !l.addrs[v.Address] {
				msgs = append(msgs, newAddrMsg(l.index, toPrefixAttr(v.Address), fmt.Sprintf("add %s to %s/%s", v.Address, h.name, v.Name)))
				tx.res.Created.Addresses++
			}
			msgs = append(msgs, tx.tbf(l, v.Rate, h.name+"/"+v.Name)...)
		}
		for _, v := range byNode[h.name] {
			msgs = append(msgs, syncLinkMsg(st.links[v.Name].index, h.name+"/"+v.Name))
		}
		if err := batchErr(h.nl.exec(msgs)); err != nil {
			return err
		}
		if err := tx.a.checkFault("node " + h.name); err != nil {
			return err
		}
	}
	return nil
}

// syncSwitch settles the carrier of every switch-side link, now that the
// node ends are up, so the bridges forward before Up returns.
func (tx *upTx) syncSwitch() error {
	var names []string
	for _, b := range tx.p.Bridges {
		names = append(names, b.Name)
	}
	for _, v := range tx.p.Veths {
		names = append(names, v.SwitchEnd)
	}
	for _, t := range tx.p.Taps {
		names = append(names, t.Name)
	}
	for _, v := range tx.p.VLANs {
		names = append(names, v.Name)
	}
	var msgs []nlMsg
	sst := tx.state[tx.sw]
	for _, n := range names {
		if l := sst.links[n]; l != nil {
			msgs = append(msgs, syncLinkMsg(l.index, n))
		}
	}
	return batchErr(tx.sw.nl.exec(msgs))
}

// tbf returns the messages that make link l's root qdisc match rate r: a
// tbf of rate r, or none when r is zero. A link that has it already needs
// none.
func (tx *upTx) tbf(l *linkState, r Rate, what string) []nlMsg {
	if r == 0 && l.tbfRate == 0 || r != 0 && l.tbfRate == r.BytesPerSecond() {
		return nil
	}
	if r == 0 {
		m := []nlMsg{delQdiscMsg(l.index, "delete tbf on "+what)}
		tx.changed(&tx.res.Changed.Qdiscs, m)
		return m
	}
	m := []nlMsg{newTbfMsg(tbfSpec{l.index, r}, "tbf on "+what)}
	if l.tbfRate == 0 {
		tx.res.Created.Qdiscs++
	} else {
		tx.changed(&tx.res.Changed.Qdiscs, m)
	}
	return m
}

// changed counts a correction of an existing object, the last of msgs.
func (tx *upTx) changed(counter *int, msgs []nlMsg) {
	*counter++
	tx.a.log.Debug("vlan: correcting existing object", "experiment", tx.p.Experiment, "op", msgs[len(msgs)-1].what)
}

// openTrunkNetns opens the namespace that holds the dot1q trunk: the
// configured one, or the caller's.
func (a *Applier) openTrunkNetns() (*nsHandle, error) {
	if a.trunkNetns != "" {
		return openNetns(a.trunkNetns)
	}
	fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open host namespace: %w", err)
	}
	h := &nsHandle{name: "host", fd: fd}
	if h.nl, err = openNL(); err != nil {
		h.close()
		return nil, err
	}
	return h, nil
}

// createVLANs creates the dot1q backend's subinterfaces on the trunk, directly in
// the switch namespace, and queues their enslaving.
func (tx *upTx) createVLANs(bridges map[string]int32, msgs *[]nlMsg) error {
	p, sw := tx.p, tx.sw
	if len(p.VLANs) == 0 {
		return nil
	}
	sst := tx.state[sw]
	var create []nlMsg
	var createIdx []int32
	var trunkIdx int32
	var host *nsHandle // the trunk's namespace
	var err error
	for _, v := range p.VLANs {
		br := bridges[v.Bridge]
		if l := sst.links[v.Name]; l != nil {
			if l.kind != "vlan" {
				return fmt.Errorf("%w: %s/%s exists and is a %s, not an 802.1Q subinterface", ErrConflict, sw.name, v.Name, l.kind)
			}
			if l.master != br || !l.up {
				*msgs = append(*msgs, setLinkMsg(l.index, br, "attach "+v.Name))
				tx.changed(&tx.res.Changed.Links, *msgs)
			}
			continue
		}
		if trunkIdx == 0 {
			if host == nil {
				if host, err = tx.a.openTrunkNetns(); err != nil {
					return err
				}
				defer host.close()
			}
			var trunk *net.Interface
			err := host.do(func() (err error) {
				trunk, err = net.InterfaceByName(v.Trunk)
				return err
			})
			if err != nil {
				return fmt.Errorf("dot1q trunk %q: %w", v.Trunk, err)
			}
			// A VLAN device will not come up on a trunk that is down.
			if trunk.Flags&net.FlagUp == 0 {
				return fmt.Errorf("dot1q trunk %q is down; bring it up first", v.Trunk)
			}
			trunkIdx = int32(trunk.Index)
		}
		idx := tx.allocIndex(sw)
		m := newVLANMsg(v.Name, idx, trunkIdx, v.ID, sw.fd)
		m.what += " on trunk " + v.Trunk
		create = append(create, m)
		createIdx = append(createIdx, idx)
		sst.links[v.Name] = &linkState{index: idx, kind: "vlan", master: br, up: true, created: true}
		*msgs = append(*msgs, setLinkMsg(idx, br, "attach "+v.Name))
	}
	if len(create) == 0 {
		return nil
	}
	// A socket in the trunk's namespace (the host's) creates the
	// subinterfaces and places them in the switch namespace.
	res, err := host.nl.exec(create)
	tx.res.NetlinkBatches += host.nl.sent()
	// Record what was created before reporting failures.
	for i, m := range create {
		if err == nil && res[i] == nil {
			tx.vlans = append(tx.vlans, createIdx[i])
			tx.created(sw, createIdx[i], m.what)
		}
	}
	return batchErr(res, err)
}

// rollback deletes what this Up created: links in namespaces that existed
// before, newest first, then the namespaces it created (VLAN
// subinterfaces first, so their ids on the trunk are free at once).
func (tx *upTx) rollback() error {
	var errs []error
	for i := len(tx.undo) - 1; i >= 0; i-- {
		u := tx.undo[i]
		if err := u.ns.nl.run([]nlMsg{delLinkMsg(u.index, "delete "+u.what)}); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, err)
		}
	}
	if tx.sw != nil && tx.sw.created && len(tx.vlans) > 0 {
		var msgs []nlMsg
		for _, idx := range tx.vlans {
			msgs = append(msgs, delLinkMsg(idx, "delete 802.1Q subinterface"))
		}
		if err := tx.sw.nl.run(msgs); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, err)
		}
	}
	for _, h := range append(tx.nodeList(), tx.sw) {
		if h != nil && h.created {
			if err := deleteNetns(h.name); err != nil {
				errs = append(errs, err)
			}
		}
	}
	tx.a.log.Info("vlan: rolled back failed setup", "experiment", tx.p.Experiment, "links", len(tx.undo), "errors", len(errs))
	return errors.Join(errs...)
}

func (tx *upTx) closeAll() {
	if tx.sw != nil {
		tx.res.NetlinkBatches += tx.sw.nl.sent()
		tx.sw.close()
	}
	for _, h := range tx.nodes {
		tx.res.NetlinkBatches += h.nl.sent()
		h.close()
	}
}

// batchErr turns a batch's results into one error: the first failure, with
// a count of the others.
func batchErr(res []error, err error) error {
	if err != nil {
		return err
	}
	var first error
	n := 0
	for _, e := range res {
		if e != nil {
			if first == nil {
				first = e
			}
			n++
		}
	}
	if n > 1 {
		return fmt.Errorf("%w (and %d more failures)", first, n-1)
	}
	return first
}

// prefixAttr is an address in netlink's form.
type prefixAttr struct {
	family int
	addr   []byte
	bits   int
	brd    []byte
	flags  uint8
}

func toPrefixAttr(p netip.Prefix) prefixAttr {
	a := p.Addr()
	pa := prefixAttr{addr: a.AsSlice(), bits: p.Bits()}
	if a.Is4() {
		pa.family = unix.AF_INET
		if p.Bits() < 31 {
			b := a.As4()
			host := ^uint32(0) >> p.Bits()
			v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
			pa.brd = []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}
		}
	} else {
		pa.family = unix.AF_INET6
		pa.flags = unix.IFA_F_NODAD
	}
	return pa
}
