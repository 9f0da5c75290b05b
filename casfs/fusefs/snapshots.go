package fusefs

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"stasis/metad"
)

// snapsDir is the virtual ".snapshots" directory of live directory dir.
type snapsDir struct {
	fs.Inode
	r   *rootData
	dir metad.Ino
}

var (
	_ fs.NodeLookuper  = (*snapsDir)(nil)
	_ fs.NodeGetattrer = (*snapsDir)(nil)
	_ fs.NodeReaddirer = (*snapsDir)(nil)
	_ fs.NodeMkdirer   = (*snapsDir)(nil)
	_ fs.NodeRmdirer   = (*snapsDir)(nil)
	_ fs.NodeCreater   = (*snapsDir)(nil)
	_ fs.NodeSetattrer = (*snapsDir)(nil)
)

func (d *snapsDir) fillAttr(a metad.Attr, out *fuse.Attr) {
	out.Ino = snapsDirIno(d.dir)
	out.Mode = syscall.S_IFDIR | 0o755
	out.Nlink = 2
	out.Uid, out.Gid = a.Uid, a.Gid
	out.Blksize = 4096
	out.SetTimes(&a.Atime, &a.Mtime, &a.Ctime)
}

func (d *snapsDir) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	ctx, cancel := noInterrupt(ctx)
	defer cancel()
	a, err := d.r.fsys.GetAttr(ctx, metad.Node{Ino: d.dir})
	if err != nil {
		return d.r.toErrno("getattr", err)
	}
	d.fillAttr(a, &out.Attr)
	out.SetTimeout(d.r.opts.AttrTimeout)
	return 0
}

func (d *snapsDir) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}

func (d *snapsDir) find(ctx context.Context, name string) (metad.Snapshot, error) {
	list, err := d.r.fsys.Meta().ListSnapshots(ctx, d.dir)
	if err != nil {
		return metad.Snapshot{}, err
	}
	for _, s := range list {
		if s.Name == name {
			return s, nil
		}
	}
	return metad.Snapshot{}, metad.ErrNotFound
}

func (d *snapsDir) rootOf(ctx context.Context, s metad.Snapshot, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	a, err := d.r.fsys.GetAttr(ctx, s.Root)
	if err != nil {
		return nil, d.r.toErrno("getattr", err)
	}
	return d.r.childInode(ctx, &d.Inode, s.Root, a, out), 0
}

func (d *snapsDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ctx, cancel := noInterrupt(ctx)
	defer cancel()
	s, err := d.find(ctx, name)
	if err != nil {
		return nil, d.r.toErrno("lookup snapshot", err)
	}
	return d.rootOf(ctx, s, out)
}

func (d *snapsDir) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	ctx, cancel := noInterrupt(ctx)
	defer cancel()
	list, err := d.r.fsys.Meta().ListSnapshots(ctx, d.dir)
	if err != nil {
		return nil, d.r.toErrno("list snapshots", err)
	}
	out := make([]fuse.DirEntry, 0, len(list))
	for _, s := range list {
		out = append(out, fuse.DirEntry{Name: s.Name, Mode: syscall.S_IFDIR, Ino: kernelIno(s.Root)})
	}
	return fs.NewListDirStream(out), 0
}

// Mkdir takes a snapshot of the directory named name. Like Flush it ignores
// interrupts without opTimeout: it commits this node's open writes first,
// each bounded by casfs's retry deadline.
func (d *snapsDir) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ctx = context.WithoutCancel(ctx)
	if e := nameErr(name); e != 0 {
		return nil, e
	}
	s, err := d.r.fsys.Snapshot(ctx, d.dir, name)
	if err != nil {
		return nil, d.r.toErrno("create snapshot", err)
	}
	return d.rootOf(ctx, s, out)
}

// Rmdir deletes a snapshot.
func (d *snapsDir) Rmdir(ctx context.Context, name string) syscall.Errno {
	ctx, cancel := noInterrupt(ctx)
	defer cancel()
	return d.r.toErrno("delete snapshot", d.r.fsys.Meta().DeleteSnapshot(ctx, d.dir, name))
}

func (d *snapsDir) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EROFS
}
