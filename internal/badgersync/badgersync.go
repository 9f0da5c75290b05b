// Package badgersync makes everything committed to a badger database with
// SyncWrites off durable, which badger's own DB.Sync does not.
//
// DB.Sync (badger v4.9.6, db.go) syncs the active memtable's write-ahead log
// and the value log only. When a memtable fills up, ensureRoomForWrite makes
// it immutable without syncing its log, and its entries reach disk only when
// the background flush writes a table. A transaction that committed just
// before that switch is therefore not durable after DB.Sync returns. Sync
// here fdatasyncs every memtable log (*.mem) still in the directory — a log
// whose memtable was flushed is gone, and the table badger wrote for it was
// synced when it was written — plus the newest value-log files, and the
// directory itself when badger created or removed files since the last sync,
// so that they are found after a power loss.
package badgersync

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Syncer syncs one badger directory. It remembers which files the
// directory held at its last sync and syncs the directory itself only when
// that set changed (badger created or removed a file), so that a sync with
// nothing new costs only the data syncs. Safe for concurrent use.
type Syncer struct {
	dir   string
	mu    sync.Mutex
	names string // the *.mem and *.vlog names at the last good sync
}

// New returns a Syncer for the badger database in dir.
func New(dir string) *Syncer { return &Syncer{dir: dir} }

// Sync makes every transaction committed to the badger database before the
// call durable. With vlog, the two newest value-log files are synced too
// (values at or above the value threshold live there; two cover a file
// switch between the commit and this call); without it the caller promises
// that no value went to the value log.
func (s *Syncer) Sync(vlog bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return err
	}
	var vlogs []int
	var names strings.Builder
	for _, e := range ents {
		name := e.Name()
		if strings.HasSuffix(name, ".mem") {
			names.WriteString(name + "/")
			if err := datasync(filepath.Join(s.dir, name)); err != nil {
				return err
			}
		}
		if fid, ok := strings.CutSuffix(name, ".vlog"); ok {
			names.WriteString(name + "/")
			if n, err := strconv.Atoi(fid); err == nil && vlog {
				vlogs = append(vlogs, n)
			}
		}
	}
	slices.Sort(vlogs)
	for i := max(0, len(vlogs)-2); i < len(vlogs); i++ {
		if err := datasync(filepath.Join(s.dir, vlogName(vlogs[i]))); err != nil {
			return err
		}
	}
	if names.String() != s.names {
		if err := datasync(s.dir); err != nil {
			return err
		}
		s.names = names.String()
	}
	return nil
}

// Sync is New(dir).Sync(vlog): it always syncs the directory too.
func Sync(dir string, vlog bool) error { return New(dir).Sync(vlog) }

// onSync, when set (tests), is called with every path Sync syncs.
var onSync func(path string)

// vlogName is badger's value-log file name for fid (%06d.vlog).
func vlogName(fid int) string {
	s := strconv.Itoa(fid)
	if len(s) < 6 {
		s = strings.Repeat("0", 6-len(s)) + s
	}
	return s + ".vlog"
}

// datasync fdatasyncs path; a file removed meanwhile is no error. A data
// sync is what badger's own sync does (msync(MS_SYNC) is data-only on
// Linux): the data and the metadata needed to read it back, not timestamps.
func datasync(path string) error {
	if onSync != nil {
		onSync(path)
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	err = unix.Fdatasync(int(f.Fd()))
	if err != nil {
		err = &os.PathError{Op: "fdatasync", Path: path, Err: err}
	}
	return errors.Join(err, f.Close())
}
