package qemuhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"github.com/digitalocean/go-qemu/qmp/raw"
	"golang.org/x/sys/unix"
)

// ErrQMP wraps an error QEMU returned for a command.
var ErrQMP = errors.New("qemu refused")

// monitor is a QMP connection: go-qemu's socket monitor for the transport and
// the generated commands, raw JSON for what its types lack. Every call takes
// a context; when it ends the connection is closed so no call hangs on a
// wedged QEMU.
type monitor struct {
	path    string
	mon     *qmp.SocketMonitor
	raw     *raw.Monitor
	pid     int
	version [3]int
	mu      sync.Mutex
	closed  bool
}

// peerPid returns the pid of the process listening on a unix socket (the
// QEMU that owns the QMP socket), via SO_PEERCRED on a short connection.
func peerPid(ctx context.Context, path string) (int, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	rc, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, cerr
	}
	return int(cred.Pid), nil
}

// dial connects to QEMU's QMP socket and completes the handshake.
func dial(ctx context.Context, path string) (*monitor, error) {
	pid, err := peerPid(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", path, err)
	}
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	sm, err := qmp.NewSocketMonitor("unix", path, timeout)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", path, err)
	}
	m := &monitor{path: path, mon: sm, pid: pid}
	if err := m.do(ctx, sm.Connect); err != nil {
		return nil, fmt.Errorf("qmp %s: handshake: %w", path, err)
	}
	m.raw = raw.NewMonitor(sm)
	if sm.Version != nil {
		m.version = [3]int{sm.Version.QEMU.Major, sm.Version.QEMU.Minor, sm.Version.QEMU.Micro}
	}
	return m, nil
}

// do runs f, giving up (and closing the connection) when ctx ends.
func (m *monitor) do(ctx context.Context, f func() error) error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		m.Close()
		<-done
		return fmt.Errorf("qmp %s: %w", m.path, ctx.Err())
	}
}

// Close disconnects.
func (m *monitor) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	return m.mon.Disconnect()
}

// atLeast reports whether QEMU's version is at least major.minor.
func (m *monitor) atLeast(major, minor int) bool {
	return m.version[0] > major || m.version[0] == major && m.version[1] >= minor
}

// run executes a command with JSON arguments and decodes "return" into out
// (if non-nil). With f non-nil, f's descriptor travels with the command
// (SCM_RIGHTS), as getfd needs.
func (m *monitor) run(ctx context.Context, cmd string, args any, out any, f *os.File) error {
	b, err := json.Marshal(qmp.Command{Execute: cmd, Args: args})
	if err != nil {
		return err
	}
	var resp []byte
	err = m.do(ctx, func() error {
		var err error
		if f != nil {
			resp, err = m.mon.RunWithFile(b, f)
		} else {
			resp, err = m.mon.Run(b)
		}
		return err
	})
	if err != nil {
		if ctx.Err() != nil || strings.HasPrefix(err.Error(), "qmp ") {
			return fmt.Errorf("%s: %w", cmd, err)
		}
		return fmt.Errorf("%s: %w: %v", cmd, ErrQMP, err)
	}
	if out == nil {
		return nil
	}
	var r struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(resp, &r); err != nil {
		return fmt.Errorf("%s: decode response: %w", cmd, err)
	}
	if err := json.Unmarshal(r.Return, out); err != nil {
		return fmt.Errorf("%s: decode return: %w", cmd, err)
	}
	return nil
}

// call runs one of go-qemu's generated commands under ctx.
func (m *monitor) call(ctx context.Context, name string, f func() error) error {
	if err := m.do(ctx, f); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return fmt.Errorf("%s: %w: %v", name, ErrQMP, err)
	}
	return nil
}

// stop, cont and quit use go-qemu's generated commands.
func (m *monitor) stop(ctx context.Context) error { return m.call(ctx, "stop", m.raw.Stop) }
func (m *monitor) cont(ctx context.Context) error { return m.call(ctx, "cont", m.raw.Cont) }
func (m *monitor) quit(ctx context.Context) error { return m.call(ctx, "quit", m.raw.Quit) }

// status is query-status: "running", "paused", "postmigrate", ... Raw
// JSON, since go-qemu's RunState enum rejects states newer than its schema.
func (m *monitor) status(ctx context.Context) (string, error) {
	var st struct {
		Status string `json:"status"`
	}
	err := m.run(ctx, "query-status", nil, &st, nil)
	return st.Status, err
}

// migrationInfo is the part of query-migrate stasis reads.
type migrationInfo struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
	TotalTime int64  `json:"total-time"`
	RAM       struct {
		Transferred int64 `json:"transferred"`
		Total       int64 `json:"total"`
	} `json:"ram"`
}

// waitMigration polls query-migrate until the migration completes or
// fails. tick is called with each poll's info.
func (m *monitor) waitMigration(ctx context.Context, tick func(migrationInfo)) (migrationInfo, error) {
	for {
		var mi migrationInfo
		if err := m.run(ctx, "query-migrate", nil, &mi, nil); err != nil {
			return mi, err
		}
		if tick != nil {
			tick(mi)
		}
		switch mi.Status {
		case "completed":
			return mi, nil
		case "failed", "cancelled":
			if mi.ErrorDesc == "" {
				mi.ErrorDesc = mi.Status
			}
			return mi, fmt.Errorf("migration %s: %s", mi.Status, mi.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return mi, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// setCapabilities sets migration capabilities by name.
func (m *monitor) setCapabilities(ctx context.Context, caps map[string]bool) error {
	if len(caps) == 0 {
		return nil
	}
	type capState struct {
		Capability string `json:"capability"`
		State      bool   `json:"state"`
	}
	var list []capState
	for c, s := range caps {
		list = append(list, capState{c, s})
	}
	return m.run(ctx, "migrate-set-capabilities", map[string]any{"capabilities": list}, nil, nil)
}
