package metad

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"stasis/blockd"
	"stasis/cas"
)

// BlockBackend is one blockd server: how clients reach it (Endpoint) and how
// metad itself asks it which chunks it holds and deletes garbage (Store).
// Embedded mode passes in-process stores; the daemon passes blockd.Clients.
type BlockBackend struct {
	Endpoint Endpoint
	Store    blockd.PruneStore
}

// Config configures a Service. Exactly one of Store and Dir is set.
type Config struct {
	// Store is an open store the Service takes over (it closes it).
	Store Store
	// Dir is a badger directory to open with Badger options.
	Dir    string
	Badger BadgerOptions
	// Keyring mints the get/put tokens handed to clients. Required.
	Keyring *cas.Keyring
	// Blocks are the blockd servers; chunks are placed over them by
	// rendezvous hashing on Endpoint.Name. At least one. Changing the set
	// moves placements (there is no rebalancing yet).
	Blocks []BlockBackend
	// TokenTTL is the life of tokens and of the pins PrepareUpload takes on
	// chunks it reports present. Default 10 minutes.
	TokenTTL time.Duration
	// GCInterval is the period of the background garbage collector; 0
	// disables it (call GC yourself). The first pass runs no earlier than
	// TokenTTL after Open, because pins do not survive a restart.
	GCInterval time.Duration
	// SweepInterval is the period of Sweep (listing every blockd for chunks
	// that nothing references, e.g. uploaded but never committed), run by
	// the GC loop; 0 never sweeps in the background.
	SweepInterval time.Duration
	// DefaultPolicy is the chunker policy of new files when neither the
	// request nor an ancestor's user.casfs.chunker xattr names one.
	// Default fixed:64k.
	DefaultPolicy cas.Policy
	// Logger; nil discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (c *Config) validate() error {
	if (c.Store == nil) == (c.Dir == "") {
		return fmt.Errorf("%w: config needs exactly one of Store and Dir", ErrInvalid)
	}
	if c.Keyring == nil {
		return fmt.Errorf("%w: config needs a Keyring", ErrInvalid)
	}
	if len(c.Blocks) == 0 || len(c.Blocks) > 1<<16 {
		return fmt.Errorf("%w: config needs 1 to 65536 block backends, got %d", ErrInvalid, len(c.Blocks))
	}
	names := map[string]bool{}
	for i, b := range c.Blocks {
		if b.Endpoint.Name == "" || b.Store == nil {
			return fmt.Errorf("%w: block backend %d needs a name and a store", ErrInvalid, i)
		}
		if names[b.Endpoint.Name] {
			return fmt.Errorf("%w: block backend name %q repeated", ErrInvalid, b.Endpoint.Name)
		}
		names[b.Endpoint.Name] = true
	}
	if c.TokenTTL < 0 || c.GCInterval < 0 || c.SweepInterval < 0 {
		return fmt.Errorf("%w: negative duration in config", ErrInvalid)
	}
	if c.DefaultPolicy != (cas.Policy{}) {
		if err := c.DefaultPolicy.Validate(); err != nil {
			return fmt.Errorf("%w: default policy: %v", ErrInvalid, err)
		}
	}
	return nil
}

// Service implements API over a Store. It is safe for concurrent use.
type Service struct {
	cfg       Config
	st        Store
	log       *slog.Logger
	now       func() time.Time
	endpoints []Endpoint
	seeds     []uint64 // placement seed per endpoint
	policy    cas.Policy
	started   time.Time

	// snapMu orders snapshot creation (exclusive) against namespace and
	// content mutations (shared), so a snapshot copies a frozen tree.
	snapMu sync.RWMutex

	// pinMu guards the chunk coordination between uploads, commits and GC.
	pinMu      sync.Mutex
	pins       map[cas.ChunkID]time.Time // chunks PrepareUpload reported present
	expect     map[cas.ChunkID]time.Time // chunks PrepareUpload asked a client to upload (Sweep spares them)
	holds      map[cas.ChunkID]int       // chunks a commit is verifying
	collecting map[cas.ChunkID]struct{}  // chunks GC is deleting from blockd
	pruneAt    int                       // prune expired pins when pins+expect grow past this

	// openMu guards opens and orders Unlink/Rename/Release decisions about
	// inodes whose link count reaches zero.
	openMu sync.Mutex
	opens  map[Ino]int

	usageDown sync.Map // endpoint name -> true while its blockd usage fails (stats.go)

	stamp    uint64 // start time, the high half of stats delta keys
	deltaSeq atomic.Uint64
	deltas   atomic.Int64 // delta keys written since the last compaction (approximate)

	// Batch sizes derived from the store's transaction limit (setTxnLimit).
	batch, inline, fastCommit int
	// batchHook, when set (tests), runs before each batch transaction of a
	// batched commit; an error fails the commit.
	batchHook func(mid uint64, next int) error

	relMu   sync.Mutex    // one releaser at a time
	relKick chan struct{} // wakes the releaser
	relDone chan struct{}

	gcMu     sync.Mutex // one GC pass at a time
	stop     chan struct{}
	done     chan struct{}
	closeOne sync.Once
}

