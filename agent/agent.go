// Package agent is the per-host side of an experiment: it owns the QEMU
// processes, the userspace switch (vswitch) and the run files of every
// experiment's nodes placed on its host, and carries out the steps the
// experiment coordinator asks for. *Agent implements experiment.Host.
//
// # Network
//
// Each experiment has one switch per host. Every NIC of a node is a QEMU
// stream netdev connected to a unix socket that the switch listens on (an
// access port in the LAN's VLAN, named NODE/IFNAME), so experiment traffic
// never touches the host's network namespace. When an experiment spans
// hosts, the hosts' switches are joined by UDP trunks that carry each
// frame's VLAN and checkpoint epoch.
//
// # Run directory
//
//	DIR/PROJECT/EXPERIMENT/NODE/
//	    qmp.sock        QEMU's QMP socket
//	    serial1.sock    the guest's second serial port (ttyS1)
//	    console.log     the guest's console (ttyS0), appended across swaps
//	    qemu.log        QEMU's own output
//	    IFNAME.sock     one per NIC: the switch's end of the netdev
//	    disk.qcow2      the node's overlay over its base image (with image)
//
// # Limits of this version
//
// The agent runs inside the process that drives it (stasis exp, tests);
// an agent daemon that re-adopts running VMs after its own restart is not
// built yet. LAN rates are recorded, not shaped.
package agent

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/zeebo/blake3"

	"stasis/experiment"
	"stasis/hypervisor"
	"stasis/qemuhook"
	"stasis/vlan/vswitch"
)

// Config configures an Agent.
type Config struct {
	// Name is the host's name in placements. Required.
	Name string
	// Dir is the run directory. Required.
	Dir string
	// Root is the experiments directory on this host's casfs mount (what
	// the coordinator calls --root, as this host mounts it): Save and
	// Restore name directories relative to it. Required by Save and
	// Restore.
	Root string
	// QEMU is the emulator binary (default qemu-system-x86_64).
	QEMU string
	// Accel is QEMU's accelerator (default "tcg").
	Accel string
	// TrunkAddr is the IP address trunks to other hosts bind to (default
	// 127.0.0.1).
	TrunkAddr string
	// StartTimeout bounds how long a QEMU may take to open its QMP socket
	// (default 60 s).
	StartTimeout time.Duration
	// SwitchCommand, when set, runs each experiment's switch in a process
	// of its own: the command line of `stasis agent switch` (RunSwitch),
	// to which "--dir DIR" is appended. Such switches, and the VMs, outlive
	// the agent, and a new agent on the same Dir re-adopts them. Unset, the
	// switch runs inside the agent and dies with it.
	SwitchCommand []string
	// SaveConcurrency is how many of an experiment's nodes Save
	// checkpoints at once: 0 (the default) saves all of them at once, 1
	// one after another (for comparison, as bench/exp does).
	SaveConcurrency int
	Logger          *slog.Logger
}

// Agent runs experiments' nodes on one host. It is safe for concurrent use
// by one coordinator; each experiment's operations are serialized.
type Agent struct {
	cfg  Config
	mu   sync.Mutex
	exps map[experiment.Key]*exp
}

var _ experiment.Host = (*Agent)(nil)

// exp is one experiment's part on this host.
type exp struct {
	mu    sync.Mutex // serializes operations on this experiment
	key   experiment.Key
	spec  *experiment.Spec
	dir   string
	net   network
	nodes []*node
	// trunked: the experiment spans hosts (the switch has a trunk).
	trunked bool
	// pendingLog is a restored network log waiting for the trunk: a
	// switch takes its log once every port, trunks included, is attached.
	pendingLog *vswitch.Log
}

type node struct {
	name string
	dir  string
	nics []experiment.NIC
	eff  experiment.NodeSpec // the node's settings, defaults applied
	argv []string
	qmp  string
	m    *qemuhook.Machine
}

