package vlan

import (
	"context"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
)

// ObjectStatus is the live state of one planned object.
type ObjectStatus struct {
	// Kind is "netns", "bridge", "vlan", "veth", "tap", "address" or "tbf".
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	// For says what the object is for ("LAN lan0", "node a/eth0").
	For string `json:"for,omitempty"`
	// State is "ok" or what is wrong: "missing", "down", "not in its
	// bridge", "is a <kind>", "rate <r>".
	State string `json:"state"`
}

// Status is the live state of a plan's objects on this host.
type Status struct {
	Experiment string         `json:"experiment"`
	Objects    []ObjectStatus `json:"objects"`
	// Extra lists namespaces of the experiment that the plan does not name.
	Extra []string `json:"extra,omitempty"`
}

// OK reports whether every planned object is present and correct.
func (s *Status) OK() bool {
	for _, o := range s.Objects {
		if o.State != "ok" {
			return false
		}
	}
	return true
}

// Missing counts the objects that are not "ok".
func (s *Status) Missing() int {
	n := 0
	for _, o := range s.Objects {
		if o.State != "ok" {
			n++
		}
	}
	return n
}

// WriteTable writes the status as an aligned table.
func (s *Status) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tNAMESPACE\tNAME\tFOR\tSTATE")
	for _, o := range s.Objects {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", o.Kind, o.Namespace, o.Name, o.For, o.State)
	}
	for _, e := range s.Extra {
		fmt.Fprintf(tw, "netns\t\t%s\t(not in topology)\textra\n", e)
	}
	return tw.Flush()
}

// Show reports which of p's objects exist on this host and in what state.
// It only reads.
func (a *Applier) Show(ctx context.Context, p *Plan) (*Status, error) {
	st := &Status{Experiment: p.Experiment}
	present, err := experimentNamespaces(p.Experiment)
	if err != nil {
		return nil, err
	}
	have := map[string]bool{}
	for _, n := range present {
		have[n] = true
	}
	states := map[string]*nsState{}
	read := func(name string) error {
		if !have[name] {
			return nil
		}
		h, err := openNetns(name)
		if errors.Is(err, errNsStale) {
			return nil // shown as missing
		}
		if err != nil {
			return err
		}
		defer h.close()
		s, err := observe(h)
		if err != nil {
			return err
		}
		states[name] = s
		return nil
	}
	planned := map[string]bool{p.Switch: true}
	if err := read(p.Switch); err != nil {
		return nil, err
	}
	for _, ns := range p.Namespaces {
		planned[ns.Name] = true
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := read(ns.Name); err != nil {
			return nil, err
		}
	}
	for _, n := range present {
		if !planned[n] {
			st.Extra = append(st.Extra, n)
		}
	}

	add := func(kind, ns, name, what, state string) {
		st.Objects = append(st.Objects, ObjectStatus{Kind: kind, Namespace: ns, Name: name, For: what, State: state})
	}
	nsOK := func(name string) string {
		if states[name] == nil {
			return "missing"
		}
		return "ok"
	}
	add("netns", "", p.Switch, "switch", nsOK(p.Switch))
	for _, ns := range p.Namespaces {
		add("netns", "", ns.Name, "node "+ns.Node, nsOK(ns.Name))
	}
	sw := states[p.Switch]
	link := func(s *nsState, name, kind string, master string) (*linkState, string) {
		if s == nil {
			return nil, "missing"
		}
		l := s.links[name]
		switch {
		case l == nil:
			return nil, "missing"
		case l.kind != kind:
			return l, "is a " + l.kind
		case !l.up:
			return l, "down"
		case master != "" && (s.links[master] == nil || s.links[master].index != l.master):
			return l, "not in its bridge"
		}
		return l, "ok"
	}
	tbf := func(ns string, l *linkState, r Rate, what string) {
		if r == 0 {
			return
		}
		state := "missing"
		switch {
		case l == nil:
		case l.tbfRate == r.BytesPerSecond():
			state = "ok"
		case l.tbfRate != 0:
			state = "rate " + Rate(l.tbfRate*8).String()
		}
		add("tbf", ns, r.String(), what, state)
	}
	for _, b := range p.Bridges {
		_, s := link(sw, b.Name, "bridge", "")
		add("bridge", p.Switch, b.Name, "LAN "+b.LAN, s)
	}
	for _, v := range p.VLANs {
		_, s := link(sw, v.Name, "vlan", v.Bridge)
		add("vlan", p.Switch, v.Name, fmt.Sprintf("LAN %s on %s", v.LAN, v.Trunk), s)
	}
	for _, v := range p.Veths {
		what := "node " + v.Node + "/" + v.Name
		sl, s := link(sw, v.SwitchEnd, "veth", v.Bridge)
		add("veth", p.Switch, v.SwitchEnd, what+" (switch end)", s)
		tbf(p.Switch, sl, v.Rate, v.SwitchEnd)
		nst := states[v.Namespace]
		nl, s := link(nst, v.Name, "veth", "")
		if s == "ok" && sl != nil && sl.peer != nl.index {
			s = "not paired with " + v.SwitchEnd
		}
		add("veth", v.Namespace, v.Name, what+" (node end)", s)
		if v.Address.IsValid() {
			s := "missing"
			if nl != nil && nl.addrs[v.Address] {
				s = "ok"
			}
			add("address", v.Namespace, v.Address.String(), v.Name, s)
		}
		tbf(v.Namespace, nl, v.Rate, v.Name)
	}
	for _, t := range p.Taps {
		l, s := link(sw, t.Name, "tuntap", t.Bridge)
		add("tap", p.Switch, t.Name, "node "+t.Node+"/"+t.Interface, s)
		tbf(p.Switch, l, t.Rate, t.Name)
	}
	return st, nil
}
