package vlan

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// makeTrunk creates a veth pair in a's host namespace (its TrunkNetns, a
// namespace of this test) to serve as a dot1q trunk. It goes away with
// that namespace.
func makeTrunk(t *testing.T, a *Applier) string {
	t.Helper()
	name := "stxtr" + uniqueExp(t)[1:]
	if out, err := exec.Command("ip", "-n", a.trunkNetns, "link", "add", name, "up", "type", "veth", "peer", "name", name+"p").CombinedOutput(); err != nil {
		t.Fatalf("create trunk: %v: %s", err, out)
	}
	return name
}

func dot1qTopology(exp, trunk string) *Topology {
	topo := lanTopology(exp, []string{"10.1.0.1/24", "10.1.0.2/24", "10.1.1.1/24"}, []string{"a", "a", "b"})
	topo.Backend, topo.Trunk = BackendDot1Q, trunk
	topo.LANs[0].VLAN, topo.LANs[1].VLAN = 101, 102
	return topo
}

// The dot1q backend on a kernel without 802.1Q support fails with an error
// that names the missing support, and leaves nothing behind. (On a kernel
// with 802.1Q it must instead come up with a subinterface per LAN.)
func TestDot1Q(t *testing.T) {
	requireRoot(t)
	a := newTestApplier(t)
	exp := uniqueExp(t)
	trunk := makeTrunk(t, a)
	cleanupExperiment(t, a, exp)
	before := hostLinks(t, a)
	p, err := NewPlan(dot1qTopology(exp, trunk), "")
	if err != nil {
		t.Fatal(err)
	}
	if len(p.VLANs) != 2 || p.VLANs[0].Trunk != trunk {
		t.Fatalf("plan:\n%s", p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = a.Up(ctx, p)
	if err == nil {
		t.Log("this kernel has 802.1Q: checking the subinterfaces")
		st, err := a.Show(ctx, p)
		if err != nil || !st.OK() {
			t.Fatalf("Show: %v %+v", err, st)
		}
		if err := pingOK(p.Namespaces[0].Name, "10.1.0.2"); err != nil {
			t.Error(err)
		}
		if _, err := a.Down(ctx, exp); err != nil {
			t.Fatal(err)
		}
		assertGone(t, a, exp, before)
		return
	}
	t.Logf("Up: %v", err)
	if !errors.Is(err, ErrNoKernelSupport) {
		t.Errorf("error does not wrap ErrNoKernelSupport: %v", err)
	}
	for _, want := range []string{"802.1Q", "CONFIG_VLAN_8021Q", "vlan101", trunk} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q: %v", want, err)
		}
	}
	assertGone(t, a, exp, before)
}

func TestDot1QTrunkDown(t *testing.T) {
	requireRoot(t)
	a := newTestApplier(t)
	exp := uniqueExp(t)
	trunk := makeTrunk(t, a)
	if out, err := exec.Command("ip", "-n", a.trunkNetns, "link", "set", trunk, "down").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	cleanupExperiment(t, a, exp)
	before := hostLinks(t, a)
	p, err := NewPlan(dot1qTopology(exp, trunk), "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.Up(context.Background(), p)
	if err == nil || !strings.Contains(err.Error(), "is down") {
		t.Errorf("Up: %v, want an error saying the trunk is down", err)
	}
	assertGone(t, a, exp, before)
}

func TestDot1QMissingTrunk(t *testing.T) {
	requireRoot(t)
	a := newTestApplier(t)
	exp := uniqueExp(t)
	cleanupExperiment(t, a, exp)
	before := hostLinks(t, a)
	p, err := NewPlan(dot1qTopology(exp, "nosuchtrunk0"), "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.Up(context.Background(), p)
	if err == nil || !strings.Contains(err.Error(), `trunk "nosuchtrunk0"`) {
		t.Errorf("Up: %v, want an error naming the missing trunk", err)
	}
	assertGone(t, a, exp, before)
}
