package experiment

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"stasis/hypervisor"
	"stasis/vlan/vswitch"
)

// fakeHost records the calls it gets and fails the one named in failAt.
type fakeHost struct {
	name   string
	root   string // the experiments directory
	failAt string
	mu     sync.Mutex
	calls  []string
	nodes  []string
}

func (h *fakeHost) call(op string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls = append(h.calls, op)
	if op == h.failAt {
		return fmt.Errorf("injected failure in %s", op)
	}
	return nil
}

func (h *fakeHost) has(op string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.calls {
		if c == op {
			return true
		}
	}
	return false
}

func (h *fakeHost) Name() string { return h.name }
func (h *fakeHost) Start(_ context.Context, r StartRequest) (string, error) {
	h.nodes = r.Nodes
	return "", h.call("start")
}
func (h *fakeHost) Connect(context.Context, Key, map[string]string) error { return h.call("connect") }
func (h *fakeHost) Preflight(context.Context, Key) error                  { return h.call("preflight") }
func (h *fakeHost) Freeze(context.Context, Key, uint64) error             { return h.call("freeze") }
func (h *fakeHost) Cut(context.Context, Key) error                        { return h.call("cut") }
func (h *fakeHost) EndCheckpoint(context.Context, Key) ([]byte, error) {
	var b bytes.Buffer
	(&vswitch.Log{Epoch: 1}).WriteTo(&b)
	return b.Bytes(), h.call("end")
}

// Save writes a minimal valid node snapshot per node.
func (h *fakeHost) Save(_ context.Context, _ Key, dir string, paused time.Time, _ ProgressFunc) ([]NodeSaved, error) {
	if err := h.call("save"); err != nil {
		return nil, &StepError{Step: StepSave, Node: h.nodes[0], Host: h.name, Err: err}
	}
	var out []NodeSaved
	for _, n := range h.nodes {
		nd := filepath.Join(h.root, dir, n)
		if err := os.MkdirAll(nd, 0o755); err != nil {
			return nil, err
		}
		mem := []byte("memory of " + n)
		if err := os.WriteFile(filepath.Join(nd, "memory"), mem, 0o644); err != nil {
			return nil, err
		}
		if err := hypervisor.WriteManifest(nd, &hypervisor.Manifest{Format: hypervisor.FormatVersion, Driver: "fake", Mode: "stream",
			Hash: "blake3-256", Paused: paused, Files: []hypervisor.File{{Name: "memory", Role: hypervisor.RoleMemory, Size: int64(len(mem)), BLAKE3: sum(mem)}}}); err != nil {
			return nil, err
		}
		b, _ := os.ReadFile(filepath.Join(nd, hypervisor.ManifestName))
		out = append(out, NodeSaved{Node: n, Manifest: sum(b)})
	}
	return out, nil
}
func (h *fakeHost) Resume(context.Context, Key) error  { return h.call("resume") }
func (h *fakeHost) Destroy(context.Context, Key) error { return h.call("destroy") }
func (h *fakeHost) Restore(_ context.Context, r RestoreRequest) (string, error) {
	h.nodes = r.Nodes
	return "", h.call("restore")
}
func (h *fakeHost) Continue(context.Context, Key) error { return h.call("continue") }
func (h *fakeHost) Status(context.Context, Key) ([]NodeStatus, error) {
	return nil, h.call("status")
}

const twoNodeSpec = `
name: e
project: p
defaults: {kernel: /k}
nodes:
  a: {host: h1}
  b: {host: h2}
lans:
  l: {members: [{node: a}, {node: b}]}
`

func newFakeCoordinator(t *testing.T) (*Coordinator, map[string]*fakeHost) {
	hosts := map[string]*fakeHost{"h1": {name: "h1"}, "h2": {name: "h2"}}
	c := &Coordinator{Hosts: map[string]Host{}, Root: t.TempDir(), State: t.TempDir()}
	for n, h := range hosts {
		h.root = c.Root
		c.Hosts[n] = h
	}
	c.TakeSnapshot = func(dir, name string) error { // a plain directory: copy it
		snap := filepath.Join(dir, ".snapshots", name)
		if err := os.MkdirAll(snap, 0o755); err != nil {
			return err
		}
		copyTree(t, dir, snap)
		return nil
	}
	s, err := Parse([]byte(twoNodeSpec))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Up(context.Background(), []byte(twoNodeSpec), s, nil); err != nil {
		t.Fatal(err)
	}
	return c, hosts
}

