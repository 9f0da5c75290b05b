package vlan

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// validTopology is a small topology that passes Validate; tests break one
// thing at a time.
func validTopology() *Topology {
	return &Topology{
		Experiment: "demo",
		Nodes: []Node{
			{Name: "a", Interfaces: []Interface{{Name: "eth0", Address: "10.0.0.1/24"}, {Name: "eth1", Address: "10.0.1.1/24"}}},
			{Name: "b", Interfaces: []Interface{{Name: "eth0", Address: "10.0.0.2/24"}}},
			{Name: "vm", Kind: KindTap, Interfaces: []Interface{{Name: "eth0", Address: "10.0.1.2/24"}}},
		},
		LANs: []LAN{
			{Name: "lan0", VLAN: 10, Members: []Member{{Node: "a", Interface: "eth0"}, {Node: "b", Interface: "eth0"}}},
			{Name: "lan1", VLAN: 11, Rate: 10e6, Members: []Member{{Node: "a", Interface: "eth1"}, {Node: "vm", Interface: "eth0", Rate: 1e6}}},
		},
	}
}

func TestValidateAcceptsValid(t *testing.T) {
	if err := validTopology().Validate(); err != nil {
		t.Fatal(err)
	}
	d := validTopology()
	d.Backend, d.Trunk = BackendDot1Q, "eth1"
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestValidateErrors(t *testing.T) {
	cases := []struct {
		name   string
		break_ func(*Topology)
		want   error
		text   string
	}{
		{"unknown node", func(t *Topology) { t.LANs[0].Members[1].Node = "zz" }, ErrUnknownNode, `member node "zz"`},
		{"unknown interface", func(t *Topology) { t.LANs[0].Members[1].Interface = "eth9" }, ErrUnknownInterface, `no interface "eth9"`},
		{"duplicate interface", func(t *Topology) {
			t.Nodes[1].Interfaces = append(t.Nodes[1].Interfaces, Interface{Name: "eth0"})
		}, ErrDuplicate, `interface "eth0" twice`},
		{"duplicate node", func(t *Topology) { t.Nodes[1].Name = "a" }, ErrDuplicate, `node "a" defined twice`},
		{"duplicate LAN", func(t *Topology) { t.LANs[1].Name = "lan0" }, ErrDuplicate, `LAN "lan0" defined twice`},
		{"VLAN too big", func(t *Topology) { t.LANs[0].VLAN = 4095 }, ErrVLANRange, "VLAN id 4095"},
		{"VLAN negative", func(t *Topology) { t.LANs[0].VLAN = -1 }, ErrVLANRange, "VLAN id -1"},
		{"VLAN missing for dot1q", func(t *Topology) { t.Backend, t.Trunk, t.LANs[0].VLAN = BackendDot1Q, "eth1", 0 }, ErrVLANRange, "needs one"},
		{"VLAN reused", func(t *Topology) { t.LANs[1].VLAN = 10 }, ErrDuplicate, "VLAN id 10 already used"},
		{"node in LAN twice", func(t *Topology) {
			t.LANs[1].Members = append(t.LANs[1].Members, Member{Node: "vm", Interface: "eth0"})
		}, ErrNodeTwiceInLAN, `node "vm" is a member twice`},
		{"node in LAN twice by two interfaces", func(t *Topology) {
			t.LANs[0].Members = append(t.LANs[0].Members, Member{Node: "a", Interface: "eth1"})
			t.LANs[1].Members = t.LANs[1].Members[1:]
		}, ErrNodeTwiceInLAN, `node "a" is a member twice`},
		{"interface in two LANs", func(t *Topology) {
			t.LANs[1].Members = append(t.LANs[1].Members, Member{Node: "b", Interface: "eth0"})
		}, ErrDuplicate, "is in LAN"},
		{"interface in no LAN", func(t *Topology) {
			t.Nodes[1].Interfaces = append(t.Nodes[1].Interfaces, Interface{Name: "eth1"})
		}, ErrUnattached, "b/eth1 is in no LAN"},
		{"empty LAN", func(t *Topology) { t.LANs = append(t.LANs, LAN{Name: "empty"}) }, ErrUnattached, `LAN "empty" has no members`},
		{"experiment with dash", func(t *Topology) { t.Experiment = "my-exp" }, ErrBadName, "no '-'"},
		{"experiment empty", func(t *Topology) { t.Experiment = "" }, ErrBadName, "experiment name is empty"},
		{"experiment too long", func(t *Topology) { t.Experiment = strings.Repeat("x", 33) }, ErrBadName, "at most 32"},
		{"interface name too long", func(t *Topology) {
			t.Nodes[1].Interfaces[0].Name = "abcdefghijklmnop"
			t.LANs[0].Members[1].Interface = "abcdefghijklmnop"
		}, ErrBadName, "interface name"},
		{"interface named lo", func(t *Topology) {
			t.Nodes[1].Interfaces[0].Name = "lo"
			t.LANs[0].Members[1].Interface = "lo"
		}, ErrBadName, "loopback"},
		{"bad address", func(t *Topology) { t.Nodes[0].Interfaces[0].Address = "10.0.0.300/24" }, ErrBadAddress, "10.0.0.300/24"},
		{"address without prefix", func(t *Topology) { t.Nodes[0].Interfaces[0].Address = "10.0.0.1" }, ErrBadAddress, "with prefix"},
		{"multicast MAC", func(t *Topology) { t.Nodes[0].Interfaces[0].MAC = "01:00:5e:00:00:01" }, ErrBadAddress, "multicast"},
		{"duplicate MAC", func(t *Topology) {
			t.Nodes[0].Interfaces[0].MAC = "02:00:00:00:00:01"
			t.Nodes[1].Interfaces[0].MAC = "02:00:00:00:00:01"
		}, ErrDuplicate, "already used"},
		{"bad backend", func(t *Topology) { t.Backend = "vxlan" }, ErrBadName, `backend "vxlan"`},
		{"bad kind", func(t *Topology) { t.Nodes[0].Kind = "xen" }, ErrBadName, `kind "xen"`},
		{"dot1q without trunk", func(t *Topology) { t.Backend = BackendDot1Q }, ErrMissingTrunk, "needs a trunk"},
		{"unknown host", func(t *Topology) {
			t.Hosts = []Host{{Name: "pc1"}}
			t.Nodes[0].Host = "pc2"
		}, ErrUnknownHost, `host "pc2"`},
		{"bridge LAN across hosts", func(t *Topology) { t.Nodes[1].Host = "pc2" }, ErrSpansHosts, "single-host"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			topo := validTopology()
			c.break_(topo)
			err := topo.Validate()
			if err == nil {
				t.Fatal("Validate accepted it")
			}
			if !errors.Is(err, c.want) || !errors.Is(err, ErrInvalidTopology) {
				t.Errorf("error %q does not wrap %v and ErrInvalidTopology", err, c.want)
			}
			if !strings.Contains(err.Error(), c.text) {
				t.Errorf("error %q does not mention %q", err, c.text)
			}
		})
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	topo := validTopology()
	topo.LANs[0].VLAN = 5000
	topo.LANs[0].Members[1].Node = "ghost"
	err := topo.Validate()
	if !errors.Is(err, ErrVLANRange) || !errors.Is(err, ErrUnknownNode) {
		t.Fatalf("want both problems, got %v", err)
	}
}

func TestDecode(t *testing.T) {
	const good = `{
  "experiment": "demo",
  "nodes": [
    {"name": "a", "interfaces": [{"name": "eth0", "address": "10.0.0.1/24"}]},
    {"name": "b", "interfaces": [{"name": "eth0", "address": "10.0.0.2/24"}]}
  ],
  "lans": [
    {"name": "lan0", "vlan": 7, "rate": "100mbit",
     "members": [{"node": "a", "interface": "eth0"}, {"node": "b", "interface": "eth0", "rate": 2500000}]}
  ]
}`
	topo, err := Decode(strings.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	if topo.LANs[0].Rate != 100e6 || topo.LANs[0].Members[1].Rate != 2.5e6 {
		t.Errorf("rates %v %v", topo.LANs[0].Rate, topo.LANs[0].Members[1].Rate)
	}
	// It round-trips through JSON.
	b, err := json.Marshal(topo)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Decode(strings.NewReader(string(b)))
	if err != nil {
		t.Fatalf("re-decode %s: %v", b, err)
	}
	if again.LANs[0].Rate != topo.LANs[0].Rate || again.LANs[0].Members[1].Rate != topo.LANs[0].Members[1].Rate {
		t.Errorf("round trip changed rates: %s", b)
	}

	bad := []struct{ name, json, text string }{
		{"unknown field", strings.Replace(good, `"vlan": 7`, `"vlna": 7`, 1), `unknown field "vlna"`},
		{"syntax error line", strings.Replace(good, `"b", "interfaces"`, `"b" "interfaces"`, 1), "line 5"},
		{"wrong type", strings.Replace(good, `"vlan": 7`, `"vlan": "7"`, 1), "line 8"},
		{"bad rate", strings.Replace(good, `"100mbit"`, `"fast"`, 1), `rate "fast"`},
		{"trailing data", good + "{}", "trailing data"},
		{"truncated", good[:len(good)/2], "unexpected EOF"},
		{"empty", "", "EOF"},
		{"invalid topology", strings.Replace(good, `"node": "b"`, `"node": "c"`, 1), "unknown node"},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			_, err := Decode(strings.NewReader(c.json))
			if err == nil || !errors.Is(err, ErrInvalidTopology) || !strings.Contains(err.Error(), c.text) {
				t.Errorf("got %v, want an invalid-topology error mentioning %q", err, c.text)
			}
		})
	}
}

