package fusefs_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"stasis/casfs"
	"stasis/casfs/internal/testenv"
)

// TestDiskFullIsENOSPC: a block store that is full makes close() fail with
// ENOSPC, and the file keeps its last committed content.
func TestDiskFullIsENOSPC(t *testing.T) {
	e, mnt := mount(t, testenv.Options{FS: casfs.Config{RetryDeadline: 200 * time.Millisecond}})
	name := filepath.Join(mnt, "f")
	old := randBytes(1, 300<<10)
	if err := os.WriteFile(name, old, 0o644); err != nil {
		t.Fatal(err)
	}
	e.Blocks.FailPut(fmt.Errorf("badger: write: %w", syscall.ENOSPC))
	err := os.WriteFile(name, randBytes(2, 2<<20), 0o644)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("writing to a full store: %v, want ENOSPC", err)
	}
	e.Blocks.FailPut(nil)
	got, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	// O_TRUNC committed nothing; the failed close left the previous content
	// or the truncation, never a partial new file.
	if len(got) != 0 && len(got) != len(old) {
		t.Fatalf("after a failed write the file has %d bytes", len(got))
	}
}

// TestCorruptChunkIsEIO: a chunk whose bytes do not match its hash is an
// I/O error, never wrong data.
func TestCorruptChunkIsEIO(t *testing.T) {
	e, mnt := mount(t, testenv.Options{})
	name := filepath.Join(mnt, "f")
	if err := os.WriteFile(name, randBytes(3, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	e.Blocks.Corrupt()
	// A fresh mount of the same stores, so neither the chunk cache nor the
	// kernel's page cache holds the good bytes.
	e2 := testenv.New(t, testenv.Options{Meta: e.Meta, Blocks: e.Blocks})
	mnt2 := e2.Mount(t, fusefsOptions())
	_, err := os.ReadFile(filepath.Join(mnt2, "f"))
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("reading corrupt chunks: %v, want EIO", err)
	}
}
