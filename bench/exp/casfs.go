package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"stasis/casfs"
	"stasis/casfs/fusefs"
)

// casfsMount is a `casfs mount --data DIR MNT` process in embedded mode
// (metad and blockd in-process, their data under DIR), as bench/e2e runs
// it.
type casfsMount struct {
	dir, mnt, log string
	cmd           *exec.Cmd
	done          chan error
}

// mountCasfs starts bin mounting a fresh store at work/mnt, data in
// work/data, its output in work/casfs.log, and waits for the mount.
func mountCasfs(bin, work string) (*casfsMount, error) {
	m := &casfsMount{dir: filepath.Join(work, "data"), mnt: filepath.Join(work, "mnt"), log: filepath.Join(work, "casfs.log")}
	for _, d := range []string{m.dir, m.mnt} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	logf, err := os.Create(m.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	m.cmd = exec.Command(bin, "mount", "--data", m.dir, m.mnt)
	m.cmd.Stdout, m.cmd.Stderr = logf, logf
	// Its own process group: a Ctrl-C reaches only us, and we unmount after
	// the guests are down, not before.
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := m.cmd.Start(); err != nil {
		return nil, fmt.Errorf("casfs mount: %w", err)
	}
	m.done = make(chan error, 1)
	go func() { m.done <- m.cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if isMountPoint(m.mnt) {
			return m, nil
		}
		select {
		case err := <-m.done:
			m.done <- err
			m.cmd = nil
			return nil, fmt.Errorf("casfs mount exited: %v: %s", err, tailFile(m.log, 5))
		case <-time.After(50 * time.Millisecond):
		}
	}
	m.Unmount()
	return nil, fmt.Errorf("casfs did not mount %s within 30 s: %s", m.mnt, tailFile(m.log, 5))
}

// Unmount stops casfs with SIGTERM (it commits, unmounts and closes the
// stores); after 60 s it is killed and the mount detached. Safe to call
// twice.
func (m *casfsMount) Unmount() error {
	if m.cmd == nil {
		return nil
	}
	defer func() { m.cmd = nil }()
	m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-m.done:
		return err
	case <-time.After(60 * time.Second):
		m.cmd.Process.Kill()
		<-m.done
		unix.Unmount(m.mnt, unix.MNT_DETACH)
		return fmt.Errorf("casfs did not exit within 60 s of SIGTERM; killed, mount detached")
	}
}

// Stats reads the mount root's user.casfs.stats xattr, as an outside
// tool does.
func (m *casfsMount) Stats() (casfs.Stats, error) {
	var s casfs.Stats
	buf := make([]byte, 64<<10)
	n, err := unix.Getxattr(m.mnt, fusefs.StatsXattr, buf)
	if err != nil {
		return s, fmt.Errorf("casfs stats of %s: %w", m.mnt, err)
	}
	return s, json.Unmarshal(buf[:n], &s)
}

func isMountPoint(p string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	abs, _ := filepath.Abs(p)
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == abs {
			return true
		}
	}
	return false
}

func tailFile(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
