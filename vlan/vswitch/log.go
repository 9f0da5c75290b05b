package vswitch

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Log is the network's part of a checkpoint: the frames that were in flight
// across the checkpoint line, per destination port in delivery order.
type Log struct {
	// Epoch is the checkpoint's epoch.
	Epoch   uint64
	Entries []LogEntry
}

// LogEntry is one in-flight frame.
type LogEntry struct {
	Port  string // destination port
	VLAN  uint16
	Epoch uint64 // the sender's epoch (older than the log's)
	Frame []byte
}

// ErrCorruptLog is returned (wrapped) for a log file that is truncated,
// damaged or of an unknown version.
var ErrCorruptLog = errors.New("vswitch: corrupt in-flight log")

// The log file format, all integers big-endian:
//
//	header  magic "STXSWLOG" | version u16 (1) | reserved u16 (0) | epoch u64 | crc32c u32 of the preceding 20 bytes
//	record  kind u8 | length u32 | body [length] | crc32c u32 of kind, length and body
//	        kind 1 (frame): vlan u16 | sender epoch u64 | port name length u8 | port name | frame
//	        kind 2 (end):   number of frame records u64; must be the last record
//
// A reader refuses a file without the end record, with a bad checksum, with
// a count that does not match, or with bytes after the end record.
const (
	logMagic      = "STXSWLOG"
	logVersion    = 1
	logHeaderLen  = 8 + 2 + 2 + 8 + 4
	recFrame      = 1
	recEnd        = 2
	maxRecordBody = 2 + 8 + 1 + 255 + MaxFrameLen
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// WriteTo writes the log in its file format.
func (l *Log) WriteTo(w io.Writer) (int64, error) {
	bw := bufio.NewWriter(w)
	var n int64
	var hdr [logHeaderLen]byte
	copy(hdr[:], logMagic)
	binary.BigEndian.PutUint16(hdr[8:], logVersion)
	binary.BigEndian.PutUint64(hdr[12:], l.Epoch)
	binary.BigEndian.PutUint32(hdr[20:], crc32.Checksum(hdr[:20], castagnoli))
	m, _ := bw.Write(hdr[:])
	n += int64(m)
	body := make([]byte, 0, maxRecordBody)
	for i, e := range l.Entries {
		if len(e.Port) == 0 || len(e.Port) > 255 || len(e.Frame) > MaxFrameLen {
			return n, fmt.Errorf("vswitch: log entry %d: port name of %d bytes or frame of %d bytes out of range", i, len(e.Port), len(e.Frame))
		}
		body = body[:0]
		body = binary.BigEndian.AppendUint16(body, e.VLAN)
		body = binary.BigEndian.AppendUint64(body, e.Epoch)
		body = append(body, byte(len(e.Port)))
		body = append(body, e.Port...)
		body = append(body, e.Frame...)
		m, _ = writeRecord(bw, recFrame, body)
		n += int64(m)
	}
	body = binary.BigEndian.AppendUint64(body[:0], uint64(len(l.Entries)))
	m, _ = writeRecord(bw, recEnd, body)
	n += int64(m)
	return n, bw.Flush()
}

func writeRecord(w *bufio.Writer, kind byte, body []byte) (int, error) {
	var h [5]byte
	h[0] = kind
	binary.BigEndian.PutUint32(h[1:], uint32(len(body)))
	crc := crc32.Update(crc32.Checksum(h[:], castagnoli), castagnoli, body)
	var t [4]byte
	binary.BigEndian.PutUint32(t[:], crc)
	a, _ := w.Write(h[:])
	b, _ := w.Write(body)
	c, err := w.Write(t[:])
	return a + b + c, err
}

// ReadLog reads a log written by WriteTo. It returns an error wrapping
// ErrCorruptLog if the data is truncated, damaged or of another version.
func ReadLog(r io.Reader) (*Log, error) {
	br := bufio.NewReader(r)
	var hdr [logHeaderLen]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrCorruptLog, err)
	}
	if string(hdr[:8]) != logMagic {
		return nil, fmt.Errorf("%w: bad magic %q", ErrCorruptLog, hdr[:8])
	}
	if crc32.Checksum(hdr[:20], castagnoli) != binary.BigEndian.Uint32(hdr[20:]) {
		return nil, fmt.Errorf("%w: header checksum mismatch", ErrCorruptLog)
	}
	if v := binary.BigEndian.Uint16(hdr[8:]); v != logVersion {
		return nil, fmt.Errorf("%w: unsupported version %d (want %d)", ErrCorruptLog, v, logVersion)
	}
	l := &Log{Epoch: binary.BigEndian.Uint64(hdr[12:])}
	body := make([]byte, maxRecordBody)
	for rec := 0; ; rec++ {
		var h [5]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return nil, fmt.Errorf("%w: record %d: truncated before the end record: %v", ErrCorruptLog, rec, err)
		}
		size := binary.BigEndian.Uint32(h[1:])
		if size > maxRecordBody {
			return nil, fmt.Errorf("%w: record %d: length %d too large", ErrCorruptLog, rec, size)
		}
		b := body[:size]
		var t [4]byte
		if _, err := io.ReadFull(br, b); err != nil {
			return nil, fmt.Errorf("%w: record %d: truncated body: %v", ErrCorruptLog, rec, err)
		}
		if _, err := io.ReadFull(br, t[:]); err != nil {
			return nil, fmt.Errorf("%w: record %d: truncated checksum: %v", ErrCorruptLog, rec, err)
		}
		crc := crc32.Update(crc32.Checksum(h[:], castagnoli), castagnoli, b)
		if crc != binary.BigEndian.Uint32(t[:]) {
			return nil, fmt.Errorf("%w: record %d: checksum mismatch", ErrCorruptLog, rec)
		}
		switch h[0] {
		case recFrame:
			if len(b) < 11 || len(b) < 11+int(b[10]) || b[10] == 0 {
				return nil, fmt.Errorf("%w: record %d: malformed frame record", ErrCorruptLog, rec)
			}
			nl := int(b[10])
			l.Entries = append(l.Entries, LogEntry{
				VLAN:  binary.BigEndian.Uint16(b),
				Epoch: binary.BigEndian.Uint64(b[2:]),
				Port:  string(b[11 : 11+nl]),
				Frame: append([]byte(nil), b[11+nl:]...),
			})
		case recEnd:
			if len(b) != 8 {
				return nil, fmt.Errorf("%w: record %d: malformed end record", ErrCorruptLog, rec)
			}
			if c := binary.BigEndian.Uint64(b); c != uint64(len(l.Entries)) {
				return nil, fmt.Errorf("%w: end record counts %d frames, read %d", ErrCorruptLog, c, len(l.Entries))
			}
			if _, err := br.ReadByte(); err != io.EOF {
				return nil, fmt.Errorf("%w: data after the end record", ErrCorruptLog)
			}
			return l, nil
		default:
			return nil, fmt.Errorf("%w: record %d: unknown kind %d", ErrCorruptLog, rec, h[0])
		}
	}
}
