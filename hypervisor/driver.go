package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
)

// Driver restores the snapshots one hypervisor driver made. Drivers
// register themselves (Register) in their package's init, as database/sql
// drivers do; Restore picks one by the manifest's Driver field, so a
// program restores any snapshot by importing the driver packages it
// supports.
type Driver interface {
	// Name is the driver's name as Saved.Driver and the manifest record
	// it ("qemu", "xen").
	Name() string
	// Restore starts the VM saved in dir and, unless opts.Paused,
	// continues it. It refuses a snapshot that is incomplete or fails
	// verification (errors wrap ErrIncomplete or ErrCorrupt), and the
	// guest never runs on data that did not verify. It never takes over
	// a local file or control socket that already exists and may belong
	// to a live VM (unless opts.Overwrite, for files). On failure nothing
	// it started is left running and only the local files it created are
	// removed.
	Restore(ctx context.Context, dir string, opts RestoreOptions) (Machine, error)
}

// RestoreOptions are the driver-neutral options of a restore.
type RestoreOptions struct {
	// LocalDir receives the VM's local files (disk overlays, RAM file)
	// under their original base names; empty: their original paths.
	LocalDir string
	// Overwrite allows replacing local files that already exist.
	Overwrite bool
	// LazyDisk runs the VM on a local overlay over the snapshot's disk
	// instead of copying it, where the driver can (qemu).
	LazyDisk bool
	// Paused leaves the restored VM paused.
	Paused bool
	// Log receives the hypervisor process's output, where there is one;
	// empty discards it.
	Log      string
	Progress Progress
	Logger   *slog.Logger
	// DriverOptions holds driver-specific options keyed by driver name,
	// each of the type that driver documents (qemuhook.DriverOptions,
	// xenhook.DriverOptions). A caller that does not know which driver a
	// snapshot needs gives options for every driver it cares about; each
	// driver reads only its own entry and rejects one of the wrong type.
	DriverOptions map[string]any
}

// ErrNoDriver: the snapshot was made by a driver this program does not
// have (its package is not imported).
var ErrNoDriver = errors.New("no such hypervisor driver")

var (
	driversMu sync.RWMutex
	drivers   = map[string]Driver{}
)

// Register makes a driver available to Restore under d.Name(). It is meant
// for a driver package's init and panics, as database/sql.Register does,
// if d is nil or its name is empty or already taken: those are
// programming errors, never input errors.
func Register(d Driver) {
	if d == nil || d.Name() == "" {
		panic("hypervisor: Register of a nil or unnamed driver")
	}
	driversMu.Lock()
	defer driversMu.Unlock()
	if _, dup := drivers[d.Name()]; dup {
		panic("hypervisor: Register called twice for driver " + d.Name())
	}
	drivers[d.Name()] = d
}

// Drivers returns the names of the registered drivers, sorted.
func Drivers() []string {
	driversMu.RLock()
	defer driversMu.RUnlock()
	names := make([]string, 0, len(drivers))
	for n := range drivers {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Restore reads dir's manifest and has the driver that made the snapshot
// restore it (see Driver.Restore). A driver that is not registered is an
// error wrapping ErrNoDriver that names it.
func Restore(ctx context.Context, dir string, opts RestoreOptions) (Machine, error) {
	man, err := ReadManifest(dir)
	if err != nil {
		return nil, err
	}
	driversMu.RLock()
	d, ok := drivers[man.Driver]
	driversMu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("snapshot %s was made by driver %q: %w (this program has %v)", dir, man.Driver, ErrNoDriver, Drivers())
	}
	return d.Restore(ctx, dir, opts)
}

// DriverOptionsFor returns opts.DriverOptions[name] as a T: the zero T
// when there is none, an error when it has another type.
func DriverOptionsFor[T any](opts RestoreOptions, name string) (T, error) {
	var zero T
	v, ok := opts.DriverOptions[name]
	if !ok || v == nil {
		return zero, nil
	}
	switch t := v.(type) {
	case T:
		return t, nil
	case *T:
		if t != nil {
			return *t, nil
		}
		return zero, nil
	}
	return zero, fmt.Errorf("hypervisor: driver %s options are a %T, want a %T", name, v, zero)
}