var _ API = (*Service)(nil)

// Open opens the store, recovers from an unclean shutdown (finishes
// snapshots that were being created or deleted, reclaims orphaned inodes)
// and starts the garbage collector if configured.
func Open(cfg Config) (*Service, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Service{
		cfg: cfg, log: cfg.Logger, now: cfg.Now, policy: cfg.DefaultPolicy,
		pins: map[cas.ChunkID]time.Time{}, expect: map[cas.ChunkID]time.Time{}, holds: map[cas.ChunkID]int{}, collecting: map[cas.ChunkID]struct{}{},
		opens: map[Ino]int{},
	}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.cfg.TokenTTL == 0 {
		s.cfg.TokenTTL = 10 * time.Minute
	}
	if s.policy == (cas.Policy{}) {
		s.policy = cas.Fixed(64 << 10)
	}
	for _, b := range cfg.Blocks {
		s.endpoints = append(s.endpoints, b.Endpoint)
		s.seeds = append(s.seeds, placementSeed(b.Endpoint.Name))
	}
	s.started = s.now()
	s.stamp = uint64(time.Now().UnixNano())
	if cfg.Store != nil {
		s.st = cfg.Store
	} else {
		st, err := OpenBadgerStore(cfg.Dir, cfg.Badger)
		if err != nil {
			return nil, err
		}
		s.st = st
	}
	limit := defaultTxnWrites
	if l, ok := s.st.(txnLimiter); ok {
		limit = l.MaxTxnWrites()
	}
	s.setTxnLimit(limit)
	s.relKick, s.relDone = make(chan struct{}, 1), make(chan struct{})
	if err := s.recover(context.Background()); err != nil {
		s.st.Close()
		return nil, err
	}
	s.stop, s.done = make(chan struct{}), make(chan struct{})
	go s.releaseLoop()
	s.kickReleaser() // releases queued before a restart
	if cfg.GCInterval > 0 {
		go s.gcLoop()
	} else {
		close(s.done)
	}
	return s, nil
}

// Close stops the garbage collector and closes the store.
func (s *Service) Close() error {
	var err error
	s.closeOne.Do(func() {
		close(s.stop)
		<-s.done
		<-s.relDone
		err = s.st.Close()
	})
	return err
}

// Sync implements API: it returns when every change acknowledged before the
// call is durable against power loss. With a store that syncs every
// transaction (SyncAll) or never (SyncNone, MemStore) it returns at once.
func (s *Service) Sync(ctx context.Context) error {
	y, ok := s.st.(Syncer)
	if !ok {
		return nil
	}
	return y.Sync(ctx)
}

// Store returns the underlying store (for fsck and tests).
func (s *Service) Store() Store { return s.st }

// Endpoints returns the configured blockd endpoints, in placement order.
func (s *Service) Endpoints() []Endpoint { return append([]Endpoint(nil), s.endpoints...) }

