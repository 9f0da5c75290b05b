package metad

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"stasis/cas"
)

// Xattr limits and flags (setxattr(2)).
const (
	MaxXattrName  = 255
	MaxXattrValue = 64 << 10
	MaxSymlink    = 4096
	XattrCreate   = 1
	XattrReplace  = 2
	// PolicyXattr on a directory sets the chunker policy of new files below it.
	PolicyXattr = "user.casfs.chunker"
)

// Lookup implements Namespace.
func (s *Service) Lookup(ctx context.Context, parent Node, name string) (Attr, error) {
	if err := validName(name); err != nil {
		return Attr{}, err
	}
	var a Attr
	err := s.view(ctx, func(t *tx) error {
		d, err := t.node(parent)
		if err != nil {
			return err
		}
		if !d.isDir() {
			return fmt.Errorf("%w: inode %d", ErrNotDir, parent.Ino)
		}
		ino, _, err := t.dirent(parent.Snap, parent.Ino, name)
		if err != nil {
			return err
		}
		n, err := t.node(Node{Snap: parent.Snap, Ino: ino})
		if err != nil {
			return err
		}
		a = n.attr(ino)
		return nil
	})
	return a, err
}

// GetAttr implements Namespace.
func (s *Service) GetAttr(ctx context.Context, nd Node) (Attr, error) {
	var a Attr
	err := s.view(ctx, func(t *tx) error {
		n, err := t.node(nd)
		if err != nil {
			return err
		}
		a = n.attr(nd.Ino)
		return nil
	})
	return a, err
}

// SetAttr implements Namespace. A size change of a regular file truncates or
// extends its manifest: extents past the new size go, an extent straddling
// it is shortened (readers use the first Length bytes of its chunk), and an
// extension reads as zeros.
func (s *Service) SetAttr(ctx context.Context, ino Ino, req SetAttrRequest) (Attr, error) {
	s.snapMu.RLock()
	defer s.snapMu.RUnlock()
	var a Attr
	err := s.update(ctx, func(t *tx) error {
		n, err := t.live(ino)
		if err != nil {
			return err
		}
		if req.Size != nil && *req.Size != n.Size {
			switch {
			case n.isDir():
				return fmt.Errorf("%w: cannot set the size of directory %d", ErrIsDir, ino)
			case !n.isReg():
				return fmt.Errorf("%w: cannot set the size of non-regular inode %d", ErrInvalid, ino)
			}
			if err := t.truncate(ino, n, *req.Size); err != nil {
				return err
			}
			n.Mtime = t.now
		}
		if req.Mode != nil {
			n.Mode = n.Mode&syscall.S_IFMT | *req.Mode&^uint32(syscall.S_IFMT)
		}
		if req.Uid != nil {
			n.Uid = *req.Uid
		}
		if req.Gid != nil {
			n.Gid = *req.Gid
		}
		if req.Atime != nil {
			n.Atime = req.Atime.UnixNano()
		}
		if req.Mtime != nil {
			n.Mtime = req.Mtime.UnixNano()
		}
		n.Ctime = t.now
		t.dirty(ino)
		a = n.attr(ino)
		return nil
	})
	if errors.Is(err, ErrTxnTooBig) && req.Size != nil {
		return s.truncateBatched(ctx, ino, req)
	}
	return a, err
}

// truncateBatched changes the size of a file whose truncated manifest has
// more chunks to count than one transaction holds (a snapshot shares the
// old one): the new manifest goes through the batched commit, then the
// other attributes change in a second transaction. Caller holds snapMu
// shared.
func (s *Service) truncateBatched(ctx context.Context, ino Ino, req SetAttrRequest) (Attr, error) {
	var m cas.Manifest
	var gen uint64
	err := s.view(ctx, func(t *tx) error {
		n, err := t.live(ino)
		if err != nil {
			return err
		}
		old, err := t.manifest(n.MID)
		if err != nil {
			return err
		}
		m = truncated(old, n, *req.Size, s.policy)
		gen = n.Gen
		return nil
	})
	if err != nil {
		return Attr{}, err
	}
	ids := m.ChunkIDs()
	s.hold(ids) // every chunk is named by the file's current manifest
	defer s.unhold(ids)
	now := s.now()
	if _, err := s.commitBatched(ctx, CommitRequest{Ino: ino, Manifest: m, ExpectGen: gen, Mtime: now}, &m, func(cas.ChunkID) bool { return false }); err != nil {
		return Attr{}, err
	}
	rest := req
	rest.Size = nil
	if rest.Mtime == nil {
		rest.Mtime = &now
	}
	var a Attr
	err = s.update(ctx, func(t *tx) error {
		n, err := t.live(ino)
		if err != nil {
			return err
		}
		if rest.Mode != nil {
			n.Mode = n.Mode&syscall.S_IFMT | *rest.Mode&^uint32(syscall.S_IFMT)
		}
		if rest.Uid != nil {
			n.Uid = *rest.Uid
		}
		if rest.Gid != nil {
			n.Gid = *rest.Gid
		}
		if rest.Atime != nil {
			n.Atime = rest.Atime.UnixNano()
		}
		n.Mtime = rest.Mtime.UnixNano()
		n.Ctime = t.now
		t.dirty(ino)
		a = n.attr(ino)
		return nil
	})
	return a, err
}

