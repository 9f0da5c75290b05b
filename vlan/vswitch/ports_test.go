package vswitch

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// streamClient plays QEMU's side of a stream netdev.
type streamClient struct {
	c  *net.UnixConn
	br *bufio.Reader
	mu sync.Mutex
}

func dialStream(t *testing.T, path string) *streamClient {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &streamClient{c: c, br: bufio.NewReader(c)}
}

func (s *streamClient) Send(ctx context.Context, b []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	buf := binary.BigEndian.AppendUint32(nil, uint32(len(b)))
	buf = append(buf, b...)
	_, err := s.c.Write(buf)
	return err
}

func (s *streamClient) Recv(ctx context.Context) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.c.SetReadDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { s.c.SetReadDeadline(time.Now()) })
	defer stop()
	var h [4]byte
	if _, err := io.ReadFull(s.br, h[:]); err != nil {
		return nil, err
	}
	b := make([]byte, binary.BigEndian.Uint32(h[:]))
	if _, err := io.ReadFull(s.br, b); err != nil {
		return nil, err
	}
	return b, nil
}

// dgramClient plays QEMU's side of a dgram netdev.
type dgramClient struct {
	c    *net.UnixConn
	peer *net.UnixAddr
}

func (d *dgramClient) Send(ctx context.Context, b []byte) error {
	_, err := d.c.WriteToUnix(b, d.peer)
	return err
}

func (d *dgramClient) Recv(ctx context.Context) ([]byte, error) {
	d.c.SetReadDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { d.c.SetReadDeadline(time.Now()) })
	defer stop()
	b := make([]byte, 2048)
	n, _, err := d.c.ReadFromUnix(b)
	if err != nil {
		return nil, err
	}
	return b[:n], nil
}

// socketFabric attaches even nodes through StreamPorts and odd nodes
// through DgramPorts, on n switches joined by in-memory trunks. A rebuild
// reuses the socket paths, as a restored QEMU would.
func socketFabric(dir string, n int) fabric {
	return func(t *testing.T, nodes []*tnode) []*Switch {
		sws := make([]*Switch, n)
		for i := range sws {
			sws[i] = newTestSwitch(t, Config{})
		}
		for i := 0; i+1 < n; i++ {
			a, b := NewMemTrunk(1024)
			mustAdd(t, sws[i], PortConfig{Name: "trunk-next", Mode: Trunk}, a)
			mustAdd(t, sws[i+1], PortConfig{Name: "trunk-prev", Mode: Trunk}, b)
		}
		for _, nd := range nodes {
			swPath := filepath.Join(dir, nd.name+".sw")
			if nd.idx%2 == 0 {
				p, err := ListenStream(swPath)
				if err != nil {
					t.Fatal(err)
				}
				mustAdd(t, sws[nd.sw], PortConfig{Name: nd.name, VLAN: nd.vlan}, p)
				sc := dialStream(t, swPath)
				if err := p.WaitConnected(context.Background()); err != nil {
					t.Fatal(err)
				}
				nd.io = sc
				continue
			}
			vmPath := filepath.Join(dir, nd.name+".vm")
			_ = os.Remove(vmPath)
			c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: vmPath, Net: "unixgram"})
			if err != nil {
				t.Fatal(err)
			}
			c.SetReadBuffer(4 << 20)
			t.Cleanup(func() { c.Close() })
			p, err := NewDgramPort(swPath, vmPath)
			if err != nil {
				t.Fatal(err)
			}
			mustAdd(t, sws[nd.sw], PortConfig{Name: nd.name, VLAN: nd.vlan}, p)
			nd.io = &dgramClient{c: c, peer: &net.UnixAddr{Name: swPath, Net: "unixgram"}}
		}
		return sws
	}
}

func TestCheckpointSocketPorts(t *testing.T) {
	for _, restore := range []bool{false, true} {
		t.Run(fmt.Sprintf("restore=%v", restore), func(t *testing.T) {
			dir := t.TempDir()
			nodes := makeNodes(t, 6, 2, 2)
			runCheckpoints(t, socketFabric(dir, 2), nodes, restore)
		})
	}
}