func (s *Service) recover(ctx context.Context) error {
	err := s.st.Update(ctx, func(t Txn) error {
		v, err := t.Get(versionKey())
		switch {
		case errors.Is(err, ErrNoKey):
			if err := t.Set(versionKey(), []byte{schemaVersion}); err != nil {
				return err
			}
		case err != nil:
			return err
		case len(v) != 1 || v[0] != schemaVersion:
			return fmt.Errorf("metad: store has schema version %v, this metad understands %d", v, schemaVersion)
		}
		return nil
	})
	if err != nil {
		return err
	}
	err = s.update(ctx, func(t *tx) error {
		if _, err := t.t.Get(inodeKey(LiveSnap, RootIno)); !errors.Is(err, ErrNoKey) {
			return err
		}
		root := &inode{Mode: syscall.S_IFDIR | 0o755, Nlink: 2, Atime: t.now, Mtime: t.now, Ctime: t.now, Parent: RootIno}
		t.add(RootIno, root)
		t.delta.Inodes++
		return nil
	})
	if err != nil {
		return err
	}
	// Snapshots left half-built or half-deleted by a crash are deleted.
	var unfinished []SnapID
	err = s.st.View(ctx, func(t Txn) error {
		return t.Iterate([]byte{kSnap}, nil, func(k, v []byte) error {
			var r snapRecord
			if err := jsonUnmarshal(v, &r); err != nil {
				return err
			}
			if r.State != snapReady {
				unfinished = append(unfinished, SnapID(getU64(k[1:])))
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	for _, id := range unfinished {
		s.log.Info("finishing interrupted snapshot operation", "snap", id)
		if err := s.purgeSnapshot(ctx, id); err != nil {
			return err
		}
	}
	// Commits a crash interrupted are rolled back.
	if err := s.recoverPending(ctx); err != nil {
		return err
	}
	// Orphans: nobody can hold them open across a restart.
	n, err := reclaimOrphans(ctx, s.st, s.now().UnixNano(), s.inline, s.writeDelta)
	if err != nil {
		return err
	}
	if n > 0 {
		s.log.Info("reclaimed orphaned inodes", "count", n)
	}
	return nil
}

// tx is one Service transaction: the store transaction plus a cache of live
// inodes it has read (written back by flush) and the stats delta.
type tx struct {
	s      *Service
	t      Txn
	now    int64
	inodes map[Ino]*txInode
	snaps  map[SnapID]bool
	delta  statDelta
	// budget is the number of chunk counts the transaction may still drop
	// inline when it releases manifests; larger releases are queued.
	budget int
	// released is set when the transaction queued a release.
	released bool
}

type txInode struct {
	n              *inode
	dirty, deleted bool
}

// update runs fn in a Service transaction.
func (s *Service) update(ctx context.Context, fn func(*tx) error) error {
	released := false
	err := s.st.Update(ctx, func(txn Txn) error {
		t := &tx{s: s, t: txn, now: s.now().UnixNano(), inodes: map[Ino]*txInode{}, budget: s.inline}
		defer func() { released = t.released }()
		if err := fn(t); err != nil {
			return err
		}
		if err := t.flush(); err != nil {
			return err
		}
		return s.writeDelta(txn, t.delta)
	})
	if errors.Is(err, ErrTxnTooBig) {
		return fmt.Errorf("%w: change too large for one transaction: %w", ErrNoSpace, err)
	}
	if err == nil && released && s.relKick != nil {
		s.kickReleaser()
	}
	return err
}

func (s *Service) writeDelta(txn Txn, d statDelta) error {
	if d.zero() {
		return nil
	}
	b, err := jsonMarshal(d)
	if err != nil {
		return err
	}
	s.deltas.Add(1)
	return txn.Set(statsDeltaKey(s.stamp, s.deltaSeq.Add(1)), b)
}

// view runs fn in a read-only Service transaction.
func (s *Service) view(ctx context.Context, fn func(*tx) error) error {
	return s.st.View(ctx, func(txn Txn) error {
		return fn(&tx{s: s, t: txn, now: s.now().UnixNano(), inodes: map[Ino]*txInode{}})
	})
}

// live returns the live inode ino (cached for the transaction).
func (t *tx) live(ino Ino) (*inode, error) {
	if c, ok := t.inodes[ino]; ok {
		if c.deleted {
			return nil, fmt.Errorf("%w: inode %d", ErrNotFound, ino)
		}
		return c.n, nil
	}
	n, err := t.load(LiveSnap, ino)
	if err != nil {
		return nil, err
	}
	t.inodes[ino] = &txInode{n: n}
	return n, nil
}

func (t *tx) load(snap SnapID, ino Ino) (*inode, error) {
	b, err := t.t.Get(inodeKey(snap, ino))
	if errors.Is(err, ErrNoKey) {
		return nil, fmt.Errorf("%w: inode %d", ErrNotFound, ino)
	}
	if err != nil {
		return nil, err
	}
	return decodeInode(b)
}

// node reads an inode of the live tree or of a ready snapshot.
func (t *tx) node(n Node) (*inode, error) {
	if n.Snap == LiveSnap {
		return t.live(n.Ino)
	}
	if err := t.snapReady(n.Snap); err != nil {
		return nil, err
	}
	return t.load(n.Snap, n.Ino)
}

func (t *tx) snapReady(id SnapID) error {
	if t.snaps == nil {
		t.snaps = map[SnapID]bool{}
	}
	ok, seen := t.snaps[id]
	if !seen {
		r, err := getSnapRecord(t.t, id)
		ok = err == nil && r.State == snapReady
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		t.snaps[id] = ok
	}
	if !ok {
		return fmt.Errorf("%w: snapshot %d", ErrNotFound, id)
	}
	return nil
}

// dirty marks a cached live inode for write-back.
func (t *tx) dirty(ino Ino) { t.inodes[ino].dirty = true }

// add caches a new live inode for writing.
func (t *tx) add(ino Ino, n *inode) { t.inodes[ino] = &txInode{n: n, dirty: true} }

// flush writes back dirty inodes and deletes removed ones.
func (t *tx) flush() error {
	for ino, c := range t.inodes {
		switch {
		case c.deleted:
			if err := t.t.Delete(inodeKey(LiveSnap, ino)); err != nil {
				return err
			}
		case c.dirty:
			b, err := jsonMarshal(c.n)
			if err != nil {
				return err
			}
			if err := t.t.Set(inodeKey(LiveSnap, ino), b); err != nil {
				return err
			}
		}
	}
	return nil
}

// dirent looks up name in dir of snap.
func (t *tx) dirent(snap SnapID, dir Ino, name string) (Ino, uint32, error) {
	b, err := t.t.Get(direntKey(snap, dir, name))
	if errors.Is(err, ErrNoKey) {
		return 0, 0, fmt.Errorf("%w: %q in directory %d", ErrNotFound, name, dir)
	}
	if err != nil {
		return 0, 0, err
	}
	return decodeDirent(b)
}

// liveDir returns the live directory ino.
func (t *tx) liveDir(ino Ino) (*inode, error) {
	n, err := t.live(ino)
	if err != nil {
		return nil, err
	}
	if !n.isDir() {
		return nil, fmt.Errorf("%w: inode %d", ErrNotDir, ino)
	}
	return n, nil
}