func (t *tx) truncate(ino Ino, n *inode, size uint64) error {
	old, err := t.manifest(n.MID)
	if err != nil {
		return err
	}
	m := truncated(old, n, size, t.s.policy)
	// Every chunk of the new manifest is referenced by the old one, so no
	// chunk needs verifying.
	return t.swapManifest(ino, n, &m, nil)
}

// truncated is old (the manifest of n) cut or extended to size.
func truncated(old *cas.Manifest, n *inode, size uint64, def cas.Policy) cas.Manifest {
	m := cas.Manifest{Policy: old.Policy, Size: size}
	if n.MID == 0 {
		var err error
		if m.Policy, err = cas.ParsePolicy(n.Policy); err != nil {
			m.Policy = def
		}
	}
	for _, e := range old.Extents {
		if e.Offset >= size {
			break
		}
		if e.End() > size {
			e.Length = uint32(size - e.Offset)
		}
		m.Extents = append(m.Extents, e)
	}
	return m
}

// Create implements Namespace.
func (s *Service) Create(ctx context.Context, req CreateRequest) (Attr, error) {
	if err := validName(req.Name); err != nil {
		return Attr{}, err
	}
	typ := req.Mode & syscall.S_IFMT
	if typ == 0 {
		typ = syscall.S_IFREG
	}
	var policy string
	switch typ {
	case syscall.S_IFREG:
		if req.Policy != "" {
			p, err := cas.ParsePolicy(req.Policy)
			if err != nil {
				return Attr{}, fmt.Errorf("%w: %v", ErrInvalid, err)
			}
			policy = p.String()
		}
	case syscall.S_IFLNK:
		if req.Target == "" || len(req.Target) > MaxSymlink || containsNUL(req.Target) {
			return Attr{}, fmt.Errorf("%w: symlink target must be 1 to %d bytes without NUL", ErrInvalid, MaxSymlink)
		}
	case syscall.S_IFDIR, syscall.S_IFIFO, syscall.S_IFCHR, syscall.S_IFBLK, syscall.S_IFSOCK:
	default:
		return Attr{}, fmt.Errorf("%w: file type %#o", ErrInvalid, typ)
	}
	ino, err := s.st.NextID("ino")
	for err == nil && ino <= uint64(RootIno) { // the root's number is taken
		ino, err = s.st.NextID("ino")
	}
	if err != nil {
		return Attr{}, err
	}
	s.snapMu.RLock()
	defer s.snapMu.RUnlock()
	var a Attr
	err = s.update(ctx, func(t *tx) error {
		p, err := t.liveDir(req.Parent)
		if err != nil {
			return err
		}
		if p.Nlink == 0 {
			return fmt.Errorf("%w: directory %d was removed", ErrNotFound, req.Parent)
		}
		if _, _, err := t.dirent(LiveSnap, req.Parent, req.Name); err == nil {
			return fmt.Errorf("%w: %q in directory %d", ErrExists, req.Name, req.Parent)
		} else if !errors.Is(err, ErrNotFound) {
			return err
		}
		n := &inode{
			Mode: typ | req.Mode&^uint32(syscall.S_IFMT), Uid: req.Uid, Gid: req.Gid, Nlink: 1,
			Atime: t.now, Mtime: t.now, Ctime: t.now,
		}
		switch typ {
		case syscall.S_IFDIR:
			n.Nlink, n.Parent = 2, req.Parent
			p.Nlink++
		case syscall.S_IFLNK:
			n.Target, n.Size = req.Target, uint64(len(req.Target))
		case syscall.S_IFREG:
			n.Policy = policy
			if n.Policy == "" {
				if n.Policy, err = t.inheritedPolicy(req.Parent); err != nil {
					return err
				}
			}
		case syscall.S_IFCHR, syscall.S_IFBLK:
			n.Rdev = req.Rdev
		}
		t.add(Ino(ino), n)
		t.delta.Inodes++
		p.Mtime, p.Ctime = t.now, t.now
		t.dirty(req.Parent)
		a = n.attr(Ino(ino))
		return t.t.Set(direntKey(LiveSnap, req.Parent, req.Name), encodeDirent(Ino(ino), n.Mode))
	})
	return a, err
}

