// Package fusefs is the thin go-fuse adapter of casfs: it turns kernel
// requests into calls on casfs.FS and casfs.Handle, maps inode numbers and
// converts errors to errno, once, here at the boundary. It holds no file
// content or policy of its own.
//
// Every live directory has a virtual ".snapshots" directory (not listed by
// readdir of its parent, so tools that walk the tree do not copy history):
// mkdir in it takes a snapshot of the directory, rmdir deletes one, and each
// entry is the snapshot's read-only tree, where every change fails with EROFS.
// Snapshot content is immutable, so the kernel may keep its pages and
// attributes for long; the live tree uses short timeouts so other nodes'
// changes appear (close-to-open: a file closed elsewhere opens with its new
// content here).
package fusefs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"stasis/cas"
	"stasis/casfs"
	"stasis/metad"
)

// SnapshotsDir is the name of the virtual snapshot directory.
const SnapshotsDir = ".snapshots"

// StatsXattr on the mount root returns casfs.Stats as JSON.
const StatsXattr = "user.casfs.stats"

// Options tune the mount.
type Options struct {
	// EntryTimeout and AttrTimeout apply to the live tree (default 1s).
	EntryTimeout, AttrTimeout time.Duration
	// SnapshotTimeout applies to snapshot trees (default 1h).
	SnapshotTimeout time.Duration
	// AllowOther lets users other than the mounter use the mount.
	AllowOther bool
	// Debug logs every FUSE request.
	Debug bool
	// FsName is the source shown by mount(8) (default "casfs").
	FsName string
	// Logger receives errors converted to EIO (default: discard).
	Logger *slog.Logger
	// CachedWrites sends writes of write-only handles through the kernel's
	// page cache like every other handle. By default they bypass it (see
	// openFlags): 2-3x faster sequential writes here, where filling fresh
	// cache pages is the costliest part of a FUSE write.
	CachedWrites bool
	// KernelReadAheadKiB is the kernel's read-ahead window for the mount
	// (its bdi's read_ahead_kb; default DefaultKernelReadAheadKiB; negative
	// keeps the kernel's choice). FUSE mounts start with 128 KiB, one 128
	// KiB request at a time: a sequential reader then waits for every
	// request's round trip. A larger window keeps several 1 MiB requests in
	// flight (bench/RESULTS.md, run L).
	KernelReadAheadKiB int
}

// DefaultKernelReadAheadKiB is the default Options.KernelReadAheadKiB.
const DefaultKernelReadAheadKiB = 2048

func (o *Options) setDefaults() {
	if o.EntryTimeout == 0 {
		o.EntryTimeout = time.Second
	}
	if o.AttrTimeout == 0 {
		o.AttrTimeout = time.Second
	}
	if o.SnapshotTimeout == 0 {
		o.SnapshotTimeout = time.Hour
	}
	if o.FsName == "" {
		o.FsName = "casfs"
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.KernelReadAheadKiB == 0 {
		o.KernelReadAheadKiB = DefaultKernelReadAheadKiB
	}
}

// Mount mounts fsys at dir and returns the running server. Unmount it with
// server.Unmount(); the caller closes fsys afterwards.
func Mount(dir string, fsys *casfs.FS, opts Options) (*fuse.Server, error) {
	opts.setDefaults()
	r := &rootData{fsys: fsys, opts: opts, log: opts.Logger}
	root := &node{r: r, id: metad.Node{Snap: metad.LiveSnap, Ino: metad.RootIno}}
	zero := time.Duration(0)
	fo := &fs.Options{
		MountOptions: mountOptions(opts),
		// Each node sets its own timeouts; negative lookups are not cached
		// so files created on other nodes appear.
		EntryTimeout:    &opts.EntryTimeout,
		AttrTimeout:     &opts.AttrTimeout,
		NegativeTimeout: &zero,
		RootStableAttr:  &fs.StableAttr{Ino: uint64(metad.RootIno), Mode: syscall.S_IFDIR},
	}
	srv, err := fs.Mount(dir, root, fo)
	if err != nil {
		return nil, err
	}
	if opts.KernelReadAheadKiB > 0 {
		// After the mount's INIT, which sets the window to at most 128 KiB.
		if err := setKernelReadAhead(dir, opts.KernelReadAheadKiB); err != nil {
			opts.Logger.Warn("cannot set the kernel read-ahead window; sequential reads will be slower", "mountpoint", dir, "err", err)
		}
	}
	return srv, nil
}

// setKernelReadAhead sets the read-ahead window of the file system mounted
// at dir (a FUSE mount has a backing device of its own, named by the
// mount's device number in /sys/class/bdi).
func setKernelReadAhead(dir string, kib int) error {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return err
	}
	return os.WriteFile(kernelReadAheadFile(st.Dev), []byte(strconv.Itoa(kib)), 0)
}

