package metad

import (
	"context"
	"errors"
	"time"

	"stasis/cas"
)

// This file is the contract between metad and its clients (casfs, stasis,
// the HTTP adapter). The in-process *Service and the HTTP *Client both
// implement API, so embedded mode and daemon mode run the same casfs code.

// Ino is an inode number, unique for the life of a metad store. Inode numbers
// come from a badger sequence and are never reused.
type Ino uint64

// RootIno is the root directory of the namespace.
const RootIno Ino = 1

// SnapID names a snapshot. LiveSnap (0) is the live, writable tree; every
// other value is an immutable snapshot, and mutations addressed to it fail
// with ErrReadOnly.
type SnapID uint64

// LiveSnap addresses the live tree.
const LiveSnap SnapID = 0

// Node addresses an inode in the live tree or in a snapshot. Inode numbers
// inside a snapshot are those the inodes had when it was taken.
type Node struct {
	Snap SnapID `json:"snap"`
	Ino  Ino    `json:"ino"`
}

// Attr is an inode's attributes. Mode holds the file type bits (S_IFDIR,
// S_IFREG, S_IFLNK, ...) and the permission bits, as in stat(2).
type Attr struct {
	Ino   Ino       `json:"ino"`
	Mode  uint32    `json:"mode"`
	Uid   uint32    `json:"uid"`
	Gid   uint32    `json:"gid"`
	Nlink uint32    `json:"nlink"`
	Size  uint64    `json:"size"`
	Rdev  uint32    `json:"rdev,omitempty"`
	Atime time.Time `json:"atime"`
	Mtime time.Time `json:"mtime"`
	Ctime time.Time `json:"ctime"`
	// Gen increases on every content commit; clients compare it on open to
	// decide whether cached data is stale (close-to-open consistency).
	Gen uint64 `json:"gen"`
}

// DirEntry is one directory entry.
type DirEntry struct {
	Name string `json:"name"`
	Ino  Ino    `json:"ino"`
	Mode uint32 `json:"mode"` // type bits and permissions of the target
}

// SetAttrRequest changes the attributes whose pointer is non-nil. A Size
// change truncates or extends the file's manifest (extension reads as zeros).
type SetAttrRequest struct {
	Mode  *uint32    `json:"mode,omitempty"` // permission bits only; type bits ignored
	Uid   *uint32    `json:"uid,omitempty"`
	Gid   *uint32    `json:"gid,omitempty"`
	Size  *uint64    `json:"size,omitempty"`
	Atime *time.Time `json:"atime,omitempty"`
	Mtime *time.Time `json:"mtime,omitempty"`
}

// CreateRequest makes a new inode under Parent. Mode carries the type bits.
// For symlinks Target is the link text. Policy, when non-empty, is the
// chunker policy of a new regular file; otherwise the nearest ancestor's
// "user.casfs.chunker" xattr, then the store default, applies.
type CreateRequest struct {
	Parent Ino    `json:"parent"`
	Name   string `json:"name"`
	Mode   uint32 `json:"mode"`
	Uid    uint32 `json:"uid"`
	Gid    uint32 `json:"gid"`
	Rdev   uint32 `json:"rdev,omitempty"`
	Target string `json:"target,omitempty"`
	Policy string `json:"policy,omitempty"`
}

// RenameFlags mirror renameat2(2).
type RenameFlags uint32

const (
	RenameNoReplace RenameFlags = 1 << 0
	RenameExchange  RenameFlags = 1 << 1
)

