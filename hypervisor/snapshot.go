package hypervisor

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"
)

// FormatVersion is the snapshot format this package writes and reads.
const FormatVersion = 1

// ManifestName is the file whose presence marks a complete snapshot.
const ManifestName = "manifest.json"

// ChunkerXattr is the casfs extended attribute that selects a file's chunker.
const ChunkerXattr = "user.casfs.chunker"

// Errors a restore or verification returns; test with errors.Is.
var (
	// ErrIncomplete: the snapshot has no manifest or lacks a file it lists.
	ErrIncomplete = errors.New("snapshot incomplete")
	// ErrCorrupt: a file's size or checksum does not match the manifest, or
	// the manifest itself is malformed.
	ErrCorrupt = errors.New("snapshot fails verification")
)

// Manifest is manifest.json.
type Manifest struct {
	Format int    `json:"format"`
	Driver string `json:"driver"`
	Mode   string `json:"mode"`
	Hash   string `json:"hash"` // checksum algorithm of Files: "blake3-256"
	Host   string `json:"host,omitempty"`
	// Paused is when the VM was paused; Created when the snapshot was
	// complete (host clock).
	Paused  time.Time `json:"paused"`
	Created time.Time `json:"created"`
	// GuestTime is the guest's virtual wall clock at pause. VirtualOffsetNS
	// is Paused minus GuestTime: how far the experiment's virtual time lags
	// host time. On swapin the guest clock continues from GuestTime.
	GuestTime       time.Time `json:"guest_time,omitzero"`
	VirtualOffsetNS int64     `json:"virtual_offset_ns"`
	Files           []File    `json:"files"`
	// Config is the driver's restore configuration (the QEMU command line,
	// the Xen domain config, ...).
	Config json.RawMessage `json:"config"`
}

// File returns the manifest's file with the given role, if any.
func (m *Manifest) File(role string) (File, bool) {
	for _, f := range m.Files {
		if f.Role == role {
			return f, true
		}
	}
	return File{}, false
}

// Bytes is the total size of the snapshot's files.
func (m *Manifest) Bytes() int64 {
	var n int64
	for _, f := range m.Files {
		n += f.Size
	}
	return n
}

// VerifyError says which file of a snapshot is wrong and how. It wraps
// ErrIncomplete or ErrCorrupt.
type VerifyError struct {
	Dir, File string
	Err       error  // ErrIncomplete or ErrCorrupt
	Detail    string // e.g. "size 100, manifest says 200"
}

func (e *VerifyError) Error() string {
	if e.File == "" {
		return fmt.Sprintf("%s: %v: %s", e.Dir, e.Err, e.Detail)
	}
	return fmt.Sprintf("%s: %s: %v: %s", e.Dir, e.File, e.Err, e.Detail)
}

func (e *VerifyError) Unwrap() error { return e.Err }

// WriteManifest writes m as dir/manifest.json: to a temporary file, fsync,
// atomic rename, fsync of the directory.
func WriteManifest(dir string, m *Manifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, "."+ManifestName+".tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, ManifestName)); err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOTSUP) {
		return err
	}
	return nil
}

// ReadManifest reads and checks dir/manifest.json and that every file it
// lists is present with its recorded size. It does not read file contents;
// Verify does.
func ReadManifest(dir string) (*Manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, &VerifyError{Dir: dir, Err: ErrIncomplete, Detail: "no " + ManifestName + " (the swapout did not finish)"}
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", ManifestName, err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, &VerifyError{Dir: dir, File: ManifestName, Err: ErrCorrupt, Detail: err.Error()}
	}
	if m.Format != FormatVersion {
		return nil, &VerifyError{Dir: dir, File: ManifestName, Err: ErrCorrupt, Detail: fmt.Sprintf("format %d, this stasis reads %d", m.Format, FormatVersion)}
	}
	if m.Hash != "blake3-256" || m.Driver == "" || len(m.Files) == 0 {
		return nil, &VerifyError{Dir: dir, File: ManifestName, Err: ErrCorrupt, Detail: "missing driver, files or hash algorithm"}
	}
	for _, f := range m.Files {
		if f.Name == "" || f.Name != filepath.Base(f.Name) || f.Name == ManifestName || f.Name == "." || f.Name == ".." {
			return nil, &VerifyError{Dir: dir, File: ManifestName, Err: ErrCorrupt, Detail: fmt.Sprintf("bad file name %q", f.Name)}
		}
		if _, err := hex.DecodeString(f.BLAKE3); err != nil || len(f.BLAKE3) != 64 {
			return nil, &VerifyError{Dir: dir, File: f.Name, Err: ErrCorrupt, Detail: "bad checksum in manifest"}
		}
		fi, err := os.Stat(filepath.Join(dir, f.Name))
		if errors.Is(err, os.ErrNotExist) {
			return nil, &VerifyError{Dir: dir, File: f.Name, Err: ErrIncomplete, Detail: "missing"}
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.Name, err)
		}
		if fi.Size() != f.Size {
			return nil, &VerifyError{Dir: dir, File: f.Name, Err: ErrCorrupt, Detail: fmt.Sprintf("size %d, manifest says %d (truncated or extended)", fi.Size(), f.Size)}
		}
	}
	return &m, nil
}

