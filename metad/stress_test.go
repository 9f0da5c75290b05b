package metad

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"syscall"
	"testing"

	"stasis/cas"
)

// TestConcurrentNamespaceStress runs random namespace and content
// mutations from several goroutines (plus snapshots and GC) on badger, so
// transactions conflict and retry; afterwards fsck must be clean.
func TestConcurrentNamespaceStress(t *testing.T) {
	e := newEnv(t, false, 2)
	ctx := context.Background()
	s := e.s
	var pool []cas.ChunkID
	data := map[cas.ChunkID][]byte{}
	for i := range 12 {
		pool = append(pool, e.put(t, chunkData(i))...)
		data[pool[i]] = chunkData(i)
	}
	dirs := []Ino{RootIno}
	for i := range 3 {
		dirs = append(dirs, e.mkdir(t, RootIno, fmt.Sprintf("d%d", i)).Ino)
	}
	allowed := func(err error) bool {
		for _, ok := range []error{ErrNotFound, ErrExists, ErrNotDir, ErrIsDir, ErrNotEmpty, ErrInvalid, ErrMissingChunk} {
			if errors.Is(err, ok) {
				return true
			}
		}
		return err == nil
	}
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			for i := range 150 {
				d1, d2 := dirs[r.IntN(len(dirs))], dirs[r.IntN(len(dirs))]
				n1, n2 := fmt.Sprintf("n%d", r.IntN(6)), fmt.Sprintf("n%d", r.IntN(6))
				var err error
				switch r.IntN(9) {
				case 0, 1:
					_, err = s.Create(ctx, CreateRequest{Parent: d1, Name: n1, Mode: syscall.S_IFREG | 0o644})
				case 2:
					_, err = s.Create(ctx, CreateRequest{Parent: d1, Name: n1, Mode: syscall.S_IFDIR | 0o755})
				case 3:
					err = s.Unlink(ctx, d1, n1)
				case 4:
					err = s.Rmdir(ctx, d1, n1)
				case 5:
					err = s.Rename(ctx, d1, n1, d2, n2, RenameFlags(r.IntN(3)))
				case 6:
					var a Attr
					if a, err = s.Lookup(ctx, Node{Ino: d1}, n1); err == nil {
						_, err = s.Link(ctx, a.Ino, d2, n2)
					}
				case 7:
					var a Attr
					if a, err = s.Lookup(ctx, Node{Ino: d1}, n1); err == nil {
						ids := []cas.ChunkID{pool[r.IntN(len(pool))], pool[r.IntN(len(pool))]}
						var plan UploadPlan
						if plan, err = s.PrepareUpload(ctx, ids); err != nil {
							break
						}
						for _, m := range plan.Missing {
							e.put(t, data[m.ID])
						}
						_, err = s.Commit(ctx, CommitRequest{Ino: a.Ino, Manifest: manifestOf(ids...)})
					}
				case 8:
					if w == 0 && i%25 == 0 {
						_, err = s.CreateSnapshot(ctx, d1, fmt.Sprintf("s%d", i))
					} else if w == 1 && i%30 == 0 {
						if l, _ := s.ListSnapshots(ctx, 0); len(l) > 0 {
							err = s.DeleteSnapshot(ctx, l[0].Dir, l[0].Name)
						}
					} else if i%2 == 0 {
						_, err = s.Sweep(ctx)
					} else {
						_, err = s.GC(ctx)
					}
				}
				if !allowed(err) {
					errc <- fmt.Errorf("worker %d op %d: %w", w, i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	e.fsckClean(t)
	e.referencedPresent(t)
	e.reopen(t)
	e.fsckClean(t)
}