// kernelReadAheadFile is the sysfs file holding the read-ahead window of
// the backing device dev.
func kernelReadAheadFile(dev uint64) string {
	return fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(dev), unix.Minor(dev))
}

// mountOptions are the FUSE mount options casfs mounts with.
func mountOptions(opts Options) fuse.MountOptions {
	return fuse.MountOptions{
		DirectMount:   true,
		AllowOther:    opts.AllowOther,
		FsName:        opts.FsName,
		Name:          "casfs",
		MaxWrite:      1 << 20,
		MaxReadAhead:  1 << 20,
		MaxBackground: 64,
		// Splicing applies to replies backed by a file descriptor; casfs
		// replies from memory, and go-fuse's attempt for a 1 MiB read
		// (larger than a pipe may grow) failed and logged on every read.
		DisableSplice: true,
		Debug:         opts.Debug,
		Logger:        fuseLogger(opts),
		Options:       []string{"default_permissions"},
	}
}

// fuseLogger sends go-fuse's own log lines (its request trace with Debug,
// its errors otherwise) to the mount's logger.
func fuseLogger(opts Options) *log.Logger {
	level := slog.LevelWarn
	if opts.Debug {
		level = slog.LevelInfo
	}
	return slog.NewLogLogger(opts.Logger.With("component", "go-fuse").Handler(), level)
}

type rootData struct {
	fsys *casfs.FS
	opts Options
	log  *slog.Logger
	// noCaps remembers, per kernel inode, when security.capability was last
	// found absent. The kernel asks for it before every write(2); the answer
	// is cached for AttrTimeout like other attributes.
	noCaps sync.Map // uint64 -> time.Time
}

const capXattr = "security.capability"

// kernelIno maps a (snapshot, inode) pair to the inode number the kernel
// sees: live inodes keep theirs; snapshot inodes get bit 63, the snapshot id
// in bits 40-62 and the inode in bits 0-39; ".snapshots" directories get
// bit 62 and the directory's inode. Inode numbers must stay below 2^40.
func kernelIno(n metad.Node) uint64 {
	if n.Snap == metad.LiveSnap {
		return uint64(n.Ino)
	}
	return 1<<63 | (uint64(n.Snap)&(1<<23-1))<<40 | uint64(n.Ino)&(1<<40-1)
}

func snapsDirIno(dir metad.Ino) uint64 { return 1<<62 | uint64(dir) }