func TestParseRate(t *testing.T) {
	good := map[string]Rate{
		"10mbit": 10e6, "1gbit": 1e9, "500kbit": 500e3, "100mbps": 800e6, "2.5gbit": 2.5e9,
		"1000": 1000, "64kibit": 65536, " 1Mbit ": 1e6, "8bps": 64,
	}
	for in, want := range good {
		got, err := ParseRate(in)
		if err != nil || got != want {
			t.Errorf("ParseRate(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "fast", "mbit", "-1mbit", "0", "NaN", "1e30gbit"} {
		if r, err := ParseRate(in); err == nil {
			t.Errorf("ParseRate(%q) = %v, want an error", in, r)
		}
	}
	for r, want := range map[Rate]string{10e6: "10mbit", 1e9: "1gbit", 1500: "1500bit", 64e3: "64kbit"} {
		if r.String() != want {
			t.Errorf("%d.String() = %s, want %s", uint64(r), r, want)
		}
	}
	var r Rate
	for _, in := range []string{`-5`, `1.5`, `true`, `"x"`} {
		if err := json.Unmarshal([]byte(in), &r); err == nil {
			t.Errorf("unmarshal %s: want an error", in)
		}
	}
}

// FuzzDecode feeds arbitrary bytes to Decode: it must never panic, and
// whatever it accepts must plan without error and with interface names the
// kernel accepts.
func FuzzDecode(f *testing.F) {
	b, _ := json.Marshal(validTopology())
	f.Add(b)
	d := validTopology()
	d.Backend, d.Trunk = BackendDot1Q, "eth1"
	b, _ = json.Marshal(d)
	f.Add(b)
	f.Add([]byte(`{"experiment":"x","nodes":[{"name":"a","interfaces":[{"name":"e"}]}],"lans":[{"name":"l","members":[{"node":"a","interface":"e"}]}]}`))
	f.Add([]byte(`{"experiment":"x","lans":[{"rate":"1e400gbit"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		topo, err := Decode(bytes.NewReader(data))
		if err != nil {
			return
		}
		p, err := NewPlan(topo, "")
		if errors.Is(err, ErrNoLocalNodes) {
			return
		}
		if err != nil {
			t.Fatalf("Decode accepted a topology NewPlan rejects: %v", err)
		}
		for _, v := range p.Veths {
			if !validIfName(v.SwitchEnd) || !validIfName(v.Name) {
				t.Fatalf("bad interface name in %+v", v)
			}
		}
		_ = p.String()
	})
}
