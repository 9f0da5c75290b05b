// Package hypervisor is the small interface stasis needs from a hypervisor to
// swap a virtual machine out into a directory (normally on casfs) and back,
// the format of that snapshot directory, and the swapout state machine that
// the QEMU (qemuhook) and Xen (xenhook) drivers share.
//
// # Snapshot directory
//
// A snapshot of one VM is a directory holding
//
//	manifest.json  format version, driver, capture mode, the driver's restore
//	               config (QEMU command line, ...), the guest's virtual clock
//	               and virtual-time offset, timestamps, and each file's role,
//	               size, chunker policy and BLAKE3-256 checksum
//	memory         the migration stream (mode "stream"), or
//	ram + devstate the raw page-aligned RAM image and the tiny device-state
//	               stream (mode "ram-file"), or
//	memory         a mapped-ram image (mode "mapped-ram")
//	disk.qcow2     the disk delta (the qcow2 overlay over a base image);
//	               disk-<id>.qcow2 when the VM has several
//
// manifest.json is written last, with fsync and an atomic rename: its presence
// means the snapshot is complete. A snapshot is valid when every file it lists
// is present with the recorded size and checksum (Verify).
//
// # Safety
//
// Swapout first runs the checks that can fail before pausing (Preflighter),
// so a VM that cannot be saved is never paused. It then pauses the VM, saves
// it, fsyncs every file, writes the manifest, verifies the snapshot by
// reading it back, and only then destroys the VM. Any failure after the
// pause leaves the VM paused and intact and returns a *StepError naming the
// step; Machine.Resume brings the VM back.
package hypervisor

import (
	"context"
	"encoding/json"
	"time"
)

// Machine is one VM as a driver controls it.
//
// Implementations must keep the VM intact until Destroy: Pause and Save never
// lose guest state, and after a failed Save the VM is still paused and can be
// resumed as if nothing happened.
type Machine interface {
	// Pause stops the guest's virtual CPUs. Pausing a paused VM is a no-op.
	Pause(ctx context.Context) error
	// Resume continues a paused VM, also after a Save (successful or not).
	Resume(ctx context.Context) error
	// Save writes the paused VM's memory, device state and disk deltas into
	// dir, which exists and is empty, each file through a FileWriter (so it
	// is hashed while written and fsynced on Commit). It returns what it
	// wrote; it never writes manifest.json, never resumes and never destroys.
	Save(ctx context.Context, dir string, p Progress) (Saved, error)
	// Destroy ends the VM. Swapout calls it only after the snapshot has been
	// verified.
	Destroy(ctx context.Context) error
}

// Preflighter is an optional interface of a Machine: the checks that can
// tell, before the VM is paused, that Save would fail (the capture mode is
// one this hypervisor and this VM support, the control channel answers,
// the VM is in a state that can be saved, the files Save copies are
// readable). Swapout calls it before Pause; an experiment calls it on every
// VM before pausing any.
//
// Preflight has no side effect on the guest: it never pauses, resumes,
// migrates or changes settings, and the VM runs on as if it had not been
// called. A non-nil error means Save would fail; nil is no promise that it
// succeeds (the disk may fill up, the hypervisor may refuse later).
type Preflighter interface {
	Preflight(ctx context.Context) error
}

// Preflight runs m's Preflight if it has one (see Preflighter); a Machine
// without one passes.
func Preflight(ctx context.Context, m Machine) error {
	if pf, ok := m.(Preflighter); ok {
		return pf.Preflight(ctx)
	}
	return nil
}

// Saved describes what Machine.Save wrote.
type Saved struct {
	Driver string // "qemu", "xen"
	Mode   string // capture mode, e.g. "stream", "ram-file", "mapped-ram", "xl-save"
	Files  []File
	// Config is the driver's restore configuration (JSON).
	Config json.RawMessage
	// GuestTime is the guest's virtual wall clock at pause (its RTC), zero
	// if the driver cannot tell.
	GuestTime time.Time
}

// File is one file of a snapshot.
type File struct {
	Name    string `json:"name"`              // relative to the snapshot directory
	Role    string `json:"role"`              // RoleMemory, RoleRAM, RoleDevState, RoleDisk
	Size    int64  `json:"size"`              // bytes
	BLAKE3  string `json:"blake3"`            // hex BLAKE3-256 of the content
	Chunker string `json:"chunker,omitempty"` // casfs chunker policy it was written with
}

// File roles.
const (
	RoleMemory   = "memory"   // a migration stream or mapped-ram image
	RoleRAM      = "ram"      // raw guest RAM image
	RoleDevState = "devstate" // device state stream
	RoleDisk     = "disk"     // a disk delta
)

// Progress receives byte counts while data moves. Implementations must be
// safe for use by one goroutine at a time; nil means no reporting.
type Progress interface {
	// Start announces a phase ("memory", "disk", "verify", ...) and how many
	// bytes it will move (-1 if unknown).
	Start(phase string, total int64)
	// Add reports n more bytes moved.
	Add(n int64)
}

type nopProgress struct{}

func (nopProgress) Start(string, int64) {}
func (nopProgress) Add(int64)           {}

// orNop returns p, or a Progress that does nothing when p is nil.
func orNop(p Progress) Progress {
	if p == nil {
		return nopProgress{}
	}
	return p
}

// OrNop is orNop for drivers.
func OrNop(p Progress) Progress { return orNop(p) }
