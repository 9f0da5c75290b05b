package metad

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/zeebo/blake3"

	"stasis/cas"
)

// Placement: rendezvous (highest random weight) hashing. Each endpoint has a
// seed derived from its name; a chunk lives on the endpoint with the highest
// mix(seed, chunk) score. Adding an endpoint moves only the chunks that it
// wins; but there is no rebalancing yet, so the endpoint set of a store must
// not change.
func placementSeed(name string) uint64 {
	h := blake3.Sum256([]byte("stasis placement v1\x00" + name))
	return binary.LittleEndian.Uint64(h[:8])
}

// mix64 is the splitmix64 finalizer.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// Place returns the index in Endpoints() of the endpoint that holds id.
func (s *Service) Place(id cas.ChunkID) int {
	k := binary.LittleEndian.Uint64(id[:8]) ^ binary.LittleEndian.Uint64(id[8:16])
	best, bestScore := 0, uint64(0)
	for i, seed := range s.seeds {
		if sc := mix64(k ^ seed); i == 0 || sc > bestScore {
			best, bestScore = i, sc
		}
	}
	return best
}

// missingBatch bounds one Missing call to a blockd server.
const missingBatch = 4096

// blockdMissing asks the placed blockd of each id whether it holds it and
// returns the set of ids that are missing.
func (s *Service) blockdMissing(ctx context.Context, ids []cas.ChunkID) (map[cas.ChunkID]bool, error) {
	groups := make([][]cas.ChunkID, len(s.endpoints))
	for _, id := range ids {
		i := s.Place(id)
		groups[i] = append(groups[i], id)
	}
	missing := map[cas.ChunkID]bool{}
	for i, g := range groups {
		for len(g) > 0 {
			n := min(len(g), missingBatch)
			miss, err := s.cfg.Blocks[i].Store.Missing(ctx, g[:n])
			if err != nil {
				return nil, fmt.Errorf("%w: blockd %s: %v", ErrUnavailable, s.endpoints[i].Name, err)
			}
			for _, id := range miss {
				missing[id] = true
			}
			g = g[n:]
		}
	}
	return missing, nil
}

func (s *Service) mint(ops cas.Op, subject string, exp time.Time) (string, error) {
	return s.cfg.Keyring.Mint(cas.Claims{Ops: ops, Subject: subject, Scope: cas.ScopeAny, Expiry: exp})
}