// toErrno converts a casfs or metad error to an errno, logging the ones that
// become EIO.
func (r *rootData) toErrno(op string, err error) syscall.Errno {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, metad.ErrNotFound):
		return syscall.ENOENT
	case errors.Is(err, metad.ErrExists):
		return syscall.EEXIST
	case errors.Is(err, metad.ErrNotDir):
		return syscall.ENOTDIR
	case errors.Is(err, metad.ErrIsDir):
		return syscall.EISDIR
	case errors.Is(err, metad.ErrNotEmpty):
		return syscall.ENOTEMPTY
	case errors.Is(err, metad.ErrInvalid), errors.Is(err, cas.ErrBadPolicy):
		return syscall.EINVAL
	case errors.Is(err, metad.ErrReadOnly):
		return syscall.EROFS
	case errors.Is(err, metad.ErrNoData):
		return syscall.ENODATA
	case casfs.NoSpace(err):
		return syscall.ENOSPC
	case errors.Is(err, casfs.ErrNotSupported):
		return syscall.EOPNOTSUPP
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	}
	r.log.Error("I/O error", "op", op, "err", err)
	return syscall.EIO
}

// noInterrupt detaches an operation from the kernel's FUSE_INTERRUPT
// (which go-fuse turns into a cancelled context); every operation starts
// with it. Any caught signal to the calling thread interrupts its request —
// Go's runtime sends its preemption signal to threads blocked in system
// calls — and the kernel hands the server's EINTR to the caller unchanged,
// even for system calls that never fail with EINTR on a local disk and that
// callers do not retry: stat, open, the lookups inside rename, mkdir or
// setxattr (where metad may already have applied the change, so a retry
// would see EEXIST or ENOENT). Fatal signals still end a waiting caller:
// the kernel stops waiting for the reply itself. The operation is bounded
// by opTimeout instead (it then fails with EIO).
func noInterrupt(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
}

// opTimeout bounds an operation that interrupts cannot stop: longer than
// casfs's retry deadline (30 s by default) with room to spare.
const opTimeout = 2 * time.Minute

func (r *rootData) fill(a metad.Attr, id metad.Node, out *fuse.Attr) {
	out.Ino = kernelIno(id)
	out.Mode = a.Mode
	out.Size = a.Size
	out.Blocks = (a.Size + 511) / 512
	out.Nlink = a.Nlink
	out.Uid, out.Gid, out.Rdev = a.Uid, a.Gid, a.Rdev
	out.Blksize = 1 << 16
	out.SetTimes(&a.Atime, &a.Mtime, &a.Ctime)
}

func (r *rootData) timeout(id metad.Node) (entry, attr time.Duration) {
	if id.Snap != metad.LiveSnap {
		return r.opts.SnapshotTimeout, r.opts.SnapshotTimeout
	}
	return r.opts.EntryTimeout, r.opts.AttrTimeout
}

// node is a directory, file, symlink or special file, live or in a snapshot.
type node struct {
	fs.Inode
	r  *rootData
	id metad.Node
}

var (
	_ fs.NodeLookuper      = (*node)(nil)
	_ fs.NodeGetattrer     = (*node)(nil)
	_ fs.NodeSetattrer     = (*node)(nil)
	_ fs.NodeCreater       = (*node)(nil)
	_ fs.NodeMkdirer       = (*node)(nil)
	_ fs.NodeMknoder       = (*node)(nil)
	_ fs.NodeSymlinker     = (*node)(nil)
	_ fs.NodeLinker        = (*node)(nil)
	_ fs.NodeUnlinker      = (*node)(nil)
	_ fs.NodeRmdirer       = (*node)(nil)
	_ fs.NodeRenamer       = (*node)(nil)
	_ fs.NodeReaddirer     = (*node)(nil)
	_ fs.NodeReadlinker    = (*node)(nil)
	_ fs.NodeOpener        = (*node)(nil)
	_ fs.NodeGetxattrer    = (*node)(nil)
	_ fs.NodeSetxattrer    = (*node)(nil)
	_ fs.NodeListxattrer   = (*node)(nil)
	_ fs.NodeRemovexattrer = (*node)(nil)
	_ fs.NodeStatfser      = (*node)(nil)
	_ fs.NodeFsyncer       = (*node)(nil)
)

func (n *node) live() bool { return n.id.Snap == metad.LiveSnap }

