package experiment

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"stasis/vlan"
)

// Spec is an experiment file: what `stasis exp create` reads. Its YAML (or
// JSON, which is YAML too) form is documented in docs/EXPERIMENT.md, with a
// JSON schema in docs/experiment.schema.json for editors.
//
// Nodes and LANs are maps keyed by name, as in containerlab's topology
// files; their order in the file is kept (it fixes each node's NIC order).
type Spec struct {
	// Name is the experiment's name, unique within its project: letters,
	// digits, '_' and '.', at most 32 bytes.
	Name string `yaml:"name"`
	// Project owns the experiment; snapshots live under
	// MNT/experiments/PROJECT/NAME.
	Project string `yaml:"project"`
	// Description is free text.
	Description string `yaml:"description,omitempty"`
	// Defaults apply to every node that does not set the field itself.
	Defaults NodeSpec `yaml:"defaults,omitempty"`
	Nodes    NodeList `yaml:"nodes"`
	LANs     LANList  `yaml:"lans,omitempty"`

	dir string // directory of the file, for relative paths
}

// NodeSpec is a node's settings; the same fields serve as Spec.Defaults.
type NodeSpec struct {
	// Kind is "qemu" (the default): a QEMU virtual machine. Other kinds
	// (network-namespace nodes) are reserved.
	Kind string `yaml:"kind,omitempty"`
	// Kernel and Initrd boot the VM directly (-kernel, -initrd); Image is
	// a base disk image (raw or qcow2) that stasis puts under a fresh qcow2
	// overlay per node. A node needs a kernel or an image. Relative paths
	// are relative to the experiment file.
	Kernel string `yaml:"kernel,omitempty"`
	Initrd string `yaml:"initrd,omitempty"`
	Image  string `yaml:"image,omitempty"`
	// Append is the kernel command line (with Kernel).
	Append string `yaml:"append,omitempty"`
	// Memory is the guest's RAM: MiB as a number, or "256M", "1G".
	Memory Size `yaml:"memory,omitempty"`
	// CPUs is the number of virtual CPUs (default 1).
	CPUs int `yaml:"cpus,omitempty"`
	// QEMUArgs are appended to the node's QEMU command line.
	QEMUArgs []string `yaml:"qemu_args,omitempty"`
	// Host places the node on a host (an agent's name); empty lets the
	// placement choose.
	Host string `yaml:"host,omitempty"`
}

// Node is one node of an experiment.
type Node struct {
	Name string `yaml:"-"`
	NodeSpec
	line int
}

// LAN is one broadcast domain of an experiment.
type LAN struct {
	Name string `yaml:"-"`
	// VLAN is the LAN's 802.1Q id inside the experiment's switches
	// (1..4094); by default LANs are numbered from 10 in file order.
	VLAN int `yaml:"vlan,omitempty"`
	// Rate is the LAN's link rate ("100mbit"); recorded, not yet shaped by
	// the userspace switch (`exp up` says so).
	Rate    Rate     `yaml:"rate,omitempty"`
	Members []Member `yaml:"members"`
	line    int
}

// Member attaches a node to a LAN through one of its NICs.
type Member struct {
	Node string `yaml:"node"`
	// Interface names the NIC inside the guest (informational; NICs are
	// created in the order the node's memberships appear in the file, so
	// the first is eth0). Default "ethN".
	Interface string `yaml:"interface,omitempty"`
	// Address is the address the guest uses on this LAN ("10.0.1.1/24");
	// stasis checks it for duplicates and records it, the guest configures
	// it.
	Address string `yaml:"address,omitempty"`
	// MAC is the NIC's MAC address; by default one is derived from project,
	// experiment, node and LAN, so it is stable across swaps.
	MAC string `yaml:"mac,omitempty"`
}

// Size is a memory size in MiB.
type Size int64

// UnmarshalYAML accepts a number of MiB or a string with a unit (K, M, G,
// T, optionally followed by "iB" or "B"; binary units).
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: memory: want a number of MiB or a size such as \"256M\"", n.Line)
	}
	v, err := ParseSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: memory: %w", n.Line, err)
	}
	*s = v
	return nil
}

