package hypervisor

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"
)

// Chunker policies for snapshot files on casfs.
const (
	ChunkerRAM    = "fixed:4096" // page-aligned RAM images
	ChunkerStream = "cdc:16k"    // migration streams, whose alignment shifts
)

// ChunkerForCluster is the policy for a disk image with the given cluster
// size (qcow2: 64 KiB by default).
func ChunkerForCluster(size int64) string {
	if size < 4096 || size&(size-1) != 0 {
		size = 65536
	}
	return fmt.Sprintf("fixed:%d", size)
}

// SetChunker sets the casfs chunker xattr on path. On filesystems without
// user xattrs (a plain tmpfs) it does nothing; any other failure is an error.
func SetChunker(path, policy string) error {
	if policy == "" {
		return nil
	}
	err := unix.Setxattr(path, ChunkerXattr, []byte(policy), 0)
	if err == nil || errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP) {
		return nil
	}
	return fmt.Errorf("set %s=%s on %s: %w", ChunkerXattr, policy, path, err)
}

// FileWriter writes one snapshot file, hashing the content as it goes. Write
// appends; Skip appends zeros without writing them (a hole). Commit fsyncs
// and closes the file and returns its manifest entry. After an error every
// later call returns it (sticky).
type FileWriter struct {
	f       *os.File
	path    string
	name    string
	role    string
	chunker string
	h       *blake3.Hasher
	n       int64 // logical size so far
	p       Progress
	err     error
}

// CreateFile creates dir/name, sets its chunker policy first, and returns a
// writer for it.
func CreateFile(dir, name, role, chunker string, p Progress) (*FileWriter, error) {
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, err
	}
	if err := SetChunker(path, chunker); err != nil {
		f.Close()
		os.Remove(path)
		return nil, err
	}
	return &FileWriter{f: f, path: path, name: name, role: role, chunker: chunker, h: blake3.New(), p: orNop(p)}, nil
}

// Write appends b.
func (w *FileWriter) Write(b []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n, err := w.f.WriteAt(b, w.n)
	w.h.Write(b[:n])
	w.n += int64(n)
	w.p.Add(int64(n))
	if err != nil {
		w.err = fmt.Errorf("write %s: %w", w.name, err)
		return n, w.err
	}
	return n, nil
}

// WriteSparse appends b, leaving all-zero 4 KiB blocks as holes.
func (w *FileWriter) WriteSparse(b []byte) error {
	if w.err != nil {
		return w.err
	}
	if err := writeSparse(w.f, b, w.n); err != nil {
		w.err = fmt.Errorf("write %s: %w", w.name, err)
		return w.err
	}
	w.h.Write(b)
	w.n += int64(len(b))
	w.p.Add(int64(len(b)))
	return nil
}

// Skip appends n zero bytes as a hole.
func (w *FileWriter) Skip(n int64) {
	if w.err != nil {
		return
	}
	for left := n; left > 0; {
		k := min(left, int64(len(zeroChunk)))
		w.h.Write(zeroChunk[:k])
		left -= k
	}
	w.n += n
	w.p.Add(n)
}

// ReadFrom copies r to the end of the file (io.ReaderFrom), so io.Copy
// into a FileWriter uses large buffers.
func (w *FileWriter) ReadFrom(r io.Reader) (int64, error) {
	buf := make([]byte, 1<<20)
	var total int64
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return total, werr
			}
			total += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// CopySparseFrom appends the whole of src, reading only its data regions
// (SEEK_DATA/SEEK_HOLE) and leaving holes and all-zero blocks unwritten.
func (w *FileWriter) CopySparseFrom(src *os.File) error {
	fi, err := src.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	buf := make([]byte, 1<<20)
	fd := int(src.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			data = size // only a hole remains
		} else if err != nil {
			data = off // no SEEK_DATA support: treat all as data
		}
		if data > off {
			w.Skip(data - off)
			off = data
			if off >= size {
				break
			}
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil || hole > size {
			hole = size
		}
		for off < hole {
			n, err := src.ReadAt(buf[:min(int64(len(buf)), hole-off)], off)
			if n > 0 {
				if werr := w.WriteSparse(buf[:n]); werr != nil {
					return werr
				}
				off += int64(n)
			}
			if err == io.EOF {
				// The source shrank while we read it.
				return fmt.Errorf("copy %s: source ended at %d of %d bytes", w.name, off, size)
			}
			if err != nil {
				return fmt.Errorf("copy %s: %w", w.name, err)
			}
		}
	}
	return w.err
}

// zeroChunk hashes holes in large pieces (BLAKE3 is much faster per byte
// on 64 KiB+ writes than on 4 KiB ones).
var zeroChunk = make([]byte, 256<<10)

// Size is the bytes written or skipped so far.
func (w *FileWriter) Size() int64 { return w.n }

// Commit sets the file's size, fsyncs and closes it (on casfs: the file is
// durable when Commit returns) and returns its manifest entry.
func (w *FileWriter) Commit() (File, error) {
	if w.err != nil {
		w.Abort()
		return File{}, w.err
	}
	err := w.f.Truncate(w.n)
	if err == nil {
		err = w.f.Sync()
	}
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		w.err = fmt.Errorf("commit %s: %w", w.name, err)
		return File{}, w.err
	}
	w.err = errors.New("file already committed")
	return File{Name: w.name, Role: w.role, Size: w.n, BLAKE3: hex.EncodeToString(w.h.Sum(nil)), Chunker: w.chunker}, nil
}

// Abort closes and removes the file (best effort).
func (w *FileWriter) Abort() {
	w.f.Close()
	os.Remove(w.path)
}

// HashFile computes the manifest entry of an existing file in dir that was
// written by someone else (a hypervisor writing a mapped-ram image directly),
// after fsyncing it.
func HashFile(dir, name, role, chunker string, p Progress) (File, error) {
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDWR, 0)
	if err != nil {
		return File{}, err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return File{}, fmt.Errorf("fsync %s: %w", name, err)
	}
	h := blake3.New()
	n, err := io.CopyBuffer(struct{ io.Writer }{h}, progressReader{f, orNop(p)}, make([]byte, 1<<20))
	if err != nil {
		return File{}, fmt.Errorf("read %s: %w", name, err)
	}
	return File{Name: name, Role: role, Size: n, BLAKE3: hex.EncodeToString(h.Sum(nil)), Chunker: chunker}, nil
}