func containsNUL(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return true
		}
	}
	return false
}

// inheritedPolicy walks from dir to the root for a PolicyXattr.
func (t *tx) inheritedPolicy(dir Ino) (string, error) {
	for range 4096 {
		d, err := t.live(dir)
		if err != nil {
			return "", err
		}
		if v, ok := d.Xattr[PolicyXattr]; ok {
			if p, err := cas.ParsePolicy(string(v)); err == nil {
				return p.String(), nil
			}
		}
		if dir == RootIno {
			break
		}
		dir = d.Parent
	}
	return t.s.policy.String(), nil
}

// Readlink implements Namespace.
func (s *Service) Readlink(ctx context.Context, nd Node) (string, error) {
	var target string
	err := s.view(ctx, func(t *tx) error {
		n, err := t.node(nd)
		if err != nil {
			return err
		}
		if !n.isLink() {
			return fmt.Errorf("%w: inode %d is not a symlink", ErrInvalid, nd.Ino)
		}
		target = n.Target
		return nil
	})
	return target, err
}

// Link implements Namespace.
func (s *Service) Link(ctx context.Context, ino Ino, newParent Ino, newName string) (Attr, error) {
	if err := validName(newName); err != nil {
		return Attr{}, err
	}
	s.snapMu.RLock()
	defer s.snapMu.RUnlock()
	var a Attr
	err := s.update(ctx, func(t *tx) error {
		n, err := t.live(ino)
		if err != nil {
			return err
		}
		if n.isDir() {
			return fmt.Errorf("%w: cannot hard-link directory %d", ErrIsDir, ino)
		}
		if n.Nlink == 0 {
			return fmt.Errorf("%w: inode %d has been unlinked", ErrNotFound, ino)
		}
		p, err := t.liveDir(newParent)
		if err != nil {
			return err
		}
		if _, _, err := t.dirent(LiveSnap, newParent, newName); err == nil {
			return fmt.Errorf("%w: %q in directory %d", ErrExists, newName, newParent)
		} else if !errors.Is(err, ErrNotFound) {
			return err
		}
		n.Nlink++
		n.Ctime = t.now
		p.Mtime, p.Ctime = t.now, t.now
		t.dirty(ino)
		t.dirty(newParent)
		a = n.attr(ino)
		return t.t.Set(direntKey(LiveSnap, newParent, newName), encodeDirent(ino, n.Mode))
	})
	return a, err
}

// unlinkInode drops one link of a non-directory; at zero links the inode is
// deleted, or marked orphan while it is open. Caller holds openMu.
func (t *tx) unlinkInode(ino Ino) error {
	n, err := t.live(ino)
	if err != nil {
		return err
	}
	if n.Nlink > 0 {
		n.Nlink--
	}
	n.Ctime = t.now
	t.dirty(ino)
	if n.Nlink > 0 {
		return nil
	}
	if t.s.opens[ino] > 0 {
		return t.t.Set(orphanKey(ino), nil)
	}
	return t.dropInode(ino, n)
}

