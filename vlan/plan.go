package vlan

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
)

// Plan is the list of kernel objects that realize a topology on one host.
// It is computed by NewPlan without touching the system, so it can be
// inspected and tested without root; an [Applier] executes it.
type Plan struct {
	Experiment string  `json:"experiment"`
	Backend    Backend `json:"backend"`
	// Host is the host this plan is for ("" for the local one).
	Host string `json:"host,omitempty"`
	// Switch is the switch namespace holding bridges, switch ends of veth
	// pairs, taps and VLAN subinterfaces.
	Switch string `json:"switch"`
	// Namespaces are the netns nodes' namespaces, one per node.
	Namespaces []Namespace `json:"namespaces,omitempty"`
	// Bridges are one per LAN with a member on this host.
	Bridges []Bridge `json:"bridges"`
	// Veths connect netns nodes to their LAN's bridge.
	Veths []Veth `json:"veths,omitempty"`
	// Taps attach tap nodes (QEMU guests) to their LAN's bridge.
	Taps []Tap `json:"taps,omitempty"`
	// VLANs are the dot1q backend's trunk subinterfaces, one per LAN.
	VLANs []VLANPort `json:"vlans,omitempty"`
}

// Namespace is a netns node's network namespace.
type Namespace struct {
	Node string `json:"node"`
	Name string `json:"name"`
}

// Bridge is a LAN's bridge in the switch namespace.
type Bridge struct {
	LAN  string `json:"lan"`
	Name string `json:"name"`
	VLAN int    `json:"vlan,omitempty"`
}

// Veth is a link from a netns node into its LAN: a veth pair with one end,
// Name, inside the node's namespace and the other, SwitchEnd, a port of
// Bridge in the switch namespace.
type Veth struct {
	LAN       string `json:"lan"`
	Node      string `json:"node"`
	Namespace string `json:"namespace"`
	// Name is the interface name inside the node (the topology's name).
	Name      string `json:"name"`
	SwitchEnd string `json:"switch_end"`
	Bridge    string `json:"bridge"`
	MAC       MAC    `json:"mac"`
	// Address is configured on Name; invalid (zero) when there is none.
	Address netip.Prefix `json:"address,omitzero"`
	// Rate, if not zero, is enforced by a tbf qdisc on both ends.
	Rate Rate `json:"rate,omitempty"`
}

// Tap is a persistent tap device in the switch namespace through which a
// QEMU guest's NIC joins its LAN.
type Tap struct {
	LAN       string `json:"lan"`
	Node      string `json:"node"`
	Interface string `json:"interface"`
	Name      string `json:"name"`
	Bridge    string `json:"bridge"`
	// MAC is the address the guest NIC should use (QEMU's mac=).
	MAC MAC `json:"mac"`
	// Address is the guest's address from the topology (informational).
	Address netip.Prefix `json:"address,omitzero"`
	// Rate, if not zero, is enforced towards the guest.
	Rate Rate `json:"rate,omitempty"`
}

// MAC is an Ethernet address; its text (and JSON) form is
// "02:ab:cd:ef:01:23".
type MAC net.HardwareAddr

func (m MAC) String() string { return net.HardwareAddr(m).String() }

// MarshalText implements encoding.TextMarshaler.
func (m MAC) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (m *MAC) UnmarshalText(b []byte) error {
	hw, err := net.ParseMAC(string(b))
	if err != nil {
		return err
	}
	*m = MAC(hw)
	return nil
}

// VLANPort is an 802.1Q subinterface of the trunk carrying one LAN to
// other hosts; it is created on Trunk in the host namespace, lives in the
// switch namespace and is a port of Bridge.
type VLANPort struct {
	LAN    string `json:"lan"`
	ID     int    `json:"id"`
	Trunk  string `json:"trunk"`
	Name   string `json:"name"`
	Bridge string `json:"bridge"`
}

// ErrNoLocalNodes is returned by NewPlan when the topology has no node on
// the requested host.
var ErrNoLocalNodes = errors.New("no nodes on this host")

