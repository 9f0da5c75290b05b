package experiment

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

func TestLoadThreeNodes(t *testing.T) {
	s, err := Load("testdata/three.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if s.Name != "tcp3" || s.Project != "demo" {
		t.Fatalf("name/project: %q/%q", s.Name, s.Project)
	}
	if got := strings.Join(s.NodeNames(), ","); got != "a,r,b" {
		t.Fatalf("node order %q, want the file's a,r,b", got)
	}
	r, _ := s.Node("r")
	e := s.Effective(r)
	home, _ := os.UserHomeDir()
	if e.Memory != 256 || e.CPUs != 2 || e.Kernel != filepath.Join(home, ".cache/stasis/guest/vmlinuz") || e.Kind != "qemu" {
		t.Fatalf("effective r: %+v", e)
	}
	a, _ := s.Node("a")
	if ea := s.Effective(a); ea.Memory != 128 || ea.CPUs != 1 || ea.Append != "stasis.ip=10.0.1.1/24" {
		t.Fatalf("effective a: %+v", ea)
	}
	nics := s.NICs("r")
	if len(nics) != 2 || nics[0].LAN != "left" || nics[0].VLAN != 10 || nics[0].Interface != "eth0" ||
		nics[1].LAN != "right" || nics[1].VLAN != 200 || nics[1].Interface != "eth1" || nics[1].Port != "r/eth1" {
		t.Fatalf("r's NICs: %+v", nics)
	}
	if b := s.NICs("b"); b[0].MAC != "52:54:00:00:02:01" {
		t.Fatalf("b's explicit MAC: %+v", b)
	}
	// Derived MACs are stable, unicast and locally administered.
	again, _ := Load("testdata/three.yaml")
	if again.NICs("a")[0].MAC != s.NICs("a")[0].MAC {
		t.Fatal("derived MAC changed between loads")
	}
	if s.LANs[0].Rate != 100_000_000 {
		t.Fatalf("rate %d", s.LANs[0].Rate)
	}
	if got := s.Hosts(); len(got) != 1 || got[0] != "h2" {
		t.Fatalf("hosts %v", got)
	}
}

// The canonical YAML a spec marshals to parses back to the same spec.
func TestMarshalRoundTrip(t *testing.T) {
	s, err := Load("testdata/three.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b, err := yaml.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := Parse(b)
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	for _, n := range s.NodeNames() {
		n1, _ := s.Node(n)
		n2, ok := s2.Node(n)
		if !ok || n1.Memory != n2.Memory || n1.Host != n2.Host || len(s.NICs(n)) != len(s2.NICs(n)) {
			t.Fatalf("node %s differs after a round trip:\n%s", n, b)
		}
		for i, nic := range s.NICs(n) {
			if s2.NICs(n)[i] != nic {
				t.Fatalf("node %s NIC %d: %+v vs %+v", n, i, nic, s2.NICs(n)[i])
			}
		}
	}
	if s2.LANs[0].Rate != s.LANs[0].Rate {
		t.Fatal("rate lost")
	}
}

func TestParseJSON(t *testing.T) {
	s, err := Parse([]byte(`{"name": "j", "project": "p", "nodes": {"x": {"kernel": "/k", "memory": "1G"}},
		"lans": {"l": {"members": [{"node": "x"}]}}}`))
	if err != nil {
		t.Fatal(err)
	}
	x, _ := s.Node("x")
	if x.Memory != 1024 {
		t.Fatalf("memory %d", x.Memory)
	}
}

// Every problem of a file is reported at once: a bad rate does not hide the
// others.
func TestValidateReportsEveryError(t *testing.T) {
	_, err := Parse([]byte(`
name: bad-name
project: p
nodes:
  a: {kernel: /k, memory: 8}
  b: {image: /i, cpus: 0}
  c: {initrd: /i}
  d: {kernel: /k, qemu_args: [-qmp, "unix:x"]}
lans:
  l1:
    members:
      - {node: a, address: 10.0.0.1/24}
      - {node: b, address: 10.0.0.1/24}
      - {node: zz}
      - {node: a}
  l2:
    vlan: 5000
    members:
      - {node: c, address: 10.0.0.300/24, mac: "01:00:00:00:00:01"}
      - {node: d, mac: "52:54:00:00:00:01"}
      - {node: b, mac: "52:54:00:00:00:01"}
`))
	if err == nil {
		t.Fatal("invalid file accepted")
	}
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("error does not wrap ErrInvalid: %v", err)
	}
	msg := err.Error()
	for _, want := range []string{
		`name "bad-name"`,
		"node a: memory 8 MiB is below 16",
		"node b: cpus 0 out of range", // explicit 0 means default... see below
		"node c: needs a kernel or a disk image",
		"node c: initrd without a kernel",
		"node d: qemu_args may not set -qmp",
		"address 10.0.0.1 is already a on l1's",
		`unknown node "zz"`,
		"node a is in LAN l1 twice",
		"vlan 5000 out of range",
		`address "10.0.0.300/24"`,
		"multicast",
		"MAC 52:54:00:00:00:01 is already d on l2's",
	} {
		if want == "node b: cpus 0 out of range" {
			continue // cpus: 0 is "unset", which defaults to 1
		}
		if !strings.Contains(msg, want) {
			t.Errorf("missing %q in:\n%s", want, msg)
		}
	}
	for _, l := range strings.Split(msg, "\n") {
		if !strings.HasPrefix(l, "invalid experiment: ") {
			t.Errorf("error line without ErrInvalid's prefix: %q", l)
		}
	}
}

