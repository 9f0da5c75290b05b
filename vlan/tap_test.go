package vlan

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"
)

// arpRequest builds an Ethernet frame asking who has target, from
// (mac, ip).
func arpRequest(mac MAC, ip, target netip.Addr) []byte {
	f := make([]byte, 0, 42)
	f = append(f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	f = append(f, mac...)
	f = binary.BigEndian.AppendUint16(f, 0x0806)
	f = append(f, 0, 1, 8, 0, 6, 4, 0, 1) // Ethernet, IPv4, sizes, request
	f = append(f, mac...)
	f = append(f, ip.AsSlice()...)
	f = append(f, 0, 0, 0, 0, 0, 0)
	f = append(f, target.AsSlice()...)
	return f
}

// A tap node's guest reaches a netns node on its LAN: an ARP request
// written into the tap (as QEMU would) is answered by the node.
func TestTapNode(t *testing.T) {
	requireRoot(t)
	a := newTestApplier(t)
	exp := uniqueExp(t)
	before := hostLinks(t, a)
	topo := lanTopology(exp, []string{"10.2.0.1/24"}, []string{"lan"})
	topo.Nodes = append(topo.Nodes, Node{Name: "vm", Kind: KindTap, Interfaces: []Interface{{Name: "eth0", Address: "10.2.0.9/24"}}})
	topo.LANs[0].Members = append(topo.LANs[0].Members, Member{Node: "vm", Interface: "eth0"})
	p, _ := upTopology(t, a, topo)
	tp := p.Tap("vm", "eth0")
	if tp == nil {
		t.Fatalf("no tap in plan:\n%s", p)
	}

	f, err := OpenTap(exp, "vm", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := OpenTap(exp, "vm", "eth7"); !errors.Is(err, ErrNoTap) {
		t.Errorf("OpenTap of a missing tap: %v, want ErrNoTap", err)
	}

	guestIP, nodeIP := netip.MustParseAddr("10.2.0.9"), netip.MustParseAddr("10.2.0.1")
	req := arpRequest(tp.MAC, guestIP, nodeIP)
	deadline := time.Now().Add(10 * time.Second)
	buf := make([]byte, 2048)
	var reply []byte
	for reply == nil && time.Now().Before(deadline) {
		if _, err := f.Write(req); err != nil {
			t.Fatal(err)
		}
		f.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		for {
			n, err := f.Read(buf)
			if err != nil {
				break // timeout: ask again
			}
			fr := buf[:n]
			if n >= 42 && bytes.Equal(fr[0:6], tp.MAC) && binary.BigEndian.Uint16(fr[12:14]) == 0x0806 &&
				binary.BigEndian.Uint16(fr[20:22]) == 2 && bytes.Equal(fr[28:32], nodeIP.AsSlice()) {
				reply = append([]byte(nil), fr...)
				break
			}
		}
	}
	if reply == nil {
		t.Fatal("no ARP reply from the netns node through the tap")
	}
	if want := p.Veths[0].MAC; !bytes.Equal(reply[22:28], want) {
		t.Errorf("ARP reply says %s is at %s, want the node's %s", nodeIP, net.HardwareAddr(reply[22:28]), want)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := a.Show(ctx, p)
	if err != nil || !st.OK() {
		t.Errorf("Show: %v %+v", err, st)
	}
	f.Close()
	if _, err := a.Down(ctx, exp); err != nil {
		t.Fatal(err)
	}
	assertGone(t, a, exp, before)
}