// MarshalYAML writes the size as a number of MiB.
func (s Size) MarshalYAML() (any, error) { return int64(s), nil }

// ParseSize parses "256", "256M", "256MiB", "1G", "1.5G" into MiB.
func ParseSize(str string) (Size, error) {
	t := strings.TrimSpace(str)
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "i")
	mult := 1.0
	if t != "" {
		switch t[len(t)-1] {
		case 'k', 'K':
			mult = 1.0 / 1024
		case 'm', 'M':
			mult = 1
		case 'g', 'G':
			mult = 1024
		case 't', 'T':
			mult = 1024 * 1024
		}
		if mult != 1 || t[len(t)-1] == 'm' || t[len(t)-1] == 'M' {
			t = t[:len(t)-1]
		}
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(t), 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("bad size %q (want MiB, or a number with K, M, G or T)", str)
	}
	mib := f * mult
	if mib != float64(int64(mib)) {
		return 0, fmt.Errorf("size %q is not a whole number of MiB", str)
	}
	return Size(mib), nil
}

// NodeList is the ordered map of nodes.
type NodeList []Node

// UnmarshalYAML reads a mapping of node name to settings, in file order.
func (l *NodeList) UnmarshalYAML(n *yaml.Node) error {
	return decodeOrdered(n, "nodes", func(name string, line int, v *yaml.Node) error {
		nd := Node{Name: name, line: line}
		var err error
		if v.Kind != yaml.ScalarNode || v.Tag != "!!null" { // "a:" alone is a node with defaults
			err = strictDecode(v, &nd.NodeSpec)
		}
		*l = append(*l, nd) // kept even when broken, so LANs naming it do not add errors
		return err
	})
}

// MarshalYAML writes the nodes as a mapping.
func (l NodeList) MarshalYAML() (any, error) {
	m := &yaml.Node{Kind: yaml.MappingNode}
	for _, nd := range l {
		var v yaml.Node
		if err := v.Encode(nd.NodeSpec); err != nil {
			return nil, err
		}
		m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: nd.Name}, &v)
	}
	return m, nil
}

// LANList is the ordered map of LANs.
type LANList []LAN

// UnmarshalYAML reads a mapping of LAN name to settings, in file order.
func (l *LANList) UnmarshalYAML(n *yaml.Node) error {
	return decodeOrdered(n, "lans", func(name string, line int, v *yaml.Node) error {
		var lan LAN
		err := strictDecode(v, &lan)
		lan.Name, lan.line = name, line
		*l = append(*l, lan)
		return err
	})
}

// MarshalYAML writes the LANs as a mapping.
func (l LANList) MarshalYAML() (any, error) {
	m := &yaml.Node{Kind: yaml.MappingNode}
	for _, lan := range l {
		type plain LAN
		var v yaml.Node
		if err := v.Encode(plain(lan)); err != nil {
			return nil, err
		}
		m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: lan.Name}, &v)
	}
	return m, nil
}

// UnmarshalYAML refuses the shorthand of a bare node name with a hint.
func (m *Member) UnmarshalYAML(n *yaml.Node) error {
	type plain Member
	var p plain
	if n.Kind == yaml.ScalarNode {
		return fmt.Errorf("line %d: member %q: want a mapping such as {node: a, address: 10.0.0.1/24}", n.Line, n.Value)
	}
	if err := n.Decode(&p); err != nil {
		return err
	}
	*m = Member(p)
	return nil
}

// decodeOrdered walks a YAML mapping in order; every entry's error is kept,
// so a file's problems are reported together.
func decodeOrdered(n *yaml.Node, what string, f func(name string, line int, v *yaml.Node) error) error {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: %s: want a mapping of name to settings (as containerlab's topology.nodes)", n.Line, what)
	}
	var errs []error
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if prev, dup := seen[k.Value]; dup {
			errs = append(errs, fmt.Errorf("line %d: %s: %q defined twice (first on line %d)", k.Line, what, k.Value, prev))
			continue
		}
		seen[k.Value] = k.Line
		if err := f(k.Value, k.Line, v); err != nil {
			errs = append(errs, fmt.Errorf("%s.%s: %w", what, k.Value, err))
		}
	}
	return errors.Join(errs...)
}

