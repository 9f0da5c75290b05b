package badgersync

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dgraph-io/badger/v4"
)

// TestSyncCoversEveryMemtableLog fills badger's memtables so that some are
// immutable (their logs not synced by DB.Sync) and values spill into
// several value-log files, then checks that Sync reaches every memtable log
// in the directory, the two newest value logs and the directory.
func TestSyncCoversEveryMemtableLog(t *testing.T) {
	dir := t.TempDir()
	db, err := badger.Open(badger.DefaultOptions(dir).
		WithLogger(nil).WithSyncWrites(false).
		WithMemTableSize(1 << 20).WithNumMemtables(4).WithNumLevelZeroTables(8).WithNumLevelZeroTablesStall(16).
		WithValueThreshold(1 << 10).WithValueLogFileSize(2 << 20).
		WithBlockCacheSize(1 << 20).WithIndexCacheSize(1 << 20))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	big := bytes.Repeat([]byte("v"), 4<<10) // value-log values
	for i := range 3000 {
		if err := db.Update(func(txn *badger.Txn) error {
			if err := txn.Set([]byte(fmt.Sprintf("small-%06d", i)), []byte("x")); err != nil {
				return err
			}
			return txn.Set([]byte(fmt.Sprintf("big-%06d", i)), big)
		}); err != nil {
			t.Fatal(err)
		}
	}
	var synced []string
	onSync = func(p string) { synced = append(synced, p) }
	defer func() { onSync = nil }()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := Sync(dir, true); err != nil {
		t.Fatal(err)
	}
	var mems, vlogs []string
	for _, e := range ents {
		switch {
		case strings.HasSuffix(e.Name(), ".mem"):
			mems = append(mems, filepath.Join(dir, e.Name()))
		case strings.HasSuffix(e.Name(), ".vlog"):
			vlogs = append(vlogs, filepath.Join(dir, e.Name()))
		}
	}
	if len(vlogs) < 3 {
		t.Fatalf("the test wants several value-log files, has %d", len(vlogs))
	}
	slices.Sort(vlogs)
	for _, want := range append(append(mems, vlogs[len(vlogs)-2:]...), dir) {
		if !slices.Contains(synced, want) {
			t.Errorf("%s not synced (synced: %v)", filepath.Base(want), synced)
		}
	}
	if slices.Contains(synced, vlogs[0]) {
		t.Errorf("old value log %s synced: only the newest two need it", filepath.Base(vlogs[0]))
	}
	if len(mems) < 2 {
		t.Logf("only %d memtable log(s) present at the sync", len(mems))
	}
	// Without vlog, no value log is synced.
	synced = nil
	if err := Sync(dir, false); err != nil {
		t.Fatal(err)
	}
	for _, p := range synced {
		if strings.HasSuffix(p, ".vlog") {
			t.Errorf("Sync(dir, false) synced %s", p)
		}
	}
}

func TestVlogName(t *testing.T) {
	for fid, want := range map[int]string{0: "000000.vlog", 7: "000007.vlog", 123456: "123456.vlog", 1234567: "1234567.vlog"} {
		if got := vlogName(fid); got != want {
			t.Errorf("vlogName(%d) = %q, want %q", fid, got, want)
		}
	}
}

// TestSyncerSyncsDirOnlyWhenFilesChange: a Syncer syncs the directory on
// its first sync and again only after a memtable or value-log file appeared
// or went.
func TestSyncerSyncsDirOnlyWhenFilesChange(t *testing.T) {
	dir := t.TempDir()
	var synced []string
	onSync = func(p string) { synced = append(synced, p) }
	defer func() { onSync = nil }()
	s := New(dir)
	dirSynced := func() bool {
		defer func() { synced = nil }()
		if err := s.Sync(true); err != nil {
			t.Fatal(err)
		}
		return slices.Contains(synced, dir)
	}
	touch := func(name string) {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	touch("00001.mem")
	if !dirSynced() {
		t.Error("first sync did not sync the directory")
	}
	if dirSynced() {
		t.Error("sync with no new files synced the directory")
	}
	touch("000002.vlog")
	if !dirSynced() {
		t.Error("a new value log did not make the sync include the directory")
	}
	if err := os.Remove(filepath.Join(dir, "00001.mem")); err != nil {
		t.Fatal(err)
	}
	if !dirSynced() {
		t.Error("a removed memtable log did not make the sync include the directory")
	}
	touch("MANIFEST") // not a file whose appearance Sync tracks
	if dirSynced() {
		t.Error("an unrelated file made the sync include the directory")
	}
}
