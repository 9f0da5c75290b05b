package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNetUpShowDown(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	b := make([]byte, 4)
	rand.Read(b)
	exp := "cli" + hex.EncodeToString(b)
	path := filepath.Join(t.TempDir(), "topo.json")
	topo := fmt.Sprintf(`{
  "experiment": %q,
  "nodes": [
    {"name": "a", "interfaces": [{"name": "eth0", "address": "10.0.0.1/24"}]},
    {"name": "b", "interfaces": [{"name": "eth0", "address": "10.0.0.2/24"}]}
  ],
  "lans": [{"name": "lan0", "rate": "10mbit", "members": [{"node": "a", "interface": "eth0"}, {"node": "b", "interface": "eth0"}]}]
}`, exp)
	if err := os.WriteFile(path, []byte(topo), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	opts := &netOptions{out: &out}
	t.Cleanup(func() {
		if err := runNetDown(context.Background(), &netOptions{out: &bytes.Buffer{}, experiment: exp}, nil); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})

	if err := runNetShow(ctx, &netOptions{out: &out, planOnly: true}, []string{path}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "netns stx-"+exp+"-a (node a)") {
		t.Errorf("plan output:\n%s", out.String())
	}
	out.Reset()
	if err := runNetUp(ctx, opts, []string{path}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "created 3 namespaces, 3 links, 2 addresses, 4 qdiscs") {
		t.Errorf("up output:\n%s", out.String())
	}
	out.Reset()
	if err := runNetShow(ctx, opts, []string{path}); err != nil {
		t.Fatalf("show after up: %v\n%s", err, out.String())
	}
	out.Reset()
	if err := runNetDown(ctx, opts, []string{path}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "removed 3 namespaces") {
		t.Errorf("down output:\n%s", out.String())
	}
	out.Reset()
	err := runNetShow(ctx, &netOptions{out: &out, jsonOut: true}, []string{path})
	if err == nil || !strings.Contains(err.Error(), "missing") || !strings.Contains(out.String(), `"state": "missing"`) {
		t.Errorf("show after down: %v\n%s", err, out.String())
	}
	if err := runNetDown(ctx, &netOptions{out: &out}, nil); err == nil {
		t.Error("down without topology or --experiment succeeded")
	}
}

func TestNetUpRejectsBadTopology(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.json")
	os.WriteFile(path, []byte(`{"experiment": "x", "nodes": [], "lans": [{"name": "l", "vlan": 5000, "members": [{"node": "ghost", "interface": "eth0"}]}]}`), 0o644)
	err := runNetUp(context.Background(), &netOptions{out: &bytes.Buffer{}}, []string{path})
	if err == nil || !strings.Contains(err.Error(), "ghost") || !strings.Contains(err.Error(), "5000") {
		t.Errorf("got %v, want both problems reported", err)
	}
}
