// Package casfs is the filesystem logic behind the casfs FUSE mount: open
// file state, the write pipeline (chunk, zero-detect, hash, compress, dedup
// negotiation with metad, upload of missing chunks only, manifest commit),
// the read path (extent lookup, a bounded chunk cache with singleflight and
// read-ahead, hash verification) and the snapshot view rules.
//
// It never imports go-fuse: package casfs/fusefs is a thin adapter that turns
// kernel requests into calls on *FS and *Handle and converts errors to errno
// once, at the boundary. The layer talks to metad through metad.API and to
// block stores through the narrow Transport interface, so embedded mode (both
// in-process) and daemon mode (HTTP clients) run the same code.
//
// Consistency: close-to-open. Flush (close), Fsync and Release commit a file's
// manifest to metad and return only when it is durable; a reader that opens
// a file afterwards, on any node, sees that content. Writes become visible to
// other nodes only at commit.
package casfs
