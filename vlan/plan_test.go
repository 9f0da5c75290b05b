package vlan

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestPlanBridge(t *testing.T) {
	p, err := NewPlan(validTopology(), "")
	if err != nil {
		t.Fatal(err)
	}
	if p.Switch != "stx-demo" || p.Backend != BackendBridge {
		t.Errorf("switch %q backend %q", p.Switch, p.Backend)
	}
	// Only netns nodes get namespaces.
	if len(p.Namespaces) != 2 || p.Namespaces[0].Name != "stx-demo-a" || p.Namespaces[1].Name != "stx-demo-b" {
		t.Errorf("namespaces %+v", p.Namespaces)
	}
	if len(p.Bridges) != 2 || len(p.Veths) != 3 || len(p.Taps) != 1 || len(p.VLANs) != 0 {
		t.Fatalf("plan has %d bridges, %d veths, %d taps, %d vlans:\n%s", len(p.Bridges), len(p.Veths), len(p.Taps), len(p.VLANs), p)
	}
	for _, v := range p.Veths {
		if len(v.SwitchEnd) > maxIfNameLen || !validIfName(v.SwitchEnd) {
			t.Errorf("switch end name %q", v.SwitchEnd)
		}
		if v.MAC[0]&2 == 0 || v.MAC[0]&1 != 0 {
			t.Errorf("MAC %s is not locally administered unicast", v.MAC)
		}
	}
	// Member rate overrides the LAN's; the LAN's applies otherwise.
	if p.Veths[2].LAN != "lan1" || p.Veths[2].Rate != 10e6 {
		t.Errorf("a/eth1 on lan1: rate %v, want the LAN's 10mbit", p.Veths[2].Rate)
	}
	tap := p.Tap("vm", "eth0")
	if tap == nil || tap.Rate != 1e6 || tap.Name != TapName("vm", "eth0") || tap.Bridge != p.Bridges[1].Name {
		t.Errorf("tap %+v", tap)
	}
	if p.Veths[0].Address.String() != "10.0.0.1/24" {
		t.Errorf("address %v", p.Veths[0].Address)
	}
	s := p.String()
	for _, want := range []string{"netns stx-demo (switch)", "bridge stx-demo/" + p.Bridges[0].Name + " (LAN lan0, VLAN 10)", "addr 10.0.0.1/24", "tbf 10mbit", "tap stx-demo/" + tap.Name} {
		if !strings.Contains(s, want) {
			t.Errorf("plan text lacks %q:\n%s", want, s)
		}
	}
}

// Names and MACs depend on what they name, not on order, so reordering a
// topology keeps every interface where it was.
func TestPlanNamesStable(t *testing.T) {
	p1, err := NewPlan(validTopology(), "")
	if err != nil {
		t.Fatal(err)
	}
	topo := validTopology()
	topo.LANs[0], topo.LANs[1] = topo.LANs[1], topo.LANs[0]
	topo.Nodes[0], topo.Nodes[1] = topo.Nodes[1], topo.Nodes[0]
	p2, err := NewPlan(topo, "")
	if err != nil {
		t.Fatal(err)
	}
	names := func(p *Plan) map[string]string {
		m := map[string]string{}
		for _, b := range p.Bridges {
			m["br "+b.LAN] = b.Name
		}
		for _, v := range p.Veths {
			m[v.Node+"/"+v.Name] = v.SwitchEnd + " " + v.MAC.String() + " " + v.Bridge
		}
		return m
	}
	n1, n2 := names(p1), names(p2)
	if fmt.Sprint(n1) != fmt.Sprint(n2) {
		t.Errorf("names changed with order:\n%v\n%v", n1, n2)
	}
	// Another experiment with the same nodes gets other MACs.
	topo = validTopology()
	topo.Experiment = "other"
	p3, _ := NewPlan(topo, "")
	if p3.Veths[0].MAC.String() == p1.Veths[0].MAC.String() {
		t.Errorf("two experiments share MAC %s", p1.Veths[0].MAC)
	}
	// An explicit MAC wins.
	topo = validTopology()
	topo.Nodes[1].Interfaces[0].MAC = "02:aa:bb:cc:dd:ee"
	p4, _ := NewPlan(topo, "")
	if p4.Veths[1].MAC.String() != "02:aa:bb:cc:dd:ee" {
		t.Errorf("MAC %s, want the topology's", p4.Veths[1].MAC)
	}
}

func TestPlanDot1QPerHost(t *testing.T) {
	topo := validTopology()
	topo.Backend = BackendDot1Q
	topo.Trunk = "eth9"
	topo.Hosts = []Host{{Name: "pc1", Trunk: "enp1s0"}, {Name: "pc2"}}
	topo.Nodes[0].Host = "pc1" // a: lan0 and lan1
	topo.Nodes[1].Host = "pc2" // b: lan0
	topo.Nodes[2].Host = "pc2" // vm: lan1
	p1, err := NewPlan(topo, "pc1")
	if err != nil {
		t.Fatal(err)
	}
	if len(p1.Namespaces) != 1 || len(p1.Bridges) != 2 || len(p1.VLANs) != 2 || len(p1.Taps) != 0 {
		t.Fatalf("pc1 plan:\n%s", p1)
	}
	for i, v := range p1.VLANs {
		if v.Trunk != "enp1s0" || v.ID != topo.LANs[i].VLAN || v.Name != fmt.Sprintf("vlan%d", v.ID) || v.Bridge != p1.Bridges[i].Name {
			t.Errorf("pc1 VLAN %+v", v)
		}
	}
	p2, err := NewPlan(topo, "pc2")
	if err != nil {
		t.Fatal(err)
	}
	if len(p2.Namespaces) != 1 || len(p2.Taps) != 1 || len(p2.VLANs) != 2 || p2.VLANs[0].Trunk != "eth9" {
		t.Fatalf("pc2 plan:\n%s", p2)
	}
	// Both hosts name the LAN's bridge alike.
	if p1.Bridges[0].Name != p2.Bridges[0].Name {
		t.Errorf("bridge names differ across hosts")
	}
	if !strings.Contains(p1.String(), "vlan stx-demo/vlan10 id 10 on trunk enp1s0") {
		t.Errorf("plan text:\n%s", p1)
	}
	_, err = NewPlan(topo, "pc3")
	if !errors.Is(err, ErrNoLocalNodes) || !strings.Contains(err.Error(), `"pc1"`) {
		t.Errorf("plan for an unknown host: %v", err)
	}
}

func TestPlanRejectsInvalid(t *testing.T) {
	topo := validTopology()
	topo.LANs[0].VLAN = 9999
	if _, err := NewPlan(topo, ""); !errors.Is(err, ErrVLANRange) {
		t.Errorf("NewPlan: %v, want ErrVLANRange", err)
	}
}

func TestTbfParams(t *testing.T) {
	for _, r := range []Rate{64e3, 1e6, 100e6, 10e9, 100e9} {
		burst, limit := tbfParams(r)
		if burst < 4*1514 || limit <= burst {
			t.Errorf("rate %s: burst %d limit %d", r, burst, limit)
		}
	}
	if b, _ := tbfParams(1e9); b != 1250000 {
		t.Errorf("1gbit burst %d, want 10 ms = 1250000 bytes", b)
	}
}
