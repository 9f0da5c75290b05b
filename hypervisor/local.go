package hypervisor

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ErrInUse: a local file or control socket a restore needs already exists
// and may belong to another restore or to a live VM; the restore did not
// touch it.
var ErrInUse = errors.New("already in use")

// LocalFiles are the local files of one restore (disk overlays, RAM file),
// each created by it exclusively. Two restores into the same paths never
// share a file: of two concurrent ones exactly one gets them, and a failed
// restore removes only the files it created.
type LocalFiles struct {
	paths []string
	files []*os.File // held open until Keep or Remove, so their inodes stay theirs
}

// ClaimLocal creates every path (and its parent directories) with
// O_CREATE|O_EXCL, in the order given, and returns them open for writing.
// The caller ends the claim with Keep (the restore succeeded) or Remove.
// Restores that claim the same paths in the same order race only for the
// first: the loser fails there, having created nothing. An existing path is
// an error wrapping ErrInUse and os.ErrExist; with overwrite it is removed
// and created anew, unless a process holds a lock on it (QEMU locks the
// disk images it has open), which is ErrInUse as well. overwrite gives no
// protection from a concurrent restore into the same paths.
func ClaimLocal(paths []string, overwrite bool) (*LocalFiles, error) {
	l := &LocalFiles{}
	for _, p := range paths {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			l.Remove()
			return nil, err
		}
		f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
		if errors.Is(err, os.ErrExist) && overwrite {
			if holder, lerr := lockHolder(p); lerr != nil || holder != 0 {
				l.Remove()
				if lerr != nil {
					return nil, fmt.Errorf("%s: cannot tell whether a process holds it: %w", p, lerr)
				}
				return nil, fmt.Errorf("%s is locked by pid %d (a live VM's image?): %w; not overwriting it", p, holder, ErrInUse)
			}
			if err = os.Remove(p); err == nil {
				f, err = os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
			}
		}
		if errors.Is(err, os.ErrExist) {
			l.Remove()
			return nil, fmt.Errorf("restore would overwrite %s: %w: %w; remove it, choose another local directory, or allow overwriting (another restore of this snapshot may be using it)", p, ErrInUse, os.ErrExist)
		}
		if err != nil {
			l.Remove()
			return nil, err
		}
		l.paths = append(l.paths, p)
		l.files = append(l.files, f)
	}
	return l, nil
}

// lockHolder returns the pid of a process holding a lock on path (OFD or
// POSIX) that conflicts with writing it, 0 if none; OFD locks report -1.
func lockHolder(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 0, Len: 0}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
		return 0, err
	}
	if lk.Type == unix.F_UNLCK {
		return 0, nil
	}
	if lk.Pid == 0 {
		return -1, nil
	}
	return int(lk.Pid), nil
}

// File is the i-th claimed file, open for reading and writing.
func (l *LocalFiles) File(i int) *os.File { return l.files[i] }

// Keep closes the files and keeps them: the restore succeeded. Remove
// does nothing afterwards.
func (l *LocalFiles) Keep() error {
	var errs []error
	for _, f := range l.files {
		errs = append(errs, f.Close())
	}
	l.paths, l.files = nil, nil
	return errors.Join(errs...)
}

// Remove removes each path that is still the file this claim created (a
// failed restore) and closes them; a path someone has since replaced is
// left alone. The files are compared by inode while still open, so a
// reused inode number cannot fool it.
func (l *LocalFiles) Remove() {
	for i, p := range l.paths {
		mine, err := l.files[i].Stat()
		if cur, serr := os.Stat(p); err == nil && serr == nil && os.SameFile(mine, cur) {
			os.Remove(p)
		}
		l.files[i].Close()
	}
	l.paths, l.files = nil, nil
}