// Rate is a link rate in bits per second.
type Rate uint64

// UnmarshalYAML parses a rate given as "100mbit" or bits per second.
func (r *Rate) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: rate: want a rate such as \"100mbit\"", n.Line)
	}
	if n.Tag == "!!int" {
		v, err := strconv.ParseUint(n.Value, 10, 64)
		if err != nil {
			return fmt.Errorf("line %d: rate %q: %w", n.Line, n.Value, err)
		}
		*r = Rate(v)
		return nil
	}
	v, err := vlan.ParseRate(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: rate: %w", n.Line, err)
	}
	*r = Rate(v)
	return nil
}

// MarshalYAML writes the rate with a unit.
func (r Rate) MarshalYAML() (any, error) { return vlan.Rate(r).String(), nil }

// String formats the rate with a unit ("100mbit").
func (r Rate) String() string { return vlan.Rate(r).String() }

// ErrInvalid is wrapped by every error of Parse and Validate.
var ErrInvalid = errors.New("invalid experiment")

// Load reads and validates an experiment file (YAML or JSON).
func Load(path string) (*Spec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	abs, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	s.dir = abs
	return s, nil
}

// Parse decodes an experiment file and validates it. Unknown fields are
// errors (a misspelt key never vanishes silently), and every problem of the
// file is reported at once, joined, each wrapping ErrInvalid.
func Parse(data []byte) (*Spec, error) {
	var docs []*yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var d yaml.Node
		if err := dec.Decode(&d); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		docs = append(docs, &d)
	}
	switch {
	case len(docs) == 0 || len(docs[0].Content) == 0:
		return nil, fmt.Errorf("%w: the file is empty", ErrInvalid)
	case len(docs) > 1:
		return nil, fmt.Errorf("%w: line %d: more than one document in the file", ErrInvalid, docs[1].Line)
	}
	var s Spec
	var errs []error
	for _, e := range strictDecodeAll(docs[0].Content[0], &s) {
		errs = append(errs, fmt.Errorf("%w: %w", ErrInvalid, e))
	}
	if err := s.Validate(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &s, nil
}

// strictDecode decodes the mapping v into out (a pointer to a struct),
// reporting keys that name no field (yaml.Node.Decode ignores the
// decoder's KnownFields) and every type error, joined.
func strictDecode(v *yaml.Node, out any) error {
	return errors.Join(strictDecodeAll(v, out)...)
}

func strictDecodeAll(v *yaml.Node, out any) []error {
	errs := unknownKeys(v, reflect.TypeOf(out).Elem())
	if v.Kind != yaml.MappingNode {
		if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
			return errs
		}
		return append(errs, fmt.Errorf("line %d: want a mapping of settings", v.Line))
	}
	// Field by field, so that one bad field does not hide the next.
	rv := reflect.ValueOf(out).Elem()
	for i := 0; i+1 < len(v.Content); i += 2 {
		k, val := v.Content[i], v.Content[i+1]
		idx, ok := yamlField(rv.Type(), k.Value)
		if !ok {
			continue // reported by unknownKeys
		}
		if err := val.Decode(rv.FieldByIndex(idx).Addr().Interface()); err != nil {
			var te *yaml.TypeError
			if errors.As(err, &te) {
				for _, e := range te.Errors {
					errs = append(errs, errors.New(strings.TrimPrefix(e, "yaml: ")))
				}
			} else {
				errs = append(errs, err)
			}
		}
	}
	return errs
}

// yamlField finds the (possibly embedded) field of struct type t whose
// yaml name is name.
func yamlField(t reflect.Type, name string) ([]int, bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if f.Anonymous && f.Type.Kind() == reflect.Struct {
			if idx, ok := yamlField(f.Type, name); ok {
				return append([]int{i}, idx...), true
			}
			continue
		}
		if tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); tag == name && tag != "-" {
			return []int{i}, true
		}
	}
	return nil, false
}

