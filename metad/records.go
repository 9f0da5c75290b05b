package metad

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"syscall"
	"time"
)

// inode is the stored form of an inode (JSON under an 'i' key).
type inode struct {
	Mode   uint32            `json:"mode"`
	Uid    uint32            `json:"uid"`
	Gid    uint32            `json:"gid"`
	Nlink  uint32            `json:"nlink"`
	Rdev   uint32            `json:"rdev,omitempty"`
	Size   uint64            `json:"size"`
	Atime  int64             `json:"atime"` // unix ns
	Mtime  int64             `json:"mtime"`
	Ctime  int64             `json:"ctime"`
	Gen    uint64            `json:"gen,omitempty"`
	Parent Ino               `json:"parent,omitempty"` // directories: the containing directory
	Target string            `json:"target,omitempty"` // symlinks
	Policy string            `json:"policy,omitempty"` // regular files: chunker policy
	MID    uint64            `json:"mid,omitempty"`    // regular files: manifest id, 0 for none
	Hole   uint64            `json:"hole,omitempty"`   // regular files: bytes below Size not backed by a chunk
	Xattr  map[string][]byte `json:"xattr,omitempty"`
}

func (n *inode) isDir() bool  { return n.Mode&syscall.S_IFMT == syscall.S_IFDIR }
func (n *inode) isReg() bool  { return n.Mode&syscall.S_IFMT == syscall.S_IFREG }
func (n *inode) isLink() bool { return n.Mode&syscall.S_IFMT == syscall.S_IFLNK }

func (n *inode) attr(ino Ino) Attr {
	return Attr{
		Ino: ino, Mode: n.Mode, Uid: n.Uid, Gid: n.Gid, Nlink: n.Nlink, Size: n.Size, Rdev: n.Rdev,
		Atime: time.Unix(0, n.Atime), Mtime: time.Unix(0, n.Mtime), Ctime: time.Unix(0, n.Ctime), Gen: n.Gen,
	}
}

func decodeInode(b []byte) (*inode, error) {
	n := new(inode)
	if err := json.Unmarshal(b, n); err != nil {
		return nil, fmt.Errorf("metad: corrupt inode record: %w", err)
	}
	return n, nil
}

func encodeDirent(ino Ino, mode uint32) []byte {
	b := binary.BigEndian.AppendUint64(make([]byte, 0, 12), uint64(ino))
	return binary.BigEndian.AppendUint32(b, mode)
}

func decodeDirent(b []byte) (Ino, uint32, error) {
	if len(b) != 12 {
		return 0, 0, fmt.Errorf("metad: corrupt directory entry (%d bytes)", len(b))
	}
	return Ino(binary.BigEndian.Uint64(b)), binary.BigEndian.Uint32(b[8:]), nil
}

// Snapshot states. Only ready snapshots are visible; the others are
// finished (deleted) by Open's recovery.
const (
	snapBuilding = "building"
	snapReady    = "ready"
	snapDeleting = "deleting"
)

// snapRecord is the stored form of a snapshot (JSON under an 'S' key).
type snapRecord struct {
	Dir     Ino    `json:"dir"`
	Name    string `json:"name"`
	Created int64  `json:"created"` // unix ns
	State   string `json:"state"`
}

func (r *snapRecord) snapshot(id SnapID) Snapshot {
	return Snapshot{ID: id, Dir: r.Dir, Name: r.Name, Created: time.Unix(0, r.Created), Root: Node{Snap: id, Ino: r.Dir}}
}

// chunkRec is the value under a 'c' key.
func encodeChunkRec(refs uint64, size uint32) []byte {
	b := binary.BigEndian.AppendUint64(make([]byte, 0, 12), refs)
	return binary.BigEndian.AppendUint32(b, size)
}

func decodeChunkRec(b []byte) (refs uint64, size uint32, err error) {
	if len(b) != 12 {
		return 0, 0, fmt.Errorf("metad: corrupt chunk record (%d bytes)", len(b))
	}
	return binary.BigEndian.Uint64(b), binary.BigEndian.Uint32(b[8:]), nil
}

// statDelta is a signed change of the Stats counters. Each transaction that
// changes them writes its own delta key (blind write, so concurrent
// transactions do not conflict on a shared counter); Stats sums base and
// deltas and compacts them now and then.
type statDelta struct {
	Inodes    int64 `json:"inodes,omitempty"`
	Logical   int64 `json:"logical,omitempty"`
	Chunks    int64 `json:"chunks,omitempty"`
	Raw       int64 `json:"raw,omitempty"`
	Hole      int64 `json:"hole,omitempty"`
	Snapshots int64 `json:"snapshots,omitempty"`
}

func (d *statDelta) add(o statDelta) {
	d.Inodes += o.Inodes
	d.Logical += o.Logical
	d.Chunks += o.Chunks
	d.Raw += o.Raw
	d.Hole += o.Hole
	d.Snapshots += o.Snapshots
}

func (d statDelta) zero() bool { return d == statDelta{} }

func (d statDelta) stats() Stats {
	c := func(v int64) uint64 { return uint64(max(v, 0)) }
	return Stats{Inodes: c(d.Inodes), LogicalBytes: c(d.Logical), Chunks: c(d.Chunks), StoredRaw: c(d.Raw), HoleBytes: c(d.Hole), Snapshots: c(d.Snapshots)}
}
