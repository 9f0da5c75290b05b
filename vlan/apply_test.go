package vlan

import (
	"context"
	"testing"
	"time"
)

// Ping works inside a LAN and fails across LANs, even when both LANs use
// one subnet (so only the missing layer-2 path can stop it).
func TestPingInsideLANNotAcross(t *testing.T) {
	requireRoot(t)
	a := newTestApplier(t)
	exp := uniqueExp(t)
	before := hostLinks(t)
	topo := lanTopology(exp,
		[]string{"10.9.0.1/24", "10.9.0.2/24", "10.9.0.3/24", "10.9.0.4/24"},
		[]string{"red", "red", "blue", "blue"})
	p, res := upTopology(t, a, topo)
	t.Logf("up: created %s; phases %v", res.Created, res.Phases)
	if res.Created.Namespaces != 5 || res.Created.Links != 2+4 || res.Created.Addresses != 4 {
		t.Errorf("created %s, want 5 namespaces, 6 links, 4 addresses", res.Created)
	}
	ns := func(i int) string { return p.Namespaces[i].Name }
	if err := pingOnce(ns(0), "10.9.0.2"); err != nil {
		t.Errorf("inside red: %v", err)
	}
	if err := pingOnce(ns(3), "10.9.0.3"); err != nil {
		t.Errorf("inside blue: %v", err)
	}
	if err := pingOnce(ns(0), "10.9.0.3"); err == nil {
		t.Errorf("red node reached blue node 10.9.0.3")
	}
	if err := pingOnce(ns(2), "10.9.0.2"); err == nil {
		t.Errorf("blue node reached red node 10.9.0.2")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := a.Show(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if !st.OK() {
		t.Errorf("Show after Up: %d objects not ok: %+v", st.Missing(), st.Objects)
	}
	down, err := a.Down(ctx, exp)
	if err != nil {
		t.Fatal(err)
	}
	if down.Created.Namespaces != 5 {
		t.Errorf("Down removed %d namespaces, want 5", down.Created.Namespaces)
	}
	assertGone(t, exp, before)
	st, err = a.Show(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Missing() != len(st.Objects) {
		t.Errorf("Show after Down: %d of %d objects missing", st.Missing(), len(st.Objects))
	}
}
