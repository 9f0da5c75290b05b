package qemuhook

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"stasis/blockd/faultstore"
	"stasis/hypervisor"
	"stasis/internal/testguest"
	"stasis/internal/testguest/casfsmount"
)

func uploaded(t *testing.T, mnt *casfsmount.Mount) (enc, raw, dup uint64) {
	t.Helper()
	st, err := casfsmount.StatsJSON(mnt.Dir)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mount.BytesUploadedEnc, st.Mount.BytesUploadedRaw, st.Mount.BytesSkippedDup
}

// TestCasfsSwapoutSwapin is the end-to-end check: two guests booted from the
// same kernel and base image are swapped out into casfs (the second uploads
// far less), both snapshots are browsable under .snapshots/, and the first
// is swapped back in from the read-only snapshot after 10 s away: same boot,
// the counter continues, the disk holds what was written, and the guest
// clock did not jump.
func TestCasfsSwapoutSwapin(t *testing.T) {
	f := testguest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	mnt := casfsmount.New(t, casfsmount.Options{})
	exp := filepath.Join(mnt.Dir, "experiments", "proj", "exp")
	if err := os.MkdirAll(exp, 0o755); err != nil {
		t.Fatal(err)
	}
	a := bootGuest(t, ctx, f, "a", true, 256)
	b := bootGuest(t, ctx, f, "b", true, 256)

	var up [2]uint64
	var outAt time.Time
	var beforeA testguest.Tick
	for i, v := range []*vmCase{a, b} {
		m := connect(t, ctx, v.g.QMP, ModeRAMFile)
		e0, r0, d0 := uploaded(t, mnt)
		res, err := hypervisor.Swapout(ctx, m, filepath.Join(exp, string(rune('a'+i))), hypervisor.SwapoutOptions{})
		if err != nil {
			t.Fatal(err)
		}
		e1, r1, d1 := uploaded(t, mnt)
		up[i] = e1 - e0
		t.Logf("guest %c (%s): saved %d MB, uploaded %.1f MB encoded (%.1f MB raw), %.1f MB skipped as duplicates, downtime %v",
			'a'+i, res.Manifest.Mode, res.Bytes>>20, float64(e1-e0)/1e6, float64(r1-r0)/1e6, float64(d1-d0)/1e6, res.Downtime.Round(time.Millisecond))
		if res.Manifest.Mode != ModeRAMFile {
			t.Fatalf("mode %s, want ram-file", res.Manifest.Mode)
		}
		if i == 0 {
			outAt = time.Now()
			beforeA = v.lastTick(t)
		}
	}
	if up[1]*2 > up[0] {
		t.Fatalf("second guest uploaded %d bytes, first %d: want far fewer (< half)", up[1], up[0])
	}

	if err := casfsmount.Snapshot(exp, "swap1"); err != nil {
		t.Fatal(err)
	}
	snapA := filepath.Join(exp, ".snapshots", "swap1", "a")
	for _, d := range []string{snapA, filepath.Join(exp, ".snapshots", "swap1", "b")} {
		if _, err := hypervisor.Verify(d, nil); err != nil {
			t.Fatalf("snapshot %s: %v", d, err)
		}
	}

	if away := time.Since(outAt); away < 10*time.Second {
		time.Sleep(10*time.Second - away)
	}
	// Lazily: the VM runs on a local overlay over the snapshot's disk on casfs.
	r := restore(t, ctx, snapA, RestoreOptions{LazyDisk: true, Log: filepath.Join(a.dir, "qemu-restored.log")})
	a.g.Console.Done = r.Exited()
	checkContinues(t, ctx, a, beforeA, time.Since(outAt))
}

