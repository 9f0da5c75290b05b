package vlan

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// requireRoot skips tests that create namespaces when not run as root.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
}

// tLogWriter sends log lines to the test log.
type tLogWriter struct{ t testing.TB }

func (w tLogWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// uniqueExp returns a fresh experiment name, so tests never share
// namespaces with each other or with a crashed earlier run.
func uniqueExp(t testing.TB) string {
	b := make([]byte, 4)
	rand.Read(b)
	return "t" + hex.EncodeToString(b)
}

// newTestApplier returns an Applier whose "host" namespace, the only one
// outside its experiments' own that it touches (TrunkNetns), is a fresh
// namespace of this test, removed when the test ends. Tests never create
// or change links in the test process's namespace: other test binaries
// run at the same time (go test runs packages in parallel), and this
// package's tests check that the host namespace did not change.
func newTestApplier(t testing.TB) *Applier {
	t.Helper()
	host := "stxhost" + uniqueExp(t)[1:]
	h, err := createNetns(host, nil)
	if err != nil {
		t.Fatal(err)
	}
	h.close()
	t.Cleanup(func() {
		if err := deleteNetns(host); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	a, err := NewApplier(Config{
		Logger:     slog.New(slog.NewTextHandler(tLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		TrunkNetns: host,
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// upTopology plans and applies topo, and tears it down when the test ends.
func upTopology(t testing.TB, a *Applier, topo *Topology) (*Plan, *Result) {
	t.Helper()
	p, err := NewPlan(topo, "")
	if err != nil {
		t.Fatal(err)
	}
	cleanupExperiment(t, a, topo.Experiment)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := a.Up(ctx, p)
	if err != nil {
		t.Fatalf("Up: %v", err)
	}
	return p, res
}

// cleanupExperiment registers a Down of exp, even if the test fails.
func cleanupExperiment(t testing.TB, a *Applier, exp string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := a.Down(ctx, exp); err != nil {
			t.Errorf("cleanup Down(%s): %v", exp, err)
		}
	})
}

// pingOnce pings addr once from inside namespace ns (busybox ping, 1 s
// timeout).
func pingOnce(ns, addr string) error { return ping(ns, addr, "1") }

// pingOK is pingOnce for a ping that must be answered: it waits up to 5 s
// for the reply, since on a loaded 2-core machine a first ping (neighbour
// discovery, IPv6's in particular, and the reply) can take longer than 1 s
// (TestIPv6 failed so once while QEMU tests ran beside it).
func pingOK(ns, addr string) error { return ping(ns, addr, "5") }

func ping(ns, addr, wait string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "busybox", "ping", "-c1", "-W"+wait, addr).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s from %s: %w: %s", addr, ns, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// hostSnapshot is the interfaces of the two namespaces an experiment must
// leave alone: the test's host namespace (the Applier's TrunkNetns), which
// only this test uses, and the test process's own, which other test
// binaries and other users of the machine may change at any time.
type hostSnapshot struct {
	test []string
	proc map[string]bool
}

// hostLinks lists the interfaces of a's host namespace and of the
// process's namespace.
func hostLinks(t testing.TB, a *Applier) hostSnapshot {
	t.Helper()
	ns, err := netns.GetFromPath(netnsDir + "/" + a.trunkNetns)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	nh, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	snap := hostSnapshot{test: linkNames(t, nh), proc: map[string]bool{}}
	self, err := netlink.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	for _, n := range linkNames(t, self) {
		snap.proc[n] = true
	}
	return snap
}

func linkNames(t testing.TB, h *netlink.Handle) []string {
	t.Helper()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	sort.Strings(names)
	return names
}

// experimentLinkName matches the names Up gives the interfaces it creates
// outside node namespaces (see names.go).
var experimentLinkName = regexp.MustCompile(`^((br|ve|tp)[0-9a-f]{10}|vlan[0-9]+)$`)

// assertGone checks that nothing of experiment exp is left: no namespace by
// its names, no change at all in the test's host namespace (a's), and no
// new interface named like an experiment's in the process's namespace.
// Only names Up could have given count there, because other processes
// may add and remove interfaces in it while the test runs.
func assertGone(t testing.TB, a *Applier, exp string, before hostSnapshot) {
	t.Helper()
	names, err := experimentNamespaces(exp)
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 0 {
		t.Errorf("namespaces left behind: %v", names)
	}
	after := hostLinks(t, a)
	if strings.Join(after.test, ",") != strings.Join(before.test, ",") {
		t.Errorf("host interfaces changed: before %v, after %v", before.test, after.test)
	}
	for n := range after.proc {
		if !before.proc[n] && experimentLinkName.MatchString(n) {
			t.Errorf("interface %s appeared in the test process's namespace", n)
		}
	}
}

// lanTopology builds a topology with one netns node per address, node i in
// LAN lans[i].
func lanTopology(exp string, addrs []string, lans []string) *Topology {
	topo := &Topology{Experiment: exp}
	members := map[string][]Member{}
	var order []string
	for i, addr := range addrs {
		node := fmt.Sprintf("n%d", i)
		topo.Nodes = append(topo.Nodes, Node{Name: node, Interfaces: []Interface{{Name: "eth0", Address: addr}}})
		if _, ok := members[lans[i]]; !ok {
			order = append(order, lans[i])
		}
		members[lans[i]] = append(members[lans[i]], Member{Node: node, Interface: "eth0"})
	}
	for _, l := range order {
		topo.LANs = append(topo.LANs, LAN{Name: l, Members: members[l]})
	}
	return topo
}
