// Package casfsmount mounts a real casfs in embedded mode for integration
// tests of the hypervisor drivers: metad and a block store on badger under
// t.TempDir, in process, behind a real FUSE mount. The block store is wrapped
// in a fault injector so tests can make casfs unavailable or full.
package casfsmount

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"stasis/blockd"
	"stasis/blockd/faultstore"
	"stasis/cas"
	"stasis/casfs"
	"stasis/casfs/fusefs"
	"stasis/internal/mountwatch"
	"stasis/metad"
)

// Options tune a mount.
type Options struct {
	// RetryDeadline is how long casfs retries a failing store before the
	// writer gets EIO (default 2 min). It also bounds a single slow call:
	// under -race on a loaded 2-core machine, committing a VM's memory took
	// longer than the 3 s default this had (the agent's two-host test failed
	// so in make check). Fault tests set a short one.
	RetryDeadline time.Duration
	Logger        *slog.Logger
}

// Mount is a mounted casfs.
type Mount struct {
	Dir    string // the mount point
	FS     *casfs.FS
	Faults *faultstore.Store // the block store, with fault injection
	server *fuse.Server
}

// New mounts a fresh casfs; it is unmounted and closed in t.Cleanup.
func New(t testing.TB, o Options) *Mount {
	t.Helper()
	if o.RetryDeadline == 0 {
		o.RetryDeadline = 2 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	}
	base := t.TempDir()
	bs, err := blockd.OpenBadger(blockd.BadgerConfig{Dir: filepath.Join(base, "blocks"), Small: true, GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bs.Close() })
	faults := faultstore.New(bs)
	kr, err := cas.ParseKeyring(cas.NewSecretFile(1))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := metad.Open(metad.Config{
		Dir:     filepath.Join(base, "meta"),
		Badger:  metad.BadgerOptions{MemTableSize: 64 << 20, BlockCacheSize: 8 << 20, IndexCacheSize: 4 << 20, ValueLogFileSize: 64 << 20},
		Keyring: kr,
		Blocks:  []metad.BlockBackend{{Endpoint: metad.Endpoint{Name: "local", URL: "inproc:"}, Store: faults}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	staging := filepath.Join(base, "staging")
	mnt := filepath.Join(base, "mnt")
	for _, d := range []string{staging, mnt} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	fsys, err := casfs.New(casfs.Config{
		Meta: svc, Transport: casfs.StoreTransport{Store: faults}, StagingDir: staging,
		Logger: o.Logger, RetryDeadline: o.RetryDeadline,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fsys.Close(context.Background()) })
	srv, err := fusefs.Mount(mnt, fsys, fusefs.Options{Logger: o.Logger})
	if err != nil {
		t.Fatalf("mount casfs: %v", err)
	}
	mountwatch.AbortBeforeDeadline(t, mnt)
	m := &Mount{Dir: mnt, FS: fsys, Faults: faults, server: srv}
	t.Cleanup(m.Unmount)
	return m
}

// Unmount unmounts (lazily if busy). Safe to call twice.
func (m *Mount) Unmount() {
	if m.server == nil {
		return
	}
	if err := m.server.Unmount(); err != nil {
		// Busy: detach so nothing is left mounted.
		unix.Unmount(m.Dir, unix.MNT_DETACH)
		m.server.Wait()
	}
	m.server = nil
}

// Stats returns casfs's counters.
func (m *Mount) Stats(ctx context.Context) (casfs.Stats, error) { return m.FS.Stats(ctx) }

// StatsJSON reads the stats the way an outside tool does: the mount root's
// user.casfs.stats xattr.
func StatsJSON(mnt string) (casfs.Stats, error) {
	var s casfs.Stats
	buf := make([]byte, 64<<10)
	n, err := getxattr(mnt, fusefs.StatsXattr, buf)
	if err != nil {
		return s, err
	}
	return s, json.Unmarshal(buf[:n], &s)
}

// Snapshot takes a casfs snapshot of dir named name (mkdir in .snapshots).
func Snapshot(dir, name string) error {
	return os.Mkdir(filepath.Join(dir, fusefs.SnapshotsDir, name), 0o755)
}