func (n *node) newChild(ctx context.Context, a metad.Attr, out *fuse.EntryOut) *fs.Inode {
	id := metad.Node{Snap: n.id.Snap, Ino: a.Ino}
	return n.r.childInode(ctx, &n.Inode, id, a, out)
}

func (r *rootData) childInode(ctx context.Context, parent *fs.Inode, id metad.Node, a metad.Attr, out *fuse.EntryOut) *fs.Inode {
	r.fill(a, id, &out.Attr)
	et, at := r.timeout(id)
	out.SetEntryTimeout(et)
	out.SetAttrTimeout(at)
	return parent.NewInode(ctx, &node{r: r, id: id}, fs.StableAttr{Mode: a.Mode & syscall.S_IFMT, Ino: kernelIno(id)})
}

func caller(ctx context.Context) (uid, gid uint32) {
	if c, ok := fuse.FromContext(ctx); ok {
		return c.Uid, c.Gid
	}
	return 0, 0
}

func nameErr(name string) syscall.Errno {
	if len(name) > 255 {
		return syscall.ENAMETOOLONG
	}
	return 0
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ctx, cancel := noInterrupt(ctx)
	defer cancel()
	if e := nameErr(name); e != 0 {
		return nil, e
	}
	if name == SnapshotsDir && n.live() && n.IsDir() {
		a, err := n.r.fsys.GetAttr(ctx, n.id)
		if err != nil {
			return nil, n.r.toErrno("lookup", err)
		}
		sd := &snapsDir{r: n.r, dir: n.id.Ino}
		sd.fillAttr(a, &out.Attr)
		out.SetEntryTimeout(n.r.opts.EntryTimeout)
		out.SetAttrTimeout(n.r.opts.AttrTimeout)
		return n.NewInode(ctx, sd, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: snapsDirIno(n.id.Ino)}), 0
	}
	a, err := n.r.fsys.Lookup(ctx, n.id, name)
	if err != nil {
		return nil, n.r.toErrno("lookup", err)
	}
	return n.newChild(ctx, a, out), 0
}

func (n *node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	ctx, cancel := noInterrupt(ctx)
	defer cancel()
	a, err := n.r.fsys.GetAttr(ctx, n.id)
	if err != nil {
		return n.r.toErrno("getattr", err)
	}
	n.r.fill(a, n.id, &out.Attr)
	_, at := n.r.timeout(n.id)
	out.SetTimeout(at)
	return 0
}

func (n *node) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	ctx, cancel := noInterrupt(ctx)
	defer cancel()
	if !n.live() {
		return syscall.EROFS
	}
	var req metad.SetAttrRequest
	if m, ok := in.GetMode(); ok {
		req.Mode = &m
	}
	if u, ok := in.GetUID(); ok {
		req.Uid = &u
	}
	if g, ok := in.GetGID(); ok {
		req.Gid = &g
	}
	if s, ok := in.GetSize(); ok {
		req.Size = &s
	}
	if t, ok := in.GetATime(); ok {
		req.Atime = &t
	}
	if t, ok := in.GetMTime(); ok {
		req.Mtime = &t
	}
	a, err := n.r.fsys.SetAttr(ctx, n.id, req)
	if err != nil {
		return n.r.toErrno("setattr", err)
	}
	n.r.fill(a, n.id, &out.Attr)
	out.SetTimeout(n.r.opts.AttrTimeout)
	return 0
}

func (n *node) create(ctx context.Context, req metad.CreateRequest, out *fuse.EntryOut) (*fs.Inode, metad.Attr, syscall.Errno) {
	ctx, cancel := noInterrupt(ctx)
	defer cancel()
	if !n.live() {
		return nil, metad.Attr{}, syscall.EROFS
	}
	if e := nameErr(req.Name); e != 0 {
		return nil, metad.Attr{}, e
	}
	if req.Name == SnapshotsDir {
		return nil, metad.Attr{}, syscall.EEXIST
	}
	req.Parent = n.id.Ino
	req.Uid, req.Gid = caller(ctx)
	a, err := n.r.fsys.Create(ctx, req)
	if err != nil {
		return nil, a, n.r.toErrno("create", err)
	}
	return n.newChild(ctx, a, out), a, 0
}

