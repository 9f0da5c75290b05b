package metad

import (
	"reflect"
	"runtime"
	"strings"
	"testing"
)

// serviceSuite are the Service tests that depend on no particular store
// backend: RunServiceSuite runs them on another one. (Tests of badger's
// sync modes, transaction limits and fault injection stay badger's.)
var serviceSuite = []func(*testing.T){
	TestNamespaceBasics, TestBadNames, TestRename, TestXattrAndSetAttr,
	TestCommitAndReadPlan, TestPrepareUploadDedup, TestGCRacePinnedChunk, TestGCConcurrentCommits,
	TestUnlinkOpenFile, TestOrphansReclaimedAtStart, TestCommitMovesReferences, TestSweep,
	TestCorruptRecords, TestFsckFindsAndRepairsRefcounts, TestStatsCompaction,
	TestAPIScenarioService, TestAPIScenarioHTTP, TestHTTPBadRequests, TestClientRenewsToken,
	TestSnapshots, TestSnapshotInterruptedIsRemoved, TestSnapshotHoldsUnlinkedContent,
	TestStatsBlockWithoutUsage, TestConcurrentNamespaceStress,
}

// RunServiceSuite runs the backend-independent Service tests with every
// env's store opened by open: open(t) returns a function that opens a store
// for t's env (a fresh one the first time, the same data again on reopen).
// The tests run one after another (testStore is package state).
func RunServiceSuite(t *testing.T, open func(t testing.TB) func() (Store, error)) {
	testStore = open
	defer func() { testStore = nil }()
	for _, fn := range serviceSuite {
		t.Run(funcName(fn), fn)
	}
}

func funcName(fn func(*testing.T)) string {
	n := runtime.FuncForPC(reflect.ValueOf(fn).Pointer()).Name()
	return strings.TrimPrefix(n[strings.LastIndex(n, ".")+1:], "Test")
}

// BenchStores runs the store-bound benchmarks (creates, a 1 GiB commit of
// 16384 chunks over another) on badger in mode, or, when open is set, on the
// stores it opens (see RunServiceSuite).
func BenchStores(b *testing.B, mode SyncMode, open func(testing.TB) func() (Store, error)) {
	testStore = open
	defer func() { testStore = nil }()
	b.Run("Create", func(b *testing.B) { benchCreate(b, mode) })
	b.Run("Commit1GiB", func(b *testing.B) { benchCommit1GiB(b, mode) })
}
