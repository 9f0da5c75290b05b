package vlan

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// netnsDir is where named namespaces are bind-mounted, as `ip netns` does,
// so `ip netns exec stx-E-N ...` works on them.
const netnsDir = "/run/netns"

// nsHandle is an open named network namespace: a file descriptor for it and
// a netlink socket inside it.
type nsHandle struct {
	name string
	fd   int
	nl   *nlConn
	// created is true when this run created the namespace (so a rollback
	// deletes it); false when it existed already.
	created bool
}

// do runs fn on a thread inside the namespace.
func (h *nsHandle) do(fn func() error) error { return inNetns(h.fd, fn) }

func (h *nsHandle) close() {
	if h == nil {
		return
	}
	h.nl.Close()
	if h.fd >= 0 {
		unix.Close(h.fd)
		h.fd = -1
	}
}

var (
	netnsDirOnce sync.Once
	netnsDirErr  error
)

// prepareNetnsDir makes netnsDir a shared mount point, like `ip netns add`,
// so namespaces mounted there show up in other mount namespaces too.
func prepareNetnsDir() error {
	netnsDirOnce.Do(func() {
		if err := os.MkdirAll(netnsDir, 0o755); err != nil {
			netnsDirErr = err
			return
		}
		err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
		if errors.Is(err, unix.EINVAL) { // not a mount point yet
			if err = unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err == nil {
				err = unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
			}
		}
		if err != nil {
			netnsDirErr = fmt.Errorf("prepare %s: %w", netnsDir, err)
		}
	})
	return netnsDirErr
}

// errNsExists reports that a namespace to create exists already.
var errNsExists = errors.New("namespace exists")

// createNetns creates the named network namespace name and opens it. setup,
// if not nil, runs inside the new namespace before the thread returns
// (for sysctls). It returns errNsExists when the name is taken.
func createNetns(name string, setup func() error) (h *nsHandle, err error) {
	path := filepath.Join(netnsDir, name)
	f, err := unix.Open(path, unix.O_RDONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o444)
	if err != nil {
		if errors.Is(err, unix.EEXIST) {
			return nil, errNsExists
		}
		return nil, fmt.Errorf("create netns %s: %w", name, err)
	}
	unix.Close(f)
	mounted := false
	defer func() {
		if err != nil {
			if mounted {
				_ = unix.Unmount(path, unix.MNT_DETACH)
			}
			_ = os.Remove(path)
		}
	}()

	h = &nsHandle{name: name, fd: -1, created: true}
	err = onNewNetns(func() error {
		if err := unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind-mount: %w", err)
		}
		mounted = true
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		h.fd = fd
		if h.nl, err = openNL(); err != nil {
			return err
		}
		if setup != nil {
			return setup()
		}
		return nil
	})
	if err != nil {
		h.close()
		return nil, fmt.Errorf("create netns %s: %w", name, err)
	}
	return h, nil
}

// errNsStale reports a name in netnsDir that is not a namespace: the
// empty file a crash between creating and mounting it leaves.
var errNsStale = errors.New("not a mounted namespace")

// openNetns opens the existing named namespace name.
func openNetns(name string) (*nsHandle, error) {
	fd, err := unix.Open(filepath.Join(netnsDir, name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", name, err)
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil || sfs.Type != unix.NSFS_MAGIC {
		unix.Close(fd)
		return nil, fmt.Errorf("open netns %s: %w", name, errNsStale)
	}
	h := &nsHandle{name: name, fd: fd}
	err = inNetns(fd, func() (err error) {
		h.nl, err = openNL()
		return err
	})
	if err != nil {
		h.close()
		return nil, fmt.Errorf("open netns %s: %w", name, err)
	}
	return h, nil
}

// deleteNetns removes the named namespace. The kernel frees it, and every
// interface in it, once nothing else holds it.
func deleteNetns(name string) error {
	path := filepath.Join(netnsDir, name)
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete netns %s: unmount: %w", name, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	return nil
}

// listNetns returns the named namespaces whose name satisfies keep.
func listNetns(keep func(string) bool) ([]string, error) {
	ents, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if keep(e.Name()) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// experimentNamespaces lists the namespaces of experiment exp on this host:
// its switch namespace and its node namespaces.
func experimentNamespaces(exp string) ([]string, error) {
	sw, prefix := SwitchNamespace(exp), nodeNamespacePrefix(exp)
	return listNetns(func(n string) bool { return n == sw || strings.HasPrefix(n, prefix) })
}

// inNetns runs fn on a thread that is in the namespace nsFd, and moves the
// thread back afterwards. If it cannot move back, the thread stays locked
// and the Go runtime discards it when the goroutine ends.
func inNetns(nsFd int, fn func() error) error {
	return onThread(func() error { return unix.Setns(nsFd, unix.CLONE_NEWNET) }, fn)
}

// onNewNetns runs fn on a thread that is in a fresh network namespace.
func onNewNetns(fn func() error) error {
	return onThread(func() error { return unix.Unshare(unix.CLONE_NEWNET) }, fn)
}

func onThread(enter, fn func() error) error {
	errc := make(chan error, 1)
	// A goroutine of its own, so a thread that cannot return to the host
	// namespace is never handed back to the caller's goroutine.
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer unix.Close(orig)
		if err := enter(); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter namespace: %w", err)
			return
		}
		err = fn()
		if serr := unix.Setns(orig, unix.CLONE_NEWNET); serr != nil {
			// Leave the thread locked: it dies with this goroutine.
			errc <- errors.Join(err, fmt.Errorf("return to host namespace: %w", serr))
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}
