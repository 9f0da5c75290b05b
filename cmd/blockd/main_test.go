package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"stasis/blockd"
	"stasis/blockd/storetest"
	"stasis/cas"
)

// The test binary doubles as the daemon: with BLOCKD_TEST_MAIN=1 it runs
// main with the remaining arguments.
func TestMain(m *testing.M) {
	if os.Getenv("BLOCKD_TEST_MAIN") == "1" {
		os.Args = append([]string{"blockd"}, os.Args[1:]...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type daemon struct {
	cmd    *exec.Cmd
	addr   string
	stderr *bytes.Buffer
	done   chan error
}

// command returns the daemon command line; the caller starts it.
func command(t *testing.T, args ...string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "BLOCKD_TEST_MAIN=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Stdout = &stderr
	return cmd, &stderr
}

// start runs the daemon on a random port and waits until it serves.
func start(t *testing.T, data, secret string, extra ...string) *daemon {
	t.Helper()
	addrFile := filepath.Join(t.TempDir(), "addr")
	cmd, stderr := command(t, append([]string{"--data", data, "--secret-file", secret, "--name", "b1",
		"--listen", "127.0.0.1:0", "--addr-file", addrFile, "--small", "--log-level", "warn"}, extra...)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemon{cmd: cmd, stderr: stderr, done: make(chan error, 1)}
	go func() { d.done <- cmd.Wait() }()
	t.Cleanup(func() { d.kill() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		if b, err := os.ReadFile(addrFile); err == nil {
			d.addr = strings.TrimSpace(string(b))
			break
		}
		select {
		case err := <-d.done:
			t.Fatalf("blockd exited early (%v): %s", err, stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("blockd did not start: %s", stderr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + d.addr + "/healthz")
	if err != nil {
		t.Fatalf("healthz: %v", err)
	}
	resp.Body.Close()
	return d
}

// kill SIGKILLs the daemon (by its pid) and waits for it to exit.
func (d *daemon) kill() {
	if d.cmd.ProcessState != nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
	}
}

func writeSecret(t *testing.T) (string, *cas.Keyring) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "secret")
	data := cas.NewSecretFile(3)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := cas.ParseKeyring(data)
	if err != nil {
		t.Fatal(err)
	}
	return path, k
}

func tokens(k *cas.Keyring) blockd.TokenSource {
	return func(op cas.Op) (string, error) {
		return k.Mint(cas.Claims{Ops: cas.OpGet | cas.OpHas | cas.OpPut | cas.OpDelete, Subject: "test",
			Scope: "b1", Expiry: time.Now().Add(time.Minute)})
	}
}

// TestKillDuringPuts SIGKILLs a blockd process while concurrent clients
// stream puts into it, restarts it on the same data, and checks that every
// acknowledged chunk is there and verifies, and that every chunk present
// verifies (nothing half-written is visible). It runs against both store
// kinds; the pack store uses 4 MiB packs so that the kill can land near
// a pack boundary as well as inside a pack.
func TestKillDuringPuts(t *testing.T) {
	for _, kind := range []struct {
		name string
		args []string
	}{
		{"pack", []string{"--store", "pack", "--pack-size", "4194304"}},
		{"badger", []string{"--store", "badger"}},
	} {
		t.Run(kind.name, func(t *testing.T) { testKillDuringPuts(t, kind.args) })
	}
}

func testKillDuringPuts(t *testing.T, args []string) {
	data := t.TempDir()
	secret, keys := writeSecret(t)
	d := start(t, data, secret, args...)
	url := "http://" + d.addr

	var (
		mu    sync.Mutex
		acked []blockd.Chunk
		sent  atomic.Int64
		wg    sync.WaitGroup
	)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for g := range 4 {
		wg.Go(func() {
			c := blockd.NewClient(url, tokens(keys), &http.Client{Timeout: 20 * time.Second})
			for i := 0; ; i++ {
				batch := storetest.Chunks(uint64(g)<<32|uint64(i), 8, 64<<10)
				sent.Add(int64(len(batch)))
				if err := c.Put(ctx, batch); err != nil {
					return // the daemon is gone
				}
				mu.Lock()
				acked = append(acked, batch...)
				mu.Unlock()
			}
		})
	}
	// Kill once a good number of puts have been acknowledged.
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d chunks acknowledged in 20 s: %s", n, d.stderr)
		}
		time.Sleep(5 * time.Millisecond)
	}
	d.kill()
	wg.Wait()
	t.Logf("killed after %d chunks acknowledged, %d sent", len(acked), sent.Load())

	d2 := start(t, data, secret, args...)
	c := blockd.NewClient("http://"+d2.addr, tokens(keys), &http.Client{Timeout: time.Minute})
	for _, ch := range acked {
		if _, err := c.GetRaw(ctx, nil, ch.ID); err != nil {
			t.Fatalf("acknowledged chunk %s after restart: %v", ch.ID.Short(), err)
		}
	}
	present := 0
	err := c.List(ctx, func(info blockd.ChunkInfo) error {
		present++
		if _, err := c.GetRaw(ctx, nil, info.ID); err != nil {
			return fmt.Errorf("chunk %s present after the crash does not verify: %w", info.ID.Short(), err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if present < len(acked) || int64(present) > sent.Load() {
		t.Fatalf("%d chunks present; %d acknowledged, %d sent", present, len(acked), sent.Load())
	}
	t.Logf("%d chunks present after restart (all verify)", present)
	// The store goes on taking puts after the crash.
	more := storetest.Chunks(1<<40, 8, 64<<10)
	if err := c.Put(ctx, more); err != nil {
		t.Fatalf("put after restart: %v", err)
	}
	if m, err := c.Missing(ctx, storetest.IDs(more)); err != nil || len(m) != 0 {
		t.Fatalf("after a put following the restart: missing %d, %v", len(m), err)
	}
}

// TestStoreKind: a new data directory holds a pack store and records it;
// asking for the other kind is refused with a clear message; a directory
// holding a badger store made before STORE files opens as badger.
func TestStoreKind(t *testing.T) {
	secret, keys := writeSecret(t)
	data := t.TempDir()
	d := start(t, data, secret)
	c := blockd.NewClient("http://"+d.addr, tokens(keys), &http.Client{Timeout: time.Minute})
	chunks := storetest.Chunks(2, 4, 1000)
	if err := c.Put(context.Background(), chunks); err != nil {
		t.Fatal(err)
	}
	d.kill()
	if b, _ := os.ReadFile(filepath.Join(data, "STORE")); string(b) != "pack\n" {
		t.Fatalf("STORE = %q, want pack", b)
	}
	if _, err := os.Stat(filepath.Join(data, "packs")); err != nil {
		t.Fatalf("no packs directory: %v", err)
	}
	cmd, out := command(t, "--data", data, "--secret-file", secret, "--listen", "127.0.0.1:0", "--store", "badger")
	err := runWithTimeout(cmd, 20*time.Second)
	if err == nil || !strings.Contains(out.String(), "holds a pack store, not badger") {
		t.Fatalf("opened a pack dir as badger: %v: %s", err, out)
	}

	old := t.TempDir()
	b, err := blockd.OpenBadger(blockd.BadgerConfig{Dir: old, Small: true, GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Put(context.Background(), chunks); err != nil {
		t.Fatal(err)
	}
	b.Close()
	d = start(t, old, secret)
	c = blockd.NewClient("http://"+d.addr, tokens(keys), &http.Client{Timeout: time.Minute})
	if m, err := c.Missing(context.Background(), storetest.IDs(chunks)); err != nil || len(m) != 0 {
		t.Fatalf("legacy badger dir: missing %d, %v", len(m), err)
	}
	d.kill()
	if b, _ := os.ReadFile(filepath.Join(old, "STORE")); string(b) != "badger\n" {
		t.Fatalf("legacy dir STORE = %q, want badger", b)
	}
}

func TestGracefulShutdown(t *testing.T) {
	secret, keys := writeSecret(t)
	data := t.TempDir()
	d := start(t, data, secret)
	c := blockd.NewClient("http://"+d.addr, tokens(keys), &http.Client{Timeout: time.Minute})
	chunks := storetest.Chunks(1, 4, 1000)
	if err := c.Put(context.Background(), chunks); err != nil {
		t.Fatal(err)
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v: %s", err, d.stderr)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
	d2 := start(t, data, secret)
	c2 := blockd.NewClient("http://"+d2.addr, tokens(keys), &http.Client{Timeout: time.Minute})
	if m, err := c2.Missing(context.Background(), storetest.IDs(chunks)); err != nil || len(m) != 0 {
		t.Fatalf("after restart: missing %d, %v", len(m), err)
	}
}

// TestBadConfig: each bad configuration is refused with a clear message
// and a non-zero exit.
func TestBadConfig(t *testing.T) {
	secret, _ := writeSecret(t)
	dir := t.TempDir()
	malformed := filepath.Join(dir, "malformed")
	os.WriteFile(malformed, []byte("1 nothex\n"), 0o600)
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte("# no keys\n"), 0o600)
	unreadable := filepath.Join(dir, "unreadable")
	os.Mkdir(unreadable, 0o700) // reading a directory fails, even as root
	notDir := filepath.Join(dir, "file")
	os.WriteFile(notDir, nil, 0o600)
	data := filepath.Join(dir, "data")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no data", []string{"--secret-file", secret}, "--data DIR is required"},
		{"no secret", []string{"--data", data}, "--secret-file FILE is required"},
		{"missing secret", []string{"--data", data, "--secret-file", filepath.Join(dir, "nope")}, "reading secret file"},
		{"unreadable secret", []string{"--data", data, "--secret-file", unreadable}, "reading secret file"},
		{"malformed secret", []string{"--data", data, "--secret-file", malformed}, "malformed secret file"},
		{"keyless secret", []string{"--data", data, "--secret-file", empty}, "holds no key"},
		{"data is a file", []string{"--data", notDir, "--secret-file", secret}, "data dir"},
		{"unwritable data", []string{"--data", "/proc/blockd-data", "--secret-file", secret}, "data dir"},
		{"bad listen", []string{"--data", data, "--secret-file", secret, "--listen", "127.0.0.1:99999"}, "--listen"},
		{"bad listen host", []string{"--data", data, "--secret-file", secret, "--listen", "nohost"}, "--listen"},
		{"bad log level", []string{"--data", data, "--secret-file", secret, "--log-level", "loud"}, "--log-level"},
		{"bad store kind", []string{"--data", data, "--secret-file", secret, "--listen", "127.0.0.1:0", "--store", "lsm"}, "unknown kind \"lsm\""},
		{"tiny pack size", []string{"--data", data, "--secret-file", secret, "--listen", "127.0.0.1:0", "--pack-size", "100"}, "pack size"},
		{"unknown flag", []string{"--bogus"}, "unknown flag"},
		{"stray argument", []string{"--data", data, "--secret-file", secret, "extra"}, "unknown command"},
	} {
		cmd, out := command(t, tc.args...)
		err := runWithTimeout(cmd, 20*time.Second)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() == 0 {
			t.Errorf("%s: exit %v, want failure; output: %s", tc.name, err, out)
			continue
		}
		if !strings.Contains(out.String(), tc.want) {
			t.Errorf("%s: output %q lacks %q", tc.name, out, tc.want)
		}
	}
}

func runWithTimeout(cmd *exec.Cmd, d time.Duration) error {
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		cmd.Process.Kill()
		<-done
		return errors.New("timed out")
	}
}

func TestHelpAndKeygen(t *testing.T) {
	cmd, out := command(t, "--help")
	if err := runWithTimeout(cmd, 20*time.Second); err != nil {
		t.Fatalf("--help: %v", err)
	}
	for _, want := range []string{"--data", "--secret-file", "--listen", "--name", "--addr-file", "--store", "--pack-size", "keygen", "token"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help lacks %q", want)
		}
	}
	path := filepath.Join(t.TempDir(), "secret")
	cmd, out = command(t, "keygen", "--id", "4", path)
	if err := runWithTimeout(cmd, 20*time.Second); err != nil {
		t.Fatalf("keygen: %v: %s", err, out)
	}
	b, _ := os.ReadFile(path)
	k, err := cas.ParseKeyring(b)
	if err != nil || k.CurrentKeyID() != 4 {
		t.Fatalf("keygen output: %v", err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret mode %v", fi.Mode())
	}
	cmd, out = command(t, "keygen", path)
	if err := runWithTimeout(cmd, 20*time.Second); err == nil || !strings.Contains(out.String(), "exists") {
		t.Fatalf("keygen overwrote a secret: %v %s", err, out)
	}
}

// TestLimitFlags: --max-bytes makes puts beyond the quota 507 (the client
// returns ErrNoSpace), and --read-timeout cuts off an upload that stalls.
func TestLimitFlags(t *testing.T) {
	secret, keys := writeSecret(t)
	d := start(t, t.TempDir(), secret, "--max-bytes", "2097152", "--read-timeout", "300ms")
	c := blockd.NewClient("http://"+d.addr, tokens(keys), &http.Client{Timeout: time.Minute})
	var err error
	for i := range 100 {
		if err = c.Put(context.Background(), storetest.Chunks(uint64(100+i), 4, 64<<10)); err != nil {
			break
		}
	}
	if !errors.Is(err, blockd.ErrNoSpace) {
		t.Fatalf("puts beyond --max-bytes: %v, want ErrNoSpace", err)
	}

	conn, err := net.Dial("tcp", d.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tok, _ := tokens(keys)(cas.OpPut)
	fmt.Fprintf(conn, "POST /v1/put HTTP/1.1\r\nHost: b1\r\nAuthorization: Bearer %s\r\nContent-Length: 100\r\n\r\n0123456789", tok)
	conn.SetReadDeadline(time.Now().Add(30 * time.Second)) // generous: the daemon's is 300ms
	if _, err := io.ReadAll(conn); err != nil {
		t.Fatalf("stalled upload not cut off by --read-timeout: %v", err)
	}
}
