package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"stasis/cas"
)

// linkTree hard-links the named files of src into a new directory dst.
func linkTree(src, dst string, names ...string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	for _, n := range names {
		if err := os.Link(filepath.Join(src, n), filepath.Join(dst, n)); err != nil {
			return err
		}
	}
	return nil
}

// bootReady boots a guest and waits until it has run its workload and
// counted to n; a guest that dies while booting (TCG on a loaded host can
// trip the kernel's timer check) is booted once more.
func bootReady(ctx context.Context, k guestKit, spec nodeSpec, dir string, n int) (*vm, error) {
	var last error
	for attempt := 0; attempt < 2; attempt++ {
		os.RemoveAll(dir)
		v, err := bootVM(ctx, k, spec, dir)
		if err != nil {
			return nil, err
		}
		if last = v.waitCounter(ctx, n, 5*time.Minute); last == nil {
			return v, nil
		}
		v.kill()
	}
	return nil, last
}

// runVM is workload 1 (one VM's state in each capture mode) and workload 4
// (swapin: reading it back cold and the time until the guest runs again).
func runVM(ctx context.Context, log *slog.Logger, o options, r *report) error {
	k, err := prepareKit(ctx, o.work)
	if err != nil {
		return err
	}
	spec := nodeSpec{name: "vm0", memMB: o.memoryMB, pkgMB: 48, uniqMB: 96, logsMB: 8}
	v, err := bootReady(ctx, k, spec, filepath.Join(o.work, "vm0"), 3)
	if err != nil {
		return err
	}
	defer v.kill()
	capDir := filepath.Join(o.work, "data", "vm-capture")
	if err := v.capture(ctx, capDir, true); err != nil {
		return err
	}
	v.kill()
	modeB := filepath.Join(o.work, "data", "vm-b")
	modeA := filepath.Join(o.work, "data", "vm-a")
	if err := linkTree(capDir, modeB, "mem.ram", "devstate", "disk.qcow2"); err != nil {
		return err
	}
	if err := linkTree(capDir, modeA, "mem.mig", "disk.qcow2"); err != nil {
		return err
	}
	for _, c := range []struct{ title, dir, file, note string }{
		{"1b. One VM, RAM file capture (memory-backend-file + x-ignore-shared)", modeB, "mem.ram",
			"stasis stores `mem.ram` with `fixed:4096` and `disk.qcow2` with `fixed:65536` (the qcow2 cluster size)."},
		{"1a. One VM, migration-stream capture (`migrate exec:`)", modeA, "mem.mig",
			"stasis stores the stream with `cdc:16k` (its alignment shifts) and `disk.qcow2` with `fixed:65536`."},
	} {
		rows, err := measureIngest(ctx, log, o, ingestCase{versions: []string{c.dir}, restoreFile: c.file})
		if err != nil {
			return err
		}
		r.add(&section{title: c.title, note: fmt.Sprintf("Guest: %d MiB RAM, %d MiB shared \"packages\" and %d MiB node data in memory, %d MiB written to disk. %s (QEMU 7.2 here has no `mapped-ram`, so mode (c) is not measured.)",
			spec.memMB, spec.pkgMB, spec.uniqMB, spec.pkgMB+spec.logsMB, c.note), logical: logicalSize(c.dir), rows: rows[0]})
	}
	resume, err := measureResume(ctx, log, o, k, spec, capDir)
	if err != nil {
		return err
	}
	r.add(&section{title: "4. Swapin: time until the guest runs again", extra: resume})
	return nil
}

