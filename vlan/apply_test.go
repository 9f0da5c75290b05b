package vlan

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
)

// Ping works inside a LAN and fails across LANs, even when both LANs use
// one subnet (so only the missing layer-2 path can stop it).
func TestPingInsideLANNotAcross(t *testing.T) {
	requireRoot(t)
	a := newTestApplier(t)
	exp := uniqueExp(t)
	before := hostLinks(t, a)
	topo := lanTopology(exp,
		[]string{"10.9.0.1/24", "10.9.0.2/24", "10.9.0.3/24", "10.9.0.4/24"},
		[]string{"red", "red", "blue", "blue"})
	p, res := upTopology(t, a, topo)
	t.Logf("up: created %s; phases %v", res.Created, res.Phases)
	if res.Created.Namespaces != 5 || res.Created.Links != 2+4 || res.Created.Addresses != 4 {
		t.Errorf("created %s, want 5 namespaces, 6 links, 4 addresses", res.Created)
	}
	ns := func(i int) string { return p.Namespaces[i].Name }
	if err := pingOK(ns(0), "10.9.0.2"); err != nil {
		t.Errorf("inside red: %v", err)
	}
	if err := pingOK(ns(3), "10.9.0.3"); err != nil {
		t.Errorf("inside blue: %v", err)
	}
	if err := pingOnce(ns(0), "10.9.0.3"); err == nil {
		t.Errorf("red node reached blue node 10.9.0.3")
	}
	if err := pingOnce(ns(2), "10.9.0.2"); err == nil {
		t.Errorf("blue node reached red node 10.9.0.2")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := a.Show(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if !st.OK() {
		t.Errorf("Show after Up: %d objects not ok: %+v", st.Missing(), st.Objects)
	}
	down, err := a.Down(ctx, exp)
	if err != nil {
		t.Fatal(err)
	}
	if down.Removed.Namespaces != 5 {
		t.Errorf("Down removed %d namespaces, want 5", down.Removed.Namespaces)
	}
	assertGone(t, a, exp, before)
	st, err = a.Show(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Missing() != len(st.Objects) {
		t.Errorf("Show after Down: %d of %d objects missing", st.Missing(), len(st.Objects))
	}
}

// Two experiments on one host reuse node names and addresses without
// seeing each other.
func TestExperimentsIsolated(t *testing.T) {
	requireRoot(t)
	a := newTestApplier(t)
	expA, expB := uniqueExp(t), uniqueExp(t)
	pa, err := NewPlan(lanTopology(expA, []string{"10.8.0.1/24", "10.8.0.2/24"}, []string{"lan", "lan"}), "")
	if err != nil {
		t.Fatal(err)
	}
	pb, err := NewPlan(lanTopology(expB, []string{"10.8.0.1/24", "10.8.0.2/24", "10.8.0.3/24"}, []string{"lan", "lan", "lan"}), "")
	if err != nil {
		t.Fatal(err)
	}
	cleanupExperiment(t, a, expA)
	cleanupExperiment(t, a, expB)
	// Both at once, through one Applier.
	var g errgroup.Group
	for _, p := range []*Plan{pa, pb} {
		g.Go(func() error {
			_, err := a.Up(context.Background(), p)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if pa.Bridges[0].Name != pb.Bridges[0].Name {
		t.Fatalf("the experiments should reuse bridge names too")
	}
	if err := pingOK(pa.Namespaces[0].Name, "10.8.0.2"); err != nil {
		t.Errorf("inside A: %v", err)
	}
	if err := pingOK(pb.Namespaces[0].Name, "10.8.0.3"); err != nil {
		t.Errorf("inside B: %v", err)
	}
	if err := pingOnce(pa.Namespaces[0].Name, "10.8.0.3"); err == nil {
		t.Errorf("a node of A reached 10.8.0.3, which only B has")
	}
	// A's ping of 10.8.0.2 was answered by A's node, not B's.
	out, err := exec.Command("ip", "-n", pa.Namespaces[0].Name, "neigh", "show", "10.8.0.2").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	if wantMAC := pa.Veths[1].MAC.String(); !strings.Contains(string(out), wantMAC) {
		t.Errorf("A's neighbour 10.8.0.2 is %q, want A's node MAC %s (B's is %s)", out, wantMAC, pb.Veths[1].MAC)
	}
	// Taking B down leaves A working.
	before := hostLinks(t, a)
	if _, err := a.Down(context.Background(), expB); err != nil {
		t.Fatal(err)
	}
	assertGone(t, a, expB, before)
	if err := pingOK(pa.Namespaces[1].Name, "10.8.0.1"); err != nil {
		t.Errorf("A after B went down: %v", err)
	}
}

var timers = regexp.MustCompile(`\w+_timer +[0-9.]+ ?`)

// linkSnapshot describes every interface of the experiment's namespaces,
// to compare states.
func linkSnapshot(t *testing.T, exp string) string {
	t.Helper()
	names, err := experimentNamespaces(exp)
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		out, err := exec.Command("ip", "-n", n, "-d", "-o", "addr", "show").CombinedOutput()
		if err != nil {
			t.Fatalf("ip addr in %s: %v: %s", n, err, out)
		}
		b.WriteString(n + "\n" + string(out))
		out, err = exec.Command("ip", "-n", n, "-d", "-o", "link", "show").CombinedOutput()
		if err != nil {
			t.Fatalf("ip link in %s: %v: %s", n, err, out)
		}
		// Timers move on their own; keep the rest.
		b.WriteString(timers.ReplaceAllString(string(out), ""))
		out, err = exec.Command("tc", "-n", n, "qdisc", "show").CombinedOutput()
		if err != nil {
			t.Fatalf("tc in %s: %v: %s", n, err, out)
		}
		b.Write(out)
	}
	return b.String()
}

// lineDiff lists the lines only in a ("-") and only in b ("+").
func lineDiff(a, b string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	ma, mb := in(a), in(b)
	var out strings.Builder
	for _, l := range strings.Split(a, "\n") {
		if !mb[l] {
			out.WriteString("- " + l + "\n")
		}
	}
	for _, l := range strings.Split(b, "\n") {
		if !ma[l] {
			out.WriteString("+ " + l + "\n")
		}
	}
	return out.String()
}

// Applying a plan twice changes nothing; applying it to a damaged network
// repairs exactly the damage.
func TestUpIdempotentAndRepairs(t *testing.T) {
	requireRoot(t)
	a := newTestApplier(t)
	exp := uniqueExp(t)
	topo := lanTopology(exp, []string{"10.7.0.1/24", "10.7.0.2/24", "fd00:7::3/64"}, []string{"x", "x", "y"})
	topo.LANs[0].Rate = 50e6
	topo.Nodes = append(topo.Nodes, Node{Name: "vm", Kind: KindTap, Interfaces: []Interface{{Name: "eth0"}}})
	topo.LANs[1].Members = append(topo.LANs[1].Members, Member{Node: "vm", Interface: "eth0"})
	p, first := upTopology(t, a, topo)
	if first.Created.Qdiscs != 4 {
		t.Errorf("first Up created %d qdiscs, want 4 (both ends of two rate-limited links)", first.Created.Qdiscs)
	}
	before := linkSnapshot(t, exp)
	ctx := context.Background()
	second, err := a.Up(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if second.Created != (Counts{}) || second.Changed != (Counts{}) {
		t.Errorf("second Up created %s and changed %s, want nothing", second.Created, second.Changed)
	}
	if after := linkSnapshot(t, exp); after != before {
		t.Errorf("second Up changed the network:\n%s", lineDiff(before, after))
	}

	// Damage: a node interface down and stripped of its address, a bridge
	// down, a qdisc removed, a whole node namespace gone.
	n0, n1 := p.Namespaces[0].Name, p.Namespaces[1].Name
	for _, cmd := range [][]string{
		{"ip", "-n", n0, "link", "set", "eth0", "down"},
		{"ip", "-n", n0, "addr", "flush", "dev", "eth0"},
		{"ip", "-n", p.Switch, "link", "set", p.Bridges[1].Name, "down"},
		{"tc", "-n", n0, "qdisc", "del", "dev", "eth0", "root"},
		{"ip", "netns", "del", n1},
	} {
		if out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", cmd, err, out)
		}
	}
	st, err := a.Show(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if st.OK() {
		t.Fatalf("Show sees no damage")
	}
	third, err := a.Up(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	want := Counts{Namespaces: 1, Links: 1, Addresses: 2, Qdiscs: 3}
	if third.Created != want {
		t.Errorf("repair created %s, want %s", third.Created, want)
	}
	// 2: eth0 and the bridge brought up; 3 if the kernel had not yet
	// destroyed n1's old namespace, whose veth's switch end Up replaced.
	if third.Changed.Links != 2 && third.Changed.Links != 3 {
		t.Errorf("repair changed %d links, want 2 or 3", third.Changed.Links)
	}
	if st, err := a.Show(ctx, p); err != nil || !st.OK() {
		t.Errorf("Show after repair: %v %+v", err, st)
	}
	if err := pingOK(n0, "10.7.0.2"); err != nil {
		t.Errorf("after repair: %v", err)
		for _, c := range [][]string{{"bridge", "-n", p.Switch, "link"}, {"bridge", "-n", p.Switch, "fdb"}, {"ip", "-n", n0, "neigh"}, {"ip", "-n", p.Switch, "link"}, {"ip", "-n", n1, "-d", "addr"}} {
			out, _ := exec.Command(c[0], c[1:]...).CombinedOutput()
			t.Logf("DEBUG %v\n%s", c, out)
		}
		err := pingOnce(n0, "10.7.0.2")
		t.Logf("DEBUG retry: %v", err)
	}
}

// A rate change on an existing link replaces the tbf; dropping the rate
// removes it.
func TestRateLimit(t *testing.T) {
	requireRoot(t)
	a := newTestApplier(t)
	exp := uniqueExp(t)
	topo := lanTopology(exp, []string{"10.6.0.1/24", "10.6.0.2/24"}, []string{"x", "x"})
	topo.LANs[0].Rate = 20e6
	topo.LANs[0].Members[1].Rate = 5e6
	p, _ := upTopology(t, a, topo)
	out, err := exec.Command("tc", "-n", p.Namespaces[1].Name, "qdisc", "show", "dev", "eth0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "tbf") || !strings.Contains(string(out), "rate 5Mbit") {
		t.Errorf("node n1 qdisc: %v %s", err, out)
	}
	out, _ = exec.Command("tc", "-n", p.Switch, "qdisc", "show", "dev", p.Veths[0].SwitchEnd).CombinedOutput()
	if !strings.Contains(string(out), "rate 20Mbit") {
		t.Errorf("switch end of n0: %s", out)
	}
	if err := pingOK(p.Namespaces[0].Name, "10.6.0.2"); err != nil {
		t.Errorf("through the rate limit: %v", err)
	}

	topo.LANs[0].Members[1].Rate = 0
	p2, err := NewPlan(topo, "")
	if err != nil {
		t.Fatal(err)
	}
	res, err := a.Up(context.Background(), p2)
	if err != nil {
		t.Fatal(err)
	}
	if res.Changed.Qdiscs != 2 {
		t.Errorf("rate change replaced %d qdiscs, want 2", res.Changed.Qdiscs)
	}
	out, _ = exec.Command("tc", "-n", p.Namespaces[1].Name, "qdisc", "show", "dev", "eth0").CombinedOutput()
	if !strings.Contains(string(out), "rate 20Mbit") {
		t.Errorf("after rate change: %s", out)
	}
	topo.LANs[0].Rate = 0
	p3, _ := NewPlan(topo, "")
	if res, err = a.Up(context.Background(), p3); err != nil {
		t.Fatal(err)
	}
	if res.Changed.Qdiscs != 4 {
		t.Errorf("dropping the rate changed %d qdiscs, want 4", res.Changed.Qdiscs)
	}
	out, _ = exec.Command("tc", "-n", p.Namespaces[0].Name, "qdisc", "show", "dev", "eth0").CombinedOutput()
	if strings.Contains(string(out), "tbf") {
		t.Errorf("tbf left after the rate was dropped: %s", out)
	}
}

// A setup that fails at any point is rolled back: nothing of the
// experiment is left.
func TestUpRollsBackOnFailure(t *testing.T) {
	requireRoot(t)
	topo := func(exp string) *Topology {
		tp := lanTopology(exp, []string{"10.5.0.1/24", "10.5.0.2/24", "10.5.0.3/24"}, []string{"x", "x", "y"})
		tp.LANs[1].Rate = 1e6
		tp.Nodes = append(tp.Nodes, Node{Name: "vm", Kind: KindTap, Interfaces: []Interface{{Name: "eth0"}}})
		tp.LANs[1].Members = append(tp.LANs[1].Members, Member{Node: "vm", Interface: "eth0"})
		return tp
	}
	for _, point := range []string{"netns stx-EXP-n1", "switch", "node stx-EXP-n0", "node stx-EXP-n2"} {
		t.Run(strings.ReplaceAll(point, " stx-EXP", ""), func(t *testing.T) {
			a := newTestApplier(t)
			exp := uniqueExp(t)
			target := strings.ReplaceAll(point, "EXP", exp)
			boom := errors.New("injected failure")
			a.fault = func(p string) error {
				if p == target {
					return boom
				}
				return nil
			}
			cleanupExperiment(t, a, exp)
			before := hostLinks(t, a)
			p, err := NewPlan(topo(exp), "")
			if err != nil {
				t.Fatal(err)
			}
			_, err = a.Up(context.Background(), p)
			if !errors.Is(err, boom) {
				t.Fatalf("Up: %v, want the injected failure", err)
			}
			assertGone(t, a, exp, before)
		})
	}
}

// A namespace that exists already with a conflicting interface fails the
// setup; the rollback removes what Up created and leaves what was there.
func TestUpConflictKeepsForeignObjects(t *testing.T) {
	requireRoot(t)
	a := newTestApplier(t)
	exp := uniqueExp(t)
	cleanupExperiment(t, a, exp)
	before := hostLinks(t, a)
	foreign := NodeNamespace(exp, "n1")
	for _, cmd := range [][]string{
		{"ip", "netns", "add", foreign},
		{"ip", "-n", foreign, "link", "add", "eth0", "type", "veth", "peer", "name", "other"},
	} {
		if out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", cmd, err, out)
		}
	}
	p, err := NewPlan(lanTopology(exp, []string{"10.4.0.1/24", "10.4.0.2/24"}, []string{"x", "x"}), "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.Up(context.Background(), p)
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), foreign+"/eth0") {
		t.Fatalf("Up: %v, want a conflict naming %s/eth0", err, foreign)
	}
	names, _ := experimentNamespaces(exp)
	if len(names) != 1 || names[0] != foreign {
		t.Errorf("after rollback: namespaces %v, want only the foreign %s", names, foreign)
	}
	out, err := exec.Command("ip", "-n", foreign, "-o", "link", "show").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "eth0@other") {
		t.Errorf("the foreign interface is gone: %v %s", err, out)
	}
	if _, err := a.Down(context.Background(), exp); err != nil {
		t.Fatal(err)
	}
	assertGone(t, a, exp, before)
}

// A failed Up on top of a running experiment removes only what it added;
// the experiment keeps working.
func TestUpRollbackKeepsExistingExperiment(t *testing.T) {
	requireRoot(t)
	a := newTestApplier(t)
	exp := uniqueExp(t)
	small := lanTopology(exp, []string{"10.3.0.1/24", "10.3.0.2/24"}, []string{"x", "x"})
	p1, _ := upTopology(t, a, small)
	before := linkSnapshot(t, exp)

	big := lanTopology(exp, []string{"10.3.0.1/24", "10.3.0.2/24", "10.3.1.1/24", "10.3.1.2/24"}, []string{"x", "x", "z", "z"})
	big.Nodes = append(big.Nodes, Node{Name: "vm", Kind: KindTap, Interfaces: []Interface{{Name: "eth0"}}})
	big.LANs[1].Members = append(big.LANs[1].Members, Member{Node: "vm", Interface: "eth0"})
	p2, err := NewPlan(big, "")
	if err != nil {
		t.Fatal(err)
	}
	a.fault = func(p string) error {
		if p == "node "+NodeNamespace(exp, "n3") {
			return errors.New("injected")
		}
		return nil
	}
	if _, err := a.Up(context.Background(), p2); err == nil {
		t.Fatal("Up succeeded despite the fault")
	}
	if after := linkSnapshot(t, exp); after != before {
		t.Errorf("failed Up changed the running experiment:\n%s", lineDiff(before, after))
	}
	if st, err := a.Show(context.Background(), p1); err != nil || !st.OK() {
		t.Errorf("Show of the original plan: %v %+v", err, st)
	}
	if err := pingOK(p1.Namespaces[0].Name, "10.3.0.2"); err != nil {
		t.Errorf("original experiment after failed grow: %v", err)
	}
	// Without the fault, the bigger plan goes up over the running one.
	a.fault = nil
	res, err := a.Up(context.Background(), p2)
	if err != nil {
		t.Fatal(err)
	}
	if res.Created.Namespaces != 2 || res.Created.Links != 4 {
		t.Errorf("grow created %s, want 2 namespaces and 4 links (bridge, 2 veths, tap)", res.Created)
	}
	if err := pingOK(p2.Namespaces[3].Name, "10.3.1.1"); err != nil {
		t.Errorf("after grow: %v", err)
	}
}

// Down works from the experiment name alone, on whatever a crashed setup
// left behind.
func TestDownAfterCrash(t *testing.T) {
	requireRoot(t)
	a := newTestApplier(t)
	exp := uniqueExp(t)
	cleanupExperiment(t, a, exp)
	before := hostLinks(t, a)
	// What a crash in the middle of Up leaves: some namespaces, a bridge,
	// a veth, a persistent tap.
	for _, cmd := range [][]string{
		{"ip", "netns", "add", SwitchNamespace(exp)},
		{"ip", "netns", "add", NodeNamespace(exp, "a")},
		{"ip", "netns", "add", NodeNamespace(exp, "b")},
		{"ip", "-n", SwitchNamespace(exp), "link", "add", "br0", "type", "bridge"},
		{"ip", "-n", SwitchNamespace(exp), "link", "add", "v0", "master", "br0", "type", "veth", "peer", "name", "eth0", "netns", NodeNamespace(exp, "a")},
		{"ip", "-n", SwitchNamespace(exp), "tuntap", "add", "tp0", "mode", "tap"},
	} {
		if out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", cmd, err, out)
		}
	}
	// And a crash between creating a namespace's file and mounting it.
	if err := os.WriteFile(filepath.Join(netnsDir, NodeNamespace(exp, "c")), nil, 0o444); err != nil {
		t.Fatal(err)
	}
	// Another experiment whose name extends this one's is not touched.
	other := exp + "x"
	cleanupExperiment(t, a, other)
	if out, err := exec.Command("ip", "netns", "add", NodeNamespace(other, "a")).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	res, err := a.Down(context.Background(), exp)
	if err != nil {
		t.Fatal(err)
	}
	if res.Removed.Namespaces != 4 {
		t.Errorf("Down removed %d namespaces, want 4", res.Removed.Namespaces)
	}
	assertGone(t, a, exp, before)
	if names, _ := experimentNamespaces(other); len(names) != 1 {
		t.Errorf("Down of %s touched %s: %v", exp, other, names)
	}
	// Down of an experiment that is not there is fine; a bad name is not.
	if _, err := a.Down(context.Background(), exp); err != nil {
		t.Errorf("second Down: %v", err)
	}
	if _, err := a.Down(context.Background(), "a-b"); !errors.Is(err, ErrBadName) {
		t.Errorf("Down(a-b): %v, want ErrBadName", err)
	}
}

// A cancelled context stops Up, which then removes what it made.
func TestUpCancelled(t *testing.T) {
	requireRoot(t)
	a := newTestApplier(t)
	exp := uniqueExp(t)
	cleanupExperiment(t, a, exp)
	before := hostLinks(t, a)
	p, err := NewPlan(benchTopology(exp, 20), "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := 0
	a.fault = func(point string) error {
		if strings.HasPrefix(point, "node ") {
			if n++; n == 3 {
				cancel()
			}
		}
		return nil
	}
	if _, err := a.Up(ctx, p); !errors.Is(err, context.Canceled) {
		t.Fatalf("Up: %v, want context.Canceled", err)
	}
	assertGone(t, a, exp, before)
}

// An empty file where a namespace should be mounted (a crash between
// creating and mounting it) is replaced, not an error.
func TestUpReplacesStaleNamespaceFile(t *testing.T) {
	requireRoot(t)
	a := newTestApplier(t)
	exp := uniqueExp(t)
	cleanupExperiment(t, a, exp)
	if err := prepareNetnsDir(); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{SwitchNamespace(exp), NodeNamespace(exp, "n1")} {
		if err := os.WriteFile(filepath.Join(netnsDir, n), nil, 0o444); err != nil {
			t.Fatal(err)
		}
	}
	topo := lanTopology(exp, []string{"10.11.0.1/24", "10.11.0.2/24"}, []string{"x", "x"})
	plan, err := NewPlan(topo, "")
	if err != nil {
		t.Fatal(err)
	}
	st, err := a.Show(context.Background(), plan)
	if err != nil || st.Missing() != len(st.Objects) {
		t.Errorf("Show over stale files: %v, %d of %d missing", err, st.Missing(), len(st.Objects))
	}
	p, res := upTopology(t, a, topo)
	if res.Created.Namespaces != 3 {
		t.Errorf("created %s, want 3 namespaces", res.Created)
	}
	if err := pingOK(p.Namespaces[0].Name, "10.11.0.2"); err != nil {
		t.Error(err)
	}
}

// IPv6 addresses work at once (no duplicate address detection delay).
func TestIPv6(t *testing.T) {
	requireRoot(t)
	a := newTestApplier(t)
	exp := uniqueExp(t)
	p, _ := upTopology(t, a, lanTopology(exp, []string{"fd00:6::1/64", "fd00:6::2/64"}, []string{"v6", "v6"}))
	if err := pingOK(p.Namespaces[0].Name, "fd00:6::2"); err != nil {
		t.Error(err)
	}
}