func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	ctx, cancel := noInterrupt(ctx)
	defer cancel()
	child, a, e := n.create(ctx, metad.CreateRequest{Name: name, Mode: mode&^syscall.S_IFMT | syscall.S_IFREG}, out)
	if e != 0 {
		return nil, nil, 0, e
	}
	h, _, err := n.r.fsys.Open(ctx, metad.Node{Snap: n.id.Snap, Ino: a.Ino}, int(flags))
	if err != nil {
		return nil, nil, 0, n.r.toErrno("open", err)
	}
	h.MarkCreated() // close makes the new file durable even when nothing is written
	return child, &handle{h: h, r: n.r}, n.r.openFlags(flags, false), 0
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	child, _, e := n.create(ctx, metad.CreateRequest{Name: name, Mode: mode&^syscall.S_IFMT | syscall.S_IFDIR}, out)
	return child, e
}

func (n *node) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	child, _, e := n.create(ctx, metad.CreateRequest{Name: name, Mode: mode, Rdev: dev}, out)
	return child, e
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	child, _, e := n.create(ctx, metad.CreateRequest{Name: name, Mode: syscall.S_IFLNK | 0o777, Target: target}, out)
	return child, e
}

func (n *node) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ctx, cancel := noInterrupt(ctx)
	defer cancel()
	t, ok := target.(*node)
	if !n.live() || !ok || !t.live() {
		return nil, syscall.EROFS
	}
	if e := nameErr(name); e != 0 {
		return nil, e
	}
	a, err := n.r.fsys.Meta().Link(ctx, t.id.Ino, n.id.Ino, name)
	if err != nil {
		return nil, n.r.toErrno("link", err)
	}
	return n.newChild(ctx, a, out), 0
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	ctx, cancel := noInterrupt(ctx)
	defer cancel()
	if !n.live() {
		return syscall.EROFS
	}
	return n.r.toErrno("unlink", n.r.fsys.Meta().Unlink(ctx, n.id.Ino, name))
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	ctx, cancel := noInterrupt(ctx)
	defer cancel()
	if !n.live() {
		return syscall.EROFS
	}
	if name == SnapshotsDir {
		return syscall.EBUSY
	}
	return n.r.toErrno("rmdir", n.r.fsys.Meta().Rmdir(ctx, n.id.Ino, name))
}

func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	ctx, cancel := noInterrupt(ctx)
	defer cancel()
	np, ok := newParent.(*node)
	if !n.live() || !ok || !np.live() {
		return syscall.EROFS
	}
	if e := nameErr(newName); e != 0 {
		return e
	}
	if name == SnapshotsDir || newName == SnapshotsDir {
		return syscall.EBUSY
	}
	err := n.r.fsys.Meta().Rename(ctx, n.id.Ino, name, np.id.Ino, newName, metad.RenameFlags(flags))
	return n.r.toErrno("rename", err)
}

func (n *node) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	ctx, cancel := noInterrupt(ctx)
	defer cancel()
	ents, err := n.r.fsys.Meta().ReadDir(ctx, n.id, "", 0)
	if err != nil {
		return nil, n.r.toErrno("readdir", err)
	}
	out := make([]fuse.DirEntry, 0, len(ents))
	for _, e := range ents {
		out = append(out, fuse.DirEntry{Name: e.Name, Mode: e.Mode, Ino: kernelIno(metad.Node{Snap: n.id.Snap, Ino: e.Ino})})
	}
	return fs.NewListDirStream(out), 0
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	ctx, cancel := noInterrupt(ctx)
	defer cancel()
	s, err := n.r.fsys.Meta().Readlink(ctx, n.id)
	if err != nil {
		return nil, n.r.toErrno("readlink", err)
	}
	return []byte(s), 0
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	ctx, cancel := noInterrupt(ctx)
	defer cancel()
	h, keep, err := n.r.fsys.Open(ctx, n.id, int(flags))
	if err != nil {
		return nil, 0, n.r.toErrno("open", err)
	}
	return &handle{h: h, r: n.r}, n.r.openFlags(flags, keep), 0
}

