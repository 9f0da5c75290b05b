package vswitch

import (
	"net"
	"testing"
	"time"
)

// TestTrunkMarkerAfterItsFrames: a trunk passes the peer's end-of-epoch
// marker on only after ReadBatch returned every frame the peer sent before
// it, and from a later call, when the switch has forwarded them. Passed on
// while they were still in the batch being read, EndCheckpoint could
// collect the log before they reached their port, and a restore lost them.
func TestTrunkMarkerAfterItsFrames(t *testing.T) {
	const before = 3 // frames the peer sends before its marker
	run := func(t *testing.T, tr epochCarrier, feed func()) {
		returned, markerAt := 0, -1
		tr.setMarkerFunc(func(e uint64) {
			if e == 1 && markerAt < 0 {
				markerAt = returned
			}
		})
		feed()
		pool := newFramePool(16)
		fs := make([]*Frame, 16)
		for i := range fs {
			fs[i] = pool.get()
		}
		deadline := time.Now().Add(5 * time.Second)
		for markerAt < 0 {
			if time.Now().After(deadline) {
				t.Fatalf("marker not passed on (%d frames read)", returned)
			}
			_ = tr.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			n, err := tr.ReadBatch(fs)
			if err != nil && !isTimeout(err) {
				t.Fatal(err)
			}
			returned += n
		}
		if markerAt != before {
			t.Fatalf("marker passed on when %d of the %d frames sent before it had been returned", markerAt, before)
		}
	}
	t.Run("mem", func(t *testing.T) {
		a, b := NewMemTrunk(16)
		defer a.Close()
		run(t, b.(epochCarrier), func() {
			fs := make([]*Frame, before)
			for i := range fs {
				fs[i] = new(Frame)
				fs[i].SetBytes(ethFrame(2, 1, "old epoch"))
			}
			if n, err := a.WriteBatch(fs); n != before || err != nil {
				t.Fatalf("WriteBatch: %d, %v", n, err)
			}
			if err := a.(*memTrunk).sendMarker(1); err != nil {
				t.Fatal(err)
			}
		})
	})
	t.Run("udp", func(t *testing.T) {
		conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer peer.Close()
		tr, err := NewUDPTrunkTo(conn, peer.LocalAddr().(*net.UDPAddr))
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		run(t, tr, func() {
			// Over loopback the datagrams are queued by the time the
			// writes return, so the first read gets all four at once.
			send := func(kind byte, seq uint64, frame []byte) {
				h := make([]byte, trunkHdrLen)
				putTrunkHdr(h, kind, 7, map[byte]uint64{trunkFrame: 0, trunkMarker: 1}[kind], seq)
				if _, err := peer.WriteToUDP(append(h, frame...), tr.LocalAddr()); err != nil {
					t.Fatal(err)
				}
			}
			for seq := uint64(1); seq <= before; seq++ {
				send(trunkFrame, seq, ethFrame(2, 1, "old epoch"))
			}
			send(trunkMarker, before, nil)
		})
		if tr.gaps() != 0 {
			t.Fatalf("%d gaps on a lossless exchange", tr.gaps())
		}
	})
}
