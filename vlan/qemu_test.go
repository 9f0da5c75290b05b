package vlan

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"stasis/internal/testguest"
)

// A real QEMU guest (TCG) joins a LAN through its tap, attached by file
// descriptor from OpenTap, and a netns node pings it.
func TestQEMUGuestOnLAN(t *testing.T) {
	requireRoot(t)
	if testing.Short() {
		t.Skip("boots a QEMU guest (-short)")
	}
	files := testguest.Require(t)
	a := newTestApplier(t)
	exp := uniqueExp(t)
	topo := lanTopology(exp, []string{"10.12.0.1/24"}, []string{"lan"})
	topo.Nodes = append(topo.Nodes, Node{Name: "vm", Kind: KindTap, Interfaces: []Interface{{Name: "eth0", Address: "10.12.0.9/24"}}})
	topo.LANs[0].Members = append(topo.LANs[0].Members, Member{Node: "vm", Interface: "eth0"})
	p, _ := upTopology(t, a, topo)
	tap := p.Tap("vm", "eth0")

	f, err := OpenTap(exp, "vm", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	argv := testguest.Args(files, testguest.Config{
		Dir: dir, Name: "vlan", NoDisk: true,
		KernelArgs: []string{"stasis.ip=" + tap.Address.String()},
		QEMUArgs: []string{
			"-netdev", "tap,id=n0,fd=3",
			"-device", "virtio-net-pci,netdev=n0,mac=" + tap.MAC.String(),
		},
	})
	qemu := exec.Command(argv[0], argv[1:]...)
	qemu.ExtraFiles = []*os.File{f} // fd 3
	logf, err := os.Create(filepath.Join(dir, "qemu.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	qemu.Stdout, qemu.Stderr = logf, logf
	if err := qemu.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- qemu.Wait() }()
	t.Cleanup(func() {
		_ = qemu.Process.Kill()
		<-exited
	})

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for {
		err := pingOnce(p.Namespaces[0].Name, tap.Address.Addr().String())
		if err == nil {
			break
		}
		select {
		case werr := <-exited:
			log, _ := os.ReadFile(filepath.Join(dir, "qemu.log"))
			t.Fatalf("QEMU exited: %v\n%s", werr, log)
		case <-ctx.Done():
			con, _ := os.ReadFile(filepath.Join(dir, "console.log"))
			t.Fatalf("guest never answered: %v\nconsole:\n%s", err, con)
		case <-time.After(500 * time.Millisecond):
		}
	}
	// Its ARP entry is the MAC the plan gave the guest.
	out, err := exec.Command("ip", "-n", p.Namespaces[0].Name, "neigh", "show", tap.Address.Addr().String()).CombinedOutput()
	if err != nil || !strings.Contains(strings.ToLower(string(out)), tap.MAC.String()) {
		t.Errorf("neighbour entry %q (%v), want MAC %s", out, err, tap.MAC)
	}
}