// runExperiment is workloads 2 (ten nodes from one base image) and 3 (the
// same experiment swapped out again after it ran a little longer).
func runExperiment(ctx context.Context, log *slog.Logger, o options, r *report) error {
	k, err := prepareKit(ctx, o.work)
	if err != nil {
		return err
	}
	var vms []*vm
	defer func() {
		for _, v := range vms {
			v.kill()
		}
	}()
	// Boot two at a time: ten TCG guests booting at once on two cores trip
	// the guest kernel's timer checks.
	for i := 0; i < o.nodes; i += 2 {
		var wg sync.WaitGroup
		errs := make([]error, 2)
		got := make([]*vm, 2)
		for j := 0; j < 2 && i+j < o.nodes; j++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				spec := nodeSpec{name: fmt.Sprintf("node%02d", i+j), memMB: 256, pkgMB: 32, uniqMB: 8, logsMB: 2}
				got[j], errs[j] = bootReady(ctx, k, spec, filepath.Join(o.work, spec.name), 1)
			}()
		}
		wg.Wait()
		for j := range got {
			if got[j] != nil {
				vms = append(vms, got[j])
			}
		}
		for _, err := range errs {
			if err != nil {
				return err
			}
		}
	}
	v1 := filepath.Join(o.work, "data", "exp-v1")
	v2 := filepath.Join(o.work, "data", "exp-v2")
	captureAll := func(dst string, wait int) error {
		var wg sync.WaitGroup
		errs := make([]error, len(vms))
		for i, v := range vms {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if errs[i] = v.waitCounter(ctx, wait, 10*time.Minute); errs[i] == nil {
					errs[i] = v.capture(ctx, filepath.Join(dst, v.spec.name), false)
				}
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				return err
			}
		}
		return nil
	}
	if err := captureAll(v1, 3); err != nil {
		return err
	}
	for _, v := range vms {
		if err := v.cont(); err != nil {
			return err
		}
	}
	if err := captureAll(v2, 13); err != nil {
		return err
	}
	for _, v := range vms {
		v.kill()
	}
	vms = nil

	var images []string
	for i := 0; i < o.nodes; i++ {
		for _, f := range []string{"mem.ram", "disk.qcow2"} {
			images = append(images, filepath.Join(v1, fmt.Sprintf("node%02d", i), f))
		}
	}
	study, err := chunkStudy(images, []cas.Policy{cas.Fixed(4096), cas.Fixed(16384), cas.Fixed(65536), cas.CDC(4096), cas.CDC(16384), cas.CDC(65536)})
	if err != nil {
		return err
	}
	r.study = study

	rows, err := measureIngest(ctx, log, o, ingestCase{versions: []string{v1, v2}, restoreFile: "node00/mem.ram"})
	if err != nil {
		return err
	}
	note := fmt.Sprintf("%d guests of 256 MiB booted from one kernel and base image; each \"installs\" the same 32 MiB of packages (memory and disk) and writes 8 MiB of its own data to memory and 2 MiB of logs to disk.", o.nodes)
	first := append([]ingestRow(nil), rows[0]...)
	for i := range first {
		first[i].RestoreS = stats{}
	}
	r.add(&section{title: "2. Experiment of " + fmt.Sprint(o.nodes) + " nodes", note: note, logical: logicalSize(v1), rows: first})
	r.add(&section{title: "3. Incremental: the same experiment swapped out again", note: "The guests ran ten more seconds after the first swapout; the table measures the second ingest into the repository that holds the first. Stored is the repository's total.", logical: logicalSize(v2), rows: rows[1]})
	return nil
}