// Unlink implements Namespace.
func (s *Service) Unlink(ctx context.Context, parent Ino, name string) error {
	if err := validName(name); err != nil {
		return err
	}
	s.snapMu.RLock()
	defer s.snapMu.RUnlock()
	s.openMu.Lock()
	defer s.openMu.Unlock()
	return s.update(ctx, func(t *tx) error {
		p, err := t.liveDir(parent)
		if err != nil {
			return err
		}
		ino, _, err := t.dirent(LiveSnap, parent, name)
		if err != nil {
			return err
		}
		n, err := t.live(ino)
		if err != nil {
			return err
		}
		if n.isDir() {
			return fmt.Errorf("%w: %q", ErrIsDir, name)
		}
		if err := t.t.Delete(direntKey(LiveSnap, parent, name)); err != nil {
			return err
		}
		p.Mtime, p.Ctime = t.now, t.now
		t.dirty(parent)
		return t.unlinkInode(ino)
	})
}

// emptyDir reports whether live directory ino has no entries.
func (t *tx) emptyDir(ino Ino) (bool, error) {
	empty := true
	err := t.t.Iterate(direntPrefix(LiveSnap, ino), nil, func(_, _ []byte) error {
		empty = false
		return ErrStop
	})
	return empty, err
}

// removeDir deletes empty live directory ino, entry already gone.
func (t *tx) removeDir(ino Ino, n *inode, parent *inode) error {
	empty, err := t.emptyDir(ino)
	if err != nil {
		return err
	}
	if !empty {
		return fmt.Errorf("%w: directory %d", ErrNotEmpty, ino)
	}
	parent.Nlink--
	t.delta.Inodes--
	t.inodes[ino] = &txInode{n: n, deleted: true}
	return nil
}

// Rmdir implements Namespace.
func (s *Service) Rmdir(ctx context.Context, parent Ino, name string) error {
	if err := validName(name); err != nil {
		return err
	}
	s.snapMu.RLock()
	defer s.snapMu.RUnlock()
	return s.update(ctx, func(t *tx) error {
		p, err := t.liveDir(parent)
		if err != nil {
			return err
		}
		ino, _, err := t.dirent(LiveSnap, parent, name)
		if err != nil {
			return err
		}
		n, err := t.live(ino)
		if err != nil {
			return err
		}
		if !n.isDir() {
			return fmt.Errorf("%w: %q", ErrNotDir, name)
		}
		if err := t.removeDir(ino, n, p); err != nil {
			return err
		}
		p.Mtime, p.Ctime = t.now, t.now
		t.dirty(parent)
		return t.t.Delete(direntKey(LiveSnap, parent, name))
	})
}

// isAncestor reports whether dir a is dir b or one of b's ancestors.
func (t *tx) isAncestor(a, b Ino) (bool, error) {
	for range 1 << 16 {
		if a == b {
			return true, nil
		}
		if b == RootIno {
			return false, nil
		}
		n, err := t.live(b)
		if err != nil {
			return false, err
		}
		b = n.Parent
	}
	return false, fmt.Errorf("metad: directory chain above %d does not reach the root", b)
}

// Rename implements Namespace.
func (s *Service) Rename(ctx context.Context, oldParent Ino, oldName string, newParent Ino, newName string, flags RenameFlags) error {
	if err := validName(oldName); err != nil {
		return err
	}
	if err := validName(newName); err != nil {
		return err
	}
	if flags&^(RenameNoReplace|RenameExchange) != 0 || flags == RenameNoReplace|RenameExchange {
		return fmt.Errorf("%w: rename flags %#x", ErrInvalid, flags)
	}
	s.snapMu.RLock()
	defer s.snapMu.RUnlock()
	s.openMu.Lock()
	defer s.openMu.Unlock()
	return s.update(ctx, func(t *tx) error {
		op, err := t.liveDir(oldParent)
		if err != nil {
			return err
		}
		np, err := t.liveDir(newParent)
		if err != nil {
			return err
		}
		src, srcMode, err := t.dirent(LiveSnap, oldParent, oldName)
		if err != nil {
			return err
		}
		dst, dstMode, err := t.dirent(LiveSnap, newParent, newName)
		dstExists := err == nil
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		srcN, err := t.live(src)
		if err != nil {
			return err
		}
		// A directory may not move below itself.
		if srcN.isDir() && oldParent != newParent {
			if in, err := t.isAncestor(src, newParent); err != nil {
				return err
			} else if in {
				return fmt.Errorf("%w: cannot move directory %d into its own subtree", ErrInvalid, src)
			}
		}
		if flags&RenameExchange != 0 {
			if !dstExists {
				return fmt.Errorf("%w: %q in directory %d", ErrNotFound, newName, newParent)
			}
			return t.exchange(oldParent, op, oldName, src, srcMode, newParent, np, newName, dst, dstMode)
		}
		if dstExists {
			if flags&RenameNoReplace != 0 {
				return fmt.Errorf("%w: %q in directory %d", ErrExists, newName, newParent)
			}
			if dst == src {
				return nil // both names link the same inode: nothing to do
			}
			dstN, err := t.live(dst)
			if err != nil {
				return err
			}
			switch {
			case srcN.isDir() && !dstN.isDir():
				return fmt.Errorf("%w: %q", ErrNotDir, newName)
			case !srcN.isDir() && dstN.isDir():
				return fmt.Errorf("%w: %q", ErrIsDir, newName)
			case dstN.isDir():
				if err := t.removeDir(dst, dstN, np); err != nil {
					return err
				}
			default:
				if err := t.unlinkInode(dst); err != nil {
					return err
				}
			}
		}
		if err := t.t.Delete(direntKey(LiveSnap, oldParent, oldName)); err != nil {
			return err
		}
		if err := t.t.Set(direntKey(LiveSnap, newParent, newName), encodeDirent(src, srcMode)); err != nil {
			return err
		}
		if srcN.isDir() && oldParent != newParent {
			srcN.Parent = newParent
			op.Nlink--
			np.Nlink++
		}
		srcN.Ctime = t.now
		op.Mtime, op.Ctime, np.Mtime, np.Ctime = t.now, t.now, t.now, t.now
		t.dirty(src)
		t.dirty(oldParent)
		t.dirty(newParent)
		return nil
	})
}