// openFlags are the FOPEN flags of a handle opened with flags. Snapshot
// content (keep) keeps the kernel's page cache across opens. A write-only
// handle bypasses the page cache (FOPEN_DIRECT_IO) unless
// Options.CachedWrites: its writes go from the writer's buffer straight
// into the FUSE request, so the kernel neither allocates nor fills cache
// pages that casfs never reads back (casfs keeps its own chunk cache, and
// every open of a live file drops the kernel's cached pages anyway). The
// kernel keeps other handles of the file coherent: a direct write
// invalidates cached pages of the range it writes (TestDirectWrites).
// Read-only and read-write handles stay cached (readahead, small reads and
// shared mmap need it).
func (r *rootData) openFlags(flags uint32, keep bool) uint32 {
	var ff uint32
	if keep {
		ff |= fuse.FOPEN_KEEP_CACHE
	}
	if !r.opts.CachedWrites && flags&syscall.O_ACCMODE == syscall.O_WRONLY {
		ff |= fuse.FOPEN_DIRECT_IO
	}
	return ff
}

// xattrReply implements the getxattr/listxattr size protocol.
func xattrReply(val, dest []byte) (uint32, syscall.Errno) {
	if len(dest) == 0 {
		return uint32(len(val)), 0
	}
	if len(dest) < len(val) {
		return uint32(len(val)), syscall.ERANGE
	}
	return uint32(copy(dest, val)), 0
}

func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	ctx, cancel := noInterrupt(ctx)
	defer cancel()
	if attr == StatsXattr && n.id == (metad.Node{Ino: metad.RootIno}) {
		s, err := n.r.fsys.Stats(ctx)
		if err != nil {
			return 0, n.r.toErrno("stats", err)
		}
		b, _ := json.Marshal(s)
		return xattrReply(b, dest)
	}
	if attr == capXattr {
		if t, ok := n.r.noCaps.Load(kernelIno(n.id)); ok && time.Since(t.(time.Time)) < n.r.opts.AttrTimeout {
			return 0, syscall.ENODATA
		}
	}
	v, err := n.r.fsys.Meta().GetXattr(ctx, n.id, attr)
	if err != nil {
		if attr == capXattr && errors.Is(err, metad.ErrNoData) {
			n.r.noCaps.Store(kernelIno(n.id), time.Now())
		}
		return 0, n.r.toErrno("getxattr", err)
	}
	return xattrReply(v, dest)
}

func (n *node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	ctx, cancel := noInterrupt(ctx)
	defer cancel()
	if attr == StatsXattr {
		return syscall.EPERM
	}
	n.r.noCaps.Delete(kernelIno(n.id))
	return n.r.toErrno("setxattr", n.r.fsys.SetXattr(ctx, n.id, attr, data, flags))
}

func (n *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	ctx, cancel := noInterrupt(ctx)
	defer cancel()
	if !n.live() {
		return syscall.EROFS
	}
	n.r.noCaps.Delete(kernelIno(n.id))
	return n.r.toErrno("removexattr", n.r.fsys.Meta().RemoveXattr(ctx, n.id.Ino, attr))
}