// measureResume times a swapin from a migration stream stored on casfs vs
// on the local disk: QEMU starts with -incoming reading the file, and the
// clock stops when the guest is running again.
func measureResume(ctx context.Context, log *slog.Logger, o options, k guestKit, spec nodeSpec, capDir string) (string, error) {
	st := &stasisTool{bin: o.casfs}
	if err := st.Init(ctx, filepath.Join(o.work, "resume-stasis")); err != nil {
		return "", err
	}
	defer st.Close()
	if _, err := st.Ingest(ctx, capDir, "v1"); err != nil {
		return "", err
	}
	local := filepath.Join(o.work, "resume-local")
	if err := os.MkdirAll(local, 0o755); err != nil {
		return "", err
	}
	defer os.RemoveAll(local)
	if _, _, _, err := run(ctx, "", nil, "cp", "--sparse=always", filepath.Join(capDir, "mem.mig"), filepath.Join(capDir, "disk.qcow2"), local); err != nil {
		return "", err
	}
	times := map[string][]float64{}
	for iter := 0; iter < o.runs; iter++ {
		for _, src := range []struct{ name, dir string }{{"stasis (casfs)", filepath.Join(st.mnt, "v1")}, {"local-disk", local}} {
			if src.name != "local-disk" {
				if err := st.Remount(ctx); err != nil {
					return "", err
				}
			}
			dropCaches()
			d, err := resumeFrom(ctx, k, spec, src.dir, filepath.Join(o.work, "resume-vm"))
			if err != nil {
				return "", fmt.Errorf("resume from %s: %w", src.name, err)
			}
			times[src.name] = append(times[src.name], d.Seconds())
			log.Info("resume", "from", src.name, "run", iter, "s", fmt.Sprintf("%.2f", d.Seconds()))
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "A %d MiB guest restored from its migration stream (`-incoming exec:cat FILE`, qcow2 overlay opened in place), cold caches; from QEMU start until `query-status` reports running.\n\n", spec.memMB)
	b.WriteString("| source | resume s (min–max) |\n|---|---|\n")
	for _, n := range []string{"stasis (casfs)", "local-disk"} {
		s := summarize(times[n])
		fmt.Fprintf(&b, "| %s | %.2f (%.2f–%.2f) |\n", n, s.Median, s.Min, s.Max)
	}
	b.WriteString("\n")
	return b.String(), nil
}

// resumeFrom starts a guest restoring from dir/mem.mig with dir/disk.qcow2
// and returns the time until it runs.
func resumeFrom(ctx context.Context, k guestKit, spec nodeSpec, dir, vmdir string) (time.Duration, error) {
	os.RemoveAll(vmdir)
	if err := os.MkdirAll(vmdir, 0o755); err != nil {
		return 0, err
	}
	defer os.RemoveAll(vmdir)
	overlay := filepath.Join(vmdir, "disk.qcow2")
	if _, _, _, err := run(ctx, "", nil, "cp", filepath.Join(dir, "disk.qcow2"), overlay); err != nil {
		return 0, err
	}
	qmpSock := filepath.Join(vmdir, "qmp.sock")
	start := time.Now()
	cmd := exec.Command("qemu-system-x86_64", "-accel", "tcg", "-display", "none", "-nodefaults", "-no-user-config",
		"-m", fmt.Sprintf("%dM", spec.memMB),
		"-object", fmt.Sprintf("memory-backend-file,id=mem,size=%dM,mem-path=/dev/shm/stasis-bench-resume-%d,share=on", spec.memMB, os.Getpid()),
		"-machine", "pc,memory-backend=mem",
		"-kernel", k.kernel, "-initrd", k.initrd,
		"-append", fmt.Sprintf("console=ttyS0 quiet no_timer_check panic=-1 rdinit=/bench/init stasis.id=%s bench.pkg=%d bench.uniq=%d bench.logs=%d", spec.name, spec.pkgMB, spec.uniqMB, spec.logsMB),
		"-drive", "file="+overlay+",if=virtio,format=qcow2,cache=none",
		"-serial", "file:"+filepath.Join(vmdir, "serial.log"),
		"-qmp", "unix:"+qmpSock+",server=on,wait=off",
		"-rtc", "clock=vm",
		"-incoming", "exec:cat "+filepath.Join(dir, "mem.mig"))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	v := &vm{spec: spec, dir: vmdir, cmd: cmd, ramPath: fmt.Sprintf("/dev/shm/stasis-bench-resume-%d", os.Getpid())}
	defer v.kill()
	var err error
	for i := 0; i < 200; i++ {
		if v.mon, err = newMonitor(qmpSock); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		return 0, err
	}
	for time.Since(start) < 5*time.Minute {
		out, err := v.qmp("query-status", nil)
		if err != nil {
			return 0, err
		}
		var s struct{ Status string }
		json.Unmarshal(out, &s)
		switch s.Status {
		case "inmigrate":
		case "paused", "postmigrate", "prelaunch":
			if _, err := v.qmp("cont", nil); err != nil {
				return 0, err
			}
		case "running":
			return time.Since(start), nil
		default:
			return 0, fmt.Errorf("guest state %q while resuming", s.Status)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return 0, fmt.Errorf("guest did not resume within 5 minutes")
}
