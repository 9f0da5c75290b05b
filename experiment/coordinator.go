package experiment

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"

	"stasis/hypervisor"
	"stasis/vlan/vswitch"
)

// Experiment states, as Status reports them. Transitions:
//
//	(none)      --Up-->                 running
//	running     --Swapout ok-->         swapped-out
//	running     --Swapout fails-->      running (resumed) | paused (KeepPaused) | failed (destroy failed)
//	swapped-out --Swapin ok-->          running
//	swapped-out --Swapin fails-->       swapped-out (nothing left running)
//	running, paused, failed --Down-->   (none)
//
// Every transition is appended to the experiment's history with its reason.
const (
	StateRunning    = "running"
	StatePaused     = "paused"
	StateSwappedOut = "swapped-out"
	StateFailed     = "failed"
)

// Steps of a swapout or swapin, as named in a StepError.
const (
	StepLock      = "lock"
	StepPreflight = "preflight"
	StepFreeze    = "freeze"
	StepCut       = "cut"
	StepNetwork   = "network checkpoint"
	StepSave      = "save"
	StepManifest  = "manifest"
	StepSnapshot  = "snapshot"
	StepVerify    = "verify"
	StepDestroy   = "destroy"
	StepRestore   = "restore"
	StepContinue  = "continue"
	StepStart     = "start"
)

// StepError is a failed experiment operation: the step, the node and host
// where known, and what became of the experiment.
type StepError struct {
	Step string
	Node string // "" when the step is not one node's
	Host string
	Err  error
	// Outcome says what state the experiment was left in ("resumed: every
	// node runs again", "paused", ...).
	Outcome string
}

func (e *StepError) Error() string {
	where := e.Step
	if e.Node != "" {
		where += " of node " + e.Node
	}
	if e.Host != "" {
		where += " on host " + e.Host
	}
	s := fmt.Sprintf("%s failed: %v", where, e.Err)
	if e.Outcome != "" {
		s += " (" + e.Outcome + ")"
	}
	return s
}

func (e *StepError) Unwrap() error { return e.Err }

// ErrBusy means another operation holds the experiment's lock.
var ErrBusy = errors.New("another operation on this experiment is in progress")

// Coordinator swaps whole experiments through their hosts' agents.
type Coordinator struct {
	// Hosts are the agents by name.
	Hosts map[string]Host
	// Root is the directory experiments are saved under, on casfs
	// (MNT/experiments): experiment P/E lives in Root/P/E.
	Root string
	// State is a local directory for the coordinator's records (placement,
	// state, history, locks).
	State  string
	Logger *slog.Logger
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// Progress, when set, receives per-node progress.
	Progress ProgressFunc
	// TakeSnapshot snapshots the experiment directory dir as name; nil
	// means casfs's: mkdir dir/.snapshots/name.
	TakeSnapshot func(dir, name string) error
	// Sequential saves the hosts one after another instead of all at
	// once (for comparison). It does not order the nodes within a host:
	// each host's Save decides that (agent.Config.SaveConcurrency), so
	// with one host Sequential changes nothing.
	Sequential bool
}

// Record is what the coordinator keeps about one experiment.
type Record struct {
	Key       Key               `json:"key"`
	Spec      string            `json:"spec"` // the experiment file
	State     string            `json:"state"`
	Placement map[string]string `json:"placement"` // node → host
	Epoch     uint64            `json:"epoch"`
	// Snapshot is the last complete snapshot's name.
	Snapshot string    `json:"snapshot,omitempty"`
	Updated  time.Time `json:"updated"`
	// LastError is the last failed operation's error.
	LastError string `json:"last_error,omitempty"`
}

// Event is one line of an experiment's history.
type Event struct {
	Time   time.Time `json:"time"`
	Op     string    `json:"op"`
	From   string    `json:"from"`
	To     string    `json:"to"`
	Reason string    `json:"reason"`
}

func (c *Coordinator) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func (c *Coordinator) log() *slog.Logger {
	if c.Logger == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return c.Logger
}

func (c *Coordinator) recordDir(k Key) string { return filepath.Join(c.State, k.Project, k.Name) }

