package xenhook

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"stasis/hypervisor"
)

type standIn struct {
	xl, log, state, dir string
}

func newStandIn(t *testing.T) *standIn {
	t.Helper()
	xl, err := filepath.Abs("testdata/xl")
	if err != nil {
		t.Fatal(err)
	}
	d := t.TempDir()
	s := &standIn{xl: xl, log: filepath.Join(d, "xl.log"), state: filepath.Join(d, "state"), dir: d}
	t.Setenv("XL_LOG", s.log)
	t.Setenv("XL_STATE", s.state)
	t.Setenv("XL_FAIL", "")
	os.WriteFile(s.state, []byte("running\n"), 0o644)
	return s
}

func (s *standIn) calls() []string {
	b, _ := os.ReadFile(s.log)
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

func (s *standIn) State() string {
	b, _ := os.ReadFile(s.state)
	return strings.TrimSpace(string(b))
}

func (s *standIn) reset() { os.Remove(s.log) }

func setup(t *testing.T) (*standIn, *Machine, string, []byte) {
	s := newStandIn(t)
	disk := filepath.Join(s.dir, "node1.qcow2")
	data := make([]byte, 300<<10)
	rand.Read(data[:100<<10])
	os.WriteFile(disk, data, 0o644)
	cfgFile := filepath.Join(s.dir, "node1.cfg")
	os.WriteFile(cfgFile, []byte("name='dom1'\ndisk=['vdev=xvda,script=block-casfs,target="+disk+"']\n"), 0o644)
	m, err := New(Config{Domain: "dom1", XL: s.xl, DomainConfig: cfgFile, Disks: []Disk{{Vdev: "xvda", Path: disk}}})
	if err != nil {
		t.Fatal(err)
	}
	return s, m, disk, data
}

func TestSwapoutSwapin(t *testing.T) {
	s, m, disk, data := setup(t)
	ctx := context.Background()
	snap := filepath.Join(t.TempDir(), "snap")
	res, err := hypervisor.Swapout(ctx, m, snap, hypervisor.SwapoutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(s.calls(), "|"), "pause dom1|save -p dom1 /dev/fd/3|destroy dom1"; got != want {
		t.Fatalf("xl calls %q, want %q", got, want)
	}
	if s.State() != "destroyed" || res.Manifest.Driver != "xen" || res.Manifest.Mode != ModeXLSave || len(res.Manifest.Files) != 2 {
		t.Fatalf("state %s manifest %+v", s.State(), res.Manifest)
	}
	img, _ := os.ReadFile(filepath.Join(snap, "memory"))
	if !bytes.HasPrefix(img, []byte("Xen saved domain")) || !bytes.HasSuffix(img, []byte("dom1\n")) || len(img) < 1<<20 {
		t.Fatalf("save image not streamed whole: %d bytes", len(img))
	}

	s.reset()
	local := t.TempDir()
	if _, err := Restore(ctx, snap, RestoreOptions{XL: s.xl, LocalDir: local}); err != nil {
		t.Fatal(err)
	}
	calls := s.calls()
	if len(calls) != 2 || !strings.HasPrefix(calls[0], "restore -p -e ") || !strings.HasSuffix(calls[0], " /dev/fd/3") || calls[1] != "unpause dom1" {
		t.Fatalf("xl calls %q", calls)
	}
	sum := sha256.Sum256(img)
	got, _ := os.ReadFile(s.log + ".d/restored.sha256")
	if strings.TrimSpace(string(got)) != hex.EncodeToString(sum[:]) {
		t.Fatal("xl restore read a different image than was saved")
	}
	restoredDisk := filepath.Join(local, filepath.Base(disk))
	if b, _ := os.ReadFile(restoredDisk); !bytes.Equal(b, data) {
		t.Fatal("restored disk differs")
	}
	cfg, _ := os.ReadFile(s.log + ".d/restored.cfg")
	if !strings.Contains(string(cfg), "target="+restoredDisk) {
		t.Fatalf("restore config does not point at the restored disk: %s", cfg)
	}
	if s.State() != "running" {
		t.Fatalf("state %s", s.State())
	}
}

func TestSaveFailureLeavesPaused(t *testing.T) {
	s, m, _, _ := setup(t)
	ctx := context.Background()
	t.Setenv("XL_FAIL", "save")
	snap := filepath.Join(t.TempDir(), "snap")
	_, err := hypervisor.Swapout(ctx, m, snap, hypervisor.SwapoutOptions{})
	if !hypervisor.IsPaused(err) || !strings.Contains(err.Error(), "injected failure") {
		t.Fatalf("err %v", err)
	}
	if s.State() != "paused" {
		t.Fatalf("state %s after failed save", s.State())
	}
	for _, c := range s.calls() {
		if strings.HasPrefix(c, "destroy") {
			t.Fatal("destroyed after failed save")
		}
	}
	if _, err := hypervisor.ReadManifest(snap); !errors.Is(err, hypervisor.ErrIncomplete) {
		t.Fatalf("manifest after failure: %v", err)
	}
	t.Setenv("XL_FAIL", "")
	if err := m.Resume(ctx); err != nil || s.State() != "running" {
		t.Fatalf("resume: %v, state %s", err, s.State())
	}
}

func TestRestoreRefusesTampered(t *testing.T) {
	s, m, _, _ := setup(t)
	ctx := context.Background()
	snap := filepath.Join(t.TempDir(), "snap")
	if _, err := hypervisor.Swapout(ctx, m, snap, hypervisor.SwapoutOptions{}); err != nil {
		t.Fatal(err)
	}
	f, _ := os.OpenFile(filepath.Join(snap, "memory"), os.O_WRONLY, 0)
	f.WriteAt([]byte("EVIL"), 4096)
	f.Close()
	s.reset()
	local := t.TempDir()
	_, err := Restore(ctx, snap, RestoreOptions{XL: s.xl, LocalDir: local})
	if !errors.Is(err, hypervisor.ErrCorrupt) || !strings.Contains(err.Error(), "tampered") {
		t.Fatalf("restore: %v", err)
	}
	calls := strings.Join(s.calls(), "|")
	if strings.Contains(calls, "unpause") || !strings.HasSuffix(calls, "destroy dom1") {
		t.Fatalf("xl calls %q: the domain from a bad image must be destroyed, never unpaused", calls)
	}
	if ents, _ := os.ReadDir(local); len(ents) != 0 {
		t.Fatalf("local files left: %v", ents)
	}
	os.Truncate(filepath.Join(snap, "memory"), 100)
	if _, err := Restore(ctx, snap, RestoreOptions{XL: s.xl, LocalDir: t.TempDir()}); !errors.Is(err, hypervisor.ErrCorrupt) {
		t.Fatalf("truncated: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{{}, {Domain: "a b"}, {Domain: "ok", Disks: []Disk{{Vdev: "xvda"}}}, {Domain: "-x"}} {
		if _, err := New(c); err == nil {
			t.Errorf("New(%+v) accepted", c)
		}
	}
}

// TestBlockScript runs block-casfs add/remove with stand-ins for xenstore and
// qemu-nbd (no Xen, no nbd module here) and the real qemu-img.
func TestBlockScript(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatalf("qemu-img not installed: %v", err)
	}
	d := t.TempDir()
	bin := filepath.Join(d, "bin")
	os.MkdirAll(bin, 0o755)
	store := filepath.Join(d, "xenstore")
	os.MkdirAll(store, 0o755)
	rec := filepath.Join(d, "calls")
	// xenstore-read/-write over files named by the path with / -> _.
	os.WriteFile(filepath.Join(bin, "xenstore-read"), []byte("#!/bin/sh\nf=\""+store+"/$(echo \"$1\" | tr / _)\"\n[ -f \"$f\" ] && cat \"$f\"\n"), 0o755)
	os.WriteFile(filepath.Join(bin, "xenstore-write"), []byte("#!/bin/sh\nwhile [ $# -ge 2 ]; do printf %s \"$2\" >\""+store+"/$(echo \"$1\" | tr / _)\"; shift 2; done\n"), 0o755)
	os.WriteFile(filepath.Join(bin, "qemu-nbd"), []byte("#!/bin/sh\necho qemu-nbd \"$@\" >>"+rec+"\n"), 0o755)
	os.WriteFile(filepath.Join(bin, "modprobe"), []byte("#!/bin/sh\nexit 1\n"), 0o755)
	sysfs := filepath.Join(d, "sys")
	os.MkdirAll(filepath.Join(sysfs, "nbd0"), 0o755)
	os.WriteFile(filepath.Join(sysfs, "nbd0", "size"), []byte("0\n"), 0o644)
	// The "casfs" disk delta: a real qcow2.
	target := filepath.Join(d, "casfs-disk.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", target, "16M").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	xb := "/local/domain/0/backend/vbd/7/51712"
	write := func(k, v string) {
		os.WriteFile(filepath.Join(store, strings.ReplaceAll(xb+"/"+k, "/", "_")), []byte(v), 0o644)
	}
	read := func(k string) string {
		b, _ := os.ReadFile(filepath.Join(store, strings.ReplaceAll(xb+"/"+k, "/", "_")))
		return string(b)
	}
	write("params", target)
	write("frontend-id", "7")
	write("dev", "xvda")
	local := filepath.Join(d, "local")
	script, _ := filepath.Abs("block-casfs")
	run := func(arg string) ([]byte, error) {
		cmd := exec.Command(script, arg)
		cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "XENBUS_PATH="+xb, "STASIS_LOCAL_DIR="+local, "NBD_SYSFS="+sysfs)
		return cmd.CombinedOutput()
	}
	// /dev/nbd0 must exist for stat; use a stand-in device path check.
	if _, err := os.Stat("/dev/nbd0"); err != nil {
		t.Logf("no /dev/nbd0 here; stat of the device will fail and the script must say so")
		out, err := run("add")
		if err == nil || !strings.Contains(read("hotplug-status"), "error") || !strings.Contains(string(out), "stat /dev/nbd0") {
			t.Fatalf("add without device: err %v out %s status %q", err, out, read("hotplug-status"))
		}
	} else {
		out, err := run("add")
		if err != nil {
			t.Fatalf("add: %v %s", err, out)
		}
		if read("hotplug-status") != "connected" || read("physical-device-path") != "/dev/nbd0" {
			t.Fatalf("xenstore after add: status %q dev %q", read("hotplug-status"), read("physical-device-path"))
		}
		if out, err := run("remove"); err != nil {
			t.Fatalf("remove: %v %s", err, out)
		}
	}
	// Either way the local overlay was made over the casfs file and
	// qemu-nbd was asked to export it.
	ov := filepath.Join(local, "7-xvda.qcow2")
	info, err := exec.Command("qemu-img", "info", ov).CombinedOutput()
	if err != nil || !strings.Contains(string(info), "backing file: "+target) {
		t.Fatalf("local overlay: %v %s", err, info)
	}
	calls, _ := os.ReadFile(rec)
	if !strings.Contains(string(calls), "qemu-nbd --connect=/dev/nbd0 --format=qcow2 --cache=writeback "+ov) {
		t.Fatalf("qemu-nbd calls: %s", calls)
	}
	// A missing target fails clearly.
	write("params", filepath.Join(d, "nope.qcow2"))
	write("hotplug-status", "")
	out, err := run("add")
	if err == nil || !strings.Contains(string(out), "not found (is casfs mounted?)") || read("hotplug-status") != "error" {
		t.Fatalf("missing target: err %v out %s", err, out)
	}
}
