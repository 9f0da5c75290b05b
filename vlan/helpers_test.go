package vlan

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
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

func newTestApplier(t testing.TB) *Applier {
	t.Helper()
	a, err := NewApplier(Config{Logger: slog.New(slog.NewTextHandler(tLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))})
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
func pingOnce(ns, addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "busybox", "ping", "-c1", "-W1", addr).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s from %s: %w: %s", addr, ns, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// hostLinks lists interface names in the test's own namespace.
func hostLinks(t testing.TB) []string {
	t.Helper()
	links, err := netlink.LinkList()
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

// assertGone checks that nothing of experiment exp is left: no namespace by
// its names and no new interface in the host namespace.
func assertGone(t testing.TB, exp string, hostBefore []string) {
	t.Helper()
	names, err := experimentNamespaces(exp)
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 0 {
		t.Errorf("namespaces left behind: %v", names)
	}
	if after := hostLinks(t); strings.Join(after, ",") != strings.Join(hostBefore, ",") {
		t.Errorf("host interfaces changed: before %v, after %v", hostBefore, after)
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