// New makes an agent.
func New(cfg Config) (*Agent, error) {
	if cfg.Name == "" || cfg.Dir == "" {
		return nil, errors.New("agent: Config.Name and Config.Dir are required")
	}
	if cfg.QEMU == "" {
		cfg.QEMU = "qemu-system-x86_64"
	}
	if cfg.Accel == "" {
		cfg.Accel = "tcg"
	}
	if cfg.TrunkAddr == "" {
		cfg.TrunkAddr = "127.0.0.1"
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 60 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, exps: map[experiment.Key]*exp{}}
	a.readopt(context.Background())
	return a, nil
}

// Name is the host's name.
func (a *Agent) Name() string { return a.cfg.Name }

func (a *Agent) get(k experiment.Key) (*exp, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e := a.exps[k]
	if e == nil {
		return nil, fmt.Errorf("host %s runs no part of experiment %s", a.cfg.Name, k)
	}
	return e, nil
}

// NodeDir is where node's run files live on this host.
func (a *Agent) NodeDir(k experiment.Key, node string) string {
	return filepath.Join(a.cfg.Dir, k.Project, k.Name, node)
}

// prepare builds the experiment's switch, its ports and each node's
// command line, without starting anything.
func (a *Agent) prepare(ctx context.Context, req experiment.StartRequest) (*exp, error) {
	s, err := experiment.Parse(req.Spec)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	if a.exps[req.Key] != nil {
		a.mu.Unlock()
		return nil, fmt.Errorf("host %s already runs experiment %s (take it down first)", a.cfg.Name, req.Key)
	}
	e := &exp{key: req.Key, spec: s, dir: filepath.Join(a.cfg.Dir, req.Key.Project, req.Key.Name)}
	a.exps[req.Key] = e
	a.mu.Unlock()
	fail := func(err error) (*exp, error) {
		a.teardown(context.Background(), e)
		return nil, err
	}
	var ports []portSpec
	for _, name := range req.Nodes {
		nd, ok := a.newNode(req.Key, s, name)
		if !ok {
			return fail(fmt.Errorf("experiment %s has no node %q", req.Key, name))
		}
		if err := os.MkdirAll(nd.dir, 0o755); err != nil {
			return fail(err)
		}
		if err := a.liveCheck(nd); err != nil {
			return fail(err)
		}
		for _, nic := range nd.nics {
			ports = append(ports, portSpec{Name: nic.Port, VLAN: nic.VLAN, Sock: nd.nicSock(nic)})
		}
		e.nodes = append(e.nodes, nd)
	}
	e.trunked = req.Trunked
	ncfg := netConfig{Ports: ports, Trunked: req.Trunked, Bind: a.cfg.TrunkAddr}
	if len(a.cfg.SwitchCommand) > 0 {
		e.net, err = startProcNet(ctx, a.cfg.SwitchCommand, filepath.Join(e.dir, ".net"), ncfg, a.cfg.StartTimeout)
	} else {
		var ln *localNet
		ln, err = newLocalNet(ncfg, a.cfg.Logger.With("exp", req.Key.String(), "host", a.cfg.Name))
		if err == nil {
			e.net = ln
		}
	}
	if err != nil {
		return fail(fmt.Errorf("switch: %w", err))
	}
	return e, nil
}

// newNode describes node name of spec s as this host runs it (its run
// directory, NICs, settings and QEMU command line); it creates nothing.
func (a *Agent) newNode(k experiment.Key, s *experiment.Spec, name string) (*node, bool) {
	n, ok := s.Node(name)
	if !ok {
		return nil, false
	}
	nd := &node{name: name, dir: a.NodeDir(k, name), nics: s.NICs(name), eff: s.Effective(n)}
	nd.qmp = filepath.Join(nd.dir, "qmp.sock")
	nd.argv = a.argv(k, nd)
	return nd, true
}

// nicSock is the switch's end of a NIC's netdev.
func (nd *node) nicSock(nic experiment.NIC) string {
	return filepath.Join(nd.dir, nic.Interface+".sock")
}

