package qemuhook

import (
	"context"
	"time"

	"stasis/hypervisor"
)

// DriverName is the driver name qemuhook records in manifests and
// registers with hypervisor.Register.
const DriverName = "qemu"

// DriverOptions are qemuhook's own restore options, given to
// hypervisor.Restore as RestoreOptions.DriverOptions[DriverName] (a value
// or a pointer). Each means what the RestoreOptions field of that name
// means.
type DriverOptions struct {
	Argv         []string
	QMP          string
	Cwd          string
	StartTimeout time.Duration
}

// driver restores QEMU snapshots for hypervisor.Restore.
type driver struct{}

func init() { hypervisor.Register(driver{}) }

func (driver) Name() string { return DriverName }

func (driver) Restore(ctx context.Context, dir string, o hypervisor.RestoreOptions) (hypervisor.Machine, error) {
	d, err := hypervisor.DriverOptionsFor[DriverOptions](o, DriverName)
	if err != nil {
		return nil, err
	}
	m, err := Restore(ctx, dir, RestoreOptions{
		LocalDir: o.LocalDir, Overwrite: o.Overwrite, LazyDisk: o.LazyDisk, Paused: o.Paused, Log: o.Log,
		StartTimeout: d.StartTimeout, Argv: d.Argv, QMP: d.QMP, Cwd: d.Cwd,
		Progress: o.Progress, Logger: o.Logger,
	})
	if err != nil {
		return nil, err // not a typed nil in the interface
	}
	return m, nil
}
