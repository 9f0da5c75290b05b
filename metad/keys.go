package metad

import (
	"encoding/binary"

	"stasis/cas"
)

// Key schema. Every record lives under a one-byte kind prefix; integers are
// fixed-width big-endian so that prefix scans return them in numeric order.
// Snapshot 0 is the live tree; a snapshot's namespace records are copies of
// the live ones under its own id (same inode numbers).
//
//	'i' snap(8) ino(8)          -> inode record (JSON, see inode)
//	'd' snap(8) parent(8) name  -> directory entry: ino(8) | mode(4)
//	'm' mid(8)                  -> manifest, cas binary encoding (immutable)
//	'r' mid(8)                  -> manifest reference count(8): inode records (live + snapshots) naming mid
//	'c' chunk(32)               -> chunk reference count(8) | raw size(4): manifests naming the chunk
//	'z' chunk(32)               -> dead chunk (count reached 0), not yet deleted from blockd: since unix ns(8)
//	'p' mid(8)                  -> pending commit of manifest mid (JSON, see pendingRec): its count increments are being applied in batches
//	'u' mid(8)                  -> release of manifest mid (JSON, see releaseRec): its count decrements are being applied in batches
//	'l' mid(8)                  -> chunk list of a pending commit or a release: n * (chunk(32) | raw size(4))
//	'o' ino(8)                  -> orphan: live inode with nlink 0 that was open (reclaimed at start)
//	'S' snap(8)                 -> snapshot record (JSON, see snapRecord)
//	'N' dir(8) name             -> snapshot id(8): names of the snapshots of dir
//	't' 0(8) 0(8)               -> stats base (JSON); 't' stamp(8) n(8) -> stats delta of one transaction
//	'q' name                    -> badger sequences (inode numbers, manifest ids, snapshot ids)
//	'v'                         -> schema version (1 byte)
//
// Inode numbers, manifest ids and snapshot ids come from Store.NextID and are
// never reused. A manifest id is referenced by exactly the inode records that
// name it; a chunk's count is the number of distinct manifests naming it,
// where a manifest being committed ('p') counts for the list entries applied
// so far and a manifest being released ('u') for those not yet released (see
// batch.go).
const (
	kInode    = 'i'
	kDirent   = 'd'
	kManifest = 'm'
	kMRef     = 'r'
	kChunk    = 'c'
	kDead     = 'z'
	kOrphan   = 'o'
	kPending  = 'p'
	kRelease  = 'u'
	kList     = 'l'
	kSnap     = 'S'
	kSnapName = 'N'
	kStats    = 't'
	kSeq      = 'q'
	kVersion  = 'v'
)

const schemaVersion = 1

func u64(b []byte, v uint64) []byte { return binary.BigEndian.AppendUint64(b, v) }

func inodeKey(snap SnapID, ino Ino) []byte {
	return u64(u64([]byte{kInode}, uint64(snap)), uint64(ino))
}

func inodePrefix(snap SnapID) []byte { return u64([]byte{kInode}, uint64(snap)) }

func direntKey(snap SnapID, parent Ino, name string) []byte {
	return append(direntPrefix(snap, parent), name...)
}

func direntPrefix(snap SnapID, parent Ino) []byte {
	return u64(u64([]byte{kDirent}, uint64(snap)), uint64(parent))
}

func direntSnapPrefix(snap SnapID) []byte { return u64([]byte{kDirent}, uint64(snap)) }

func manifestKey(mid uint64) []byte { return u64([]byte{kManifest}, mid) }
func mrefKey(mid uint64) []byte     { return u64([]byte{kMRef}, mid) }

func pendingKey(mid uint64) []byte { return u64([]byte{kPending}, mid) }
func releaseKey(mid uint64) []byte { return u64([]byte{kRelease}, mid) }
func listKey(mid uint64) []byte    { return u64([]byte{kList}, mid) }

func chunkKey(id cas.ChunkID) []byte { return append([]byte{kChunk}, id[:]...) }
func deadKey(id cas.ChunkID) []byte  { return append([]byte{kDead}, id[:]...) }

func orphanKey(ino Ino) []byte { return u64([]byte{kOrphan}, uint64(ino)) }

func snapKey(id SnapID) []byte { return u64([]byte{kSnap}, uint64(id)) }

func snapNameKey(dir Ino, name string) []byte { return append(snapNamePrefix(dir), name...) }
func snapNamePrefix(dir Ino) []byte           { return u64([]byte{kSnapName}, uint64(dir)) }

func statsBaseKey() []byte                 { return u64(u64([]byte{kStats}, 0), 0) }
func statsDeltaKey(stamp, n uint64) []byte { return u64(u64([]byte{kStats}, stamp), n) }

func seqKey(name string) []byte { return append([]byte{kSeq}, name...) }

func versionKey() []byte { return []byte{kVersion} }

// Decoders of fixed-width fields; callers check lengths via these helpers.
func getU64(b []byte) uint64 {
	if len(b) < 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}
