package main

import (
	"io"
	"os"
	"time"

	"stasis/cas"
)

// studyRow is one chunker policy's result on a set of images.
type studyRow struct {
	Policy      string
	Logical     int64   // bytes read
	ZeroBytes   int64   // bytes in all-zero chunks (holes)
	UniqueRaw   int64   // raw bytes of distinct non-zero chunks
	UniqueLZ4   int64   // the same after LZ4 per chunk
	Chunks      int     // distinct non-zero chunks
	MBps        float64 // chunk + zero check + hash + encode, single core
	DedupFactor float64 // Logical / UniqueLZ4
}

// chunkStudy cuts every file with each policy exactly as casfs does (zero
// chunks become holes, the rest are hashed and LZ4-encoded) and counts what
// would be stored.
func chunkStudy(files []string, policies []cas.Policy) ([]studyRow, error) {
	var rows []studyRow
	for _, p := range policies {
		r := studyRow{Policy: p.String()}
		seen := map[cas.ChunkID]struct{}{}
		var busy time.Duration
		enc := make([]byte, 0, cas.MaxEncodedSize)
		for _, f := range files {
			fh, err := os.Open(f)
			if err != nil {
				return nil, err
			}
			start := time.Now()
			sp := cas.NewSplitter(p.New(), func(off uint64, chunk []byte) error {
				r.Logical += int64(len(chunk))
				if cas.IsZero(chunk) {
					r.ZeroBytes += int64(len(chunk))
					return nil
				}
				id := cas.Sum(chunk)
				if _, ok := seen[id]; ok {
					return nil
				}
				seen[id] = struct{}{}
				enc = cas.Encode(enc[:0], chunk)
				r.UniqueRaw += int64(len(chunk))
				r.UniqueLZ4 += int64(len(enc))
				return nil
			})
			_, err = io.Copy(sp, fh)
			if err == nil {
				err = sp.Close()
			}
			busy += time.Since(start)
			fh.Close()
			if err != nil {
				return nil, err
			}
		}
		r.Chunks = len(seen)
		if busy > 0 {
			r.MBps = float64(r.Logical) / 1e6 / busy.Seconds()
		}
		if r.UniqueLZ4 > 0 {
			r.DedupFactor = float64(r.Logical) / float64(r.UniqueLZ4)
		}
		rows = append(rows, r)
	}
	return rows, nil
}