// unknownKeys lists the keys of mapping v that are no yaml field of struct
// type t, recursing into struct and slice-of-struct fields (not into types
// that decode themselves).
func unknownKeys(v *yaml.Node, t reflect.Type) []error {
	if v.Kind != yaml.MappingNode || t.Kind() != reflect.Struct {
		return nil
	}
	fields := map[string]reflect.Type{}
	var collect func(t reflect.Type)
	collect = func(t reflect.Type) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if f.Anonymous && f.Type.Kind() == reflect.Struct {
				collect(f.Type)
				continue
			}
			if tag == "" || tag == "-" {
				continue
			}
			fields[tag] = f.Type
		}
	}
	collect(t)
	unmarshaler := reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()
	var errs []error
	for i := 0; i+1 < len(v.Content); i += 2 {
		k, val := v.Content[i], v.Content[i+1]
		ft, ok := fields[k.Value]
		if !ok {
			names := make([]string, 0, len(fields))
			for n := range fields {
				names = append(names, n)
			}
			sort.Strings(names)
			errs = append(errs, fmt.Errorf("line %d: unknown field %q (known: %s)", k.Line, k.Value, strings.Join(names, ", ")))
			continue
		}
		if reflect.PointerTo(ft).Implements(unmarshaler) {
			continue
		}
		switch {
		case ft.Kind() == reflect.Struct:
			errs = append(errs, unknownKeys(val, ft)...)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct && val.Kind == yaml.SequenceNode:
			for _, item := range val.Content {
				errs = append(errs, unknownKeys(item, ft.Elem())...)
			}
		}
	}
	return errs
}

// Limits and defaults.
const (
	maxNameLen    = 32
	minMemoryMiB  = 16
	maxCPUs       = 64
	defaultMemory = 128
	firstVLAN     = 10
)