func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	ctx, cancel := noInterrupt(ctx)
	defer cancel()
	names, err := n.r.fsys.Meta().ListXattr(ctx, n.id)
	if err != nil {
		return 0, n.r.toErrno("listxattr", err)
	}
	var b []byte
	for _, s := range names {
		b = append(append(b, s...), 0)
	}
	return xattrReply(b, dest)
}

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	ctx, cancel := noInterrupt(ctx)
	defer cancel()
	st, err := n.r.fsys.Statfs(ctx)
	if err != nil {
		return n.r.toErrno("statfs", err)
	}
	const bsize = 4096
	out.Bsize = bsize
	out.Frsize = bsize
	out.Blocks = st.TotalBytes / bsize
	out.Bfree = st.FreeBytes / bsize
	out.Bavail = st.AvailBytes / bsize
	out.Files = st.Inodes + st.FreeInodes
	out.Ffree = st.FreeInodes
	out.NameLen = 255
	return 0
}

// handle is an open file.
type handle struct {
	h *casfs.Handle
	r *rootData
}

var (
	_ fs.FileReader    = (*handle)(nil)
	_ fs.FileWriter    = (*handle)(nil)
	_ fs.FileFlusher   = (*handle)(nil)
	_ fs.FileFsyncer   = (*handle)(nil)
	_ fs.FileReleaser  = (*handle)(nil)
	_ fs.FileAllocater = (*handle)(nil)
	_ fs.FileLseeker   = (*handle)(nil)
)

func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	ctx, cancel := noInterrupt(ctx)
	defer cancel()
	n, err := h.h.Read(ctx, dest, off)
	if err != nil {
		return nil, h.r.toErrno("read", err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	ctx, cancel := noInterrupt(ctx)
	defer cancel()
	n, err := h.h.Write(ctx, data, off)
	if err != nil {
		return 0, h.r.toErrno("write", err)
	}
	return uint32(n), 0
}

// Flush and Fsync ignore FUSE interrupts: a signal to the thread blocked in
// close(2) or fsync(2) (even the Go runtime's preemption signal) makes the
// kernel send FUSE_INTERRUPT, and honouring it would fail a close that the
// caller can never retry. The commit is bounded by casfs's retry deadline.
func (h *handle) Flush(ctx context.Context) syscall.Errno {
	return h.r.toErrno("flush", h.h.Flush(context.WithoutCancel(ctx)))
}

func (h *handle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	return h.r.toErrno("fsync", h.h.Fsync(context.WithoutCancel(ctx)))
}

// Fsync serves fsync(2) on files (through their handle) and fsyncdir(2) on
// directories: a directory's entries and attributes live in metad, so
// syncing metad makes them durable. go-fuse calls a node's Fsync before a
// file handle's.
func (n *node) Fsync(ctx context.Context, f fs.FileHandle, flags uint32) syscall.Errno {
	if h, ok := f.(*handle); ok {
		return h.Fsync(ctx, flags)
	}
	if !n.live() {
		return 0 // snapshots never change
	}
	return n.r.toErrno("fsyncdir", n.r.fsys.SyncMeta(context.WithoutCancel(ctx)))
}

func (h *handle) Release(ctx context.Context) syscall.Errno {
	// The kernel does not wait for release; an error was already reported
	// by flush and is logged by casfs.
	return h.r.toErrno("release", h.h.Release(context.WithoutCancel(ctx)))
}

func (h *handle) Allocate(ctx context.Context, off, size uint64, mode uint32) syscall.Errno {
	ctx, cancel := noInterrupt(ctx)
	defer cancel()
	return h.r.toErrno("fallocate", h.h.Allocate(ctx, off, size, mode))
}

func (h *handle) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	ctx, cancel := noInterrupt(ctx)
	defer cancel()
	a, err := h.r.fsys.GetAttr(ctx, h.h.Node())
	if err != nil {
		return 0, h.r.toErrno("lseek", err)
	}
	const seekData, seekHole = 3, 4
	switch whence {
	case seekData:
		if off >= a.Size {
			return 0, syscall.ENXIO
		}
		return off, 0
	case seekHole:
		if off > a.Size {
			return 0, syscall.ENXIO
		}
		return a.Size, 0
	}
	return 0, syscall.EINVAL
}
