package fusefs

import "github.com/hanwen/go-fuse/v2/fuse"

// MountOptionsForTest exposes casfs's FUSE mount options to benchmarks that
// mount something else with the same options.
func MountOptionsForTest() fuse.MountOptions {
	o := Options{}
	o.setDefaults()
	return mountOptions(o)
}

// KernelReadAheadFileForTest is the sysfs file of the read-ahead window of
// the backing device dev.
func KernelReadAheadFileForTest(dev uint64) string { return kernelReadAheadFile(dev) }

// SetKernelReadAheadForTest sets the read-ahead window of the mount at dir,
// as Mount does for casfs.
func SetKernelReadAheadForTest(dir string, kib int) error { return setKernelReadAhead(dir, kib) }
