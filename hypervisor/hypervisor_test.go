package hypervisor

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeMachine is an in-memory VM: its "memory" is a byte slice. It records
// what was done to it in events; Destroy records "destroy" only if the
// snapshot in the directory Save wrote verifies at that moment
// ("destroy-unverified" otherwise).
type fakeMachine struct {
	mem               []byte
	disk              []byte
	events            []string
	saveErr           error
	guest             time.Time
	dir               string           // set by Save
	prog              *recordProgress  // if set, Destroy notes how much it had verified
	afterSave         func(dir string) // fault injection after every file is committed
	verifiedAtDestroy int64
}

func (m *fakeMachine) Pause(context.Context) error { m.events = append(m.events, "pause"); return nil }
func (m *fakeMachine) Resume(context.Context) error {
	m.events = append(m.events, "resume")
	return nil
}
func (m *fakeMachine) Destroy(context.Context) error {
	if _, err := Verify(m.dir, nil); err != nil {
		m.events = append(m.events, "destroy-unverified")
		return nil
	}
	if m.prog != nil {
		m.verifiedAtDestroy = m.prog.verified
	}
	m.events = append(m.events, "destroy")
	return nil
}

func (m *fakeMachine) Save(ctx context.Context, dir string, p Progress) (Saved, error) {
	m.events = append(m.events, "save")
	m.dir = dir
	var files []File
	for _, f := range []struct {
		name, role string
		data       []byte
	}{{"memory", RoleMemory, m.mem}, {"disk.qcow2", RoleDisk, m.disk}} {
		w, err := CreateFile(dir, f.name, f.role, ChunkerStream, p)
		if err != nil {
			return Saved{}, err
		}
		if _, err := w.Write(f.data); err != nil {
			w.Abort()
			return Saved{}, err
		}
		if m.saveErr != nil {
			w.Abort()
			return Saved{}, m.saveErr
		}
		fe, err := w.Commit()
		if err != nil {
			return Saved{}, err
		}
		files = append(files, fe)
	}
	if m.afterSave != nil {
		m.afterSave(dir)
	}
	return Saved{Driver: "fake", Mode: "test", Files: files, Config: json.RawMessage(`{"x":1}`), GuestTime: m.guest}, nil
}

// recordProgress records the phases Swapout reports as events of m and
// counts the bytes of the "verify" phase.
type recordProgress struct {
	m        *fakeMachine
	phase    string
	verified int64
}

func (p *recordProgress) Start(phase string, _ int64) {
	p.phase = phase
	if phase == "verify" {
		p.m.events = append(p.m.events, "verify")
	}
}

func (p *recordProgress) Add(n int64) {
	if p.phase == "verify" {
		p.verified += n
	}
}

func newFake(t *testing.T, n int) *fakeMachine {
	m := &fakeMachine{mem: make([]byte, n), disk: make([]byte, n/2), guest: time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)}
	rand.Read(m.mem[:n/2]) // second half zero
	rand.Read(m.disk)
	return m
}

