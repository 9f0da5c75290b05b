package vlan

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strings"
)

// Backend selects how LANs are realized on a host.
type Backend string

const (
	// BackendBridge builds each LAN as a bridge in the experiment's switch
	// namespace. LANs cannot leave the host.
	BackendBridge Backend = "bridge"
	// BackendDot1Q additionally connects each LAN's bridge to the host's
	// trunk interface through an 802.1Q subinterface, so LANs span hosts.
	// It needs kernel 802.1Q support (CONFIG_VLAN_8021Q).
	BackendDot1Q Backend = "dot1q"
)

// NodeKind says what a node is on its host.
type NodeKind string

const (
	// KindNetns is a node that is a network namespace (the default).
	KindNetns NodeKind = "netns"
	// KindTap is a QEMU guest attached through tap devices.
	KindTap NodeKind = "tap"
)

// Topology is one experiment's network. Its JSON form is what
// `stasis net up` reads; see [Load].
type Topology struct {
	// Experiment names the experiment; it prefixes every namespace
	// ("stx-<experiment>"), so it must be unique on a host. Letters,
	// digits, '_' and '.', at most 32 bytes; no '-', which separates it
	// from node names.
	Experiment string `json:"experiment"`
	// Backend is "bridge" (default) or "dot1q".
	Backend Backend `json:"backend,omitempty"`
	// Trunk is the dot1q trunk interface on every host that Hosts does not
	// name (for example "eth1").
	Trunk string `json:"trunk,omitempty"`
	// Hosts lists the hosts the experiment spans, with their trunks. It may
	// be empty when every node is on the one local host.
	Hosts []Host `json:"hosts,omitempty"`
	Nodes []Node `json:"nodes"`
	LANs  []LAN  `json:"lans"`
}

// Host is one machine of a multi-host experiment.
type Host struct {
	Name string `json:"name"`
	// Trunk is the interface that carries the dot1q backend's tagged
	// frames to the other hosts; empty means Topology.Trunk.
	Trunk string `json:"trunk,omitempty"`
}

// Node is one experiment node.
type Node struct {
	Name string `json:"name"`
	// Kind is "netns" (default) or "tap".
	Kind NodeKind `json:"kind,omitempty"`
	// Host names the machine the node runs on; empty means the local one.
	Host       string      `json:"host,omitempty"`
	Interfaces []Interface `json:"interfaces"`
}

// Interface is a node's network interface; each is a member of exactly one
// LAN.
type Interface struct {
	// Name is the interface name inside the node ("eth0"), at most 15
	// bytes. For tap nodes it names the guest NIC and only keys the tap.
	Name string `json:"name"`
	// Address is an IPv4 or IPv6 address with prefix ("10.0.0.1/24"). For
	// netns nodes it is configured on the interface; for tap nodes it
	// records what the guest uses and is not configured by stasis.
	Address string `json:"address,omitempty"`
	// MAC overrides the interface's MAC address; by default it is derived
	// from experiment, node and interface, so a rebuilt network has the
	// same addresses.
	MAC string `json:"mac,omitempty"`
}

// LAN is one broadcast domain.
type LAN struct {
	Name string `json:"name"`
	// VLAN is the 802.1Q id (1..4094); required by the dot1q backend,
	// optional and informational with the bridge backend.
	VLAN int `json:"vlan,omitempty"`
	// Rate limits every member link of the LAN unless the member sets its
	// own; zero means no limit.
	Rate    Rate     `json:"rate,omitempty"`
	Members []Member `json:"members"`
}

// Member attaches one node interface to a LAN.
type Member struct {
	Node      string `json:"node"`
	Interface string `json:"interface"`
	// Rate limits this link with tbf, in both directions for netns nodes and
	// towards the guest for tap nodes; zero means the LAN's rate.
	Rate Rate `json:"rate,omitempty"`
}

// Errors that Validate wraps, so callers can tell problems apart with
// errors.Is. Every validation error also wraps ErrInvalidTopology.
var (
	ErrInvalidTopology  = errors.New("invalid topology")
	ErrBadName          = errors.New("bad name")
	ErrUnknownNode      = errors.New("unknown node")
	ErrUnknownInterface = errors.New("unknown interface")
	ErrUnknownHost      = errors.New("unknown host")
	ErrDuplicate        = errors.New("duplicate")
	ErrVLANRange        = errors.New("VLAN id out of range 1..4094")
	ErrNodeTwiceInLAN   = errors.New("node in a LAN twice")
	ErrBadAddress       = errors.New("bad address")
	ErrUnattached       = errors.New("interface in no LAN")
	ErrSpansHosts       = errors.New("LAN spans hosts")
	ErrMissingTrunk     = errors.New("no trunk interface")
)

// Limits on names. Namespace names have room; interface names are
// IFNAMSIZ-1 bytes.
const (
	maxExperimentLen = 32
	maxNodeLen       = 64
	maxIfNameLen     = 15
	maxLANLen        = 64
)