// liveCheck refuses a node directory whose QMP socket still answers: a
// QEMU from before is alive there, and its files must not be reused.
func (a *Agent) liveCheck(nd *node) error {
	c, err := net.DialTimeout("unix", nd.qmp, time.Second)
	if err != nil {
		return nil
	}
	c.Close()
	return fmt.Errorf("node %s: a QEMU is still alive on %s: end it (`stasis exp down`) before starting the node again", nd.name, nd.qmp)
}

// argv is node's QEMU command line on this host.
func (a *Agent) argv(k experiment.Key, nd *node) []string {
	e := nd.eff
	args := []string{a.cfg.QEMU, "-name", k.String() + "/" + nd.name,
		"-accel", a.cfg.Accel, "-machine", "pc", "-m", strconv.FormatInt(int64(e.Memory), 10) + "M",
		"-smp", strconv.Itoa(e.CPUs),
		"-display", "none", "-nodefaults", "-no-user-config", "-no-reboot",
		"-rtc", "base=utc,clock=vm",
		"-chardev", "file,id=con0,path=" + filepath.Join(nd.dir, "console.log") + ",append=on",
		"-serial", "chardev:con0",
		"-chardev", "socket,id=ser1,path=" + filepath.Join(nd.dir, "serial1.sock") + ",server=on,wait=off",
		"-serial", "chardev:ser1",
		"-qmp", "unix:" + nd.qmp + ",server=on,wait=off",
	}
	if e.Kernel != "" {
		args = append(args, "-kernel", e.Kernel)
		if e.Initrd != "" {
			args = append(args, "-initrd", e.Initrd)
		}
		args = append(args, "-append", strings.TrimSpace("console=ttyS0 "+e.Append))
	}
	if e.Image != "" {
		args = append(args, "-drive", "file="+filepath.Join(nd.dir, "disk.qcow2")+",if=virtio,format=qcow2,id=disk0")
	}
	for i, nic := range nd.nics {
		id := "n" + strconv.Itoa(i)
		args = append(args,
			"-netdev", "stream,id="+id+",server=off,addr.type=unix,addr.path="+nd.nicSock(nic),
			"-device", "virtio-net-pci,netdev="+id+",mac="+nic.MAC+",romfile=")
	}
	for _, x := range e.QEMUArgs {
		args = append(args, strings.ReplaceAll(x, "{dir}", nd.dir))
	}
	return args
}

// Start boots the nodes fresh.
func (a *Agent) Start(ctx context.Context, req experiment.StartRequest) (string, error) {
	e, err := a.prepare(ctx, req)
	if err != nil {
		return "", err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	err = parallel(e.nodes, func(nd *node) error {
		eff := nd.eff
		if eff.Image != "" {
			format := "raw"
			if strings.HasSuffix(eff.Image, ".qcow2") {
				format = "qcow2"
			}
			out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536",
				"-b", eff.Image, "-F", format, filepath.Join(nd.dir, "disk.qcow2")).CombinedOutput()
			if err != nil {
				return fmt.Errorf("node %s: overlay over %s: %v: %s", nd.name, eff.Image, err, bytes.TrimSpace(out))
			}
		}
		return a.launch(ctx, nd)
	})
	if err != nil {
		a.teardown(context.WithoutCancel(ctx), e)
		return "", err
	}
	return a.started(ctx, e)
}

// started records e in its state file (for re-adoption) and returns its
// trunk address.
func (a *Agent) started(ctx context.Context, e *exp) (string, error) {
	addr, err := e.net.TrunkAddr(ctx)
	if err == nil {
		err = a.saveState(e)
	}
	if err != nil {
		a.teardown(context.WithoutCancel(ctx), e)
		return "", err
	}
	return addr, nil
}

