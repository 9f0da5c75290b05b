package fusefs_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"stasis/blockd"
	"stasis/cas"
	"stasis/casfs"
	"stasis/casfs/fusefs"
	"stasis/casfs/internal/testenv"
	"stasis/metad"
)

// countingMeta counts Sync calls on the metad API.
type countingMeta struct {
	metad.API
	syncs atomic.Int64
}

func (c *countingMeta) Sync(ctx context.Context) error {
	c.syncs.Add(1)
	return c.API.Sync(ctx)
}

// openSyncMeta opens a badger-backed metad in the given sync mode (the
// background flush out of reach), closed at cleanup.
func openSyncMeta(t testing.TB, mode metad.SyncMode, blocks blockd.PruneStore) *metad.Service {
	t.Helper()
	kr, err := cas.ParseKeyring(cas.NewSecretFile(1))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := metad.Open(metad.Config{
		Dir: t.TempDir(), Keyring: kr,
		Badger: metad.BadgerOptions{Sync: mode, FlushInterval: time.Hour, MemTableSize: 16 << 20, BlockCacheSize: 4 << 20, IndexCacheSize: 2 << 20, ValueLogFileSize: 16 << 20},
		Blocks: []metad.BlockBackend{{Endpoint: metad.Endpoint{Name: "local", URL: "inproc:"}, Store: blocks}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	return svc
}

// TestSyncCalls checks which file operations sync metad, on a mount over a
// metad in SyncCommits mode: fsync and fsyncdir do, as does close of a file
// the open created when nothing was written (so it exists after a power
// loss like every closed file); namespace changes and other closes do not,
// and a close that commits content relies on the commit's own sync.
func TestSyncCalls(t *testing.T) {
	blocks := testenv.NewBlocks()
	svc := openSyncMeta(t, metad.SyncCommits, blocks)
	st := svc.Store().(*metad.BadgerStore)
	cm := &countingMeta{API: svc}
	e := testenv.New(t, testenv.Options{Meta: cm, Blocks: blocks})
	mnt := e.Mount(t, fusefs.Options{})

	step := func(name string, wantSyncs int64, wantUnsynced bool, fn func() error) {
		t.Helper()
		before := cm.syncs.Load()
		if err := fn(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := cm.syncs.Load() - before; got != wantSyncs {
			t.Errorf("%s: %d metad syncs, want %d", name, got, wantSyncs)
		}
		if st.Unsynced() != wantUnsynced {
			t.Errorf("%s: metad has unsynced changes: %v, want %v", name, st.Unsynced(), wantUnsynced)
		}
	}
	dir := filepath.Join(mnt, "d")
	step("mkdir", 0, true, func() error { return os.Mkdir(dir, 0o755) })
	step("fsync of the directory", 1, false, func() error {
		f, err := os.Open(dir)
		if err != nil {
			return err
		}
		defer f.Close()
		return f.Sync()
	})
	empty := filepath.Join(dir, "empty")
	step("create and close an empty file", 1, false, func() error {
		f, err := os.Create(empty)
		if err != nil {
			return err
		}
		return f.Close()
	})
	step("chmod and rename", 0, true, func() error {
		if err := os.Chmod(empty, 0o600); err != nil {
			return err
		}
		return os.Rename(empty, empty+"2")
	})
	step("open and close without writing", 0, true, func() error {
		f, err := os.OpenFile(empty+"2", os.O_RDWR, 0)
		if err != nil {
			return err
		}
		return f.Close()
	})
	step("fsync of a file without dirty data", 1, false, func() error {
		f, err := os.OpenFile(empty+"2", os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		return f.Sync()
	})
	step("mkdir again", 0, true, func() error { return os.Mkdir(filepath.Join(dir, "e"), 0o755) })
	step("create, write, close (the commit syncs)", 0, false, func() error {
		return os.WriteFile(filepath.Join(dir, "data"), []byte("hello"), 0o644)
	})
	step("utimes", 0, true, func() error {
		return os.Chtimes(filepath.Join(dir, "data"), time.Unix(1e9, 0), time.Unix(1e9, 0))
	})
	step("write and fsync (the commit syncs)", 0, false, func() error {
		f, err := os.OpenFile(filepath.Join(dir, "data"), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := f.Write([]byte(" world")); err != nil {
			return err
		}
		return f.Sync()
	})
}

// BenchmarkMetadataMount measures small-file metadata through a real
// casfs mount over an embedded-style metad (badger) and block store (the
// default pack store, with embedded mode's pack size),
// with metad syncing every change (all, the old default) and only commits
// (commits, the new default).
//
//	go test -run XXX -bench MetadataMount -benchtime 2000x ./casfs/fusefs
//
// Sub-benchmarks: create (empty file, create+close), mkdir, chmod, file
// (create, write 1 KiB, close, chmod, utimes: what tar does per file), and
// tarx (unpack GOROOT/src/crypto with tar, one op = one tree; use
// -benchtime 3x).
func BenchmarkMetadataMount(b *testing.B) {
	for _, mode := range []metad.SyncMode{metad.SyncAll, metad.SyncCommits} {
		b.Run("sync="+mode.String(), func(b *testing.B) {
			mnt := benchMount(b, mode)
			b.Run("create", func(b *testing.B) {
				d := benchDir(b, mnt)
				for i := 0; b.Loop(); i++ {
					f, err := os.Create(filepath.Join(d, itoa(i)))
					if err != nil {
						b.Fatal(err)
					}
					if err := f.Close(); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("mkdir", func(b *testing.B) {
				d := benchDir(b, mnt)
				for i := 0; b.Loop(); i++ {
					if err := os.Mkdir(filepath.Join(d, itoa(i)), 0o755); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("chmod", func(b *testing.B) {
				d := benchDir(b, mnt)
				p := filepath.Join(d, "f")
				if err := os.WriteFile(p, nil, 0o644); err != nil {
					b.Fatal(err)
				}
				for i := 0; b.Loop(); i++ {
					if err := os.Chmod(p, os.FileMode(0o600|i&1<<7)); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("file", func(b *testing.B) {
				d := benchDir(b, mnt)
				data := make([]byte, 1024)
				t0 := time.Unix(1e9, 0)
				for i := 0; b.Loop(); i++ {
					data[0], data[1], data[2] = byte(i), byte(i>>8), byte(i>>16)
					p := filepath.Join(d, itoa(i))
					if err := os.WriteFile(p, data, 0o600); err != nil {
						b.Fatal(err)
					}
					if err := os.Chmod(p, 0o644); err != nil {
						b.Fatal(err)
					}
					if err := os.Chtimes(p, t0, t0); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("tarx", func(b *testing.B) {
				tarball := filepath.Join(b.TempDir(), "src.tar")
				if out, err := exec.Command("tar", "cf", tarball, "-C", runtime.GOROOT(), "src/crypto").CombinedOutput(); err != nil {
					b.Skipf("cannot build the source tarball: %v %s", err, out)
				}
				for i := 0; b.Loop(); i++ {
					d := benchDir(b, mnt)
					if out, err := exec.Command("tar", "xf", tarball, "-C", d).CombinedOutput(); err != nil {
						b.Fatalf("tar x: %v %s", err, out)
					}
				}
			})
		})
	}
}

var benchDirs atomic.Int64

func benchDir(b *testing.B, mnt string) string {
	b.Helper()
	d := filepath.Join(mnt, "b"+itoa(int(benchDirs.Add(1))))
	if err := os.Mkdir(d, 0o755); err != nil {
		b.Fatal(err)
	}
	return d
}

func itoa(i int) string {
	const digits = "0123456789"
	if i == 0 {
		return "0"
	}
	var buf [20]byte
	n := len(buf)
	for ; i > 0; i /= 10 {
		n--
		buf[n] = digits[i%10]
	}
	return string(buf[n:])
}

// benchMount mounts casfs over a badger metad in mode and a block store,
// both under the benchmark's temporary directory (on disk, as in embedded
// mode).
func benchMount(b *testing.B, mode metad.SyncMode) string {
	b.Helper()
	blocks, _, err := blockd.OpenStore(blockd.StoreConfig{Dir: b.TempDir(), Small: true, PackSize: 256 << 20}) // as embedded mode
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { blocks.Close() })
	svc := openSyncMeta(b, mode, blocks)
	fsys, err := casfs.New(casfs.Config{Meta: svc, Transport: casfs.StoreTransport{Store: blocks}, StagingDir: b.TempDir(), Logger: testenv.Logger(b)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { fsys.Close(context.Background()) })
	mnt := b.TempDir()
	srv, err := fusefs.Mount(mnt, fsys, fusefs.Options{Logger: testenv.Logger(b)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			_ = syscall.Unmount(mnt, syscall.MNT_DETACH)
		}
		srv.Wait()
	})
	return mnt
}
