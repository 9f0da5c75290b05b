package hypervisor

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeDriverOptions are the fake driver's own restore options.
type fakeDriverOptions struct{ Knob int }

// fakeDriver restores the fake Machine's snapshots by remembering what it
// was asked.
type fakeDriver struct {
	dir  string
	opts RestoreOptions
	knob int
}

func (*fakeDriver) Name() string { return "fake" }

func (d *fakeDriver) Restore(_ context.Context, dir string, opts RestoreOptions) (Machine, error) {
	o, err := DriverOptionsFor[fakeDriverOptions](opts, "fake")
	if err != nil {
		return nil, err
	}
	d.dir, d.opts, d.knob = dir, opts, o.Knob
	return &fakeMachine{}, nil
}

var theFakeDriver = &fakeDriver{}

func init() { Register(theFakeDriver) }

func TestRestoreDispatchesByManifest(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	if _, err := Swapout(context.Background(), newFake(t, 4096), dir, SwapoutOptions{Keep: true}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	opts := RestoreOptions{LocalDir: "/l", Paused: true, DriverOptions: map[string]any{"fake": fakeDriverOptions{Knob: 7}, "other": 1}}
	m, err := Restore(ctx, dir, opts)
	if err != nil || m == nil {
		t.Fatalf("Restore: %v %v", m, err)
	}
	if d := theFakeDriver; d.dir != dir || d.opts.LocalDir != "/l" || !d.opts.Paused || d.knob != 7 {
		t.Fatalf("driver got %+v", d)
	}
	// A pointer to the options does as well; options of the wrong type
	// are refused.
	opts.DriverOptions["fake"] = &fakeDriverOptions{Knob: 8}
	if _, err := Restore(ctx, dir, opts); err != nil || theFakeDriver.knob != 8 {
		t.Fatalf("Restore with *options: %v, knob %d", err, theFakeDriver.knob)
	}
	opts.DriverOptions["fake"] = "knob=9"
	if _, err := Restore(ctx, dir, opts); err == nil || !strings.Contains(err.Error(), "fake options are a string") {
		t.Fatalf("Restore with options of the wrong type: %v", err)
	}

	// A driver this program lacks is named in the error.
	b, _ := os.ReadFile(filepath.Join(dir, ManifestName))
	os.WriteFile(filepath.Join(dir, ManifestName), bytes.Replace(b, []byte(`"driver": "fake"`), []byte(`"driver": "bhyve"`), 1), 0o644)
	_, err = Restore(ctx, dir, RestoreOptions{})
	if !errors.Is(err, ErrNoDriver) || !strings.Contains(err.Error(), `"bhyve"`) || !strings.Contains(err.Error(), "fake") {
		t.Fatalf("Restore of a snapshot by an unknown driver: %v", err)
	}
	// An incomplete snapshot never reaches a driver.
	os.Remove(filepath.Join(dir, ManifestName))
	if _, err := Restore(ctx, dir, RestoreOptions{}); !errors.Is(err, ErrIncomplete) {
		t.Fatalf("Restore without a manifest: %v", err)
	}
}

func TestRegisterRefusesDuplicates(t *testing.T) {
	for name, d := range map[string]Driver{"duplicate": &fakeDriver{}, "nil": nil} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Register of a %s driver did not panic", name)
				}
			}()
			Register(d)
		}()
	}
	if got := Drivers(); len(got) != 1 || got[0] != "fake" {
		t.Fatalf("Drivers() = %v", got)
	}
}