// Verify reads the whole snapshot back and checks every file's size and
// checksum against the manifest.
func Verify(dir string, p Progress) (*Manifest, error) {
	m, err := ReadManifest(dir)
	if err != nil {
		return nil, err
	}
	p = orNop(p)
	p.Start("verify", m.Bytes())
	for _, f := range m.Files {
		if err := VerifyFile(dir, f, p); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// VerifyFile reads one file of a snapshot and checks its size and checksum
// against its manifest entry, as Verify does for every file (errors wrap
// ErrIncomplete or ErrCorrupt). It skips reading the holes
// SEEK_DATA/SEEK_HOLE report and hashes zeros for them instead: a RAM image
// is mostly holes, and reading them costs more than hashing.
func VerifyFile(dir string, want File, p Progress) error {
	p = orNop(p)
	vr, err := OpenVerified(dir, want)
	if err != nil {
		return err
	}
	defer vr.Close()
	// Holes are hashed without reading, so the size must be right first.
	fi, err := vr.f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() != want.Size {
		return &VerifyError{Dir: dir, File: want.Name, Err: ErrCorrupt, Detail: fmt.Sprintf("size %d, manifest says %d (truncated or extended)", fi.Size(), want.Size)}
	}
	fd := int(vr.f.Fd())
	buf := make([]byte, 1<<20)
	for {
		data, err := unix.Seek(fd, vr.n, unix.SEEK_DATA)
		switch {
		case errors.Is(err, unix.ENXIO):
			data = want.Size // a hole up to the end (or past it: checked below)
		case err != nil:
			data = vr.n // no SEEK_DATA: read everything
		}
		if data > want.Size {
			data = want.Size
		}
		if hole := data - vr.n; hole > 0 {
			for left := hole; left > 0; {
				k := min(left, int64(len(zeroChunk)))
				vr.h.Write(zeroChunk[:k])
				left -= k
			}
			vr.n += hole
			p.Add(hole)
		}
		// Read up to the next hole (or 1 MiB), or reach EOF. The probes
		// moved the file offset: put it back.
		end := vr.n + int64(len(buf))
		if h, err := unix.Seek(fd, vr.n, unix.SEEK_HOLE); err == nil && h > vr.n && h < end {
			end = h
		}
		if _, err := vr.f.Seek(vr.n, io.SeekStart); err != nil {
			return err
		}
		n, err := vr.Read(buf[:end-vr.n])
		p.Add(int64(n))
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

type progressReader struct {
	r io.Reader
	p Progress
}

func (r progressReader) Read(b []byte) (int, error) {
	n, err := r.r.Read(b)
	r.p.Add(int64(n))
	return n, err
}

// VerifiedReader reads a snapshot file and checks it against the manifest:
// the Read that reaches the end returns a *VerifyError (ErrCorrupt) instead
// of io.EOF when the size or checksum differs. Consumers must not act on the
// data (resume a guest, ...) before they have seen io.EOF.
type VerifiedReader struct {
	f    *os.File
	dir  string
	want File
	h    *blake3.Hasher
	n    int64
	err  error
}

// OpenVerified opens one file of a snapshot for a verified read.
func OpenVerified(dir string, want File) (*VerifiedReader, error) {
	f, err := os.Open(filepath.Join(dir, want.Name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, &VerifyError{Dir: dir, File: want.Name, Err: ErrIncomplete, Detail: "missing"}
	}
	if err != nil {
		return nil, err
	}
	return &VerifiedReader{f: f, dir: dir, want: want, h: blake3.New()}, nil
}

func (r *VerifiedReader) Read(b []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.f.Read(b)
	r.h.Write(b[:n])
	r.n += int64(n)
	if r.n > r.want.Size {
		r.err = &VerifyError{Dir: r.dir, File: r.want.Name, Err: ErrCorrupt, Detail: fmt.Sprintf("longer than the %d bytes the manifest says", r.want.Size)}
		return n, r.err
	}
	if err == io.EOF {
		r.err = r.check()
		return n, r.err
	}
	if err != nil {
		r.err = fmt.Errorf("read %s: %w", r.want.Name, err)
	}
	return n, r.err
}

func (r *VerifiedReader) check() error {
	if r.n != r.want.Size {
		return &VerifyError{Dir: r.dir, File: r.want.Name, Err: ErrCorrupt, Detail: fmt.Sprintf("read %d bytes, manifest says %d (truncated)", r.n, r.want.Size)}
	}
	if got := hex.EncodeToString(r.h.Sum(nil)); got != r.want.BLAKE3 {
		return &VerifyError{Dir: r.dir, File: r.want.Name, Err: ErrCorrupt, Detail: fmt.Sprintf("BLAKE3 %s, manifest says %s (tampered or corrupt)", got[:16], r.want.BLAKE3[:16])}
	}
	return io.EOF
}

// Close closes the file.
func (r *VerifiedReader) Close() error { return r.f.Close() }

// CopyOut copies a snapshot file to a local path, sparsely (all-zero 4 KiB
// blocks become holes), verifying it on the way. On a verification error
// the partial copy is removed.
func CopyOut(dir string, want File, dst string, p Progress) (err error) {
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	return CopyOutTo(dir, want, out, p)
}

// CopyOutTo is CopyOut into an open, empty file (one a restore claimed with
// ClaimLocal): sparse, verified, and out truncated to the file's size. On
// failure out holds a partial copy; the caller removes it.
func CopyOutTo(dir string, want File, out *os.File, p Progress) error {
	r, err := OpenVerified(dir, want)
	if err != nil {
		return err
	}
	defer r.Close()
	p = orNop(p)
	buf := make([]byte, 1<<20)
	var off int64
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			if err := writeSparse(out, buf[:n], off); err != nil {
				return err
			}
			off += int64(n)
			p.Add(int64(n))
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	return out.Truncate(off)
}

// CopyIn copies the local file src into the snapshot directory as dir/name,
// sparsely (holes and all-zero blocks stay holes), hashing it on the way,
// and returns its manifest entry: the mirror of CopyOut. The file is
// fsynced when CopyIn returns; on failure it is removed.
func CopyIn(dir, name, role, chunker, src string, p Progress) (File, error) {
	in, err := os.Open(src)
	if err != nil {
		return File{}, err
	}
	defer in.Close()
	w, err := CreateFile(dir, name, role, chunker, p)
	if err != nil {
		return File{}, err
	}
	if err := w.CopySparseFrom(in); err != nil {
		w.Abort()
		return File{}, err
	}
	return w.Commit()
}

var zeroBlock = make([]byte, 4096)

// writeSparse writes b at off, skipping all-zero 4 KiB blocks.
func writeSparse(f *os.File, b []byte, off int64) error {
	for i := 0; i < len(b); {
		j := min(i+len(zeroBlock), len(b))
		if bytes.Equal(b[i:j], zeroBlock[:j-i]) {
			i = j
			continue
		}
		// Extend the run of non-zero blocks.
		k := j
		for k < len(b) {
			e := min(k+len(zeroBlock), len(b))
			if bytes.Equal(b[k:e], zeroBlock[:e-k]) {
				break
			}
			k = e
		}
		if _, err := f.WriteAt(b[i:k], off+int64(i)); err != nil {
			return err
		}
		i = k
	}
	return nil
}