// NewPlan validates t and computes the objects that realize its part on
// host (nodes whose Host equals host; "" selects nodes without a host).
func NewPlan(t *Topology, host string) (*Plan, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	p := &Plan{
		Experiment: t.Experiment,
		Backend:    t.backend(),
		Host:       host,
		Switch:     SwitchNamespace(t.Experiment),
	}
	local := map[string]*Node{}
	for i := range t.Nodes {
		n := &t.Nodes[i]
		if n.Host != host {
			continue
		}
		local[n.Name] = n
		if n.kind() == KindNetns {
			p.Namespaces = append(p.Namespaces, Namespace{Node: n.Name, Name: NodeNamespace(t.Experiment, n.Name)})
		}
	}
	if len(local) == 0 {
		hosts := map[string]bool{}
		for _, n := range t.Nodes {
			hosts[fmt.Sprintf("%q", n.Host)] = true
		}
		names := make([]string, 0, len(hosts))
		for h := range hosts {
			names = append(names, h)
		}
		sort.Strings(names)
		return nil, fmt.Errorf("%w: host %q (nodes are on %s)", ErrNoLocalNodes, host, strings.Join(names, ", "))
	}

	for _, l := range t.LANs {
		br := ""
		for _, m := range l.Members {
			n := local[m.Node]
			if n == nil {
				continue
			}
			if br == "" {
				br = bridgeName(l.Name)
				p.Bridges = append(p.Bridges, Bridge{LAN: l.Name, Name: br, VLAN: l.VLAN})
				if p.Backend == BackendDot1Q {
					p.VLANs = append(p.VLANs, VLANPort{LAN: l.Name, ID: l.VLAN, Trunk: t.trunkFor(host), Name: vlanName(l.VLAN), Bridge: br})
				}
			}
			ifc := n.iface(m.Interface)
			mac := nodeMAC(t.Experiment, n.Name, ifc.Name)
			if ifc.MAC != "" {
				hw, _ := net.ParseMAC(ifc.MAC) // checked by Validate
				mac = MAC(hw)
			}
			var addr netip.Prefix
			if ifc.Address != "" {
				addr, _ = netip.ParsePrefix(ifc.Address) // checked by Validate
			}
			rate := m.Rate
			if rate == 0 {
				rate = l.Rate
			}
			switch n.kind() {
			case KindNetns:
				p.Veths = append(p.Veths, Veth{
					LAN: l.Name, Node: n.Name, Namespace: NodeNamespace(t.Experiment, n.Name),
					Name: ifc.Name, SwitchEnd: switchEndName(n.Name, ifc.Name), Bridge: br,
					MAC: mac, Address: addr, Rate: rate,
				})
			case KindTap:
				p.Taps = append(p.Taps, Tap{
					LAN: l.Name, Node: n.Name, Interface: ifc.Name,
					Name: tapName(n.Name, ifc.Name), Bridge: br,
					MAC: mac, Address: addr, Rate: rate,
				})
			}
		}
	}
	if err := p.checkNames(); err != nil {
		return nil, err
	}
	return p, nil
}

func (n *Node) iface(name string) *Interface {
	for i := range n.Interfaces {
		if n.Interfaces[i].Name == name {
			return &n.Interfaces[i]
		}
	}
	return nil
}

// checkNames rejects the (astronomically unlikely) case of two objects
// hashing to one switch-namespace interface name.
func (p *Plan) checkNames() error {
	seen := map[string]string{}
	add := func(name, what string) error {
		if other, dup := seen[name]; dup {
			return fmt.Errorf("%w: %s and %s both map to interface name %s; rename one", ErrInvalidTopology, other, what, name)
		}
		seen[name] = what
		return nil
	}
	var errs []error
	for _, b := range p.Bridges {
		errs = append(errs, add(b.Name, "LAN "+b.LAN))
	}
	for _, v := range p.Veths {
		errs = append(errs, add(v.SwitchEnd, v.Node+"/"+v.Name))
	}
	for _, t := range p.Taps {
		errs = append(errs, add(t.Name, t.Node+"/"+t.Interface))
	}
	for _, v := range p.VLANs {
		errs = append(errs, add(v.Name, "VLAN of LAN "+v.LAN))
	}
	return errors.Join(errs...)
}

// Tap returns the tap of node's interface iface, or nil.
func (p *Plan) Tap(node, iface string) *Tap {
	for i := range p.Taps {
		if p.Taps[i].Node == node && p.Taps[i].Interface == iface {
			return &p.Taps[i]
		}
	}
	return nil
}

// String lists the plan's objects, one per line, in the order an applier
// creates them.
func (p *Plan) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "experiment %s backend %s host %q\n", p.Experiment, p.Backend, p.Host)
	fmt.Fprintf(&b, "netns %s (switch)\n", p.Switch)
	for _, ns := range p.Namespaces {
		fmt.Fprintf(&b, "netns %s (node %s)\n", ns.Name, ns.Node)
	}
	for _, br := range p.Bridges {
		fmt.Fprintf(&b, "bridge %s/%s (LAN %s", p.Switch, br.Name, br.LAN)
		if br.VLAN != 0 {
			fmt.Fprintf(&b, ", VLAN %d", br.VLAN)
		}
		b.WriteString(")\n")
	}
	for _, v := range p.VLANs {
		fmt.Fprintf(&b, "vlan %s/%s id %d on trunk %s, master %s\n", p.Switch, v.Name, v.ID, v.Trunk, v.Bridge)
	}
	for _, v := range p.Veths {
		fmt.Fprintf(&b, "veth %s/%s master %s <-> %s/%s mac %s", p.Switch, v.SwitchEnd, v.Bridge, v.Namespace, v.Name, v.MAC)
		if v.Address.IsValid() {
			fmt.Fprintf(&b, " addr %s", v.Address)
		}
		if v.Rate != 0 {
			fmt.Fprintf(&b, " tbf %s", v.Rate)
		}
		b.WriteString("\n")
	}
	for _, t := range p.Taps {
		fmt.Fprintf(&b, "tap %s/%s master %s (node %s/%s, guest mac %s", p.Switch, t.Name, t.Bridge, t.Node, t.Interface, t.MAC)
		if t.Address.IsValid() {
			fmt.Fprintf(&b, ", guest addr %s", t.Address)
		}
		b.WriteString(")")
		if t.Rate != 0 {
			fmt.Fprintf(&b, " tbf %s", t.Rate)
		}
		b.WriteString("\n")
	}
	return b.String()
}
