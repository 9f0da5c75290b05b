package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"stasis/cas"
)

// startDaemon runs a daemon that writes its bound address to --addr-file and
// returns "http://ADDR". Cleanup kills it by pid.
func startDaemon(t *testing.T, bin string, args ...string) string {
	t.Helper()
	addrFile := filepath.Join(t.TempDir(), "addr")
	cmd := exec.Command(bin, append(args, "--listen", "127.0.0.1:0", "--addr-file", addrFile, "--log-level", "warn", "--small")...)
	var logb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logb, &logb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("%s log:\n%s", filepath.Base(bin), logb.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if b, err := os.ReadFile(addrFile); err == nil && len(bytes.TrimSpace(b)) > 0 {
			return "http://" + strings.TrimSpace(string(b))
		}
		select {
		case <-exited:
			t.Fatalf("%s exited:\n%s", bin, logb.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not start:\n%s", bin, logb.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestDaemonBinaries runs the cluster layout with real binaries: blockd and
// metad daemons on random ports, two `casfs mount --meta` nodes; a file
// closed on one node reads back on the other.
func TestDaemonBinaries(t *testing.T) {
	casfsBin := buildBinary(t)
	blockdBin := buildPkg(t, "stasis/cmd/blockd")
	metadBin := buildPkg(t, "stasis/cmd/metad")
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, cas.NewSecretFile(1), 0o600); err != nil {
		t.Fatal(err)
	}
	burl := startDaemon(t, blockdBin, "--data", t.TempDir(), "--secret-file", secret, "--name", "b1")
	murl := startDaemon(t, metadBin, "--data", t.TempDir(), "--secret-file", secret, "--blockd", "b1="+burl)

	a, b := t.TempDir(), t.TempDir()
	startMountArgs(t, casfsBin, a, "--meta", murl, "--secret-file", secret, "--subject", "node-a", "--attr-timeout", "10ms")
	startMountArgs(t, casfsBin, b, "--meta", murl, "--secret-file", secret, "--subject", "node-b", "--attr-timeout", "10ms")

	data := randData(30, 3<<20+1)
	if err := os.WriteFile(filepath.Join(a, "memory"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	got, err := os.ReadFile(filepath.Join(b, "memory"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("node b read %d bytes (%v), want node a's %d", len(got), err, len(data))
	}

	// `casfs stats` shows what blockd holds, compressed, as metad learns
	// it from blockd's /v1/usage.
	if err := os.WriteFile(filepath.Join(a, "log"), compressibleData(1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(casfsBin, "stats", b).CombinedOutput()
	if err != nil {
		t.Fatalf("casfs stats: %v\n%s", err, out)
	}
	var st cliStats
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("casfs stats output: %v\n%s", err, out)
	}
	checkStoredBytes(t, st, uint64(len(data))+1<<20, uint64(len(data)))
}