// TestCasfsFaults: with casfs full or its block store unavailable, swapout
// fails, the VM stays paused and a resume brings it back; a tampered or
// truncated memory image is refused at swapin.
func TestCasfsFaults(t *testing.T) {
	f := testguest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	mnt := casfsmount.New(t, casfsmount.Options{RetryDeadline: 2 * time.Second})
	v := bootGuest(t, ctx, f, "faults", false, 256)
	m := connect(t, ctx, v.g.QMP, ModeStream)

	for i, fault := range []struct {
		name string
		set  func()
	}{
		{"full", func() { mnt.Faults.FailAll(faultstore.OpPut, faultstore.ErrNoSpace) }},
		{"unavailable", func() {
			mnt.Faults.FailAll(faultstore.OpPut, errors.New("connection refused"))
			mnt.Faults.FailAll(faultstore.OpMissing, errors.New("connection refused"))
		}},
	} {
		fault.set()
		dir := filepath.Join(mnt.Dir, "fault"+string(rune('0'+i)))
		_, err := hypervisor.Swapout(ctx, m, dir, hypervisor.SwapoutOptions{})
		mnt.Faults.Clear()
		if err == nil {
			t.Fatalf("%s: swapout succeeded", fault.name)
		}
		if !hypervisor.IsPaused(err) {
			t.Fatalf("%s: %v (not reported as paused)", fault.name, err)
		}
		t.Logf("%s: %v", fault.name, err)
		st, err := m.Status(ctx)
		if err != nil || st == "running" {
			t.Fatalf("%s: VM status %q, %v; want paused", fault.name, st, err)
		}
		if _, err := hypervisor.ReadManifest(dir); !errors.Is(err, hypervisor.ErrIncomplete) {
			t.Fatalf("%s: failed swapout left a snapshot: %v", fault.name, err)
		}
		before := v.lastTick(t)
		if err := m.Resume(ctx); err != nil {
			t.Fatalf("%s: resume: %v", fault.name, err)
		}
		tk, err := v.g.Console.WaitTick(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if tk.Boot != before.Boot || tk.N != before.N+1 || tk.Disk != before.N {
			t.Fatalf("%s: after resume %+v, before %+v", fault.name, tk, before)
		}
		v.last = tk
	}

	// A good snapshot, then damage it two ways.
	snap := filepath.Join(mnt.Dir, "good")
	if _, err := hypervisor.Swapout(ctx, m, snap, hypervisor.SwapoutOptions{}); err != nil {
		t.Fatal(err)
	}
	man, err := hypervisor.ReadManifest(snap)
	if err != nil {
		t.Fatal(err)
	}
	mem, _ := man.File(hypervisor.RoleMemory)
	damage := []struct {
		name, want string
		do         func(path string) error
	}{
		{"tampered", "tampered", func(p string) error {
			fh, err := os.OpenFile(p, os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			defer fh.Close()
			_, err = fh.WriteAt([]byte("XXXX"), mem.Size/2)
			return err
		}},
		{"truncated", "truncated", func(p string) error { return os.Truncate(p, mem.Size/3) }},
	}
	for _, d := range damage {
		if err := d.do(filepath.Join(snap, mem.Name)); err != nil {
			t.Fatal(err)
		}
		local := t.TempDir()
		_, err := Restore(ctx, snap, RestoreOptions{LocalDir: local, Log: filepath.Join(v.dir, "qemu-damaged.log")})
		if !errors.Is(err, hypervisor.ErrCorrupt) || !strings.Contains(err.Error(), d.want) {
			t.Fatalf("%s: restore: %v", d.name, err)
		}
		t.Logf("%s: %v", d.name, err)
		if ents, _ := os.ReadDir(local); len(ents) != 0 {
			t.Fatalf("%s: refused restore left local files %v", d.name, ents)
		}
	}
	// Incomplete: no manifest.
	os.Remove(filepath.Join(snap, hypervisor.ManifestName))
	if _, err := Restore(ctx, snap, RestoreOptions{LocalDir: t.TempDir()}); !errors.Is(err, hypervisor.ErrIncomplete) {
		t.Fatalf("restore without manifest: %v", err)
	}
}