// PrepareUpload implements Content. Chunks referenced by a committed
// manifest are reported present without asking blockd; the others are
// checked with their blockd in batches. Every chunk reported present is
// pinned until the plan's Expiry: GC will not delete it before then, so the
// client may commit it without uploading. The token grants put and has on
// every endpoint (scope "*").
func (s *Service) PrepareUpload(ctx context.Context, ids []cas.ChunkID) (UploadPlan, error) {
	exp := s.now().Add(s.cfg.TokenTTL).Truncate(time.Second)
	ids = dedupIDs(ids)
	// Hold first, then look: GC skips held chunks and checks holds before
	// it starts deleting, so what we see present after holding stays
	// present; we pin it before we let go.
	_, collecting := s.hold(ids)
	defer s.unhold(ids)
	var unref []cas.ChunkID
	err := s.st.View(ctx, func(t Txn) error {
		for _, id := range ids {
			if collecting[id] {
				continue
			}
			if _, err := t.Get(chunkKey(id)); errors.Is(err, ErrNoKey) {
				unref = append(unref, id)
			} else if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return UploadPlan{}, err
	}
	missing, err := s.blockdMissing(ctx, unref)
	if err != nil {
		return UploadPlan{}, err
	}
	plan := UploadPlan{Endpoints: s.Endpoints(), Expiry: exp, Missing: []MissingChunk{}}
	s.pinMu.Lock()
	for _, id := range ids {
		if missing[id] || collecting[id] {
			plan.Missing = append(plan.Missing, MissingChunk{ID: id, Endpoint: uint16(s.Place(id))})
			if s.expect[id].Before(exp) {
				s.expect[id] = exp
			}
		} else if s.pins[id].Before(exp) {
			s.pins[id] = exp
		}
	}
	if n := len(s.pins) + len(s.expect); n > max(s.pruneAt, 1<<16) {
		s.prunePinsLocked()
		s.pruneAt = 2 * (len(s.pins) + len(s.expect))
	}
	s.pinMu.Unlock()
	if plan.Token, err = s.mint(cas.OpPut|cas.OpHas, "upload", exp); err != nil {
		return UploadPlan{}, err
	}
	return plan, nil
}

func dedupIDs(ids []cas.ChunkID) []cas.ChunkID {
	seen := make(map[cas.ChunkID]struct{}, len(ids))
	out := make([]cas.ChunkID, 0, len(ids))
	for _, id := range ids {
		if _, ok := seen[id]; !ok {
			seen[id] = struct{}{}
			out = append(out, id)
		}
	}
	return out
}

// hold protects ids from GC while a commit verifies and counts them. It
// returns the ids that are verified by a pin (unexpired PrepareUpload pin)
// and those GC is already deleting (never acceptable unless referenced).
func (s *Service) hold(ids []cas.ChunkID) (pinned, collecting map[cas.ChunkID]bool) {
	now := s.now()
	pinned, collecting = map[cas.ChunkID]bool{}, map[cas.ChunkID]bool{}
	s.pinMu.Lock()
	defer s.pinMu.Unlock()
	for _, id := range ids {
		s.holds[id]++
		if _, c := s.collecting[id]; c {
			collecting[id] = true
		} else if exp, ok := s.pins[id]; ok && now.Before(exp) {
			pinned[id] = true
		}
	}
	return pinned, collecting
}

func (s *Service) unhold(ids []cas.ChunkID) {
	s.pinMu.Lock()
	defer s.pinMu.Unlock()
	for _, id := range ids {
		if s.holds[id]--; s.holds[id] <= 0 {
			delete(s.holds, id)
		}
	}
}

// Commit implements Content. A chunk the manifest names is accepted if a
// committed manifest references it, or PrepareUpload pinned it, or its
// blockd confirms it holds it; otherwise the commit fails with
// ErrMissingChunk and changes nothing. A small change (the manifest swap and
// every count change) is one transaction; a larger one is applied in
// batches through a pending record and swapped in one last transaction, and
// rolled back if it fails (see batch.go). Either way the file is its old or
// its new content at every moment, also across a crash.
//
// A commit is durable when Commit returns: it syncs the store (Sync), which
// also makes every namespace change before it durable.
func (s *Service) Commit(ctx context.Context, req CommitRequest) (Attr, error) {
	a, err := s.commit(ctx, req)
	if err != nil {
		return Attr{}, err
	}
	if err := s.Sync(context.WithoutCancel(ctx)); err != nil {
		return Attr{}, fmt.Errorf("metad: commit of inode %d written but not synced: %w", req.Ino, err)
	}
	return a, nil
}

func (s *Service) commit(ctx context.Context, req CommitRequest) (Attr, error) {
	m := req.Manifest
	if err := m.Validate(); err != nil {
		return Attr{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	ids := m.ChunkIDs()
	pinned, collecting := s.hold(ids)
	defer s.unhold(ids)
	// Verify what neither a reference nor a pin vouches for. Holding the ids
	// keeps GC away, so what blockd confirms now stays until we commit.
	ok := map[cas.ChunkID]bool{}
	var ask []cas.ChunkID
	err := s.st.View(ctx, func(t Txn) error {
		// A large rewrite mostly names chunks of the file's current
		// manifest, which are referenced: no need to look each one up.
		cur := map[cas.ChunkID]bool{}
		if len(ids) > 1024 {
			if n, err := (&tx{t: t, inodes: map[Ino]*txInode{}}).load(LiveSnap, req.Ino); err == nil && n.isReg() && n.MID != 0 {
				if m, err := (&tx{t: t}).manifest(n.MID); err == nil {
					for _, e := range m.Extents {
						if !e.Hole {
							cur[e.ID] = true
						}
					}
				}
			}
		}
		for _, id := range ids {
			if cur[id] && !collecting[id] {
				ok[id] = true
				continue
			}
			_, err := t.Get(chunkKey(id))
			switch {
			case err == nil && !collecting[id]:
				ok[id] = true
			case err != nil && !errors.Is(err, ErrNoKey):
				return err
			case collecting[id]:
			case pinned[id]:
				ok[id] = true
			default:
				ask = append(ask, id)
			}
		}
		return nil
	})
	if err != nil {
		return Attr{}, err
	}
	if len(ask) > 0 {
		missing, err := s.blockdMissing(ctx, ask)
		if err != nil {
			return Attr{}, err
		}
		for _, id := range ask {
			if !missing[id] {
				ok[id] = true
			}
		}
	}
	okf := func(id cas.ChunkID) bool { return ok[id] }
	s.snapMu.RLock()
	defer s.snapMu.RUnlock()
	if len(ids) <= s.fastCommit {
		var a Attr
		err = s.update(ctx, func(t *tx) error {
			n, err := t.live(req.Ino)
			if err != nil {
				return err
			}
			if err := checkCommit(req, n); err != nil {
				return err
			}
			if err := t.swapManifest(req.Ino, n, &m, okf); err != nil {
				return err
			}
			if !req.Mtime.IsZero() {
				n.Mtime = req.Mtime.UnixNano()
			} else {
				n.Mtime = t.now
			}
			n.Ctime = t.now
			a = n.attr(req.Ino)
			return nil
		})
		if !errors.Is(err, ErrTxnTooBig) {
			return a, err
		}
	}
	return s.commitBatched(ctx, req, &m, okf)
}

// ReadPlan implements Content. The token grants get on every endpoint.
func (s *Service) ReadPlan(ctx context.Context, nd Node) (ReadPlan, error) {
	var plan ReadPlan
	err := s.view(ctx, func(t *tx) error {
		n, err := t.node(nd)
		if err != nil {
			return err
		}
		if n.isDir() {
			return fmt.Errorf("%w: inode %d", ErrIsDir, nd.Ino)
		}
		if !n.isReg() {
			return fmt.Errorf("%w: inode %d is not a regular file", ErrInvalid, nd.Ino)
		}
		m, err := t.manifest(n.MID)
		if err != nil {
			return err
		}
		if n.MID == 0 {
			m.Size = n.Size
			if m.Policy, err = cas.ParsePolicy(n.Policy); err != nil {
				m.Policy = s.policy
			}
		}
		plan.Attr, plan.Manifest = n.attr(nd.Ino), *m
		return nil
	})
	if err != nil {
		return ReadPlan{}, err
	}
	if plan.Manifest.Extents == nil {
		plan.Manifest.Extents = []cas.Extent{}
	}
	plan.Endpoints = s.Endpoints()
	plan.Location = make([]uint16, len(plan.Manifest.Extents))
	for i, e := range plan.Manifest.Extents {
		if !e.Hole {
			plan.Location[i] = uint16(s.Place(e.ID))
		}
	}
	plan.Expiry = s.now().Add(s.cfg.TokenTTL).Truncate(time.Second)
	if plan.Token, err = s.mint(cas.OpGet, "read", plan.Expiry); err != nil {
		return ReadPlan{}, err
	}
	return plan, nil
}
