package vswitch

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
}

func run(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// newNetns creates a named network namespace, removed at cleanup.
func newNetns(t testing.TB, name string) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		ns, err := netns.NewNamed(name)
		if err != nil {
			errc <- err
			return
		}
		ns.Close()
		if err := netns.Set(orig); err != nil {
			errc <- err // leave the thread locked: it dies with the goroutine
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatalf("netns %s: %v", name, err)
	}
	t.Cleanup(func() { _ = netns.DeleteNamed(name) })
}

// inNetns runs f on a thread inside the named namespace (sockets created
// there stay there).
func inNetns(name string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		ns, err := netns.GetFromName(name)
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			errc <- err
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// twoHosts creates namespaces "<p>a" and "<p>b" joined by a veth pair with
// 10.199.0.1 and 10.199.0.2.
func twoHosts(t *testing.T) (a, b string) {
	requireRoot(t)
	p := fmt.Sprintf("stsw%04x", rand.IntN(1<<16))
	a, b = p+"a", p+"b"
	newNetns(t, a)
	newNetns(t, b)
	const macA, macB = "02:53:57:00:00:0a", "02:53:57:00:00:0b"
	run(t, "ip", "-n", a, "link", "add", p+"va", "address", macA, "type", "veth", "peer", "name", p+"vb", "address", macB, "netns", b)
	run(t, "ip", "-n", a, "addr", "add", "10.199.0.1/24", "dev", p+"va")
	run(t, "ip", "-n", b, "addr", "add", "10.199.0.2/24", "dev", p+"vb")
	// Static neighbours: with a cold ARP cache the kernel queues the first
	// trunk datagrams while it resolves and drops the oldest of a burst,
	// which the tests would count as frames the switch lost. The tests are
	// about the switch, not about ARP on a fresh link.
	run(t, "ip", "-n", a, "neigh", "replace", "10.199.0.2", "lladdr", macB, "dev", p+"va", "nud", "permanent")
	run(t, "ip", "-n", b, "neigh", "replace", "10.199.0.1", "lladdr", macA, "dev", p+"vb", "nud", "permanent")
	for _, x := range [][2]string{{a, p + "va"}, {b, p + "vb"}} {
		run(t, "ip", "-n", x[0], "link", "set", "lo", "up")
		run(t, "ip", "-n", x[0], "link", "set", x[1], "up")
	}
	return a, b
}

// udpTrunkPair opens a UDP trunk in each namespace, aimed at the other.
func udpTrunkPair(t *testing.T, nsA, nsB string) (*UDPTrunk, *UDPTrunk) {
	t.Helper()
	var ca, cb *net.UDPConn
	if err := inNetns(nsA, func() (err error) {
		ca, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 199, 0, 1)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := inNetns(nsB, func() (err error) {
		cb, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 199, 0, 2)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ta, err := NewUDPTrunkTo(ca, cb.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	tb, err := NewUDPTrunkTo(cb, ca.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	return ta, tb
}

// netnsFabric: two switches, one per "host" namespace, joined by a UDP
// trunk over the veth pair; nodes on MemPorts.
func netnsFabric(nsA, nsB string) fabric {
	return func(t *testing.T, nodes []*tnode) []*Switch {
		sws := []*Switch{newTestSwitch(t, Config{}), newTestSwitch(t, Config{})}
		ta, tb := udpTrunkPair(t, nsA, nsB)
		mustAdd(t, sws[0], PortConfig{Name: "trunk", Mode: Trunk}, ta)
		mustAdd(t, sws[1], PortConfig{Name: "trunk", Mode: Trunk}, tb)
		for _, nd := range nodes {
			mp := NewMemPort(256)
			mustAdd(t, sws[nd.sw], PortConfig{Name: nd.name, VLAN: nd.vlan}, mp)
			nd.io = mp
		}
		return sws
	}
}

func TestCheckpointTwoHostsUDPTrunk(t *testing.T) {
	nsA, nsB := twoHosts(t)
	for _, restore := range []bool{false, true} {
		t.Run(fmt.Sprintf("restore=%v", restore), func(t *testing.T) {
			sws := runCheckpoints(t, netnsFabric(nsA, nsB), makeNodes(t, 6, 2, 2), restore)
			for i, sw := range sws {
				st, err := sw.Stats("trunk")
				if err != nil {
					t.Fatal(err)
				}
				if st.RxFrames.Load() == 0 || st.TxFrames.Load() == 0 {
					t.Fatalf("switch %d: no traffic crossed the trunk", i)
				}
			}
		})
	}
}

// TestTapAndPacketPortsPing: node namespaces reach each other through the
// switch over a tap device (switch owns the tap, the node has the kernel
// side) and over a veth pair (switch attaches with AF_PACKET); a node in
// another VLAN cannot be reached.
//
// The switch's side (the tap's creation, the veths' switch ends, the
// AF_PACKET sockets) lives in a namespace of its own, never in the test
// process's: test binaries of other packages run at the same time and
// check that their host namespace does not change.
func TestTapAndPacketPortsPing(t *testing.T) {
	requireRoot(t)
	p := fmt.Sprintf("stsw%04x", rand.IntN(1<<16))
	swns, n1, n2, n3 := p+"sw", p+"n1", p+"n2", p+"n3"
	for _, n := range []string{swns, n1, n2, n3} {
		newNetns(t, n)
	}
	sw := newTestSwitch(t, Config{})
	// n1: a tap created in the switch namespace (TUNSETIFF creates it in
	// the namespace of the calling thread), its kernel side moved to n1.
	var tap *TapPort
	if err := inNetns(swns, func() (err error) { tap, err = OpenTap(p + "t1"); return err }); err != nil {
		t.Fatal(err)
	}
	mustAdd(t, sw, PortConfig{Name: "n1", VLAN: 5}, tap)
	run(t, "ip", "-n", swns, "link", "set", p+"t1", "netns", n1)
	// n2 and n3: veth pairs, the switch ends in the switch namespace; they
	// go away with it.
	for i, n := range []string{n2, n3} {
		sw0, node := fmt.Sprintf("%sv%d", p, i+2), fmt.Sprintf("%sw%d", p, i+2)
		run(t, "ip", "-n", swns, "link", "add", sw0, "type", "veth", "peer", "name", node, "netns", n)
		run(t, "ip", "-n", swns, "link", "set", sw0, "up")
		var pp *PacketPort
		if err := inNetns(swns, func() (err error) { pp, err = OpenPacket(sw0); return err }); err != nil {
			t.Fatal(err)
		}
		vlan := uint16(5)
		if n == n3 {
			vlan = 6
		}
		mustAdd(t, sw, PortConfig{Name: n, VLAN: vlan}, pp)
	}
	addr := map[string][2]string{n1: {p + "t1", "10.198.0.1"}, n2: {p + "w2", "10.198.0.2"}, n3: {p + "w3", "10.198.0.3"}}
	for n, a := range addr {
		run(t, "ip", "-n", n, "addr", "add", a[1]+"/24", "dev", a[0])
		run(t, "ip", "-n", n, "link", "set", a[0], "up")
	}
	run(t, "ip", "netns", "exec", n1, "busybox", "ping", "-c", "2", "-W", "2", "10.198.0.2")
	run(t, "ip", "netns", "exec", n2, "busybox", "ping", "-c", "2", "-W", "2", "10.198.0.1")
	if err := exec.Command("ip", "netns", "exec", n1, "busybox", "ping", "-c", "1", "-W", "1", "10.198.0.3").Run(); err == nil {
		t.Fatal("ping crossed VLANs")
	}
}
