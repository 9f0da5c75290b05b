package casfs_test

import (
	"context"
	"testing"

	"stasis/blockd"
	"stasis/casfs"
	"stasis/metad"
)

// fixedStats is a metad whose Stats answers a given value (other calls are
// not made by FS.Stats).
type fixedStats struct {
	metad.API
	st metad.Stats
}

func (f fixedStats) Stats(context.Context) (metad.Stats, error) { return f.st, nil }

// TestStatsRatios: FS.Stats passes metad's stored sizes through and derives
// the compression ratio only when every blockd reported.
func TestStatsRatios(t *testing.T) {
	for _, tc := range []struct {
		name  string
		in    metad.Stats
		ratio float64
	}{
		{"all reported", metad.Stats{LogicalBytes: 8000, StoredRaw: 4000, StoredEncoded: 1000, Chunks: 4, BlockChunks: 5}, 4},
		{"nothing stored", metad.Stats{}, 0},
		{"one blockd unreported", metad.Stats{StoredRaw: 4000, StoredEncoded: 1000, Chunks: 4, BlockChunks: 2, BlocksUnreported: 1}, 0},
	} {
		fs, err := casfs.New(casfs.Config{Meta: fixedStats{st: tc.in}, Transport: casfs.StoreTransport{Store: blockd.NewMemStore()},
			StagingDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		st, err := fs.Stats(context.Background())
		fs.Close(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if st.StoredRaw != tc.in.StoredRaw || st.StoredEncoded != tc.in.StoredEncoded || st.BlockChunks != tc.in.BlockChunks ||
			st.BlocksUnreported != tc.in.BlocksUnreported || st.CompressionRatio != tc.ratio {
			t.Errorf("%s: stats %+v from %+v; want the sizes passed through and ratio %v", tc.name, st, tc.in, tc.ratio)
		}
	}
}
