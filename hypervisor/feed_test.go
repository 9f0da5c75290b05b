package hypervisor

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// feedFile writes data as snapshot file "memory" in a new directory and
// returns the directory and the file's manifest entry.
func feedFile(t *testing.T, data []byte) (string, File) {
	t.Helper()
	dir := t.TempDir()
	w, err := CreateFile(dir, "memory", RoleMemory, ChunkerStream, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	f, err := w.Commit()
	if err != nil {
		t.Fatal(err)
	}
	return dir, f
}

func randData(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// feedPipe runs Feed into a pipe whose read end the consumer function
// reads; it returns Feed's error and what the consumer returned.
func feedPipe(t *testing.T, dir string, f File, consume func(io.ReadCloser) []byte) ([]byte, error) {
	t.Helper()
	vr, err := OpenVerified(dir, f)
	if err != nil {
		t.Fatal(err)
	}
	defer vr.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	fed := make(chan error, 1)
	go func() { fed <- Feed(w, vr, nil) }()
	got := consume(r)
	r.Close()
	select {
	case err := <-fed:
		return got, err
	case <-time.After(30 * time.Second):
		t.Fatal("Feed did not return")
		return nil, nil
	}
}

func readAll(r io.ReadCloser) []byte {
	b, _ := io.ReadAll(r)
	return b
}

func TestFeedWhole(t *testing.T) {
	data := randData(3<<20 + 123)
	dir, f := feedFile(t, data)
	got, err := feedPipe(t, dir, f, readAll)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("consumer read %d bytes, want the %d fed", len(got), len(data))
	}
}

func TestFeedDamaged(t *testing.T) {
	data := randData(2<<20 + 5)
	for _, c := range []struct {
		name   string
		damage func(path string)
	}{
		{"tampered", func(p string) {
			fh, _ := os.OpenFile(p, os.O_WRONLY, 0)
			fh.WriteAt([]byte("EVIL"), 1<<20+7)
			fh.Close()
		}},
		{"truncated", func(p string) { os.Truncate(p, 1<<20) }},
		{"extended", func(p string) { os.Truncate(p, 3<<20) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir, f := feedFile(t, data)
			c.damage(filepath.Join(dir, f.Name))
			// The consumer reads everything: only the checksum can tell.
			_, err := feedPipe(t, dir, f, readAll)
			var ve *VerifyError
			if !errors.As(err, &ve) || !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Feed of a %s file: %v, want a *VerifyError (ErrCorrupt)", c.name, err)
			}
		})
	}
}

// TestFeedConsumerQuits: a consumer that stops reading makes the write
// fail; Feed reports that write error, not success.
func TestFeedConsumerQuits(t *testing.T) {
	data := randData(4 << 20)
	dir, f := feedFile(t, data)
	_, err := feedPipe(t, dir, f, func(r io.ReadCloser) []byte {
		b := make([]byte, 1000)
		io.ReadFull(r, b)
		return b
	})
	if !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("Feed to a consumer that quit: %v, want EPIPE", err)
	}
}

// failWriter fails its second write and records how far Feed had read the
// file when it was closed.
type failWriter struct {
	writes   int
	vr       *VerifiedReader
	closedAt int64
	closes   int
}

var errInjected = errors.New("injected write failure")

func (w *failWriter) Write(b []byte) (int, error) {
	w.writes++
	if w.writes == 2 {
		return 0, errInjected
	}
	return len(b), nil
}

func (w *failWriter) Close() error {
	if w.closes == 0 {
		w.closedAt = w.vr.n
	}
	w.closes++
	return nil
}

type countProgress struct{ n int64 }

func (p *countProgress) Start(string, int64) {}
func (p *countProgress) Add(n int64)         { p.n += n }

// TestFeedWriteErrorClosesAtOnce: after the first failed write the
// consumer's end is closed right away (it must not wait while the rest is
// hashed), the rest is still read and verified, and a damaged file is
// reported as damaged rather than as the write failure.
func TestFeedWriteErrorClosesAtOnce(t *testing.T) {
	data := randData(5 << 20)
	for _, tamper := range []bool{false, true} {
		dir, f := feedFile(t, data)
		if tamper {
			fh, _ := os.OpenFile(filepath.Join(dir, f.Name), os.O_WRONLY, 0)
			fh.WriteAt([]byte{0}, 4<<20+1) // past the failed write
			fh.Close()
		}
		vr, err := OpenVerified(dir, f)
		if err != nil {
			t.Fatal(err)
		}
		p := &countProgress{}
		w := &failWriter{vr: vr}
		err = Feed(w, vr, p)
		vr.Close()
		if p.n != 2<<20 {
			t.Errorf("tamper=%v: progress %d, want the %d bytes handed to the writer", tamper, p.n, 2<<20)
		}
		if w.closes == 0 || w.closedAt != 2<<20 {
			t.Errorf("tamper=%v: writer closed %d times, first after reading %d bytes; want at once after the failed write (%d)", tamper, w.closes, w.closedAt, 2<<20)
		}
		if w.writes != 2 {
			t.Errorf("tamper=%v: %d writes; want none after the failure", tamper, w.writes)
		}
		if tamper {
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("tampered file with a failed write: %v, want ErrCorrupt", err)
			}
		} else if !errors.Is(err, errInjected) {
			t.Errorf("failed write: %v, want the write error", err)
		}
	}
}

// closeFailWriter takes every write and fails its close.
type closeFailWriter struct{ err error }

func (w *closeFailWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *closeFailWriter) Close() error                { return w.err }

// TestFeedCloseError: a failed final close is Feed's error (buffered bytes
// may be lost); a close the caller already made after the last write is not.
func TestFeedCloseError(t *testing.T) {
	data := randData(1<<20 + 7)
	dir, f := feedFile(t, data)
	errClose := errors.New("injected close failure")
	for _, c := range []struct {
		closeErr error
		want     error
	}{{errClose, errClose}, {os.ErrClosed, nil}, {nil, nil}} {
		vr, err := OpenVerified(dir, f)
		if err != nil {
			t.Fatal(err)
		}
		err = Feed(&closeFailWriter{c.closeErr}, vr, nil)
		vr.Close()
		if !errors.Is(err, c.want) || (c.want == nil && err != nil) {
			t.Errorf("close returning %v: Feed = %v, want %v", c.closeErr, err, c.want)
		}
	}
}