// Namespace is the POSIX tree. Every mutation is one atomic transaction:
// after a crash it either happened entirely or not at all. Reads take a
// Node so they work in snapshots; mutations take live inode numbers.
//
// Errors: ErrNotFound, ErrExists, ErrNotDir, ErrIsDir, ErrNotEmpty,
// ErrInvalid (bad name: empty, ".", "..", containing '/' or NUL, over 255
// bytes; rename into own subtree), ErrReadOnly, ErrNoData (missing xattr).
type Namespace interface {
	Lookup(ctx context.Context, parent Node, name string) (Attr, error)
	GetAttr(ctx context.Context, n Node) (Attr, error)
	SetAttr(ctx context.Context, ino Ino, req SetAttrRequest) (Attr, error)
	// Create makes a file, directory, symlink or special file.
	Create(ctx context.Context, req CreateRequest) (Attr, error)
	Readlink(ctx context.Context, n Node) (string, error)
	// Link adds a hard link to a non-directory.
	Link(ctx context.Context, ino Ino, newParent Ino, newName string) (Attr, error)
	// Unlink removes a non-directory entry. An inode whose link count drops
	// to zero lives on while it is open (see Open/Release).
	Unlink(ctx context.Context, parent Ino, name string) error
	// Rmdir removes an empty directory.
	Rmdir(ctx context.Context, parent Ino, name string) error
	// Rename moves an entry, replacing an existing target (a file, or an
	// empty directory when the source is a directory) unless flags forbid it.
	Rename(ctx context.Context, oldParent Ino, oldName string, newParent Ino, newName string, flags RenameFlags) error
	// ReadDir lists entries in name order, starting after the name `after`
	// ("" for the start), at most limit entries (0: no limit).
	ReadDir(ctx context.Context, dir Node, after string, limit int) ([]DirEntry, error)
	GetXattr(ctx context.Context, n Node, name string) ([]byte, error)
	ListXattr(ctx context.Context, n Node) ([]string, error)
	SetXattr(ctx context.Context, ino Ino, name string, value []byte, flags uint32) error // XATTR_CREATE/XATTR_REPLACE semantics
	RemoveXattr(ctx context.Context, ino Ino, name string) error
	// Open and Release bracket a client's use of an inode, so that an
	// unlinked but open file keeps its content until its last Release.
	Open(ctx context.Context, ino Ino) error
	Release(ctx context.Context, ino Ino) error
}

// Endpoint is one blockd server as clients see it.
type Endpoint struct {
	Name string `json:"name"` // token scope and placement key
	URL  string `json:"url"`  // base URL, e.g. http://127.0.0.1:7001
}

// ReadPlan is what a client needs to read a file: its committed manifest,
// where each chunk lives, and a get token valid until Expiry.
type ReadPlan struct {
	Attr      Attr         `json:"attr"`
	Manifest  cas.Manifest `json:"manifest"`
	Endpoints []Endpoint   `json:"endpoints"`
	// Location[i] indexes Endpoints for Manifest.Extents[i] (unused for holes).
	Location []uint16  `json:"location"`
	Token    string    `json:"token"` // grants get on every endpoint
	Expiry   time.Time `json:"expiry"`
}

// UploadPlan answers PrepareUpload: which of the offered chunks blockd lacks
// and where each must go. Chunks not listed as missing are pinned until
// Expiry, so garbage collection cannot delete them before the client commits.
type UploadPlan struct {
	Endpoints []Endpoint     `json:"endpoints"`
	Missing   []MissingChunk `json:"missing"`
	Token     string         `json:"token"` // grants put (and has) on every endpoint
	Expiry    time.Time      `json:"expiry"`
}

// MissingChunk is a chunk the client must upload to Endpoints[Endpoint].
type MissingChunk struct {
	ID       cas.ChunkID `json:"id"`
	Endpoint uint16      `json:"endpoint"`
}

// CommitRequest replaces a file's content with Manifest (whose Size becomes
// the file size). If ExpectGen is non-zero and the file's Gen differs, the
// commit fails with ErrConflict.
type CommitRequest struct {
	Ino       Ino          `json:"ino"`
	Manifest  cas.Manifest `json:"manifest"`
	Mtime     time.Time    `json:"mtime"`
	ExpectGen uint64       `json:"expect_gen,omitempty"`
}

// Content manages file manifests and the dedup negotiation. The write path is:
// PrepareUpload(ids) -> upload Missing to blockd with Token -> Commit. Commit
// is atomic, adjusts chunk reference counts, and is refused (ErrMissingChunk)
// if any chunk it names is neither known to be stored nor confirmed by blockd.
type Content interface {
	ReadPlan(ctx context.Context, n Node) (ReadPlan, error)
	PrepareUpload(ctx context.Context, ids []cas.ChunkID) (UploadPlan, error)
	Commit(ctx context.Context, req CommitRequest) (Attr, error)
}