// Dir is the experiment's directory on casfs.
func (c *Coordinator) Dir(k Key) string { return filepath.Join(c.Root, k.Project, k.Name) }

// lock takes the experiment's lock (an flock on a file in State), or fails
// at once with ErrBusy.
func (c *Coordinator) lock(k Key) (func(), error) {
	dir := c.recordDir(k)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("experiment %s: %w; wait for it to finish (see `stasis exp status`)", k, ErrBusy)
		}
		return nil, err
	}
	return func() { unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
}

// Load reads an experiment's record.
func (c *Coordinator) Load(k Key) (*Record, error) {
	b, err := os.ReadFile(filepath.Join(c.recordDir(k), "record.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("experiment %s: %w (create it with `stasis exp up FILE`)", k, os.ErrNotExist)
	}
	if err != nil {
		return nil, err
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("experiment %s: record: %w", k, err)
	}
	return &r, nil
}

// save writes the record atomically and appends the transition to the
// history.
func (c *Coordinator) save(r *Record, op, from, reason string) error {
	r.Updated = c.now().UTC()
	dir := c.recordDir(r.Key)
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, ".record.json.tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, "record.json")); err != nil {
		return err
	}
	ev, _ := json.Marshal(Event{Time: r.Updated, Op: op, From: from, To: r.State, Reason: reason})
	f, err := os.OpenFile(filepath.Join(dir, "history.jsonl"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.Write(append(ev, '\n'))
	c.log().Info("experiment transition", "exp", r.Key.String(), "op", op, "from", from, "to", r.State, "reason", reason)
	return err
}

// History returns an experiment's transitions, oldest first.
func (c *Coordinator) History(k Key) ([]Event, error) {
	b, err := os.ReadFile(filepath.Join(c.recordDir(k), "history.jsonl"))
	if err != nil {
		return nil, err
	}
	var out []Event
	for _, line := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
		var e Event
		if err := json.Unmarshal(line, &e); err == nil {
			out = append(out, e)
		}
	}
	return out, nil
}

// List returns the records of every experiment the coordinator knows.
func (c *Coordinator) List() ([]*Record, error) {
	var out []*Record
	projects, err := os.ReadDir(c.State)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	for _, p := range projects {
		exps, _ := os.ReadDir(filepath.Join(c.State, p.Name()))
		for _, e := range exps {
			if r, err := c.Load(Key{p.Name(), e.Name()}); err == nil {
				out = append(out, r)
			}
		}
	}
	return out, nil
}

// place assigns every node a host: its own Host if set, else the host with
// the fewest nodes so far (ties: by name).
func (c *Coordinator) place(s *Spec, override map[string]string) (map[string]string, error) {
	if len(c.Hosts) == 0 {
		return nil, errors.New("no hosts: start an agent and name it")
	}
	names := make([]string, 0, len(c.Hosts))
	for h := range c.Hosts {
		names = append(names, h)
	}
	sort.Strings(names)
	load := map[string]int{}
	out := map[string]string{}
	var errs []error
	for _, n := range s.Nodes {
		h := override[n.Name]
		if h == "" {
			h = n.Host
		}
		if h == "" {
			h = names[0]
			for _, cand := range names[1:] {
				if load[cand] < load[h] {
					h = cand
				}
			}
		}
		if _, ok := c.Hosts[h]; !ok {
			errs = append(errs, fmt.Errorf("node %s is placed on host %q, which has no agent here (hosts: %s)", n.Name, h, strings.Join(names, ", ")))
			continue
		}
		out[n.Name] = h
		load[h]++
	}
	return out, errors.Join(errs...)
}

// hosts lists the hosts of the record's placement, sorted.
func (r *Record) hosts() []string {
	set := map[string][]string{}
	for n, h := range r.Placement {
		set[h] = append(set[h], n)
	}
	return sortedKeys(set)
}

// byHost groups a placement's nodes per host, in spec order.
func byHost(s *Spec, placement map[string]string) map[string][]string {
	out := map[string][]string{}
	for _, n := range s.Nodes {
		h := placement[n.Name]
		out[h] = append(out[h], n.Name)
	}
	return out
}

// eachHost runs f for every host in hosts at once and joins the errors.
func (c *Coordinator) eachHost(hosts []string, f func(h Host) error) error {
	errs := make([]error, len(hosts))
	var wg sync.WaitGroup
	for i, name := range hosts {
		h := c.Hosts[name]
		if h == nil {
			errs[i] = fmt.Errorf("host %s has no agent here (give it with --agent %s=SOCKET)", name, name)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(h)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func sortedKeys(m map[string][]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Up creates an experiment from its file and boots it. placement
// overrides the file's hosts per node (may be nil).
func (c *Coordinator) Up(ctx context.Context, specYAML []byte, s *Spec, placement map[string]string) (*Record, error) {
	k := Key{s.Project, s.Name}
	unlock, err := c.lock(k)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if r, err := c.Load(k); err == nil && r.State != "" {
		return nil, fmt.Errorf("experiment %s exists (state %s): swap it in, or take it down first with `stasis exp down`", k, r.State)
	}
	pl, err := c.place(s, placement)
	if err != nil {
		return nil, err
	}
	groups := byHost(s, pl)
	hosts := sortedKeys(groups)
	trunked := len(hosts) > 1
	trunks := map[string]string{}
	var mu sync.Mutex
	err = c.eachHost(hosts, func(h Host) error {
		t, err := h.Start(ctx, StartRequest{Key: k, Spec: specYAML, Nodes: groups[h.Name()], Trunked: trunked})
		if err != nil {
			return &StepError{Step: StepStart, Host: h.Name(), Err: err}
		}
		mu.Lock()
		trunks[h.Name()] = t
		mu.Unlock()
		return nil
	})
	if err == nil && trunked {
		err = c.connect(ctx, k, hosts, trunks)
	}
	if err != nil {
		c.eachHost(hosts, func(h Host) error { return h.Destroy(context.WithoutCancel(ctx), k) })
		return nil, err
	}
	r := &Record{Key: k, Spec: string(specYAML), State: StateRunning, Placement: pl}
	return r, c.save(r, "up", "", fmt.Sprintf("booted %d nodes on %s", len(s.Nodes), strings.Join(hosts, ", ")))
}

func (c *Coordinator) connect(ctx context.Context, k Key, hosts []string, trunks map[string]string) error {
	return c.eachHost(hosts, func(h Host) error {
		peers := map[string]string{}
		for _, o := range hosts {
			if o != h.Name() {
				peers[o] = trunks[o]
			}
		}
		if err := h.Connect(ctx, k, peers); err != nil {
			return &StepError{Step: StepStart, Host: h.Name(), Err: fmt.Errorf("trunks: %w", err)}
		}
		return nil
	})
}

// SwapoutOptions configure Swapout.
type SwapoutOptions struct {
	// Snapshot names the snapshot (default: the pause time, UTC,
	// 20061102T150405Z).
	Snapshot string
	// KeepPaused leaves every node paused after a failure instead of
	// resuming the experiment.
	KeepPaused bool
}

// SwapoutResult reports a swapout.
type SwapoutResult struct {
	Snapshot string
	Dir      string // the snapshot's directory
	Epoch    uint64
	Nodes    []NodeSaved
	// Downtime is from the first pause until every node is destroyed.
	Downtime time.Duration
	Phases   []Phase
}

// Phase is a timed step of an operation.
type Phase struct {
	Name string
	Took time.Duration
}

// Swapout takes the experiment out at one consistent cut: every switch
// begins the checkpoint, every node's ports freeze and every node pauses at
// once; the switches drain what the nodes sent and exchange end-of-epoch
// markers over the trunks; every node is saved in parallel into
// Root/P/E/NODE; the switch logs and the experiment manifest are written
// last; a casfs snapshot of the experiment directory is taken and checked;
// only then are the nodes destroyed. A failure before the snapshot is
// complete resumes every node (or leaves them paused with KeepPaused),
// destroys nothing, and returns a *StepError naming node and step.
func (c *Coordinator) Swapout(ctx context.Context, k Key, opts SwapoutOptions) (*SwapoutResult, error) {
	unlock, err := c.lock(k)
	if err != nil {
		return nil, err
	}
	defer unlock()
	r, err := c.Load(k)
	if err != nil {
		return nil, err
	}
	if r.State != StateRunning && r.State != StatePaused {
		return nil, fmt.Errorf("experiment %s is %s, not running: nothing to swap out", k, r.State)
	}
	s, err := Parse([]byte(r.Spec))
	if err != nil {
		return nil, err
	}
	groups := byHost(s, r.Placement)
	hosts := sortedKeys(groups)
	for _, h := range hosts {
		if c.Hosts[h] == nil {
			return nil, fmt.Errorf("experiment %s: host %s has no agent here", k, h)
		}
	}
	res := &SwapoutResult{Epoch: r.Epoch + 1}
	t0 := c.now()
	phase := func(name string, since time.Time) time.Time {
		now := c.now()
		res.Phases = append(res.Phases, Phase{name, now.Sub(since)})
		return now
	}

	// Checks that can fail run before anything pauses.
	if err := c.eachHost(hosts, func(h Host) error {
		if err := h.Preflight(ctx, k); err != nil {
			return &StepError{Step: StepPreflight, Host: h.Name(), Err: err, Outcome: "nothing was paused"}
		}
		return nil
	}); err != nil {
		return nil, c.failed(r, "swapout", err)
	}
	dir := c.Dir(k)
	if err := clearLive(dir, s); err != nil {
		return nil, c.failed(r, "swapout", &StepError{Step: StepPreflight, Err: err, Outcome: "nothing was paused"})
	}
	t := phase("preflight", t0)

	// From here on a failure undoes the checkpoint.
	undo := func(step, host, node string, err error) error {
		se := &StepError{Step: step, Host: host, Node: node, Err: err}
		if inner, ok := err.(*StepError); ok && inner.Step == step {
			se = inner // a node's own step error already says where
		}
		uctx := context.WithoutCancel(ctx)
		if opts.KeepPaused {
			se.Outcome = "every node stays paused (--keep-paused); `stasis exp resume` continues them"
			r.State = StatePaused
		} else if rerr := c.eachHost(hosts, func(h Host) error { return h.Resume(uctx, k) }); rerr != nil {
			se.Outcome = fmt.Sprintf("resuming failed too: %v", rerr)
			r.State = StateFailed
		} else {
			se.Outcome = "every node runs again; nothing was destroyed"
			r.State = StateRunning
		}
		clearLive(dir, s)
		r.LastError = se.Error()
		c.save(r, "swapout", StateRunning, se.Error())
		return se
	}

	paused := c.now()
	if err := c.eachHost(hosts, func(h Host) error { return h.Freeze(ctx, k, res.Epoch) }); err != nil {
		return nil, undo(StepFreeze, "", "", err)
	}
	t = phase("pause", t)
	if err := c.eachHost(hosts, func(h Host) error { return h.Cut(ctx, k) }); err != nil {
		return nil, undo(StepCut, "", "", err)
	}
	logs := map[string][]byte{}
	var mu sync.Mutex
	if err := c.eachHost(hosts, func(h Host) error {
		lg, err := h.EndCheckpoint(ctx, k)
		mu.Lock()
		logs[h.Name()] = lg
		mu.Unlock()
		return err
	}); err != nil {
		return nil, undo(StepNetwork, "", "", err)
	}
	t = phase("network checkpoint", t)

	var saved []NodeSaved
	var saveErr error
	for _, name := range hosts {
		if !c.Sequential {
			break
		}
		ns, err := c.Hosts[name].Save(ctx, k, k.Dir(), paused, c.Progress)
		saved = append(saved, ns...)
		if err != nil {
			saveErr = withHost(err, name)
			break
		}
	}
	if !c.Sequential {
		saveErr = c.eachHost(hosts, func(h Host) error {
			ns, err := h.Save(ctx, k, k.Dir(), paused, c.Progress)
			mu.Lock()
			saved = append(saved, ns...)
			mu.Unlock()
			return withHost(err, h.Name())
		})
	}
	if saveErr != nil {
		return nil, undo(StepSave, "", "", saveErr)
	}
	sort.Slice(saved, func(i, j int) bool { return saved[i].Node < saved[j].Node })
	res.Nodes = saved
	t = phase("save", t)

	man := &Manifest{Format: ManifestFormat, Key: k, Spec: r.Spec, Placement: r.Placement, Epoch: res.Epoch,
		Paused: paused.UTC(), Created: c.now().UTC()}
	for _, ns := range saved {
		man.Nodes = append(man.Nodes, ManifestNode{Node: ns.Node, Host: r.Placement[ns.Node], Manifest: ns.Manifest, Bytes: ns.Bytes})
	}
	if err := writeNetwork(dir, logs, man); err != nil {
		return nil, undo(StepManifest, "", "", err)
	}
	if err := WriteManifest(dir, man); err != nil {
		return nil, undo(StepManifest, "", "", err)
	}
	name := opts.Snapshot
	if name == "" {
		name = paused.UTC().Format("20060102T150405.000Z")
		name = strings.ReplaceAll(name, ".", "")
	}
	snap := filepath.Join(dir, ".snapshots", name)
	take := c.TakeSnapshot
	if take == nil {
		take = func(dir, name string) error { return os.Mkdir(filepath.Join(dir, ".snapshots", name), 0o755) }
	}
	if err := take(dir, name); err != nil {
		return nil, undo(StepSnapshot, "", "", fmt.Errorf("snapshot %s of %s: %w (is it on casfs?)", name, dir, err))
	}
	t = phase("manifest+snapshot", t)
	if err := VerifySnapshot(snap); err != nil {
		os.Remove(snap)
		return nil, undo(StepVerify, "", "", err)
	}
	t = phase("verify", t)

	// The snapshot is whole: the experiment may go.
	var destroyErr error
	if err := c.eachHost(hosts, func(h Host) error { return withHost(h.Destroy(ctx, k), h.Name()) }); err != nil {
		destroyErr = &StepError{Step: StepDestroy, Err: err, Outcome: "the snapshot " + name + " is complete; some nodes may still run: `stasis exp down` ends them"}
	}
	phase("destroy", t)
	res.Downtime = c.now().Sub(paused)
	res.Snapshot, res.Dir = name, snap
	r.Epoch, r.Snapshot = res.Epoch, name
	r.State, r.LastError = StateSwappedOut, ""
	reason := fmt.Sprintf("snapshot %s, epoch %d, downtime %v", name, res.Epoch, res.Downtime.Round(time.Millisecond))
	if destroyErr != nil {
		r.State, r.LastError = StateFailed, destroyErr.Error()
		reason = destroyErr.Error()
	}
	if err := c.save(r, "swapout", StateRunning, reason); err != nil {
		return res, err
	}
	return res, destroyErr
}

func withHost(err error, host string) error {
	if err == nil {
		return nil
	}
	var se *StepError
	if errors.As(err, &se) {
		if se.Host == "" {
			se.Host = host
		}
		return err
	}
	return fmt.Errorf("host %s: %w", host, err)
}

// failed records a failed operation that changed nothing.
func (c *Coordinator) failed(r *Record, op string, err error) error {
	r.LastError = err.Error()
	c.save(r, op, r.State, err.Error())
	return err
}

// clearLive removes what a previous swapout left in the live experiment
// directory (node directories, network logs, the manifest); every
// complete swapout is also in a snapshot. Other files are left alone.
func clearLive(dir string, s *Spec) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("experiment directory: %w", err)
	}
	for _, n := range s.Nodes {
		if err := os.RemoveAll(filepath.Join(dir, n.Name)); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(filepath.Join(dir, networkDir)); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(dir, ManifestName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// SwapinOptions configure Swapin.
type SwapinOptions struct {
	// Snapshot is the snapshot to restore (default: the last one).
	Snapshot string
	// Placement overrides node → host (nodes may land on other hosts).
	Placement map[string]string
	// Paused leaves every node paused after the restore.
	Paused bool
}

// SwapinResult reports a swapin.
type SwapinResult struct {
	Snapshot  string
	Placement map[string]string
	Phases    []Phase
	Took      time.Duration
}

// Swapin restores the experiment from a snapshot on the hosts of its
// placement: every host rebuilds its switch with its share of the logged
// frames and restores its nodes paused; then the switches replay the logs
// and every node continues, all together. On failure nothing is left
// running.
func (c *Coordinator) Swapin(ctx context.Context, k Key, opts SwapinOptions) (*SwapinResult, error) {
	unlock, err := c.lock(k)
	if err != nil {
		return nil, err
	}
	defer unlock()
	r, err := c.Load(k)
	if err != nil {
		return nil, err
	}
	if r.State != StateSwappedOut {
		return nil, fmt.Errorf("experiment %s is %s, not swapped out", k, r.State)
	}
	name := opts.Snapshot
	if name == "" {
		name = r.Snapshot
	}
	snap := filepath.Join(c.Dir(k), ".snapshots", name)
	t0 := c.now()
	man, err := ReadManifest(snap)
	if err != nil {
		return nil, c.failed(r, "swapin", &StepError{Step: StepVerify, Err: err, Outcome: "nothing was started"})
	}
	s, err := Parse([]byte(man.Spec))
	if err != nil {
		return nil, err
	}
	pl := map[string]string{}
	for n, h := range man.Placement {
		pl[n] = h
	}
	for n, h := range opts.Placement {
		if _, ok := pl[n]; !ok {
			return nil, fmt.Errorf("placement names node %q, which the experiment does not have", n)
		}
		pl[n] = h
	}
	for n, h := range pl {
		if c.Hosts[h] == nil {
			return nil, fmt.Errorf("node %s is placed on host %q, which has no agent here", n, h)
		}
	}
	logs, err := splitLogs(snap, man, pl)
	if err != nil {
		return nil, c.failed(r, "swapin", &StepError{Step: StepVerify, Err: err, Outcome: "nothing was started"})
	}
	groups := byHost(s, pl)
	hosts := sortedKeys(groups)
	res := &SwapinResult{Snapshot: name, Placement: pl}
	phase := func(n string, since time.Time) time.Time {
		now := c.now()
		res.Phases = append(res.Phases, Phase{n, now.Sub(since)})
		return now
	}
	t := phase("read manifest", t0)
	trunked := len(hosts) > 1
	trunks := map[string]string{}
	var mu sync.Mutex
	fail := func(step string, err error) (*SwapinResult, error) {
		c.eachHost(hosts, func(h Host) error { return h.Destroy(context.WithoutCancel(ctx), k) })
		se := &StepError{Step: step, Err: err, Outcome: "nothing was left running; the experiment is still swapped out"}
		return nil, c.failed(r, "swapin", se)
	}
	if err := c.eachHost(hosts, func(h Host) error {
		tr, err := h.Restore(ctx, RestoreRequest{
			StartRequest: StartRequest{Key: k, Spec: []byte(man.Spec), Nodes: groups[h.Name()], Trunked: trunked},
			Snapshot:     filepath.Join(k.Dir(), ".snapshots", name), Log: logs[h.Name()],
		})
		mu.Lock()
		trunks[h.Name()] = tr
		mu.Unlock()
		return withHost(err, h.Name())
	}); err != nil {
		return fail(StepRestore, err)
	}
	if trunked {
		if err := c.connect(ctx, k, hosts, trunks); err != nil {
			return fail(StepRestore, err)
		}
	}
	t = phase("restore", t)
	if !opts.Paused {
		if err := c.eachHost(hosts, func(h Host) error { return withHost(h.Continue(ctx, k), h.Name()) }); err != nil {
			return fail(StepContinue, err)
		}
	}
	phase("continue", t)
	res.Took = c.now().Sub(t0)
	from := r.State
	r.Placement, r.Snapshot, r.Epoch, r.LastError = pl, name, man.Epoch, ""
	r.State = StateRunning
	if opts.Paused {
		r.State = StatePaused
	}
	return res, c.save(r, "swapin", from, fmt.Sprintf("from snapshot %s on %s in %v", name, strings.Join(hosts, ", "), res.Took.Round(time.Millisecond)))
}

// Resume continues an experiment whose nodes were left paused.
func (c *Coordinator) Resume(ctx context.Context, k Key) error {
	unlock, err := c.lock(k)
	if err != nil {
		return err
	}
	defer unlock()
	r, err := c.Load(k)
	if err != nil {
		return err
	}
	if r.State != StatePaused && r.State != StateFailed {
		return fmt.Errorf("experiment %s is %s, not paused", k, r.State)
	}
	err = c.eachHost(r.hosts(), func(h Host) error {
		if err := h.Resume(ctx, k); err != nil {
			return withHost(err, h.Name())
		}
		return withHost(h.Continue(ctx, k), h.Name())
	})
	if err != nil {
		return c.failed(r, "resume", err)
	}
	from := r.State
	r.State, r.LastError = StateRunning, ""
	return c.save(r, "resume", from, "every node continued")
}

// Down ends a running experiment's nodes and network and forgets its
// record; its snapshots stay on casfs.
func (c *Coordinator) Down(ctx context.Context, k Key) error {
	unlock, err := c.lock(k)
	if err != nil {
		return err
	}
	defer unlock()
	r, err := c.Load(k)
	if err != nil {
		return err
	}
	if r.State != StateSwappedOut {
		if err := c.eachHost(r.hosts(), func(h Host) error { return withHost(h.Destroy(ctx, k), h.Name()) }); err != nil {
			return c.failed(r, "down", err)
		}
	}
	from := r.State
	r.State = ""
	if err := c.save(r, "down", from, "nodes and network ended"); err != nil {
		return err
	}
	return os.Remove(filepath.Join(c.recordDir(k), "record.json"))
}

// Status asks every host of the experiment about its nodes.
func (c *Coordinator) Status(ctx context.Context, k Key) (*Record, []NodeStatus, error) {
	r, err := c.Load(k)
	if err != nil {
		return nil, nil, err
	}
	if r.State == StateSwappedOut {
		return r, nil, nil
	}
	var out []NodeStatus
	var mu sync.Mutex
	err = c.eachHost(r.hosts(), func(h Host) error {
		st, err := h.Status(ctx, k)
		mu.Lock()
		out = append(out, st...)
		mu.Unlock()
		return withHost(err, h.Name())
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return r, out, err
}

// Manifest is an experiment snapshot's manifest, experiment.json, written
// last: its presence means the snapshot is complete.
type Manifest struct {
	Format    int               `json:"format"`
	Key       Key               `json:"key"`
	Spec      string            `json:"spec"`      // the experiment file
	Placement map[string]string `json:"placement"` // node → host at swapout
	Epoch     uint64            `json:"epoch"`     // the network checkpoint's epoch
	// Paused is the experiment's pause instant: every node's virtual-time
	// offset is relative to it.
	Paused  time.Time      `json:"paused"`
	Created time.Time      `json:"created"`
	Nodes   []ManifestNode `json:"nodes"`
	// Network lists the switch logs (network/HOST.log) with checksums.
	Network []NetworkLog `json:"network"`
}

// ManifestNode is one node of a snapshot.
type ManifestNode struct {
	Node     string `json:"node"`
	Host     string `json:"host"`
	Manifest string `json:"manifest_blake3"` // of NODE/manifest.json
	Bytes    int64  `json:"bytes"`
}

// NetworkLog is one switch's in-flight log.
type NetworkLog struct {
	Host    string `json:"host"`
	File    string `json:"file"`
	BLAKE3  string `json:"blake3"`
	Entries int    `json:"entries"`
}

// ManifestFormat is the version of experiment.json.
const ManifestFormat = 1

// ManifestName is the experiment manifest's file name.
const ManifestName = "experiment.json"

const networkDir = "network"

func sum(b []byte) string {
	h := blake3.Sum256(b)
	return hex.EncodeToString(h[:])
}

// writeNetwork writes each host's switch log into dir/network and records
// it in man.
func writeNetwork(dir string, logs map[string][]byte, man *Manifest) error {
	nd := filepath.Join(dir, networkDir)
	if err := os.MkdirAll(nd, 0o755); err != nil {
		return err
	}
	hosts := make([]string, 0, len(logs))
	for h := range logs {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	for _, h := range hosts {
		lg, err := vswitch.ReadLog(bytes.NewReader(logs[h]))
		if err != nil {
			return fmt.Errorf("host %s sent a bad network log: %w", h, err)
		}
		name := filepath.Join(networkDir, h+".log")
		if err := writeFileSync(filepath.Join(dir, name), logs[h]); err != nil {
			return err
		}
		man.Network = append(man.Network, NetworkLog{Host: h, File: name, BLAKE3: sum(logs[h]), Entries: len(lg.Entries)})
	}
	return nil
}

func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// WriteManifest writes dir/experiment.json (temporary file, fsync,
// rename).
func WriteManifest(dir string, m *Manifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, "."+ManifestName+".tmp")
	if err := writeFileSync(tmp, append(b, '\n')); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, ManifestName))
}

// ReadManifest reads a snapshot's experiment.json.
func ReadManifest(dir string) (*Manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: no %s: not a complete experiment snapshot: %w", dir, ManifestName, hypervisor.ErrIncomplete)
	}
	if err != nil {
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", filepath.Join(dir, ManifestName), hypervisor.ErrCorrupt, err)
	}
	if m.Format != ManifestFormat {
		return nil, fmt.Errorf("%s: format %d, this stasis reads %d", filepath.Join(dir, ManifestName), m.Format, ManifestFormat)
	}
	return &m, nil
}

// VerifySnapshot checks an experiment snapshot without reading the nodes'
// data: the manifest, every node's manifest.json against its checksum and
// its files' presence and sizes, every network log against its checksum.
// (Each node's data was verified by reading it back when it was saved.)
func VerifySnapshot(dir string) error {
	m, err := ReadManifest(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range m.Nodes {
		nd := filepath.Join(dir, n.Node)
		b, err := os.ReadFile(filepath.Join(nd, hypervisor.ManifestName))
		if err != nil {
			errs = append(errs, fmt.Errorf("node %s: %w", n.Node, err))
			continue
		}
		if got := sum(b); got != n.Manifest {
			errs = append(errs, fmt.Errorf("node %s: manifest.json checksum %s, the experiment recorded %s: %w", n.Node, got[:12], n.Manifest[:min(12, len(n.Manifest))], hypervisor.ErrCorrupt))
			continue
		}
		if _, err := hypervisor.ReadManifest(nd); err != nil {
			errs = append(errs, fmt.Errorf("node %s: %w", n.Node, err))
		}
	}
	for _, l := range m.Network {
		b, err := os.ReadFile(filepath.Join(dir, l.File))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if sum(b) != l.BLAKE3 {
			errs = append(errs, fmt.Errorf("%s: checksum mismatch: %w", l.File, hypervisor.ErrCorrupt))
		}
	}
	return errors.Join(errs...)
}

// splitLogs reads every network log of a snapshot, checks it, and groups
// its entries by the host that the destination port's node lands on.
func splitLogs(snap string, m *Manifest, placement map[string]string) (map[string][]byte, error) {
	per := map[string]*vswitch.Log{}
	for _, h := range placement {
		if per[h] == nil {
			per[h] = &vswitch.Log{Epoch: m.Epoch}
		}
	}
	for _, l := range m.Network {
		b, err := os.ReadFile(filepath.Join(snap, l.File))
		if err != nil {
			return nil, err
		}
		if sum(b) != l.BLAKE3 {
			return nil, fmt.Errorf("%s: checksum mismatch: %w", l.File, hypervisor.ErrCorrupt)
		}
		lg, err := vswitch.ReadLog(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", l.File, err)
		}
		for _, e := range lg.Entries {
			node, _, _ := strings.Cut(e.Port, "/")
			h, ok := placement[node]
			if !ok {
				return nil, fmt.Errorf("%s: frame for port %q of no node", l.File, e.Port)
			}
			per[h].Entries = append(per[h].Entries, e)
		}
	}
	out := map[string][]byte{}
	for h, lg := range per {
		var buf bytes.Buffer
		if _, err := lg.WriteTo(&buf); err != nil {
			return nil, err
		}
		out[h] = buf.Bytes()
	}
	return out, nil
}
