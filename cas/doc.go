// Package cas is the shared core of stasis: chunk identities (BLAKE3-256),
// chunkers (fixed-size aligned and FastCDC), zero/hole detection, the chunk
// codec (LZ4 block with a raw fallback), file manifests (ordered extents) and
// the token format (a keyed-BLAKE3 MAC) that metad mints and blockd verifies.
//
// The package does no I/O. Every decoder of untrusted bytes in it returns an
// error instead of panicking, and each has a fuzz target with a kept corpus
// under testdata/fuzz.
package cas