func (t *tx) exchange(aParent Ino, ap *inode, aName string, a Ino, aMode uint32, bParent Ino, bp *inode, bName string, b Ino, bMode uint32) error {
	an, err := t.live(a)
	if err != nil {
		return err
	}
	bn, err := t.live(b)
	if err != nil {
		return err
	}
	if bn.isDir() && aParent != bParent {
		if in, err := t.isAncestor(b, aParent); err != nil {
			return err
		} else if in {
			return fmt.Errorf("%w: cannot move directory %d into its own subtree", ErrInvalid, b)
		}
	}
	if err := t.t.Set(direntKey(LiveSnap, aParent, aName), encodeDirent(b, bMode)); err != nil {
		return err
	}
	if err := t.t.Set(direntKey(LiveSnap, bParent, bName), encodeDirent(a, aMode)); err != nil {
		return err
	}
	if aParent != bParent {
		if an.isDir() {
			an.Parent = bParent
			ap.Nlink--
			bp.Nlink++
		}
		if bn.isDir() {
			bn.Parent = aParent
			bp.Nlink--
			ap.Nlink++
		}
	}
	an.Ctime, bn.Ctime = t.now, t.now
	ap.Mtime, ap.Ctime, bp.Mtime, bp.Ctime = t.now, t.now, t.now, t.now
	for _, i := range []Ino{a, b, aParent, bParent} {
		t.dirty(i)
	}
	return nil
}

// ReadDir implements Namespace.
func (s *Service) ReadDir(ctx context.Context, dir Node, after string, limit int) ([]DirEntry, error) {
	if limit < 0 {
		return nil, fmt.Errorf("%w: negative limit", ErrInvalid)
	}
	var out []DirEntry
	err := s.view(ctx, func(t *tx) error {
		out = out[:0]
		d, err := t.node(dir)
		if err != nil {
			return err
		}
		if !d.isDir() {
			return fmt.Errorf("%w: inode %d", ErrNotDir, dir.Ino)
		}
		prefix := direntPrefix(dir.Snap, dir.Ino)
		var start []byte
		if after != "" {
			start = append(direntKey(dir.Snap, dir.Ino, after), 0)
		}
		return t.t.Iterate(prefix, start, func(k, v []byte) error {
			ino, mode, err := decodeDirent(v)
			if err != nil {
				return err
			}
			e := DirEntry{Name: string(k[len(prefix):]), Ino: ino, Mode: mode}
			if b, err := t.t.Get(inodeKey(dir.Snap, ino)); err == nil {
				if n, err := decodeInode(b); err == nil {
					e.Mode = n.Mode
				}
			}
			out = append(out, e)
			if limit > 0 && len(out) >= limit {
				return ErrStop
			}
			return nil
		})
	})
	return out, err
}

