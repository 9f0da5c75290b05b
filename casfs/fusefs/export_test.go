package fusefs

import "github.com/hanwen/go-fuse/v2/fuse"

// MountOptionsForTest exposes casfs's FUSE mount options to benchmarks that
// mount something else with the same options.
func MountOptionsForTest() fuse.MountOptions {
	o := Options{}
	o.setDefaults()
	return mountOptions(o)
}