var (
	reExperiment = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.]*$`)
	reName       = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)
)

// Load reads a topology in JSON from path and validates it.
func Load(path string) (*Topology, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	t, err := Decode(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// Decode reads a topology in JSON and validates it. Unknown fields are
// errors, so a misspelt key does not silently vanish.
func Decode(r io.Reader) (*Topology, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var t Topology
	if err := dec.Decode(&t); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidTopology, jsonError(data, err))
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data after the topology object", ErrInvalidTopology)
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	return &t, nil
}

// jsonError adds a line number to a JSON syntax or type error.
func jsonError(data []byte, err error) error {
	var off int64
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		off = se.Offset
	case errors.As(err, &te):
		off = te.Offset
	default:
		return err
	}
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	line := 1 + bytes.Count(data[:off], []byte("\n"))
	return fmt.Errorf("line %d: %w", line, err)
}

// backend returns the effective backend.
func (t *Topology) backend() Backend {
	if t.Backend == "" {
		return BackendBridge
	}
	return t.Backend
}

// kind returns the node's effective kind.
func (n *Node) kind() NodeKind {
	if n.Kind == "" {
		return KindNetns
	}
	return n.Kind
}

// Validate checks the topology and returns every problem it finds, joined;
// each wraps ErrInvalidTopology and one of the specific errors above.
func (t *Topology) Validate() error {
	var errs []error
	bad := func(kind error, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %w: %s", ErrInvalidTopology, kind, fmt.Sprintf(format, args...)))
	}

	switch {
	case t.Experiment == "":
		bad(ErrBadName, "experiment name is empty")
	case len(t.Experiment) > maxExperimentLen || !reExperiment.MatchString(t.Experiment):
		bad(ErrBadName, "experiment %q: want letters, digits, '_' or '.', at most %d bytes (no '-')", t.Experiment, maxExperimentLen)
	}
	backend := t.backend()
	if backend != BackendBridge && backend != BackendDot1Q {
		bad(ErrBadName, "backend %q: want %q or %q", t.Backend, BackendBridge, BackendDot1Q)
	}
	if t.Trunk != "" && !validIfName(t.Trunk) {
		bad(ErrBadName, "trunk %q is not a valid interface name", t.Trunk)
	}

	hosts := map[string]*Host{}
	for i := range t.Hosts {
		h := &t.Hosts[i]
		switch {
		case h.Name == "" || !reName.MatchString(h.Name):
			bad(ErrBadName, "host %d: name %q", i, h.Name)
		case hosts[h.Name] != nil:
			bad(ErrDuplicate, "host %q listed twice", h.Name)
		default:
			hosts[h.Name] = h
		}
		if h.Trunk != "" && !validIfName(h.Trunk) {
			bad(ErrBadName, "host %q: trunk %q is not a valid interface name", h.Name, h.Trunk)
		}
	}

	type ifKey struct{ node, iface string }
	nodes := map[string]*Node{}
	ifaces := map[ifKey]bool{}
	macs := map[string]string{}
	usedHosts := map[string]bool{}
	for i := range t.Nodes {
		n := &t.Nodes[i]
		switch {
		case n.Name == "":
			bad(ErrBadName, "node %d has no name", i)
			continue
		case len(n.Name) > maxNodeLen || !reName.MatchString(n.Name):
			bad(ErrBadName, "node %q: want letters, digits, '_', '.' or '-', at most %d bytes", n.Name, maxNodeLen)
		case nodes[n.Name] != nil:
			bad(ErrDuplicate, "node %q defined twice", n.Name)
			continue
		}
		nodes[n.Name] = n
		if k := n.kind(); k != KindNetns && k != KindTap {
			bad(ErrBadName, "node %q: kind %q, want %q or %q", n.Name, n.Kind, KindNetns, KindTap)
		}
		if n.Host != "" {
			if len(t.Hosts) > 0 && hosts[n.Host] == nil {
				bad(ErrUnknownHost, "node %q is on host %q, which hosts does not list", n.Name, n.Host)
			}
			if !reName.MatchString(n.Host) {
				bad(ErrBadName, "node %q: host %q", n.Name, n.Host)
			}
		}
		usedHosts[n.Host] = true
		if len(n.Interfaces) == 0 {
			bad(ErrUnattached, "node %q has no interfaces", n.Name)
		}
		for _, ifc := range n.Interfaces {
			k := ifKey{n.Name, ifc.Name}
			switch {
			case !validIfName(ifc.Name):
				bad(ErrBadName, "node %q: interface name %q (1..%d bytes, no '/', ':' or spaces)", n.Name, ifc.Name, maxIfNameLen)
			case ifc.Name == "lo":
				bad(ErrBadName, "node %q: interface name \"lo\" is the loopback", n.Name)
			case ifaces[k]:
				bad(ErrDuplicate, "node %q has interface %q twice", n.Name, ifc.Name)
			}
			ifaces[k] = true
			if ifc.Address != "" {
				if _, err := netip.ParsePrefix(ifc.Address); err != nil {
					bad(ErrBadAddress, "node %q interface %q: address %q: want an address with prefix like 10.0.0.1/24", n.Name, ifc.Name, ifc.Address)
				}
			}
			if ifc.MAC != "" {
				mac, err := net.ParseMAC(ifc.MAC)
				switch {
				case err != nil || len(mac) != 6:
					bad(ErrBadAddress, "node %q interface %q: MAC %q", n.Name, ifc.Name, ifc.MAC)
				case mac[0]&1 != 0:
					bad(ErrBadAddress, "node %q interface %q: MAC %q is multicast", n.Name, ifc.Name, ifc.MAC)
				default:
					m := mac.String()
					if other, dup := macs[m]; dup {
						bad(ErrDuplicate, "node %q interface %q: MAC %s already used by %s", n.Name, ifc.Name, m, other)
					}
					macs[m] = n.Name + "/" + ifc.Name
				}
			}
		}
	}

	lans := map[string]bool{}
	vlans := map[int]string{}
	attached := map[ifKey]string{}
	for i := range t.LANs {
		l := &t.LANs[i]
		switch {
		case l.Name == "":
			bad(ErrBadName, "LAN %d has no name", i)
		case len(l.Name) > maxLANLen || !reName.MatchString(l.Name):
			bad(ErrBadName, "LAN %q: want letters, digits, '_', '.' or '-', at most %d bytes", l.Name, maxLANLen)
		case lans[l.Name]:
			bad(ErrDuplicate, "LAN %q defined twice", l.Name)
		}
		lans[l.Name] = true
		switch {
		case l.VLAN == 0 && backend == BackendDot1Q:
			bad(ErrVLANRange, "LAN %q has no VLAN id; the dot1q backend needs one", l.Name)
		case l.VLAN < 0 || l.VLAN > 4094:
			bad(ErrVLANRange, "LAN %q: VLAN id %d", l.Name, l.VLAN)
		case l.VLAN != 0:
			if other, dup := vlans[l.VLAN]; dup {
				bad(ErrDuplicate, "LAN %q: VLAN id %d already used by LAN %q", l.Name, l.VLAN, other)
			}
			vlans[l.VLAN] = l.Name
		}
		if len(l.Members) == 0 {
			bad(ErrUnattached, "LAN %q has no members", l.Name)
		}
		inLAN := map[string]bool{}
		lanHosts := map[string]bool{}
		for _, m := range l.Members {
			n := nodes[m.Node]
			if n == nil {
				bad(ErrUnknownNode, "LAN %q: member node %q is not defined", l.Name, m.Node)
				continue
			}
			if inLAN[m.Node] {
				bad(ErrNodeTwiceInLAN, "LAN %q: node %q is a member twice", l.Name, m.Node)
			}
			inLAN[m.Node] = true
			lanHosts[n.Host] = true
			k := ifKey{m.Node, m.Interface}
			if !ifaces[k] {
				bad(ErrUnknownInterface, "LAN %q: node %q has no interface %q", l.Name, m.Node, m.Interface)
				continue
			}
			if other, dup := attached[k]; dup {
				bad(ErrDuplicate, "interface %s/%s is in LAN %q and LAN %q", m.Node, m.Interface, other, l.Name)
				continue
			}
			attached[k] = l.Name
		}
		if len(lanHosts) > 1 && backend == BackendBridge {
			bad(ErrSpansHosts, "LAN %q has members on %d hosts; the bridge backend is single-host, use dot1q", l.Name, len(lanHosts))
		}
	}
	for i := range t.Nodes {
		n := &t.Nodes[i]
		for _, ifc := range n.Interfaces {
			if _, ok := attached[ifKey{n.Name, ifc.Name}]; !ok && validIfName(ifc.Name) {
				bad(ErrUnattached, "interface %s/%s is in no LAN", n.Name, ifc.Name)
			}
		}
	}
	if backend == BackendDot1Q {
		for h := range usedHosts {
			if t.trunkFor(h) == "" {
				name := h
				if name == "" {
					name = "(local)"
				}
				bad(ErrMissingTrunk, "host %s: the dot1q backend needs a trunk (set trunk or hosts[].trunk)", name)
			}
		}
	}
	return errors.Join(errs...)
}

// trunkFor returns the trunk interface of host h.
func (t *Topology) trunkFor(h string) string {
	for _, x := range t.Hosts {
		if x.Name == h && x.Trunk != "" {
			return x.Trunk
		}
	}
	return t.Trunk
}

// validIfName reports whether the kernel accepts s as an interface name.
func validIfName(s string) bool {
	if s == "" || len(s) > maxIfNameLen || s == "." || s == ".." {
		return false
	}
	return !strings.ContainsAny(s, "/: \t\n\r\v\f\x00")
}
