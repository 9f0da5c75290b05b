package vlan

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Tap devices cannot be created over rtnetlink (the kernel refuses); they
// are made with ioctls on /dev/net/tun from a thread inside the switch
// namespace, as persistent devices with a chosen interface index.

// createTap creates the persistent tap name with interface index index in
// the calling thread's network namespace.
func createTap(name string, index int32) error {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("create tap %s: %w", name, err)
	}
	defer unix.Close(fd)
	if index != 0 {
		if err := unix.IoctlSetPointerInt(fd, unix.TUNSETIFINDEX, int(index)); err != nil {
			return fmt.Errorf("create tap %s: set index %d: %w", name, index, err)
		}
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("create tap %s: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_TUN_EXCL)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("create tap %s: %w", name, err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		return fmt.Errorf("create tap %s: make persistent: %w", name, err)
	}
	return nil
}

// TapName is the name of the tap device that connects node's interface
// iface (a tap node) to its LAN, inside the experiment's switch namespace.
// QEMU running in that namespace attaches with
// "-netdev tap,id=...,ifname=NAME,script=no,downscript=no".
func TapName(node, iface string) string { return tapName(node, iface) }

// ErrNoTap is returned by OpenTap when the experiment has no such tap.
var ErrNoTap = errors.New("no such tap")

// OpenTap opens the tap of a tap node's interface in experiment exp and
// returns its queue file, for QEMU's "-netdev tap,id=...,fd=N" (pass it in
// ExtraFiles). The caller does not need to be in the switch namespace: the
// file stays attached to the tap wherever it goes. Frames are plain
// Ethernet (no packet-information header, no vnet header).
func OpenTap(exp, node, iface string) (*os.File, error) {
	name := tapName(node, iface)
	nsPath := filepath.Join(netnsDir, SwitchNamespace(exp))
	nsFd, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open tap %s/%s of %s: %w", node, iface, exp, err)
	}
	defer unix.Close(nsFd)
	var f *os.File
	err = inNetns(nsFd, func() error {
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return err
		}
		// Refuse to create: a tap that is not there is an error.
		sock, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		err = unix.IoctlIfreq(sock, unix.SIOCGIFINDEX, ifr)
		unix.Close(sock)
		if err != nil {
			return fmt.Errorf("%w: %s in %s", ErrNoTap, name, SwitchNamespace(exp))
		}
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		ifr, _ = unix.NewIfreq(name)
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return err
		}
		// Non-blocking, so the file works with deadlines; QEMU sets its
		// own flags anyway.
		if err := unix.SetNonblock(fd, true); err != nil {
			unix.Close(fd)
			return err
		}
		f = os.NewFile(uintptr(fd), "tap:"+name)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("open tap %s/%s of %s: %w", node, iface, exp, err)
	}
	return f, nil
}