// Snapshot describes one snapshot of a directory subtree.
type Snapshot struct {
	ID      SnapID    `json:"id"`
	Dir     Ino       `json:"dir"`  // the live directory it was taken of
	Name    string    `json:"name"` // unique among Dir's snapshots
	Created time.Time `json:"created"`
	Root    Node      `json:"root"` // the snapshot's root directory, for browsing
}

// Snapshots are immutable, cheap copies of a directory subtree.
type Snapshots interface {
	CreateSnapshot(ctx context.Context, dir Ino, name string) (Snapshot, error)
	ListSnapshots(ctx context.Context, dir Ino) ([]Snapshot, error)
	DeleteSnapshot(ctx context.Context, dir Ino, name string) error
}

// Stats are store-wide totals.
//
// Inodes, LogicalBytes, Chunks, StoredRaw, HoleBytes and Snapshots are
// metad's own counts (what is referenced). StoredEncoded and BlockChunks
// are what the blockd servers report holding (blockd.Usage, summed): every
// chunk they store, including chunks no longer referenced that garbage
// collection has not deleted yet, so BlockChunks may exceed Chunks.
// BlocksUnreported counts the blockd servers that did not answer (down,
// failing, or keeping no usage; metad logs their names): their share is
// missing from StoredEncoded and BlockChunks, which are then lower bounds.
type Stats struct {
	Inodes           uint64 `json:"inodes"`
	LogicalBytes     uint64 `json:"logical_bytes"`  // sum of live file sizes
	Chunks           uint64 `json:"chunks"`         // distinct referenced chunks
	StoredRaw        uint64 `json:"stored_raw"`     // raw bytes of distinct chunks
	StoredEncoded    uint64 `json:"stored_encoded"` // encoded (compressed) bytes blockd holds
	BlockChunks      uint64 `json:"block_chunks"`   // chunks blockd holds
	BlocksUnreported int    `json:"blocks_unreported,omitempty"`
	HoleBytes        uint64 `json:"hole_bytes"`
	Snapshots        uint64 `json:"snapshots"`
}

// API is everything metad offers a client.
//
// Durability: every call that returns success has committed its change, and
// the change survives metad's process being killed. Against a power loss or
// kernel crash, Commit, CreateSnapshot and DeleteSnapshot are durable when
// they return; namespace changes (Create, SetAttr, Rename, Unlink, SetXattr,
// ...) may be committed without a disk sync, depending on the store's mode
// (metad.SyncMode), and become durable at the next of: a Sync, a Commit or
// snapshot call (each syncs everything before it), or the store's
// background flush (default within 1 s). Whatever a crash loses is a suffix
// of whole changes: the store never shows half a change.
type API interface {
	Namespace
	Content
	Snapshots
	Stats(ctx context.Context) (Stats, error)
	// Sync returns when every change acknowledged before the call is durable
	// against power loss (casfs calls it for fsync and fsyncdir).
	Sync(ctx context.Context) error
}

// Errors. The HTTP adapter maps them to status codes and back, so a client
// can test them with errors.Is whichever implementation it holds.
var (
	ErrNotFound     = errors.New("not found")
	ErrExists       = errors.New("already exists")
	ErrNotDir       = errors.New("not a directory")
	ErrIsDir        = errors.New("is a directory")
	ErrNotEmpty     = errors.New("directory not empty")
	ErrInvalid      = errors.New("invalid argument")
	ErrReadOnly     = errors.New("read-only snapshot")
	ErrNoData       = errors.New("no such attribute")
	ErrConflict     = errors.New("conflicting concurrent change")
	ErrMissingChunk = errors.New("commit names a chunk the block store does not hold")
	ErrUnavailable  = errors.New("service unavailable")
	ErrNoSpace      = errors.New("no space left")
)
