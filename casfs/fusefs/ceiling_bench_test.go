package fusefs_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"stasis/casfs/fusefs"
	"stasis/internal/seqio"
)

// nullFile is a FUSE file that keeps nothing: writes only move its size,
// reads return zeros. Mounted with casfs's options it measures what any
// FUSE file system can do on this machine: the kernel's request hand-over
// and go-fuse, with no hashing, compression or storage behind them.
type nullFile struct {
	fs.Inode
	mu     sync.Mutex
	size   uint64
	cached bool // write-only opens go through the page cache too
}

var (
	_ fs.NodeOpener    = (*nullFile)(nil)
	_ fs.NodeWriter    = (*nullFile)(nil)
	_ fs.NodeReader    = (*nullFile)(nil)
	_ fs.NodeGetattrer = (*nullFile)(nil)
	_ fs.NodeSetattrer = (*nullFile)(nil)
	_ fs.NodeFsyncer   = (*nullFile)(nil)
	_ fs.NodeFlusher   = (*nullFile)(nil)
)

// Open sets FOPEN_DIRECT_IO on write-only opens, as casfs does, unless
// the file is the cached one.
func (f *nullFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if !f.cached && flags&syscall.O_ACCMODE == syscall.O_WRONLY {
		return nil, fuse.FOPEN_DIRECT_IO, 0
	}
	return nil, 0, 0
}

func (f *nullFile) Write(ctx context.Context, _ fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	f.mu.Lock()
	f.size = max(f.size, uint64(off)+uint64(len(data)))
	f.mu.Unlock()
	return uint32(len(data)), 0
}

func (f *nullFile) Read(ctx context.Context, _ fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	f.mu.Lock()
	size := f.size
	f.mu.Unlock()
	if uint64(off) >= size {
		return fuse.ReadResultData(nil), 0
	}
	n := min(uint64(len(dest)), size-uint64(off))
	clear(dest[:n])
	return fuse.ReadResultData(dest[:n]), 0
}

func (f *nullFile) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.mu.Lock()
	out.Size = f.size
	f.mu.Unlock()
	out.Mode = syscall.S_IFREG | 0o644
	return 0
}

func (f *nullFile) Setattr(ctx context.Context, _ fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if sz, ok := in.GetSize(); ok {
		f.mu.Lock()
		f.size = sz
		f.mu.Unlock()
	}
	return f.Getattr(ctx, nil, out)
}

func (f *nullFile) Fsync(ctx context.Context, _ fs.FileHandle, flags uint32) syscall.Errno { return 0 }
func (f *nullFile) Flush(ctx context.Context, _ fs.FileHandle) syscall.Errno               { return 0 }

// BenchmarkFUSECeiling measures, in one run, a sequential write (1 MiB
// writes of data made beforehand, then fsync; through FUSE both direct, as
// casfs writes, and through the page cache) and a cold read of CASFS_BENCH_MIB (default 512) of
// random data on the local disk and through a FUSE file system that stores
// nothing, mounted with casfs's options. The null file system's rate is the
// ceiling for casfs on this machine; the metrics are MB/s and the null
// file system's multiple of local.
//
//	go test -run '^$' -bench FUSECeiling -benchtime 1x ./casfs/fusefs/
func BenchmarkFUSECeiling(b *testing.B) {
	mib := seqio.EnvInt("CASFS_BENCH_MIB", 512)
	dir := b.TempDir()
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		b.Fatal(err)
	}
	zero := time.Duration(0)
	srv, err := fs.Mount(mnt, &nullRoot{}, &fs.Options{
		MountOptions: fusefs.MountOptionsForTest(), EntryTimeout: &zero, AttrTimeout: &zero,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = srv.Unmount() })
	if err := fusefs.SetKernelReadAheadForTest(mnt, fusefs.DefaultKernelReadAheadKiB); err != nil {
		b.Logf("read-ahead window left at the kernel's: %v", err)
	}

	// Data is made before the clock starts: 16 distinct random blocks, cycled.
	blocks := make([][]byte, 16)
	for i := range blocks {
		blocks[i] = make([]byte, seqio.BlockSize)
		if err := seqio.Fill("random", i, blocks[i]); err != nil {
			b.Fatal(err)
		}
	}
	buf := make([]byte, seqio.BlockSize)
	write := func(name string) float64 {
		f, err := os.OpenFile(name, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		start := time.Now()
		for i := range mib * (1 << 20) / seqio.BlockSize {
			if _, err := f.Write(blocks[i%len(blocks)]); err != nil {
				b.Fatal(err)
			}
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
		return float64(mib<<20) / 1e6 / time.Since(start).Seconds()
	}
	read := func(name string) float64 {
		if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
			b.Skipf("cannot drop caches (needs root): %v", err)
		}
		f, err := os.Open(name)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		start := time.Now()
		var n int64
		for {
			m, err := f.Read(buf)
			n += int64(m)
			if err != nil || m == 0 {
				break
			}
		}
		if n != int64(mib)<<20 {
			b.Fatalf("%s: read %d bytes, want %d", name, n, int64(mib)<<20)
		}
		return float64(n) / 1e6 / time.Since(start).Seconds()
	}
	var lw, nw, cw, lr, nr float64
	for range b.N {
		local, null := filepath.Join(dir, "local"), filepath.Join(mnt, "null")
		lw += write(local)
		nw += write(null)
		cw += write(filepath.Join(mnt, "cached"))
		lr += read(local)
		nr += read(null)
		_ = os.Remove(local)
	}
	n := float64(b.N)
	b.ReportMetric(lw/n, "local-write-MB/s")
	b.ReportMetric(nw/n, "nullfuse-write-MB/s")
	b.ReportMetric(nw/lw, "nullfuse-write-x-local")
	b.ReportMetric(cw/n, "nullfuse-cachedwrite-MB/s")
	b.ReportMetric(cw/lw, "nullfuse-cachedwrite-x-local")
	b.ReportMetric(lr/n, "local-coldread-MB/s")
	b.ReportMetric(nr/n, "nullfuse-coldread-MB/s")
	b.ReportMetric(nr/lr, "nullfuse-coldread-x-local")
}

// nullRoot is the null file system's root: "null", written like casfs
// files (direct write-only opens), and "cached", written through the page
// cache.
type nullRoot struct{ fs.Inode }

var _ fs.NodeOnAdder = (*nullRoot)(nil)

func (r *nullRoot) OnAdd(ctx context.Context) {
	r.AddChild("null", r.NewPersistentInode(ctx, &nullFile{}, fs.StableAttr{Mode: syscall.S_IFREG}), false)
	r.AddChild("cached", r.NewPersistentInode(ctx, &nullFile{cached: true}, fs.StableAttr{Mode: syscall.S_IFREG}), false)
}