func TestSwapoutVerifiedThenDestroyed(t *testing.T) {
	m := newFake(t, 1<<20)
	m.prog = &recordProgress{m: m}
	dir := filepath.Join(t.TempDir(), "snap")
	res, err := Swapout(context.Background(), m, dir, SwapoutOptions{Progress: m.prog})
	if err != nil {
		t.Fatal(err)
	}
	// Destroy came after the whole snapshot was read back, and the
	// snapshot verified when it was called.
	if got := strings.Join(m.events, ","); got != "pause,save,verify,destroy" {
		t.Fatalf("events %s", got)
	}
	if res.Bytes != 1<<20+1<<19 {
		t.Fatalf("bytes %d", res.Bytes)
	}
	if m.verifiedAtDestroy != res.Bytes {
		t.Fatalf("destroyed after verifying %d of %d bytes", m.verifiedAtDestroy, res.Bytes)
	}
	man, err := Verify(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if man.Driver != "fake" || man.GuestTime != m.guest || man.VirtualOffsetNS <= 0 || !strings.Contains(string(man.Config), `"x": 1`) {
		t.Fatalf("manifest %+v", man)
	}
	if time.Duration(man.VirtualOffsetNS) < time.Since(m.guest)-time.Minute {
		t.Fatalf("virtual offset %v", time.Duration(man.VirtualOffsetNS))
	}
	b, _ := os.ReadFile(filepath.Join(dir, "memory"))
	if !bytes.Equal(b, m.mem) {
		t.Fatal("memory file differs")
	}
}

// preflightMachine is a fakeMachine with a Preflight check.
type preflightMachine struct {
	*fakeMachine
	err error
}

func (m preflightMachine) Preflight(context.Context) error {
	m.events = append(m.events, "preflight")
	return m.err
}

// TestSwapoutPreflight: Swapout runs the Machine's checks before pausing; a
// failed check never pauses the VM.
func TestSwapoutPreflight(t *testing.T) {
	m := preflightMachine{newFake(t, 4096), nil}
	if _, err := Swapout(context.Background(), m, filepath.Join(t.TempDir(), "s"), SwapoutOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(m.events, ","); got != "preflight,pause,save,destroy" {
		t.Fatalf("events %s", got)
	}

	m = preflightMachine{newFake(t, 4096), errors.New("mode not supported")}
	dir := filepath.Join(t.TempDir(), "s")
	_, err := Swapout(context.Background(), m, dir, SwapoutOptions{})
	var se *StepError
	if !errors.As(err, &se) || se.Step != StepPreflight || se.Paused || IsPaused(err) || !errors.Is(err, m.err) {
		t.Fatalf("err %v", err)
	}
	if !strings.Contains(err.Error(), "did not pause") {
		t.Errorf("error does not say the VM was left as it was: %v", err)
	}
	if got := strings.Join(m.events, ","); got != "preflight" {
		t.Fatalf("events %s (paused after a failed preflight?)", got)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("files after a failed preflight: %v", ents)
	}
	if err := Preflight(context.Background(), newFake(t, 4096)); err != nil {
		t.Fatalf("Preflight of a Machine without checks: %v", err)
	}
}

func TestSwapoutKeep(t *testing.T) {
	m := newFake(t, 4096)
	if _, err := Swapout(context.Background(), m, filepath.Join(t.TempDir(), "s"), SwapoutOptions{Keep: true}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(m.events, ","); got != "pause,save" {
		t.Fatalf("events %s", got)
	}
}

func TestSwapoutRefusesNonEmptyDir(t *testing.T) {
	m := newFake(t, 4096)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "x"), nil, 0o644)
	_, err := Swapout(context.Background(), m, dir, SwapoutOptions{})
	var se *StepError
	if !errors.As(err, &se) || se.Step != StepPrepare || se.Paused || len(m.events) != 0 {
		t.Fatalf("err %v events %v", err, m.events)
	}
}

func TestSwapoutSaveFailureLeavesPaused(t *testing.T) {
	m := newFake(t, 4096)
	m.saveErr = errors.New("hypervisor said no")
	dir := filepath.Join(t.TempDir(), "s")
	_, err := Swapout(context.Background(), m, dir, SwapoutOptions{})
	if !IsPaused(err) || !errors.Is(err, m.saveErr) || !strings.Contains(err.Error(), "save") {
		t.Fatalf("err %v", err)
	}
	if got := strings.Join(m.events, ","); got != "pause,save" {
		t.Fatalf("events %s (destroyed or resumed?)", got)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("partial snapshot left: %v", ents)
	}
	if _, err := ReadManifest(dir); !errors.Is(err, ErrIncomplete) {
		t.Fatalf("ReadManifest of failed snapshot: %v", err)
	}
}

// TestSwapoutManifestFailure: when manifest.json cannot be written the VM
// is neither destroyed nor resumed, and nothing is left that could be
// taken for a snapshot.
func TestSwapoutManifestFailure(t *testing.T) {
	m := newFake(t, 64<<10)
	// A directory where WriteManifest puts its temporary file: the open
	// fails (also for root, unlike a read-only directory).
	m.afterSave = func(dir string) { os.Mkdir(filepath.Join(dir, "."+ManifestName+".tmp"), 0o755) }
	dir := filepath.Join(t.TempDir(), "s")
	_, err := Swapout(context.Background(), m, dir, SwapoutOptions{})
	checkFailedAfterSave(t, m, dir, err, StepManifest, nil)
}

// TestSwapoutVerifyFailure: a file that changes after Save committed it
// (a flipped byte, as a bad disk or a buggy filesystem would) fails
// verification, and the VM is neither destroyed nor resumed.
func TestSwapoutVerifyFailure(t *testing.T) {
	for _, name := range []string{"memory", "disk.qcow2"} {
		t.Run(name, func(t *testing.T) {
			m := newFake(t, 64<<10)
			m.afterSave = func(dir string) {
				f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDWR, 0)
				if err != nil {
					t.Error(err)
					return
				}
				defer f.Close()
				b := make([]byte, 1)
				f.ReadAt(b, 100)
				f.WriteAt([]byte{b[0] ^ 0x01}, 100)
			}
			dir := filepath.Join(t.TempDir(), "s")
			_, err := Swapout(context.Background(), m, dir, SwapoutOptions{})
			checkFailedAfterSave(t, m, dir, err, StepVerify, ErrCorrupt)
		})
	}
}