// launch starts QEMU for a fresh boot and connects to its QMP socket.
func (a *Agent) launch(ctx context.Context, nd *node) error {
	m, err := qemuhook.Start(ctx, nd.argv, qemuhook.StartOptions{QMP: nd.qmp, Cwd: nd.dir,
		Log: filepath.Join(nd.dir, "qemu.log"), StartTimeout: a.cfg.StartTimeout, Logger: a.cfg.Logger})
	if err != nil {
		return fmt.Errorf("node %s: %w", nd.name, err)
	}
	nd.m = m
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// Connect joins the switch to its peer: one trunk per experiment, so an
// experiment may span two hosts in this version.
func (a *Agent) Connect(ctx context.Context, k experiment.Key, peers map[string]string) error {
	e, err := a.get(k)
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(peers) != 1 {
		return fmt.Errorf("experiment %s spans %d hosts: this agent joins two hosts at most (one trunk)", k, len(peers)+1)
	}
	for peer, addr := range peers {
		if err := e.net.ConnectTrunk(ctx, peer, addr); err != nil {
			return fmt.Errorf("trunk to %s: %w", peer, err)
		}
	}
	if lg := e.pendingLog; lg != nil {
		e.pendingLog = nil
		if err := e.net.Restore(ctx, lg); err != nil {
			return fmt.Errorf("network log: %w", err)
		}
	}
	return nil
}

// Preflight checks every node answers QMP and is running or paused.
func (a *Agent) Preflight(ctx context.Context, k experiment.Key) error {
	e, err := a.get(k)
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return parallel(e.nodes, func(nd *node) error {
		if nd.m == nil {
			return fmt.Errorf("node %s: not running", nd.name)
		}
		if pf, ok := any(nd.m).(interface{ Preflight(context.Context) error }); ok {
			if err := pf.Preflight(ctx); err != nil {
				return fmt.Errorf("node %s: %w", nd.name, err)
			}
		}
		st, err := nd.m.Status(ctx)
		if err != nil {
			return fmt.Errorf("node %s: %w", nd.name, err)
		}
		if st != "running" && st != "paused" {
			return fmt.Errorf("node %s: QEMU is %q, cannot be saved", nd.name, st)
		}
		return nil
	})
}

// Freeze begins the checkpoint and pauses every node right after its
// ports froze.
func (a *Agent) Freeze(ctx context.Context, k experiment.Key, epoch uint64) error {
	e, err := a.get(k)
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.net.BeginCheckpoint(ctx, epoch); err != nil {
		return err
	}
	return parallel(e.nodes, func(nd *node) error {
		for _, nic := range nd.nics {
			if err := e.net.FreezePort(ctx, nic.Port); err != nil {
				return fmt.Errorf("node %s: freeze %s: %w", nd.name, nic.Port, err)
			}
		}
		if err := nd.m.Pause(ctx); err != nil {
			return fmt.Errorf("node %s: pause: %w", nd.name, err)
		}
		return nil
	})
}

// Cut marks every port checkpointed.
func (a *Agent) Cut(ctx context.Context, k experiment.Key) error {
	e, err := a.get(k)
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, nd := range e.nodes {
		for _, nic := range nd.nics {
			if err := e.net.PortCheckpointed(ctx, nic.Port); err != nil {
				return fmt.Errorf("node %s: %w", nd.name, err)
			}
		}
	}
	return nil
}

// EndCheckpoint returns the switch's encoded log.
func (a *Agent) EndCheckpoint(ctx context.Context, k experiment.Key) ([]byte, error) {
	e, err := a.get(k)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	lg, err := e.net.EndCheckpoint(ctx)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if _, err := lg.WriteTo(&buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Save checkpoints every paused node into dir/NODE at once.
func (a *Agent) Save(ctx context.Context, k experiment.Key, dir string, paused time.Time, pf experiment.ProgressFunc) ([]experiment.NodeSaved, error) {
	e, err := a.get(k)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if dir, err = a.resolve(dir); err != nil {
		return nil, err
	}
	out := make([]experiment.NodeSaved, len(e.nodes))
	var sem chan struct{}
	if n := a.cfg.SaveConcurrency; n > 0 {
		sem = make(chan struct{}, n)
	}
	err = parallelIdx(e.nodes, func(i int, nd *node) error {
		if sem != nil {
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-ctx.Done():
				return &experiment.StepError{Step: experiment.StepSave, Node: nd.name, Host: a.cfg.Name, Err: ctx.Err()}
			}
		}
		ndir := filepath.Join(dir, nd.name)
		var p hypervisor.Progress
		if pf != nil {
			p = &progress{node: nd.name, f: pf}
		}
		res, err := hypervisor.Checkpoint(ctx, nd.m, ndir, paused, hypervisor.SwapoutOptions{Progress: p, Host: a.cfg.Name, Logger: a.cfg.Logger})
		if err != nil {
			return &experiment.StepError{Step: experiment.StepSave, Node: nd.name, Host: a.cfg.Name, Err: err}
		}
		b, err := os.ReadFile(filepath.Join(ndir, hypervisor.ManifestName))
		if err != nil {
			return &experiment.StepError{Step: experiment.StepManifest, Node: nd.name, Host: a.cfg.Name, Err: err}
		}
		h := blake3.Sum256(b)
		out[i] = experiment.NodeSaved{Node: nd.name, Result: res, Manifest: hex.EncodeToString(h[:]), Bytes: res.Bytes,
			Save: res.SaveTime, Verify: res.VerifyTime}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// progress adapts hypervisor.Progress to a ProgressFunc.
type progress struct {
	node        string
	f           experiment.ProgressFunc
	phase       string
	done, total int64
}

func (p *progress) Start(phase string, total int64) {
	p.phase, p.done, p.total = phase, 0, total
	p.f(p.node, phase, 0, total)
}

func (p *progress) Add(n int64) {
	p.done += n
	p.f(p.node, p.phase, p.done, p.total)
}

// Resume undoes a checkpoint: the switch forwards again (delivering what
// it logged), then every node continues.
func (a *Agent) Resume(ctx context.Context, k experiment.Key) error {
	e, err := a.get(k)
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	var errs []error
	if err := e.net.Resume(ctx); err != nil && !errors.Is(err, vswitch.ErrCheckpoint) {
		errs = append(errs, fmt.Errorf("switch: %w", err))
	}
	errs = append(errs, parallel(e.nodes, func(nd *node) error {
		if nd.m == nil {
			return fmt.Errorf("node %s: not running", nd.name)
		}
		if err := nd.m.Resume(ctx); err != nil {
			return fmt.Errorf("node %s: resume: %w", nd.name, err)
		}
		return nil
	}))
	return errors.Join(errs...)
}

// Destroy ends the nodes and the switch and removes the run files.
func (a *Agent) Destroy(ctx context.Context, k experiment.Key) error {
	a.mu.Lock()
	e := a.exps[k]
	a.mu.Unlock()
	if e == nil {
		return nil // already gone
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return a.teardown(ctx, e)
}

// teardown ends everything of e (caller holds e.mu or owns e alone).
func (a *Agent) teardown(ctx context.Context, e *exp) error {
	errs := []error{parallel(e.nodes, func(nd *node) error {
		var err error
		if nd.m != nil {
			if err = nd.m.Destroy(ctx); err != nil {
				nd.m.Kill()
			}
			nd.m.Close()
		}
		if err != nil {
			return fmt.Errorf("node %s: %w", nd.name, err)
		}
		return nil
	})}
	if e.net != nil {
		errs = append(errs, e.net.Close())
	}
	os.RemoveAll(e.dir)
	a.mu.Lock()
	if a.exps[e.key] == e {
		delete(a.exps, e.key)
	}
	a.mu.Unlock()
	return errors.Join(errs...)
}

// Restore rebuilds the switch from the log and restores every node paused.
func (a *Agent) Restore(ctx context.Context, req experiment.RestoreRequest) (string, error) {
	e, err := a.prepare(ctx, req.StartRequest)
	if err != nil {
		return "", err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	fail := func(err error) (string, error) {
		a.teardown(context.WithoutCancel(ctx), e)
		return "", err
	}
	snap, err := a.resolve(req.Snapshot)
	if err != nil {
		return fail(err)
	}
	lg, err := vswitch.ReadLog(bytes.NewReader(req.Log))
	if err != nil {
		return fail(fmt.Errorf("network log: %w", err))
	}
	if req.Trunked {
		e.pendingLog = lg // applied by Connect, after the trunk is attached
	} else if err := e.net.Restore(ctx, lg); err != nil {
		return fail(err)
	}
	err = parallel(e.nodes, func(nd *node) error {
		m, err := qemuhook.Restore(ctx, filepath.Join(snap, nd.name), qemuhook.RestoreOptions{
			LocalDir: nd.dir, Paused: true, Log: filepath.Join(nd.dir, "qemu.log"),
			Argv: nd.argv, QMP: nd.qmp, Cwd: nd.dir, StartTimeout: a.cfg.StartTimeout, Logger: a.cfg.Logger,
		})
		if err != nil {
			return &experiment.StepError{Step: experiment.StepRestore, Node: nd.name, Host: a.cfg.Name, Err: err}
		}
		nd.m = m
		return nil
	})
	if err != nil {
		return fail(err)
	}
	return a.started(ctx, e)
}

// resolve turns a directory relative to the experiments root into this
// host's path, refusing one that leaves the root.
func (a *Agent) resolve(rel string) (string, error) {
	if a.cfg.Root == "" {
		return "", fmt.Errorf("host %s has no experiments root: start its agent with --root MNT/experiments (its casfs mount)", a.cfg.Name)
	}
	if filepath.IsAbs(rel) || !filepath.IsLocal(rel) {
		return "", fmt.Errorf("host %s: %q is not a path inside the experiments root", a.cfg.Name, rel)
	}
	return filepath.Join(a.cfg.Root, rel), nil
}

// Continue resumes the switch (replaying its log) and then every node.
func (a *Agent) Continue(ctx context.Context, k experiment.Key) error {
	e, err := a.get(k)
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.net.Resume(ctx); err != nil && !errors.Is(err, vswitch.ErrCheckpoint) {
		return fmt.Errorf("switch: %w", err)
	}
	return parallel(e.nodes, func(nd *node) error {
		if err := nd.m.Resume(ctx); err != nil {
			return fmt.Errorf("node %s: %w", nd.name, err)
		}
		return nil
	})
}

// Status reports QEMU's state of every node.
func (a *Agent) Status(ctx context.Context, k experiment.Key) ([]experiment.NodeStatus, error) {
	e, err := a.get(k)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]experiment.NodeStatus, len(e.nodes))
	for i, nd := range e.nodes {
		st := experiment.NodeStatus{Node: nd.name, Host: a.cfg.Name, State: "gone"}
		if nd.m != nil {
			st.Pid = nd.m.Pid()
			if s, err := nd.m.Status(ctx); err == nil {
				st.State = s
			} else {
				st.Detail = err.Error()
			}
		}
		out[i] = st
	}
	return out, nil
}

// Close ends every experiment on the agent (tests, shutdown).
func (a *Agent) Close() error {
	a.mu.Lock()
	var es []*exp
	for _, e := range a.exps {
		es = append(es, e)
	}
	a.mu.Unlock()
	var errs []error
	for _, e := range es {
		e.mu.Lock()
		errs = append(errs, a.teardown(context.Background(), e))
		e.mu.Unlock()
	}
	return errors.Join(errs...)
}

func parallel(nodes []*node, f func(*node) error) error {
	return parallelIdx(nodes, func(_ int, nd *node) error { return f(nd) })
}

func parallelIdx(nodes []*node, f func(int, *node) error) error {
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, nd := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(i, nd)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// state is what an agent records of an experiment (DIR/P/E/state.json),
// so that an agent started later on the same directory re-adopts it.
type state struct {
	Key     experiment.Key `json:"key"`
	Spec    []byte         `json:"spec"`
	Nodes   []string       `json:"nodes"`
	Trunked bool           `json:"trunked"`
	// Process says the switch runs in a process of its own (in .net/).
	Process bool `json:"process"`
}

func (a *Agent) saveState(e *exp) error {
	st := state{Key: e.key, Trunked: e.trunked}
	st.Spec, _ = e.spec.Marshal()
	for _, nd := range e.nodes {
		st.Nodes = append(st.Nodes, nd.name)
	}
	_, st.Process = e.net.(*procNet)
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := filepath.Join(e.dir, ".state.json.tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(e.dir, "state.json"))
}

// readopt takes over the experiments an earlier agent left running on
// this directory: those whose switch runs in a process of its own and
// answers. Their VMs are reached over QMP; a VM that no longer answers is
// reported "gone" by Status. Experiments whose switch lived in the old
// agent lost their network and are left alone (Orphans lists their VMs).
func (a *Agent) readopt(ctx context.Context) {
	files, _ := filepath.Glob(filepath.Join(a.cfg.Dir, "*", "*", "state.json"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var st state
		if err := json.Unmarshal(b, &st); err != nil {
			a.cfg.Logger.Warn("agent: unreadable experiment state, left alone", "file", f, "err", err)
			continue
		}
		log := a.cfg.Logger.With("exp", st.Key.String())
		if !st.Process {
			log.Warn("agent: an experiment of an earlier agent lost its in-process switch; not re-adopted", "dir", filepath.Dir(f))
			continue
		}
		s, err := experiment.Parse(st.Spec)
		if err != nil {
			log.Warn("agent: bad spec in state, not re-adopted", "err", err)
			continue
		}
		e := &exp{key: st.Key, spec: s, dir: filepath.Dir(f), trunked: st.Trunked}
		pn := attachNet(filepath.Join(e.dir, ".net"))
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = pn.Status(cctx)
		cancel()
		if err != nil {
			log.Warn("agent: the experiment's switch process does not answer; not re-adopted", "err", err)
			continue
		}
		e.net = pn
		for _, name := range st.Nodes {
			nd, ok := a.newNode(st.Key, s, name)
			if !ok {
				continue
			}
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			m, err := qemuhook.Connect(cctx, qemuhook.Config{QMP: nd.qmp, Logger: a.cfg.Logger})
			cancel()
			if err != nil {
				log.Warn("agent: a node of a re-adopted experiment does not answer", "node", name, "err", err)
			} else {
				nd.m = m
			}
			e.nodes = append(e.nodes, nd)
		}
		a.exps[st.Key] = e
		log.Info("agent: re-adopted a running experiment", "nodes", len(e.nodes))
	}
}

// Detach lets go of every experiment without ending anything: VMs and
// switch processes run on for a later agent to re-adopt (in-process
// switches cannot outlive the agent and are closed).
func (a *Agent) Detach() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, e := range a.exps {
		e.mu.Lock()
		for _, nd := range e.nodes {
			if nd.m != nil {
				nd.m.Close()
			}
		}
		if e.net != nil {
			e.net.Detach()
		}
		e.mu.Unlock()
		delete(a.exps, k)
	}
}

// Experiments lists the experiments with a part on this host.
func (a *Agent) Experiments() []experiment.Key {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]experiment.Key, 0, len(a.exps))
	for k := range a.exps {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

// Orphans lists QMP sockets under the run directory that a live QEMU still
// answers although this agent does not run them: VMs left by an agent that
// stopped. This version cannot re-adopt them; `stasis agent` reports them
// at start.
func (a *Agent) Orphans() []string {
	managed := map[string]bool{}
	a.mu.Lock()
	for _, e := range a.exps {
		for _, nd := range e.nodes {
			managed[nd.qmp] = true
		}
	}
	a.mu.Unlock()
	socks, _ := filepath.Glob(filepath.Join(a.cfg.Dir, "*", "*", "*", "qmp.sock"))
	var out []string
	for _, s := range socks {
		if managed[s] {
			continue
		}
		if c, err := net.DialTimeout("unix", s, time.Second); err == nil {
			c.Close()
			out = append(out, s)
		}
	}
	return out
}

// listenUnix listens on path, refusing it while another process answers
// there, and makes it accessible to its owner only.
func listenUnix(path string) (net.Listener, error) {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("%s: another agent is serving there", path)
	}
	os.Remove(path)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}