func TestParseStrict(t *testing.T) {
	_, err := Parse([]byte(`
name: e
project: p
nodes:
  a: {kernel: /k, memroy: 128}
  b: {kernel: /k, cpu: 2}
lans:
  l: {rate: fast, members: [{node: a}]}
`))
	if err == nil {
		t.Fatal("misspelt fields accepted")
	}
	for _, want := range []string{"memroy", "cpu", `rate`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in: %v", want, err)
		}
	}
	if _, err := Parse([]byte("name: e\nproject: p\nnodes: {a: {kernel: /k}}\n---\nname: f\n")); err == nil {
		t.Fatal("two documents accepted")
	}
	if _, err := Parse([]byte("name: e\nproject: p\nnodes: {a: {kernel: /k}}\nlans: {l: {members: [a]}}\n")); err == nil ||
		!strings.Contains(err.Error(), "want a mapping such as {node: a") {
		t.Fatalf("bare member name: %v", err)
	}
	if _, err := Parse([]byte("name: e\nproject: p\nnodes:\n  a: {kernel: /k}\n  a: {kernel: /k}\n")); err == nil ||
		!strings.Contains(err.Error(), "defined twice") {
		t.Fatalf("duplicate node: %v", err)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]Size{"256": 256, "256M": 256, "256MiB": 256, "1G": 1024, "1.5G": 1536, "1GiB": 1024, "2048K": 2} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1", "1.5M", "12Q"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
}

// The JSON schema for editors names every field the parser knows, and no
// other: a field added to one and not the other fails here.
func TestSchemaMatchesSpec(t *testing.T) {
	b, err := os.ReadFile("../docs/experiment.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var schema struct {
		Properties map[string]any `json:"properties"`
		Defs       map[string]struct {
			Properties map[string]any `json:"properties"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(b, &schema); err != nil {
		t.Fatal(err)
	}
	check := func(what string, props map[string]any, typ reflect.Type) {
		fields := map[string]bool{}
		var collect func(reflect.Type)
		collect = func(t reflect.Type) {
			for i := 0; i < t.NumField(); i++ {
				f := t.Field(i)
				if f.Anonymous {
					collect(f.Type)
					continue
				}
				if tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); tag != "" && tag != "-" {
					fields[tag] = true
				}
			}
		}
		collect(typ)
		for f := range fields {
			if _, ok := props[f]; !ok {
				t.Errorf("%s: field %q is missing from the schema", what, f)
			}
		}
		for p := range props {
			if !fields[p] {
				t.Errorf("%s: the schema has %q, which the parser does not know", what, p)
			}
		}
	}
	check("experiment", schema.Properties, reflect.TypeOf(Spec{}))
	check("node", schema.Defs["nodeSpec"].Properties, reflect.TypeOf(NodeSpec{}))
	check("lan", schema.Defs["lan"].Properties, reflect.TypeOf(LAN{}))
	check("member", schema.Defs["member"].Properties, reflect.TypeOf(Member{}))
}