// Every failure edge of a swapout: before pausing nothing is undone; after
// pausing every host resumes; nothing is ever destroyed, no snapshot or
// manifest is left, and the record says what happened.
func TestSwapoutFailureEdges(t *testing.T) {
	for _, step := range []string{"preflight", "freeze", "cut", "end", "save"} {
		t.Run(step, func(t *testing.T) {
			c, hosts := newFakeCoordinator(t)
			hosts["h2"].failAt = step
			k := Key{"p", "e"}
			_, err := c.Swapout(context.Background(), k, SwapoutOptions{Snapshot: "s"})
			var se *StepError
			if !errors.As(err, &se) {
				t.Fatalf("error %v is not a StepError", err)
			}
			if !strings.Contains(err.Error(), "injected failure in "+step) {
				t.Fatalf("error does not carry the cause: %v", err)
			}
			for _, h := range hosts {
				if h.has("destroy") {
					t.Fatalf("host %s destroyed after a failed %s", h.name, step)
				}
				if resumed := h.has("resume"); resumed != (step != "preflight") {
					t.Fatalf("host %s: resumed=%v after a failed %s", h.name, resumed, step)
				}
			}
			if _, err := os.Stat(filepath.Join(c.Dir(k), ".snapshots", "s")); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("snapshot taken: %v", err)
			}
			if _, err := os.Stat(filepath.Join(c.Dir(k), ManifestName)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("manifest left: %v", err)
			}
			r, _ := c.Load(k)
			if r.State != StateRunning || r.LastError == "" {
				t.Fatalf("record: %+v", r)
			}
		})
	}
}

// KeepPaused leaves the nodes paused, and Resume continues them.
func TestSwapoutKeepPausedThenResume(t *testing.T) {
	c, hosts := newFakeCoordinator(t)
	hosts["h1"].failAt = "save"
	k := Key{"p", "e"}
	if _, err := c.Swapout(context.Background(), k, SwapoutOptions{KeepPaused: true}); err == nil {
		t.Fatal("swapout succeeded")
	}
	r, _ := c.Load(k)
	if r.State != StatePaused || hosts["h1"].has("resume") {
		t.Fatalf("state %s, resumed %v", r.State, hosts["h1"].has("resume"))
	}
	hosts["h1"].failAt = ""
	if err := c.Resume(context.Background(), k); err != nil {
		t.Fatal(err)
	}
	if r, _ := c.Load(k); r.State != StateRunning {
		t.Fatalf("state %s after resume", r.State)
	}
}

// A good swapout snapshots, verifies, then destroys; a swapin of the
// snapshot restores on the given placement; a second swapout needs no rm;
// a tampered node manifest is refused by VerifySnapshot.
func TestSwapoutSwapinFake(t *testing.T) {
	c, hosts := newFakeCoordinator(t)
	k := Key{"p", "e"}
	ctx := context.Background()
	res, err := c.Swapout(ctx, k, SwapoutOptions{Snapshot: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifySnapshot(res.Dir); err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts {
		if !h.has("destroy") {
			t.Fatalf("host %s not destroyed", h.name)
		}
	}
	if _, err := c.Swapout(ctx, k, SwapoutOptions{}); err == nil {
		t.Fatal("swapout of a swapped-out experiment accepted")
	}
	in, err := c.Swapin(ctx, k, SwapinOptions{Placement: map[string]string{"a": "h2"}})
	if err != nil {
		t.Fatal(err)
	}
	if in.Placement["a"] != "h2" || in.Placement["b"] != "h2" {
		t.Fatalf("placement %v", in.Placement)
	}
	if _, err := c.Swapout(ctx, k, SwapoutOptions{Snapshot: "s2"}); err != nil {
		t.Fatalf("second swapout: %v", err)
	}
	snap := filepath.Join(c.Dir(k), ".snapshots", "s2")
	f := filepath.Join(snap, "a", hypervisor.ManifestName)
	b, _ := os.ReadFile(f)
	os.WriteFile(f, append(b, ' '), 0o644)
	if err := VerifySnapshot(snap); !errors.Is(err, hypervisor.ErrCorrupt) {
		t.Fatalf("tampered node manifest: %v", err)
	}
	h, _ := c.History(k)
	if len(h) != 4 {
		t.Fatalf("history %+v", h)
	}
}

func copyTree(t *testing.T, src, dst string) {
	filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil || strings.Contains(p, ".snapshots") {
			return nil
		}
		rel, _ := filepath.Rel(src, p)
		if fi.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, _ := os.ReadFile(p)
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
}

// An operation on an experiment whose host has no agent here fails with a
// message naming the host, for every operation that reaches hosts.
func TestMissingAgent(t *testing.T) {
	c, _ := newFakeCoordinator(t)
	delete(c.Hosts, "h2")
	k := Key{"p", "e"}
	ctx := context.Background()
	_, _, err := c.Status(ctx, k)
	if err == nil || !strings.Contains(err.Error(), "host h2 has no agent here") {
		t.Fatalf("status: %v", err)
	}
	if err := c.Down(ctx, k); err == nil || !strings.Contains(err.Error(), "host h2 has no agent here") {
		t.Fatalf("down: %v", err)
	}
	if _, err := c.Swapout(ctx, k, SwapoutOptions{}); err == nil || !strings.Contains(err.Error(), "h2") {
		t.Fatalf("swapout: %v", err)
	}
}
