package vswitch

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestStreamPortBadLengthAndReconnect: a peer that breaks the length
// framing is disconnected; the next peer (a restarted QEMU) works.
func TestStreamPortBadLengthAndReconnect(t *testing.T) {
	dir := t.TempDir()
	sw := newTestSwitch(t, Config{})
	p, err := ListenStream(filepath.Join(dir, "a.sock"))
	if err != nil {
		t.Fatal(err)
	}
	mustAdd(t, sw, PortConfig{Name: "a", VLAN: 1}, p)
	other := NewMemPort(8)
	mustAdd(t, sw, PortConfig{Name: "b", VLAN: 1}, other)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	bad := dialStream(t, p.Path())
	if _, err := bad.c.Write([]byte{0xff, 0xff, 0xff, 0xff, 1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	// The switch hangs up on it.
	bad.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := bad.c.Read(make([]byte, 1)); err == nil {
		t.Fatal("a peer sending a bad length was not disconnected")
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("timed out waiting for the disconnect")
	}
	if p.badLens.Load() != 1 {
		t.Fatalf("badLens=%d", p.badLens.Load())
	}
	good := dialStream(t, p.Path())
	if err := good.Send(ctx, ethFrame(2, 1, "after reconnect")); err != nil {
		t.Fatal(err)
	}
	if got := recvTimeout(t, other, 5*time.Second); got == nil {
		t.Fatal("frame from the reconnected peer not forwarded")
	}
	// And back to the stream peer, with its length prefix.
	if err := other.Send(ctx, ethFrame(1, 2, "reply")); err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
	defer rcancel()
	if b, err := good.Recv(rctx); err != nil || b[5] != 1 {
		t.Fatalf("reply: %x %v", b, err)
	}
}

// TestUDPTrunkRejectsForeignAndCountsGaps: datagrams without a valid
// trunk header are dropped; a gap in the sequence during a checkpoint makes
// EndCheckpoint fail instead of returning an incomplete log.
func TestUDPTrunkRejectsForeignAndCountsGaps(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	forger, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer forger.Close()
	tr, err := NewUDPTrunkTo(conn, forger.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	sw := newTestSwitch(t, Config{})
	mustAdd(t, sw, PortConfig{Name: "trunk", Mode: Trunk}, tr)
	node := NewMemPort(8)
	mustAdd(t, sw, PortConfig{Name: "n", VLAN: 7}, node)
	send := func(b []byte) {
		if _, err := forger.WriteToUDP(b, tr.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	dgram := func(kind byte, vlan uint16, epoch, seq uint64, frame []byte) []byte {
		h := make([]byte, trunkHdrLen)
		putTrunkHdr(h, kind, vlan, epoch, seq)
		return append(h, frame...)
	}
	send([]byte("not a trunk datagram"))
	wrongVersion := dgram(trunkFrame, 7, 0, 1, ethFrame(9, 8, "v2"))
	wrongVersion[2] = 2
	send(wrongVersion)
	send(dgram(trunkFrame, 7, 0, 1, ethFrame(9, 8, "valid")))
	if got := recvTimeout(t, node, 2*time.Second); got == nil {
		t.Fatal("a valid trunk frame was not forwarded")
	}
	if got := recvTimeout(t, node, 50*time.Millisecond); got != nil {
		t.Fatalf("a bad datagram was forwarded: %q", got)
	}
	if tr.BadDatagrams() != 2 {
		t.Fatalf("BadDatagrams=%d, want 2", tr.BadDatagrams())
	}
	// Checkpoint; the peer's frames 2..4 are lost, 5 arrives, then its marker.
	if err := sw.BeginCheckpoint(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := sw.PortCheckpointed(ctx, "n"); err != nil {
		t.Fatal(err)
	}
	send(dgram(trunkFrame, 7, 0, 5, ethFrame(9, 8, "after a gap")))
	send(dgram(trunkMarker, 0, 1, 5, nil))
	if _, err := sw.EndCheckpoint(ctx); !errors.Is(err, ErrTrunkGap) {
		t.Fatalf("EndCheckpoint after a trunk gap: %v, want ErrTrunkGap", err)
	}
	// Our own marker went to the peer.
	forger.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 2048)
	for {
		n, _, err := forger.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("no marker from the switch: %v", err)
		}
		if n == trunkHdrLen && buf[3] == trunkMarker && binary.BigEndian.Uint64(buf[8:]) == 1 {
			break
		}
	}
}