// checkFailedAfterSave checks a swapout that failed at step after Save: a
// StepError with Paused set (wrapping want, if given), the VM paused but
// not destroyed or resumed, and no manifest.json in dir.
func checkFailedAfterSave(t *testing.T, m *fakeMachine, dir string, err error, step string, want error) {
	t.Helper()
	var se *StepError
	if !errors.As(err, &se) || se.Step != step || !se.Paused || !IsPaused(err) {
		t.Fatalf("err %v, want a StepError at %s with the VM paused", err, step)
	}
	if want != nil && !errors.Is(err, want) {
		t.Fatalf("err %v, want %v", err, want)
	}
	if got := strings.Join(m.events, ","); got != "pause,save" {
		t.Fatalf("events %s, want pause,save (destroyed or resumed after a failed %s?)", got, step)
	}
	if _, err := os.Stat(filepath.Join(dir, ManifestName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s after a failed %s: %v", ManifestName, step, err)
	}
	if _, err := ReadManifest(dir); !errors.Is(err, ErrIncomplete) {
		t.Fatalf("ReadManifest after a failed %s: %v", step, err)
	}
}

// TestSwapoutDiskFull writes into a real, tiny tmpfs: the save fails with
// ENOSPC, the VM stays paused, nothing is taken for a snapshot.
func TestSwapoutDiskFull(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=256k"); err != nil {
		t.Skipf("cannot mount a tmpfs (needs root): %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	m := newFake(t, 1<<20)
	_, err := Swapout(context.Background(), m, filepath.Join(dir, "s"), SwapoutOptions{})
	if !IsPaused(err) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("err %v", err)
	}
	if strings.Contains(strings.Join(m.events, ","), "destroy") {
		t.Fatal("destroyed after a failed save")
	}
}

func TestVerifyDetectsDamage(t *testing.T) {
	mk := func(t *testing.T) string {
		dir := filepath.Join(t.TempDir(), "s")
		if _, err := Swapout(context.Background(), newFake(t, 64<<10), dir, SwapoutOptions{Keep: true}); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	cases := []struct {
		name   string
		damage func(dir string)
		want   error
		detail string
	}{
		{"truncated", func(d string) { os.Truncate(filepath.Join(d, "memory"), 1000) }, ErrCorrupt, "truncated"},
		{"extended", func(d string) { os.Truncate(filepath.Join(d, "memory"), 70<<10) }, ErrCorrupt, "size"},
		{"tampered", func(d string) {
			f, _ := os.OpenFile(filepath.Join(d, "memory"), os.O_WRONLY, 0)
			f.WriteAt([]byte{0xff}, 5000)
			f.Close()
		}, ErrCorrupt, "tampered"},
		{"missing file", func(d string) { os.Remove(filepath.Join(d, "disk.qcow2")) }, ErrIncomplete, "missing"},
		{"no manifest", func(d string) { os.Remove(filepath.Join(d, ManifestName)) }, ErrIncomplete, "did not finish"},
		{"garbled manifest", func(d string) { os.WriteFile(filepath.Join(d, ManifestName), []byte("{"), 0o644) }, ErrCorrupt, ""},
		{"escaping name", func(d string) {
			b, _ := os.ReadFile(filepath.Join(d, ManifestName))
			os.WriteFile(filepath.Join(d, ManifestName), bytes.Replace(b, []byte(`"name": "memory"`), []byte(`"name": "../memory"`), 1), 0o644)
		}, ErrCorrupt, "bad file name"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := mk(t)
			c.damage(dir)
			_, err := Verify(dir, nil)
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.detail) {
				t.Fatalf("Verify: %v, want %v mentioning %q", err, c.want, c.detail)
			}
		})
	}
}

