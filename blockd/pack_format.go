package blockd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"strconv"
	"strings"

	"stasis/cas"
)

// Pack store on-disk format.
//
// A pack file (DIR/packs/%08d.pack) starts with a 16-byte file header:
//
//	"STASISPK" | version uint32 LE (1) | 4 zero bytes
//
// followed by regions, one per batch written: a region starts at a 4 KiB
// boundary when the store writes with O_DIRECT (zero bytes pad the space
// before it) and holds records back to back, each one chunk:
//
//	offset size
//	0      4    record magic "SPR1"
//	4      4    encoded length N, uint32 LE
//	8      32   chunk ID (BLAKE3-256 of the raw bytes)
//	40     4    CRC-32C (Castagnoli) of bytes 0..40
//	44     N    the encoded chunk (cas.Encode output)
//
// The header CRC tells a whole record header from garbage or a torn one
// (for a scan); the content is checked by its ID, which every reader
// verifies anyway (casfs and blockd.Client.GetRaw decode and re-hash each
// chunk they fetch; compaction re-hashes what it moves). A CRC of the data
// as well would cost ~10% of an embedded casfs write's CPU to check what
// the readers check already.
//
// The index is a badger database (DIR/index) with one key kind:
//
//	"c" | 32-byte chunk ID  ->  pack uint32 | offset uint64 | encoded length uint32 | raw length uint32
//
// (big-endian, 20 bytes; offset is where the record header starts). Values
// are tiny, so they live in badger's LSM tree, not in a value log.
const (
	packFileMagic   = "STASISPK"
	packVersion     = 1
	packHeaderSize  = 16
	recordMagic     = "SPR1"
	recordHeaderLen = 44
	indexValueLen   = 20
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// ErrPackCorrupt means pack data does not match what the index says about
// it: a pack file missing or shorter than an indexed record, or a record
// header that is damaged (CRC) or names another chunk or length.
var ErrPackCorrupt = errors.New("blockd: pack data corrupt or missing")

// packLoc is where a chunk's record is, as the index stores it.
type packLoc struct {
	pack   uint32
	off    int64 // of the record header
	encLen uint32
	rawLen uint32
}

// recLen is the record's size in the pack, header included.
func (l packLoc) recLen() int64 { return recordHeaderLen + int64(l.encLen) }

func (l packLoc) encode() []byte {
	b := make([]byte, indexValueLen)
	binary.BigEndian.PutUint32(b[0:], l.pack)
	binary.BigEndian.PutUint64(b[4:], uint64(l.off))
	binary.BigEndian.PutUint32(b[12:], l.encLen)
	binary.BigEndian.PutUint32(b[16:], l.rawLen)
	return b
}

func decodeLoc(b []byte) (packLoc, error) {
	if len(b) != indexValueLen {
		return packLoc{}, fmt.Errorf("blockd: index value of %d bytes, want %d", len(b), indexValueLen)
	}
	return packLoc{
		pack:   binary.BigEndian.Uint32(b[0:]),
		off:    int64(binary.BigEndian.Uint64(b[4:])),
		encLen: binary.BigEndian.Uint32(b[12:]),
		rawLen: binary.BigEndian.Uint32(b[16:]),
	}, nil
}

func packFileHeader() []byte {
	h := make([]byte, packHeaderSize)
	copy(h, packFileMagic)
	binary.LittleEndian.PutUint32(h[8:], packVersion)
	return h
}

func checkPackFileHeader(h []byte) error {
	if len(h) < packHeaderSize || string(h[:8]) != packFileMagic {
		return fmt.Errorf("%w: not a pack file (bad magic)", ErrPackCorrupt)
	}
	if v := binary.LittleEndian.Uint32(h[8:]); v != packVersion {
		return fmt.Errorf("%w: pack format version %d, this blockd reads %d", ErrPackCorrupt, v, packVersion)
	}
	return nil
}

// putRecordHeader fills hdr (recordHeaderLen bytes) for a chunk.
func putRecordHeader(hdr []byte, id cas.ChunkID, data []byte) {
	copy(hdr[0:4], recordMagic)
	binary.LittleEndian.PutUint32(hdr[4:], uint32(len(data)))
	copy(hdr[8:40], id[:])
	binary.LittleEndian.PutUint32(hdr[40:], crc32.Checksum(hdr[:40], crcTable))
}

// checkRecord checks a whole record read from a pack (header and data)
// against the chunk and length the index expects. The data itself is
// checked by its readers (see above).
func checkRecord(rec []byte, id cas.ChunkID, encLen uint32) error {
	if len(rec) != recordHeaderLen+int(encLen) {
		return fmt.Errorf("%w: record of chunk %s is %d bytes, want %d", ErrPackCorrupt, id.Short(), len(rec), recordHeaderLen+int(encLen))
	}
	if string(rec[0:4]) != recordMagic {
		return fmt.Errorf("%w: no record header where the index puts chunk %s", ErrPackCorrupt, id.Short())
	}
	want := binary.LittleEndian.Uint32(rec[40:])
	if got := crc32.Checksum(rec[:40], crcTable); got != want {
		return fmt.Errorf("%w: record header of chunk %s fails its CRC (%08x, want %08x)", ErrPackCorrupt, id.Short(), got, want)
	}
	if n := binary.LittleEndian.Uint32(rec[4:]); n != encLen {
		return fmt.Errorf("%w: record of chunk %s says %d bytes, index says %d", ErrPackCorrupt, id.Short(), n, encLen)
	}
	if !idEqual(rec[8:40], id) {
		return fmt.Errorf("%w: record where the index puts chunk %s holds another chunk", ErrPackCorrupt, id.Short())
	}
	return nil
}

func idEqual(b []byte, id cas.ChunkID) bool { return string(b) == string(id[:]) }

func packName(n uint32) string { return fmt.Sprintf("%08d.pack", n) }

// parsePackName returns the number of a pack file name, or false.
func parsePackName(name string) (uint32, bool) {
	s, ok := strings.CutSuffix(name, ".pack")
	if !ok || len(s) != 8 {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 0 {
		return 0, false
	}
	return uint32(n), true
}
