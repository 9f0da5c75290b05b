package xenhook

import (
	"context"
	"errors"

	"stasis/hypervisor"
)

// DriverName is the driver name xenhook records in manifests and registers
// with hypervisor.Register.
const DriverName = "xen"

// DriverOptions are xenhook's own restore options, given to
// hypervisor.Restore as RestoreOptions.DriverOptions[DriverName] (a value
// or a pointer).
type DriverOptions struct {
	// XL is the xl binary; default "xl".
	XL string
}

// driver restores Xen snapshots for hypervisor.Restore.
type driver struct{}

func init() { hypervisor.Register(driver{}) }

func (driver) Name() string { return DriverName }

// Restore is xenhook.Restore. LazyDisk is refused: on Xen a lazy disk is
// the block-casfs hotplug script's job, named in the domain config. Log is
// ignored (xl logs to its own files).
func (driver) Restore(ctx context.Context, dir string, o hypervisor.RestoreOptions) (hypervisor.Machine, error) {
	d, err := hypervisor.DriverOptionsFor[DriverOptions](o, DriverName)
	if err != nil {
		return nil, err
	}
	if o.LazyDisk {
		return nil, errors.New("xenhook: no lazy disk on restore; name the block-casfs hotplug script in the domain's disk config instead")
	}
	m, err := Restore(ctx, dir, RestoreOptions{
		XL: d.XL, LocalDir: o.LocalDir, Overwrite: o.Overwrite, Paused: o.Paused, Progress: o.Progress, Logger: o.Logger,
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}
