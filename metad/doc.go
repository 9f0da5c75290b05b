// Package metad is the metadata daemon of stasis: it owns the namespace
// (inodes, directory entries, attributes), the manifests of file content,
// snapshots of directory subtrees, chunk reference counts and garbage
// collection, and it mints the short-lived tokens that let clients talk to
// blockd directly. It never touches chunk data.
//
// # Layers
//
// A Store (ordered transactional KV: BadgerStore, pgstore on PostgreSQL, or MemStore for tests)
// holds every record; keys.go documents the key schema. Service implements
// API over a Store with all the logic: validation, reference counts, pins,
// placement, tokens, GC. Server adapts any API to HTTP/JSON (docs/API.md)
// and Client speaks that protocol and implements API again, so casfs runs
// the same code embedded (Open with in-process blockd stores) and against a
// daemon (cmd/metad with blockd.Clients). Fsck checks a stopped store.
//
// # Atomicity
//
// Every namespace or content mutation is one store transaction, retried on
// conflict: the manifest swap, every chunk and manifest reference count
// change and the stats counters commit together or not at all. Changes too
// large for one transaction (commits and releases of large manifests) go
// through durable pending and release records applied in batches, each
// batch advancing its record in the same transaction (batch.go); a failed
// or interrupted commit is rolled back, a release is finished. A process
// killed at any point restarts into a consistent store.
//
// # Durability
//
// Every acknowledged change survives metad's process being killed: badger
// copies a transaction into its memory-mapped write-ahead log before the
// commit returns, and the page cache outlives the process. What survives a
// power loss or kernel crash depends on the badger store's SyncMode:
//
//   - SyncCommits (the default of cmd/metad and of embedded casfs):
//     namespace changes (create, mkdir, setattr, rename, unlink, xattrs) are
//     committed without an fsync. Content commits, snapshot creation and
//     deletion, and Sync (POST /v1/sync; casfs calls it for fsync, fsyncdir
//     and the close of a file it created empty) sync the store before they
//     return, and a sync covers every transaction committed before it, so
//     a synced commit also makes the namespace changes before it durable.
//     GC syncs before it deletes chunks from blockd, so no namespace change
//     that freed a chunk can be lost after the chunk is gone. A background
//     flusher syncs within FlushInterval (default 1 s) of an unsynced
//     change: a machine crash loses at most about a second of namespace
//     changes that nothing synced, like ext4's commit interval, and what it
//     loses is whole transactions, never part of one.
//   - SyncAll: every transaction is synced before it returns (one fsync per
//     namespace change).
//   - SyncNone: nothing is synced (tests, scratch stores).
//
// Why "a sync covers everything before it" holds for badger, and how the
// store makes sure of it, is documented at BadgerStore.Sync: it syncs every
// memtable log still on disk, not only the active one.
//
// # Content and garbage collection
//
// A file's content is an immutable manifest (cas.Manifest) named by id; a
// manifest counts the inode records (live and snapshot) naming it, a chunk
// counts the manifests naming it. The write path is PrepareUpload (which
// chunks are missing, where they go, a put token; present chunks are pinned
// until the plan expires), upload to blockd, Commit (refused with
// ErrMissingChunk unless every chunk is referenced, pinned or confirmed by
// its blockd). A chunk whose count reaches zero joins the dead set; GC
// deletes dead chunks from blockd unless pinned or held by a commit in
// progress; Sweep deletes chunks blockd holds that metad does not know at
// all (uploads never committed). See gc.go for the protocol that keeps a
// chunk a client was told exists in blockd until it commits.
//
// # Snapshots
//
// A snapshot copies the inode and entry records of a directory subtree
// under its own id (inode numbers kept) and shares manifests by reference:
// no per-chunk work, cost linear in the number of inodes, mutations wait
// meanwhile. Later changes of the live tree never touch the copies.
//
// # Open files and orphans
//
// Open and Release counts live in memory. An inode unlinked while open
// keeps its content until the last Release; an inode still unlinked-but-open
// when metad stops is an orphan, deleted by the next Open of the store (or
// by Fsck with Repair).
//
// # Placement and tokens
//
// Chunks are placed on the configured blockd servers by rendezvous hashing
// of the endpoint names (Service.Place); read and upload plans carry the
// endpoints and a token for all of them (scope "*"), valid for TokenTTL.
// metad's own API needs a token with cas.OpAdmin for scope AuthScope.
package metad
