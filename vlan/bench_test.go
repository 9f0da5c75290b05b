package vlan

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// benchTopology is n netns nodes with one interface each, two per LAN
// (n/2 LANs), each with an address.
func benchTopology(exp string, n int) *Topology {
	topo := &Topology{Experiment: exp}
	for i := 0; i < n; i++ {
		topo.Nodes = append(topo.Nodes, Node{
			Name:       fmt.Sprintf("n%d", i),
			Interfaces: []Interface{{Name: "eth0", Address: fmt.Sprintf("10.%d.%d.%d/24", i/2/250, i/2%250, 1+i%2)}},
		})
	}
	for l := 0; l < n/2; l++ {
		topo.LANs = append(topo.LANs, LAN{Name: fmt.Sprintf("lan%d", l), Members: []Member{
			{Node: fmt.Sprintf("n%d", 2*l), Interface: "eth0"},
			{Node: fmt.Sprintf("n%d", 2*l+1), Interface: "eth0"},
		}})
	}
	return topo
}

// waitSettled returns once the kernel has finished destroying the
// namespaces deleted before the call. Namespace destruction is
// asynchronous (a kernel work queue that holds the rtnl lock while it
// unregisters devices), so a setup started right after a teardown competes
// with it. Namespaces are destroyed in the order they were released; a
// canary namespace with a veth into an observer namespace is released
// last, and the observer's end disappears when its turn has come. (The
// observer, not the process's namespace: benchmarks change no interface of
// the host.)
func waitSettled(tb testing.TB) time.Duration {
	tb.Helper()
	start := time.Now()
	b := make([]byte, 4)
	rand.Read(b)
	name := "stxcanary" + hex.EncodeToString(b)
	obsName := "stxobs" + hex.EncodeToString(b)
	obsEnd := "cn" + hex.EncodeToString(b)
	obs, err := createNetns(obsName, nil)
	if err != nil {
		tb.Fatal(err)
	}
	defer func() {
		obs.close()
		if err := deleteNetns(obsName); err != nil {
			tb.Error(err)
		}
	}()
	h, err := createNetns(name, nil)
	if err != nil {
		tb.Fatal(err)
	}
	err = h.nl.run([]nlMsg{newVethMsg(vethSpec{name: "c0", peerName: obsEnd, peerNsFd: obs.fd})})
	h.close()
	if derr := deleteNetns(name); err == nil {
		err = derr
	}
	if err != nil {
		tb.Fatal(err)
	}
	nh, err := netlink.NewHandleAt(netns.NsHandle(obs.fd))
	if err != nil {
		tb.Fatal(err)
	}
	defer nh.Close()
	for {
		if _, err := nh.LinkByName(obsEnd); err != nil {
			return time.Since(start)
		}
		if time.Since(start) > time.Minute {
			tb.Fatalf("kernel did not destroy canary namespace %s within a minute", name)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// ipScript writes shell scripts that build and remove the same network as
// the bridge backend with one `ip` command per object.
func ipScripts(p *Plan) (up, down string) {
	var u, d bytes.Buffer
	u.WriteString("set -e\n")
	fmt.Fprintf(&u, "ip netns add %s\n", p.Switch)
	fmt.Fprintf(&u, "ip netns exec %s sh -c 'echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6'\n", p.Switch)
	for _, ns := range p.Namespaces {
		fmt.Fprintf(&u, "ip netns add %s\n", ns.Name)
	}
	for _, b := range p.Bridges {
		fmt.Fprintf(&u, "ip -n %s link add %s up type bridge\n", p.Switch, b.Name)
	}
	for _, v := range p.Veths {
		fmt.Fprintf(&u, "ip -n %s link add %s master %s up type veth peer name %s address %s netns %s\n",
			p.Switch, v.SwitchEnd, v.Bridge, v.Name, v.MAC, v.Namespace)
	}
	for _, v := range p.Veths {
		fmt.Fprintf(&u, "ip -n %s link set lo up\n", v.Namespace)
		fmt.Fprintf(&u, "ip -n %s link set %s up\n", v.Namespace, v.Name)
		fmt.Fprintf(&u, "ip -n %s addr add %s dev %s\n", v.Namespace, v.Address, v.Name)
	}
	d.WriteString("set -e\n")
	for _, ns := range p.Namespaces {
		fmt.Fprintf(&d, "ip netns del %s\n", ns.Name)
	}
	fmt.Fprintf(&d, "ip netns del %s\n", p.Switch)
	return u.String(), d.String()
}

// cpuTime is the user+system CPU time of this process (RUSAGE_SELF) or of
// its finished children (RUSAGE_CHILDREN); on a shared machine it is a
// steadier measure of work than elapsed time.
func cpuTime(who int) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(who, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func runScript(tb testing.TB, path string) time.Duration {
	tb.Helper()
	t := time.Now()
	out, err := exec.Command("bash", path).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s: %v\n%s", path, err, out)
	}
	return time.Since(t)
}

// BenchmarkUpDown sets up and tears down a 100-node, 50-LAN experiment and
// a 300-node, 150-LAN one, with the Applier and with a shell loop of `ip`
// commands building the same objects. Each iteration starts after the
// kernel has finished destroying the previous one's namespaces; ms-settle
// is how long that took after teardown returned. ms-up-cpu is the CPU time
// (user+system) of the setup: this process for stasis, the shell and its
// ip processes for the baseline. ms-up-<phase> split the Applier's time;
// ms-up-nswait is the part of "nodes" spent waiting for namespaces.
func BenchmarkUpDown(b *testing.B) {
	requireRoot(b)
	if _, err := exec.LookPath("ip"); err != nil {
		b.Skip("no ip command for the baseline")
	}
	for _, n := range []int{100, 300} {
		for _, tool := range []string{"stasis", "ip"} {
			b.Run(fmt.Sprintf("%s-%d", tool, n), func(b *testing.B) {
				a, err := NewApplier(Config{})
				if err != nil {
					b.Fatal(err)
				}
				exp := uniqueExp(b)
				p, err := NewPlan(benchTopology(exp, n), "")
				if err != nil {
					b.Fatal(err)
				}
				cleanupExperiment(b, a, exp)
				dir := b.TempDir()
				upSh, downSh := ipScripts(p)
				upPath, downPath := filepath.Join(dir, "up.sh"), filepath.Join(dir, "down.sh")
				if err := errors.Join(os.WriteFile(upPath, []byte(upSh), 0o644), os.WriteFile(downPath, []byte(downSh), 0o644)); err != nil {
					b.Fatal(err)
				}
				ctx := context.Background()
				var up, down, settle, upCPU time.Duration
				phases := map[string]time.Duration{}
				waitSettled(b)
				b.ResetTimer()
				for b.Loop() {
					if tool == "stasis" {
						c := cpuTime(unix.RUSAGE_SELF)
						t := time.Now()
						res, err := a.Up(ctx, p)
						if err != nil {
							b.Fatal(err)
						}
						up += time.Since(t)
						upCPU += cpuTime(unix.RUSAGE_SELF) - c
						for _, ph := range res.Phases {
							phases[ph.Name] += ph.Duration
						}
						phases["nswait"] += res.NamespaceWait
						t = time.Now()
						if _, err := a.Down(ctx, exp); err != nil {
							b.Fatal(err)
						}
						down += time.Since(t)
					} else {
						c := cpuTime(unix.RUSAGE_CHILDREN)
						up += runScript(b, upPath)
						upCPU += cpuTime(unix.RUSAGE_CHILDREN) - c
						down += runScript(b, downPath)
					}
					b.StopTimer()
					settle += waitSettled(b)
					b.StartTimer()
				}
				per := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
				b.ReportMetric(per(up), "ms-up")
				b.ReportMetric(per(upCPU), "ms-up-cpu")
				b.ReportMetric(per(down), "ms-down")
				b.ReportMetric(per(settle), "ms-settle")
				for k, v := range phases {
					b.ReportMetric(per(v), "ms-up-"+k)
				}
			})
		}
	}
}
