package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"
)

// Swapout steps, as named in a StepError.
const (
	StepPrepare   = "prepare"
	StepPreflight = "preflight"
	StepPause     = "pause"
	StepSave      = "save"
	StepManifest  = "manifest"
	StepVerify    = "verify"
	StepDestroy   = "destroy"
)

// StepError is a failed swapout step. Paused tells whether the VM was left
// paused and intact (every step after pause except destroy): the caller can
// Resume it. A preflight failure has Paused false: Swapout never paused the
// VM, which is left in whatever state it was.
type StepError struct {
	Step   string
	Paused bool
	Err    error
}

func (e *StepError) Error() string {
	s := fmt.Sprintf("swapout failed at %s: %v", e.Step, e.Err)
	switch {
	case e.Paused:
		s += " (the VM is paused and intact; resume it or retry)"
	case e.Step == StepPreflight:
		s += " (swapout did not pause the VM; it is left as it was)"
	}
	return s
}

func (e *StepError) Unwrap() error { return e.Err }

// SwapoutOptions configure Swapout.
type SwapoutOptions struct {
	// Keep leaves the VM paused after a verified snapshot instead of
	// destroying it (a checkpoint rather than a swapout).
	Keep     bool
	Progress Progress
	Logger   *slog.Logger
	// Host is recorded in the manifest.
	Host string
}

// SwapoutResult is what a successful Swapout did.
type SwapoutResult struct {
	Manifest *Manifest
	Bytes    int64 // logical bytes saved (sum of file sizes)
	// Downtime is from pause until the snapshot was verified and the VM
	// destroyed: how long the guest was not running before it is gone.
	Downtime   time.Duration
	SaveTime   time.Duration // Save (memory, device state, disks)
	VerifyTime time.Duration // reading the snapshot back
}

// Swapout saves m into dir and destroys it, in this order: preflight (the
// Machine's checks, if it is a Preflighter, while the VM still runs), pause, save
// (memory and device state, disk deltas; every file fsynced), write
// manifest.json (fsync, atomic rename), verify by reading everything back,
// destroy. dir must not exist or be empty. A failure of prepare or
// preflight is a *StepError with Paused false: the VM was never paused and
// runs on. On any failure after pause the
// VM stays paused and intact, the partial snapshot is removed (best
// effort), and the error is a *StepError.
//
// Swapout is Pause, Checkpoint and Destroy in one call; an experiment, which
// pauses many VMs at one instant before saving any, calls the phases itself.
func Swapout(ctx context.Context, m Machine, dir string, opts SwapoutOptions) (*SwapoutResult, error) {
	log := opts.logger()
	if err := prepareDir(dir); err != nil {
		return nil, &StepError{Step: StepPrepare, Err: err}
	}
	if err := Preflight(ctx, m); err != nil {
		log.Error("swapout: preflight failed; the VM was not paused", "err", err)
		return nil, &StepError{Step: StepPreflight, Err: err}
	}
	paused := time.Now()
	if err := m.Pause(ctx); err != nil {
		return nil, &StepError{Step: StepPause, Err: err, Paused: false}
	}
	log.Info("swapout: paused", "dir", dir)
	res, err := Checkpoint(ctx, m, dir, paused, opts)
	if err != nil {
		return nil, err
	}
	if opts.Keep {
		res.Downtime = time.Since(paused)
		return res, nil
	}
	dstart := time.Now()
	if err := m.Destroy(ctx); err != nil {
		// The snapshot is complete and verified; the VM may or may not be
		// gone, so do not claim it is intact.
		return nil, &StepError{Step: StepDestroy, Err: err}
	}
	res.Downtime = time.Since(paused)
	log.Info("swapout: done", "dir", dir, "bytes", res.Bytes, "downtime", res.Downtime, "destroy", time.Since(dstart))
	return res, nil
}

func (o SwapoutOptions) logger() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return o.Logger
}

// Checkpoint saves a VM that is already paused into dir: save (every file
// fsynced), manifest.json (fsync, atomic rename), verify by reading
// everything back. paused is the instant the caller paused the VM; it is
// the manifest's pause time and the base of the guest's virtual-time
// offset, so that VMs paused together share it. dir must exist and be
// empty (it is created when missing). Checkpoint never resumes and never
// destroys: on failure the VM is still paused and intact, the partial
// snapshot is removed (best effort), and the error is a *StepError with
// Paused set. The result's Downtime is left zero.
func Checkpoint(ctx context.Context, m Machine, dir string, paused time.Time, opts SwapoutOptions) (*SwapoutResult, error) {
	log := opts.logger()
	if err := prepareDir(dir); err != nil {
		return nil, &StepError{Step: StepPrepare, Err: err, Paused: true}
	}
	fail := func(step string, err error) (*SwapoutResult, error) {
		cleanup(dir)
		log.Error("swapout failed; VM left paused", "step", step, "err", err)
		return nil, &StepError{Step: step, Err: err, Paused: true}
	}
	start := time.Now()
	saved, err := m.Save(ctx, dir, opts.Progress)
	if err != nil {
		return fail(StepSave, err)
	}
	saveTime := time.Since(start)
	man := &Manifest{
		Format: FormatVersion, Driver: saved.Driver, Mode: saved.Mode, Hash: "blake3-256", Host: opts.Host,
		Paused: paused.UTC(), Created: time.Now().UTC(), Files: saved.Files, Config: saved.Config,
	}
	if !saved.GuestTime.IsZero() {
		man.GuestTime = saved.GuestTime.UTC()
		man.VirtualOffsetNS = int64(paused.Sub(saved.GuestTime))
	}
	if err := ctx.Err(); err != nil {
		return fail(StepManifest, err)
	}
	if err := WriteManifest(dir, man); err != nil {
		return fail(StepManifest, err)
	}
	vstart := time.Now()
	got, err := Verify(dir, opts.Progress)
	if err != nil {
		return fail(StepVerify, err)
	}
	if len(got.Files) != len(man.Files) {
		return fail(StepVerify, fmt.Errorf("manifest read back lists %d files, wrote %d", len(got.Files), len(man.Files)))
	}
	verifyTime := time.Since(vstart)
	log.Debug("swapout: verified", "save", saveTime, "verify", verifyTime)
	return &SwapoutResult{Manifest: man, Bytes: man.Bytes(), SaveTime: saveTime, VerifyTime: verifyTime}, nil
}

func prepareDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	if len(ents) > 0 {
		return fmt.Errorf("%s is not empty (a snapshot directory is written once)", dir)
	}
	return nil
}

// cleanup removes what a failed swapout wrote into dir (best effort; on an
// unavailable filesystem it may not be possible, but without manifest.json
// the leftovers are never taken for a snapshot).
func cleanup(dir string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		os.RemoveAll(filepath.Join(dir, e.Name()))
	}
}

// IsPaused reports whether err is a swapout failure that left the VM paused
// and intact.
func IsPaused(err error) bool {
	var se *StepError
	return errors.As(err, &se) && se.Paused
}