var (
	reName     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.]*$`)
	reNodeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)
)

// Validate checks the spec and returns every problem, joined; each wraps
// ErrInvalid and names the field (and the line, for files).
func (s *Spec) Validate() error {
	var errs []error
	bad := func(line int, format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		if line > 0 {
			msg = fmt.Sprintf("line %d: %s", line, msg)
		}
		errs = append(errs, fmt.Errorf("%w: %s", ErrInvalid, msg))
	}
	checkName := func(what, v string) {
		switch {
		case v == "":
			bad(0, "%s is missing", what)
		case len(v) > maxNameLen || !reName.MatchString(v):
			bad(0, "%s %q: want letters, digits, '_' or '.', at most %d bytes", what, v, maxNameLen)
		}
	}
	checkName("name", s.Name)
	checkName("project", s.Project)
	if s.Defaults.Host != "" {
		bad(0, "defaults.host: place nodes one by one (a default host would put every node on it)")
	}
	if len(s.Nodes) == 0 {
		bad(0, "nodes: an experiment needs at least one node")
	}
	nodes := map[string]*Node{}
	for i := range s.Nodes {
		n := &s.Nodes[i]
		if len(n.Name) > 64 || !reNodeName.MatchString(n.Name) {
			bad(n.line, "node %q: want letters, digits, '_', '.' or '-', at most 64 bytes", n.Name)
		}
		nodes[n.Name] = n
		e := s.Effective(n)
		switch e.Kind {
		case "qemu":
		case "netns":
			bad(n.line, "node %s: kind netns is reserved and not supported yet; use kind qemu", n.Name)
		default:
			bad(n.line, "node %s: unknown kind %q (want qemu)", n.Name, e.Kind)
		}
		if e.Kernel == "" && e.Image == "" {
			bad(n.line, "node %s: needs a kernel or a disk image (set kernel/initrd or image, here or in defaults)", n.Name)
		}
		if e.Initrd != "" && e.Kernel == "" {
			bad(n.line, "node %s: initrd without a kernel", n.Name)
		}
		if e.Memory < minMemoryMiB {
			bad(n.line, "node %s: memory %d MiB is below %d MiB", n.Name, e.Memory, minMemoryMiB)
		}
		if e.CPUs < 1 || e.CPUs > maxCPUs {
			bad(n.line, "node %s: cpus %d out of range 1..%d", n.Name, e.CPUs, maxCPUs)
		}
		if e.Host != "" && !reNodeName.MatchString(e.Host) {
			bad(n.line, "node %s: host %q is not a valid host name", n.Name, e.Host)
		}
		for _, a := range e.QEMUArgs {
			for _, reserved := range []string{"-qmp", "-incoming", "-daemonize", "-name", "-pidfile", "-netdev", "-nic", "-net"} {
				if a == reserved || a == "-"+reserved {
					bad(n.line, "node %s: qemu_args may not set %s (stasis sets it)", n.Name, a)
				}
			}
		}
	}

	vlans := map[int]string{}
	addrs := map[netip.Addr]string{}
	macs := map[string]string{}
	for i := range s.LANs {
		l := &s.LANs[i]
		if len(l.Name) > 64 || !reNodeName.MatchString(l.Name) {
			bad(l.line, "LAN %q: want letters, digits, '_', '.' or '-', at most 64 bytes", l.Name)
		}
		vid := s.VLANOf(i)
		if vid < 1 || vid > 4094 {
			bad(l.line, "LAN %s: vlan %d out of range 1..4094", l.Name, vid)
		} else if other, dup := vlans[vid]; dup {
			bad(l.line, "LAN %s: vlan %d is also LAN %s's", l.Name, vid, other)
		} else {
			vlans[vid] = l.Name
		}
		if len(l.Members) == 0 {
			bad(l.line, "LAN %s has no members", l.Name)
		}
		inLAN := map[string]bool{}
		for j, m := range l.Members {
			where := fmt.Sprintf("LAN %s member %d", l.Name, j+1)
			if _, ok := nodes[m.Node]; !ok {
				if m.Node == "" {
					bad(l.line, "%s: node is missing", where)
				} else {
					bad(l.line, "%s: unknown node %q", where, m.Node)
				}
				continue
			}
			if inLAN[m.Node] {
				bad(l.line, "%s: node %s is in LAN %s twice", where, m.Node, l.Name)
			}
			inLAN[m.Node] = true
			if m.Interface != "" && (len(m.Interface) > 15 || !reNodeName.MatchString(m.Interface)) {
				bad(l.line, "%s (%s): interface %q: want letters, digits, '_', '.' or '-', at most 15 bytes", where, m.Node, m.Interface)
			}
			if m.Address != "" {
				p, err := netip.ParsePrefix(m.Address)
				if err != nil {
					bad(l.line, "%s (%s): address %q: want an address with prefix length, such as 10.0.1.1/24", where, m.Node, m.Address)
				} else if other, dup := addrs[p.Addr()]; dup {
					bad(l.line, "%s (%s): address %s is already %s's", where, m.Node, p.Addr(), other)
				} else {
					addrs[p.Addr()] = m.Node + " on " + l.Name
				}
			}
			mac := s.macOf(l, m)
			hw, err := net.ParseMAC(mac)
			switch {
			case err != nil || len(hw) != 6:
				bad(l.line, "%s (%s): MAC %q is not an Ethernet address", where, m.Node, mac)
			case hw[0]&1 == 1:
				bad(l.line, "%s (%s): MAC %s is a multicast address", where, m.Node, mac)
			default:
				if other, dup := macs[hw.String()]; dup {
					bad(l.line, "%s (%s): MAC %s is already %s's", where, m.Node, hw, other)
				} else {
					macs[hw.String()] = m.Node + " on " + l.Name
				}
			}
		}
	}
	return errors.Join(errs...)
}

// Effective returns n's settings with the spec's defaults filled in.
func (s *Spec) Effective(n *Node) NodeSpec {
	e := n.NodeSpec
	d := s.Defaults
	pick := func(v *string, def string) {
		if *v == "" {
			*v = def
		}
	}
	pick(&e.Kind, d.Kind)
	pick(&e.Kind, "qemu")
	pick(&e.Kernel, d.Kernel)
	pick(&e.Initrd, d.Initrd)
	pick(&e.Image, d.Image)
	pick(&e.Append, d.Append)
	if e.Memory == 0 {
		e.Memory = d.Memory
	}
	if e.Memory == 0 {
		e.Memory = defaultMemory
	}
	if e.CPUs == 0 {
		e.CPUs = d.CPUs
	}
	if e.CPUs == 0 {
		e.CPUs = 1
	}
	if e.QEMUArgs == nil {
		e.QEMUArgs = d.QEMUArgs
	}
	for _, p := range []*string{&e.Kernel, &e.Initrd, &e.Image} {
		*p = s.resolve(*p)
	}
	return e
}

// resolve makes a path relative to the experiment file absolute; "~/"
// is the user's home.
func (s *Spec) resolve(p string) string {
	if p == "" {
		return ""
	}
	if strings.HasPrefix(p, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, p[2:])
		}
	}
	if filepath.IsAbs(p) || s.dir == "" {
		return p
	}
	return filepath.Join(s.dir, p)
}

// VLANOf returns the VLAN id of the i-th LAN.
func (s *Spec) VLANOf(i int) int {
	if s.LANs[i].VLAN != 0 {
		return s.LANs[i].VLAN
	}
	return firstVLAN + i
}

func (s *Spec) macOf(l *LAN, m Member) string {
	if m.MAC != "" {
		return m.MAC
	}
	h := sha256.Sum256([]byte("stasis-mac\x00" + s.Project + "\x00" + s.Name + "\x00" + m.Node + "\x00" + l.Name))
	mac := net.HardwareAddr(h[:6])
	mac[0] = (mac[0] | 0x02) &^ 0x01 // locally administered, unicast
	return mac.String()
}

// NIC is one network interface of a node, resolved from the LANs.
type NIC struct {
	LAN       string `json:"lan"`
	VLAN      int    `json:"vlan"`
	Interface string `json:"interface"`
	MAC       string `json:"mac"`
	Address   string `json:"address,omitempty"`
	// Port is the NIC's port name on the experiment's switch.
	Port string `json:"port"`
}

// NICs returns node's NICs in order (its memberships in file order).
func (s *Spec) NICs(node string) []NIC {
	var out []NIC
	for i := range s.LANs {
		l := &s.LANs[i]
		for _, m := range l.Members {
			if m.Node != node {
				continue
			}
			ifname := m.Interface
			if ifname == "" {
				ifname = "eth" + strconv.Itoa(len(out))
			}
			hw, _ := net.ParseMAC(s.macOf(l, m))
			out = append(out, NIC{LAN: l.Name, VLAN: s.VLANOf(i), Interface: ifname, MAC: hw.String(), Address: m.Address,
				Port: node + "/" + ifname})
		}
	}
	return out
}

// Node returns the node named name.
func (s *Spec) Node(name string) (*Node, bool) {
	for i := range s.Nodes {
		if s.Nodes[i].Name == name {
			return &s.Nodes[i], true
		}
	}
	return nil, false
}

// NodeNames returns the node names in file order.
func (s *Spec) NodeNames() []string {
	out := make([]string, len(s.Nodes))
	for i, n := range s.Nodes {
		out[i] = n.Name
	}
	return out
}

// Hosts returns the hosts the spec pins nodes to, sorted.
func (s *Spec) Hosts() []string {
	set := map[string]bool{}
	for i := range s.Nodes {
		if h := s.Nodes[i].Host; h != "" {
			set[h] = true
		}
	}
	out := make([]string, 0, len(set))
	for h := range set {
		out = append(out, h)
	}
	sort.Strings(out)
	return out
}

// Marshal writes the spec as YAML that Parse reads back to the same spec.
func (s *Spec) Marshal() ([]byte, error) { return yaml.Marshal(s) }