// GetXattr implements Namespace.
func (s *Service) GetXattr(ctx context.Context, nd Node, name string) ([]byte, error) {
	var v []byte
	err := s.view(ctx, func(t *tx) error {
		n, err := t.node(nd)
		if err != nil {
			return err
		}
		val, ok := n.Xattr[name]
		if !ok {
			return fmt.Errorf("%w: %q on inode %d", ErrNoData, name, nd.Ino)
		}
		v = append([]byte{}, val...)
		return nil
	})
	return v, err
}

// ListXattr implements Namespace; names come sorted.
func (s *Service) ListXattr(ctx context.Context, nd Node) ([]string, error) {
	var names []string
	err := s.view(ctx, func(t *tx) error {
		n, err := t.node(nd)
		if err != nil {
			return err
		}
		names = sortedKeys(n.Xattr)
		return nil
	})
	return names, err
}

// SetXattr implements Namespace.
func (s *Service) SetXattr(ctx context.Context, ino Ino, name string, value []byte, flags uint32) error {
	if name == "" || len(name) > MaxXattrName || containsNUL(name) {
		return fmt.Errorf("%w: xattr name must be 1 to %d bytes without NUL", ErrInvalid, MaxXattrName)
	}
	if len(value) > MaxXattrValue {
		return fmt.Errorf("%w: xattr value of %d bytes is over %d", ErrNoSpace, len(value), MaxXattrValue)
	}
	if flags&^(XattrCreate|XattrReplace) != 0 || flags == XattrCreate|XattrReplace {
		return fmt.Errorf("%w: xattr flags %#x", ErrInvalid, flags)
	}
	if name == PolicyXattr {
		if _, err := cas.ParsePolicy(string(value)); err != nil {
			return fmt.Errorf("%w: %v", ErrInvalid, err)
		}
	}
	s.snapMu.RLock()
	defer s.snapMu.RUnlock()
	return s.update(ctx, func(t *tx) error {
		n, err := t.live(ino)
		if err != nil {
			return err
		}
		_, exists := n.Xattr[name]
		if flags&XattrCreate != 0 && exists {
			return fmt.Errorf("%w: xattr %q", ErrExists, name)
		}
		if flags&XattrReplace != 0 && !exists {
			return fmt.Errorf("%w: %q on inode %d", ErrNoData, name, ino)
		}
		if n.Xattr == nil {
			n.Xattr = map[string][]byte{}
		}
		n.Xattr[name] = append([]byte{}, value...)
		n.Ctime = t.now
		t.dirty(ino)
		return nil
	})
}

// RemoveXattr implements Namespace.
func (s *Service) RemoveXattr(ctx context.Context, ino Ino, name string) error {
	s.snapMu.RLock()
	defer s.snapMu.RUnlock()
	return s.update(ctx, func(t *tx) error {
		n, err := t.live(ino)
		if err != nil {
			return err
		}
		if _, ok := n.Xattr[name]; !ok {
			return fmt.Errorf("%w: %q on inode %d", ErrNoData, name, ino)
		}
		delete(n.Xattr, name)
		n.Ctime = t.now
		t.dirty(ino)
		return nil
	})
}

// Open implements Namespace. Open counts live in memory: after a restart
// no inode is open, and orphans (unlinked while open) are reclaimed.
func (s *Service) Open(ctx context.Context, ino Ino) error {
	s.openMu.Lock()
	defer s.openMu.Unlock()
	if _, err := s.GetAttr(ctx, Node{Ino: ino}); err != nil {
		return err
	}
	s.opens[ino]++
	return nil
}

// Release implements Namespace. The last Release of an unlinked inode
// deletes it and releases its content.
func (s *Service) Release(ctx context.Context, ino Ino) error {
	s.snapMu.RLock() // lock order: snapMu, then openMu
	defer s.snapMu.RUnlock()
	s.openMu.Lock()
	defer s.openMu.Unlock()
	if s.opens[ino] == 0 {
		return fmt.Errorf("%w: inode %d is not open", ErrInvalid, ino)
	}
	if s.opens[ino] > 1 {
		s.opens[ino]--
		return nil
	}
	err := s.update(ctx, func(t *tx) error {
		n, err := t.live(ino)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		if err != nil || n.Nlink > 0 {
			return err
		}
		return t.dropInode(ino, n)
	})
	if err == nil {
		delete(s.opens, ino)
	}
	return err
}
