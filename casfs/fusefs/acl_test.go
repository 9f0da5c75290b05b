package fusefs_test

import (
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"stasis/casfs/internal/testenv"
)

// TestCpPreservesMode: `cp -p` of a 0644 file into casfs keeps 0644. cp
// creates the copy 0600, then copies the source's ACL; casfs stored
// system.posix_acl_access as a plain value, so cp believed the mode set
// and the copy stayed 0600. casfs now refuses POSIX ACL xattrs with
// EOPNOTSUPP, and cp falls back to chmod.
func TestCpPreservesMode(t *testing.T) {
	cp, err := exec.LookPath("cp")
	if err != nil {
		t.Skip("no cp")
	}
	_, mnt := mount(t, testenv.Options{})
	src := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(src, randBytes(7, 100<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(src, 0o644); err != nil { // whatever the umask
		t.Fatal(err)
	}
	for _, flag := range []string{"-p", "-a"} {
		dst := filepath.Join(mnt, "copy"+flag)
		if out, err := exec.Command(cp, flag, src, dst).CombinedOutput(); err != nil {
			t.Fatalf("cp %s: %v\n%s", flag, err, out)
		}
		fi, err := os.Stat(dst)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o644 {
			t.Errorf("cp %s: mode %v, want 0644", flag, fi.Mode().Perm())
		}
		if _, err := unix.Getxattr(dst, "system.posix_acl_access", nil); !errors.Is(err, syscall.ENODATA) {
			t.Errorf("cp %s: getxattr system.posix_acl_access = %v, want ENODATA (no ACL stored)", flag, err)
		}
	}
	// user::rw- user:1000:r-- group::r-- mask::r-- other::r-- (an empty
	// ACL would be a removal).
	acl := []byte{2, 0, 0, 0}
	for _, e := range []struct {
		tag, perm uint16
		id        uint32
	}{{0x01, 6, 0xffffffff}, {0x02, 4, 1000}, {0x04, 4, 0xffffffff}, {0x10, 4, 0xffffffff}, {0x20, 4, 0xffffffff}} {
		acl = binary.LittleEndian.AppendUint16(acl, e.tag)
		acl = binary.LittleEndian.AppendUint16(acl, e.perm)
		acl = binary.LittleEndian.AppendUint32(acl, e.id)
	}
	err = unix.Setxattr(filepath.Join(mnt, "copy-p"), "system.posix_acl_access", acl, 0)
	if !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Errorf("setxattr system.posix_acl_access = %v, want EOPNOTSUPP", err)
	}
}
