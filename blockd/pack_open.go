package blockd

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Store kinds, as recorded in a data directory's STORE file.
const (
	KindPack   = "pack"   // PackStore: pack files and a badger index (the default)
	KindBadger = "badger" // BadgerStore: chunks in badger's value log
)

// storeMarker is the file in a data directory naming its store kind.
const storeMarker = "STORE"

// ErrStoreKind means a data directory holds another kind of store than
// the one asked for, or a kind this blockd does not know.
var ErrStoreKind = errors.New("blockd: wrong store kind for the data directory")

// DiskStore is a persistent store as OpenStore returns it.
type DiskStore interface {
	PruneStore
	StatStore
	UsageStore
	Close() error
}

// StoreConfig configures OpenStore: the settings both kinds share.
type StoreConfig struct {
	Dir string
	// Kind is KindPack, KindBadger, or "" for the kind Dir holds (a new
	// directory gets KindPack). Asking for a kind Dir does not hold is an
	// error wrapping ErrStoreKind.
	Kind   string
	Logger *slog.Logger
	Small  bool
	// GCInterval, GCDiscardRatio and MinFreeBytes: see PackConfig and
	// BadgerConfig (compaction of packs, or value-log GC).
	GCInterval     time.Duration
	GCDiscardRatio float64
	MinFreeBytes   int64
	PackSize       int64 // pack store only
	MaxBytes       int64 // pack store only: a quota on pack bytes (PackConfig.MaxBytes)
	DirectReads    bool  // pack store only: see PackConfig.DirectReads
}

// DetectStoreKind reports the kind of store in dir: the kind its STORE
// file names; KindBadger for a directory without one that holds a badger
// database (made before STORE files existed); KindPack for one that holds
// packs; "" for a new (missing or store-less) directory.
func DetectStoreKind(dir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, storeMarker))
	if err == nil {
		kind := strings.TrimSpace(string(b))
		if kind != KindPack && kind != KindBadger {
			return "", fmt.Errorf("%w: %s names store kind %q (want %q or %q)", ErrStoreKind,
				filepath.Join(dir, storeMarker), kind, KindPack, KindBadger)
		}
		return kind, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("blockd: data dir: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "MANIFEST")); err == nil {
		return KindBadger, nil
	}
	if _, err := os.Stat(filepath.Join(dir, "packs")); err == nil {
		return KindPack, nil
	}
	return "", nil
}

// OpenStore opens the store in cfg.Dir, of the kind it holds, or creates
// one of cfg.Kind (default KindPack) and records its kind in DIR/STORE. It
// returns the store and its kind. A directory holding one kind cannot be
// opened as the other.
func OpenStore(cfg StoreConfig) (DiskStore, string, error) {
	if cfg.Dir == "" {
		return nil, "", errors.New("blockd: store config needs a Dir")
	}
	if cfg.Kind != "" && cfg.Kind != KindPack && cfg.Kind != KindBadger {
		return nil, "", fmt.Errorf("%w: unknown kind %q (want %q or %q)", ErrStoreKind, cfg.Kind, KindPack, KindBadger)
	}
	have, err := DetectStoreKind(cfg.Dir)
	if err != nil {
		return nil, "", err
	}
	kind := have
	switch {
	case have == "" && cfg.Kind == "":
		kind = KindPack
	case have == "":
		kind = cfg.Kind
	case cfg.Kind != "" && cfg.Kind != have:
		return nil, "", fmt.Errorf("%w: %s holds a %s store, not %s", ErrStoreKind, cfg.Dir, have, cfg.Kind)
	}
	pc := PackConfig{Dir: cfg.Dir, Logger: cfg.Logger, Small: cfg.Small, PackSize: cfg.PackSize, DirectReads: cfg.DirectReads,
		GCInterval: cfg.GCInterval, GCDiscardRatio: cfg.GCDiscardRatio, MinFreeBytes: cfg.MinFreeBytes, MaxBytes: cfg.MaxBytes}
	bc := BadgerConfig{Dir: cfg.Dir, Logger: cfg.Logger, Small: cfg.Small,
		GCInterval: cfg.GCInterval, GCDiscardRatio: cfg.GCDiscardRatio, MinFreeBytes: cfg.MinFreeBytes}
	// A bad config leaves no trace in the directory.
	if kind == KindPack {
		err = pc.Validate()
	} else {
		err = bc.Validate()
	}
	if err != nil {
		return nil, "", err
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, "", fmt.Errorf("blockd: data dir: %w", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.Dir, storeMarker)); errors.Is(err, os.ErrNotExist) {
		// Before the store's own files, so a directory is never left
		// holding a store of an unrecorded kind.
		if err := writeMarker(cfg.Dir, kind); err != nil {
			return nil, "", err
		}
	}
	var st DiskStore
	if kind == KindPack {
		st, err = OpenPack(pc)
	} else {
		st, err = OpenBadger(bc)
	}
	if err != nil {
		return nil, "", err
	}
	return st, kind, nil
}

// writeMarker writes DIR/STORE durably (temporary file, sync, rename,
// directory sync).
func writeMarker(dir, kind string) error {
	path := filepath.Join(dir, storeMarker)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("blockd: store marker: %w", err)
	}
	_, err = f.WriteString(kind + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("blockd: store marker: %w", err)
	}
	return nil
}