func TestCopyOutSparseAndVerified(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	m := newFake(t, 1<<20)
	if _, err := Swapout(context.Background(), m, dir, SwapoutOptions{Keep: true}); err != nil {
		t.Fatal(err)
	}
	man, _ := ReadManifest(dir)
	f, _ := man.File(RoleMemory)
	dst := filepath.Join(t.TempDir(), "out")
	if err := CopyOut(dir, f, dst, nil); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(dst)
	if !bytes.Equal(b, m.mem) {
		t.Fatal("copy differs")
	}
	var st syscall.Stat_t
	syscall.Stat(dst, &st)
	if st.Blocks*512 > int64(len(m.mem))*3/4 {
		t.Errorf("copy not sparse: %d bytes allocated for %d (half zero)", st.Blocks*512, len(m.mem))
	}
	// Tamper: the copy fails and leaves nothing behind.
	fh, _ := os.OpenFile(filepath.Join(dir, "memory"), os.O_WRONLY, 0)
	fh.WriteAt([]byte{1}, 0)
	fh.Close()
	dst2 := filepath.Join(t.TempDir(), "out2")
	if err := CopyOut(dir, f, dst2, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("CopyOut of tampered file: %v", err)
	}
	if _, err := os.Stat(dst2); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("partial copy left behind")
	}
}

func TestCopySparseFrom(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	f, _ := os.Create(src)
	data := make([]byte, 64<<10)
	rand.Read(data)
	f.WriteAt(data, 1<<20) // hole, data, hole
	f.Truncate(3 << 20)
	f.Close()
	dir := t.TempDir()
	w, err := CreateFile(dir, "ram", RoleRAM, ChunkerRAM, nil)
	if err != nil {
		t.Fatal(err)
	}
	in, _ := os.Open(src)
	defer in.Close()
	if err := w.CopySparseFrom(in); err != nil {
		t.Fatal(err)
	}
	fe, err := w.Commit()
	if err != nil {
		t.Fatal(err)
	}
	want, _ := HashFile(filepath.Dir(src), "src", RoleRAM, ChunkerRAM, nil)
	if fe.Size != 3<<20 || fe.BLAKE3 != want.BLAKE3 {
		t.Fatalf("got %+v want %+v", fe, want)
	}
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(filepath.Join(dir, "ram"))
	if !bytes.Equal(a, b) {
		t.Fatal("content differs")
	}
	// CopyIn is the same copy in one call.
	fi, err := CopyIn(dir, "ram2", RoleRAM, ChunkerRAM, src, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Name != "ram2" || fi.Size != fe.Size || fi.BLAKE3 != fe.BLAKE3 || fi.Role != RoleRAM || fi.Chunker != ChunkerRAM {
		t.Fatalf("CopyIn: %+v, want %+v under ram2", fi, fe)
	}
	if err := VerifyFile(dir, fi, nil); err != nil {
		t.Fatal(err)
	}
	// A missing source leaves nothing behind; an existing name is refused.
	if _, err := CopyIn(dir, "ram3", RoleRAM, ChunkerRAM, src+".missing", nil); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("CopyIn of a missing file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "ram3")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("CopyIn of a missing file left a file")
	}
	if _, err := CopyIn(dir, "ram2", RoleRAM, ChunkerRAM, src, nil); !errors.Is(err, os.ErrExist) {
		t.Fatalf("CopyIn over an existing file: %v", err)
	}
}

// TestVerifyFile checks one sparse file: holes are hashed without being
// read, so a byte written into a hole must still be caught.
func TestVerifyFile(t *testing.T) {
	dir := t.TempDir()
	w, err := CreateFile(dir, "ram", RoleRAM, ChunkerRAM, nil)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 64<<10)
	rand.Read(data)
	w.Skip(1 << 20)
	w.Write(data)
	w.Skip(2 << 20)
	f, err := w.Commit()
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyFile(dir, f, nil); err != nil {
		t.Fatalf("VerifyFile of an intact sparse file: %v", err)
	}
	fh, _ := os.OpenFile(filepath.Join(dir, "ram"), os.O_WRONLY, 0)
	fh.WriteAt([]byte{1}, 2<<20) // inside the second hole
	fh.Close()
	if err := VerifyFile(dir, f, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("VerifyFile of a file with a byte in a hole: %v, want ErrCorrupt", err)
	}
	os.Remove(filepath.Join(dir, "ram"))
	if err := VerifyFile(dir, f, nil); !errors.Is(err, ErrIncomplete) {
		t.Fatalf("VerifyFile of a missing file: %v, want ErrIncomplete", err)
	}
}
