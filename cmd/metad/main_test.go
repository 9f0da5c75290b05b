package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"stasis/blockd"
	"stasis/cas"
	"stasis/internal/syncbuf"
	"stasis/metad"
)

// The test binary doubles as metad: with METAD_TEST_MAIN=1 it runs main
// with the remaining arguments. blockd is the real cmd/blockd, built once.
func TestMain(m *testing.M) {
	if os.Getenv("METAD_TEST_MAIN") == "1" {
		os.Args = append([]string{"metad"}, os.Args[1:]...)
		main()
		os.Exit(0)
	}
	code := m.Run()
	if blockdBin != "" {
		os.RemoveAll(filepath.Dir(blockdBin))
	}
	os.Exit(code)
}

var (
	blockdOnce sync.Once
	blockdBin  string
	blockdErr  error
)

// blockdBinary builds cmd/blockd into a temporary directory once per run.
func blockdBinary(t *testing.T) string {
	t.Helper()
	blockdOnce.Do(func() {
		dir, err := os.MkdirTemp("", "metad-test-blockd-")
		if err != nil {
			blockdErr = err
			return
		}
		blockdBin = filepath.Join(dir, "blockd")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "go", "build", "-o", blockdBin, "stasis/cmd/blockd").CombinedOutput()
		if err != nil {
			blockdErr = fmt.Errorf("building blockd: %v\n%s", err, out)
		}
	})
	if blockdErr != nil {
		t.Fatal(blockdErr)
	}
	return blockdBin
}

type daemon struct {
	cmd    *exec.Cmd
	addr   string
	stderr *syncbuf.Buffer
	done   chan error
}

// startDaemon runs bin (or this test binary as metad when bin is "") with
// args plus --listen 127.0.0.1:0 --addr-file, and waits until it listens.
func startDaemon(t *testing.T, bin string, args ...string) *daemon {
	t.Helper()
	addrFile := filepath.Join(t.TempDir(), "addr")
	args = append(args, "--listen", "127.0.0.1:0", "--addr-file", addrFile, "--small", "--log-level", "warn")
	var cmd *exec.Cmd
	if bin == "" {
		cmd = exec.Command(os.Args[0], args...)
		cmd.Env = append(os.Environ(), "METAD_TEST_MAIN=1")
	} else {
		cmd = exec.Command(bin, args...)
	}
	d := &daemon{cmd: cmd, stderr: &syncbuf.Buffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = d.stderr, d.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- cmd.Wait() }()
	t.Cleanup(d.kill)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if b, err := os.ReadFile(addrFile); err == nil {
			d.addr = strings.TrimSpace(string(b))
			return d
		}
		select {
		case err := <-d.done:
			d.done <- err
			t.Fatalf("%s exited early (%v): %s", filepath.Base(cmd.Path), err, d.stderr)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not start: %s", cmd.Path, d.stderr)
		}
	}
}

func (d *daemon) url() string { return "http://" + d.addr }

// kill sends SIGKILL to the process (by pid) and reaps it.
func (d *daemon) kill() {
	if d.cmd.Process == nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case err := <-d.done:
		d.done <- err
	case <-time.After(30 * time.Second):
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.done:
		d.done <- err
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, d.stderr)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("daemon did not stop on SIGTERM")
	}
}

func writeSecret(t *testing.T) (string, *cas.Keyring) {
	t.Helper()
	b := cas.NewSecretFile(1)
	path := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := cas.ParseKeyring(b)
	if err != nil {
		t.Fatal(err)
	}
	return path, k
}

// upload stores chunks where plan says (with the plan's token).
func upload(ctx context.Context, plan metad.UploadPlan, data map[cas.ChunkID][]byte) error {
	byEP := map[uint16][]blockd.Chunk{}
	for _, m := range plan.Missing {
		byEP[m.Endpoint] = append(byEP[m.Endpoint], blockd.Chunk{ID: m.ID, Data: cas.Encode(nil, data[m.ID])})
	}
	for ep, cs := range byEP {
		tok := plan.Token
		c := blockd.NewClient(plan.Endpoints[ep].URL, func(cas.Op) (string, error) { return tok, nil }, nil)
		if err := c.Put(ctx, cs); err != nil {
			return err
		}
	}
	return nil
}

func chunk(i int) []byte {
	b := make([]byte, 4096)
	copy(b, fmt.Sprintf("metad process test chunk %d", i))
	return b
}

func manifestOf(ids ...cas.ChunkID) cas.Manifest {
	m := cas.Manifest{Policy: cas.Fixed(4096), Size: uint64(len(ids)) * 4096}
	for i, id := range ids {
		m.Extents = append(m.Extents, cas.Extent{Offset: uint64(i) * 4096, Length: 4096, ID: id})
	}
	return m
}

func runFsckCmd(t *testing.T, data string) (int, string) {
	t.Helper()
	return runMetad(t, "fsck", "--data", data)
}

// runMetad runs this test binary as metad with args and returns its exit
// code and output.
func runMetad(t *testing.T, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "METAD_TEST_MAIN=1")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, string(out)
}

// TestTwoBlockdPlacement runs two real blockd processes behind a real metad
// process: chunks spread over both, each lands where metad says, reads find
// them, and GC deletes garbage from the right server.
func TestTwoBlockdPlacement(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	secret, keys := writeSecret(t)
	bin := blockdBinary(t)
	b0 := startDaemon(t, bin, "--data", t.TempDir(), "--secret-file", secret, "--name", "east")
	b1 := startDaemon(t, bin, "--data", t.TempDir(), "--secret-file", secret, "--name", "west")
	md := startDaemon(t, "", "--data", t.TempDir(), "--secret-file", secret,
		"--blockd", "east="+b0.url(), "--blockd", "west="+b1.url(), "--gc-interval", "0")
	c := metad.NewClient(md.url(), keys, "test", nil)

	data := map[cas.ChunkID][]byte{}
	var ids []cas.ChunkID
	for i := range 64 {
		b := chunk(i)
		id := cas.Sum(b)
		data[id] = b
		ids = append(ids, id)
	}
	plan, err := c.PrepareUpload(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Missing) != 64 || len(plan.Endpoints) != 2 {
		t.Fatalf("plan: %d missing, %d endpoints", len(plan.Missing), len(plan.Endpoints))
	}
	per := [2]int{}
	for _, m := range plan.Missing {
		per[m.Endpoint]++
	}
	if per[0] < 16 || per[1] < 16 {
		t.Fatalf("placement does not spread: %v", per)
	}
	if err := upload(ctx, plan, data); err != nil {
		t.Fatal(err)
	}
	f, err := c.Create(ctx, metad.CreateRequest{Parent: metad.RootIno, Name: "f", Mode: syscall.S_IFREG | 0o644})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Commit(ctx, metad.CommitRequest{Ino: f.Ino, Manifest: manifestOf(ids...)}); err != nil {
		t.Fatal(err)
	}
	// A second prepare of the same chunks: nothing missing.
	if p2, err := c.PrepareUpload(ctx, ids[:10]); err != nil || len(p2.Missing) != 0 {
		t.Fatalf("re-prepare: %v missing, %v", p2.Missing, err)
	}
	rp, err := c.ReadPlan(ctx, metad.Node{Ino: f.Ino})
	if err != nil {
		t.Fatal(err)
	}
	tok := rp.Token
	readers := []*blockd.Client{}
	for _, ep := range rp.Endpoints {
		readers = append(readers, blockd.NewClient(ep.URL, func(cas.Op) (string, error) { return tok, nil }, nil))
	}
	for i, e := range rp.Manifest.Extents {
		raw, err := readers[rp.Location[i]].GetRaw(ctx, nil, e.ID)
		if err != nil {
			t.Fatalf("extent %d from %s: %v", i, rp.Endpoints[rp.Location[i]].Name, err)
		}
		if !bytes.Equal(raw, data[e.ID]) {
			t.Fatalf("extent %d: wrong data", i)
		}
		// And the other server does not have it.
		if _, err := readers[1-rp.Location[i]].Get(ctx, e.ID); !errors.Is(err, blockd.ErrNotFound) {
			t.Fatalf("chunk on both servers or error: %v", err)
		}
	}
	// Delete the file: GC deletes its chunks from the server that holds
	// each, except the 10 the second prepare pinned.
	if err := c.Unlink(ctx, metad.RootIno, "f"); err != nil {
		t.Fatal(err)
	}
	n, err := c.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 54 {
		t.Fatalf("GC deleted %d chunks, want 54", n)
	}
	for i, e := range rp.Manifest.Extents {
		_, err := readers[rp.Location[i]].Get(ctx, e.ID)
		if pinned := i < 10; pinned != (err == nil) {
			t.Fatalf("extent %d (pinned %v) after GC: %v", i, pinned, err)
		}
	}
	// A chunk uploaded straight to "west" and never committed: Sweep
	// finds and deletes it there.
	stray := chunk(999)
	strayID := cas.Sum(stray)
	putTok, _ := keys.Mint(cas.Claims{Ops: cas.OpPut | cas.OpGet, Scope: "west", Expiry: time.Now().Add(time.Minute)})
	west := blockd.NewClient(b1.url(), func(cas.Op) (string, error) { return putTok, nil }, nil)
	if err := west.Put(ctx, []blockd.Chunk{{ID: strayID, Data: cas.Encode(nil, stray)}}); err != nil {
		t.Fatal(err)
	}
	if _, swept, err := c.Sweep(ctx); err != nil || swept != 1 {
		t.Fatalf("sweep: %d, %v", swept, err)
	}
	if _, err := west.Get(ctx, strayID); !errors.Is(err, blockd.ErrNotFound) {
		t.Fatalf("stray chunk after sweep: %v", err)
	}
	for i, e := range rp.Manifest.Extents[:10] {
		if _, err := readers[rp.Location[i]].Get(ctx, e.ID); err != nil {
			t.Fatalf("sweep deleted pinned extent %d: %v", i, err)
		}
	}
	md.stop(t)
	if code, out := runFsckCmd(t, strings.TrimSpace(argValue(md.cmd.Args, "--data"))); code != 0 {
		t.Fatalf("fsck exit %d:\n%s", code, out)
	}
}

func argValue(args []string, flag string) string {
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// TestSIGKILLMidCommits kills a real metad with SIGKILL while clients commit
// concurrently over HTTP, then checks with fsck (the subcommand, as a
// process) and after restart that every file holds exactly its last
// acknowledged manifest or the one in flight, never a mix.
func TestSIGKILLMidCommits(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	t0 := time.Now()
	secret, keys := writeSecret(t)
	b0 := startDaemon(t, blockdBinary(t), "--data", t.TempDir(), "--secret-file", secret, "--name", "b0")
	t.Logf("blockd up after %v", time.Since(t0))
	data := t.TempDir()
	args := []string{"--data", data, "--secret-file", secret, "--blockd", "b0=" + b0.url(), "--gc-interval", "0"}
	md := startDaemon(t, "", args...)
	t.Logf("metad up after %v", time.Since(t0))
	c := metad.NewClient(md.url(), keys, "test", nil)

	const files, variants = 8, 6
	// variant v of file f: 8 chunks, shared pool so counts cross files.
	chunks := map[cas.ChunkID][]byte{}
	var pool []cas.ChunkID
	for i := range 40 {
		b := chunk(1000 + i)
		id := cas.Sum(b)
		chunks[id] = b
		pool = append(pool, id)
	}
	variant := func(f, v int) cas.Manifest {
		var ids []cas.ChunkID
		for k := range 8 + v {
			ids = append(ids, pool[(f*7+v*5+k*3)%len(pool)])
		}
		return manifestOf(ids...)
	}
	plan, err := c.PrepareUpload(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if err := upload(ctx, plan, chunks); err != nil {
		t.Fatal(err)
	}
	t.Logf("uploaded after %v", time.Since(t0))
	inos := make([]metad.Ino, files)
	for f := range files {
		a, err := c.Create(ctx, metad.CreateRequest{Parent: metad.RootIno, Name: fmt.Sprintf("f%d", f), Mode: syscall.S_IFREG | 0o644})
		if err != nil {
			t.Fatal(err)
		}
		inos[f] = a.Ino
	}
	// Committers: each file cycles through its variants; acked[f] is the
	// last acknowledged variant, inflight[f] the one being sent.
	var mu sync.Mutex
	acked := make([]int, files)
	inflight := make([]int, files)
	for f := range files {
		acked[f], inflight[f] = -1, -1
	}
	var commits int
	stopc := make(chan struct{})
	var wg sync.WaitGroup
	for f := range files {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for v := 0; ; v = (v + 1) % variants {
				select {
				case <-stopc:
					return
				default:
				}
				mu.Lock()
				inflight[f] = v
				mu.Unlock()
				_, err := c.Commit(ctx, metad.CommitRequest{Ino: inos[f], Manifest: variant(f, v)})
				if err != nil {
					return // the daemon died
				}
				mu.Lock()
				acked[f] = v
				commits++
				mu.Unlock()
				if f%2 == 0 { // some namespace churn in the same stream
					name := fmt.Sprintf("tmp-%d-%d", f, v)
					if _, err := c.Create(ctx, metad.CreateRequest{Parent: metad.RootIno, Name: name, Mode: syscall.S_IFREG}); err == nil {
						c.Unlink(ctx, metad.RootIno, name)
					}
				}
			}
		}()
	}
	// Snapshots of the whole tree are taken and deleted in the same stream,
	// so the kill may land in the middle of one.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stopc:
				return
			default:
			}
			if _, err := c.CreateSnapshot(ctx, metad.RootIno, fmt.Sprintf("s%d", i)); err != nil {
				return
			}
			if i >= 2 {
				if err := c.DeleteSnapshot(ctx, metad.RootIno, fmt.Sprintf("s%d", i-2)); err != nil {
					return
				}
			}
		}
	}()
	// Let a good number of commits through, then SIGKILL mid-stream.
	began := time.Now()
	deadline := began.Add(30 * time.Second)
	target := 150 + rand.IntN(100)
	for {
		mu.Lock()
		n := commits
		mu.Unlock()
		if n >= target || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	md.kill()
	close(stopc)
	wg.Wait()
	mu.Lock()
	t.Logf("killed metad after %d acknowledged commits in %v", commits, time.Since(began))
	mu.Unlock()
	t.Logf("phase: killed at %v", time.Since(began))
	if code, out := runFsckCmd(t, data); code != 0 {
		t.Fatalf("fsck after SIGKILL: exit %d\n%s", code, out)
	}
	t.Logf("phase: fsck done at %v", time.Since(began))
	md2 := startDaemon(t, "", args...)
	t.Logf("phase: restarted at %v", time.Since(began))
	c2 := metad.NewClient(md2.url(), keys, "test", nil)
	for f := range files {
		rp, err := c2.ReadPlan(ctx, metad.Node{Ino: inos[f]})
		if err != nil {
			t.Fatal(err)
		}
		got := rp.Manifest
		match := -1
		for _, v := range []int{acked[f], inflight[f]} {
			if v < 0 {
				if len(got.Extents) == 0 {
					match = v
				}
				continue
			}
			if manifestsEqual(got, variant(f, v)) {
				match = v
			}
		}
		if match == -1 && !(acked[f] == -1 && len(got.Extents) == 0) {
			t.Fatalf("file %d holds a manifest (%d extents) that is neither its acknowledged variant %d nor the in-flight %d",
				f, len(got.Extents), acked[f], inflight[f])
		}
	}
	t.Logf("phase: checked at %v", time.Since(began))
	// Every snapshot that survived is whole: all files, each with one of
	// its variants.
	snaps, err := c2.ListSnapshots(ctx, metad.RootIno)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d snapshots after restart", len(snaps))
	for _, sn := range snaps {
		for f := range files {
			a, err := c2.Lookup(ctx, sn.Root, fmt.Sprintf("f%d", f))
			if err != nil {
				t.Fatalf("snapshot %s: %v", sn.Name, err)
			}
			rp, err := c2.ReadPlan(ctx, metad.Node{Snap: sn.ID, Ino: a.Ino})
			if err != nil {
				t.Fatal(err)
			}
			ok := len(rp.Manifest.Extents) == 0
			for v := range variants {
				ok = ok || manifestsEqual(rp.Manifest, variant(f, v))
			}
			if !ok {
				t.Fatalf("snapshot %s file %d holds a mixed manifest", sn.Name, f)
			}
		}
	}
	// The store keeps working after the crash.
	if _, err := c2.Commit(ctx, metad.CommitRequest{Ino: inos[0], Manifest: variant(0, 1)}); err != nil {
		t.Fatal(err)
	}
	t.Logf("phase: committed at %v", time.Since(began))
	md2.stop(t)
	t.Logf("phase: stopped at %v", time.Since(began))
	if code, out := runFsckCmd(t, data); code != 0 {
		t.Fatalf("fsck after restart: exit %d\n%s", code, out)
	}
}

func manifestsEqual(a, b cas.Manifest) bool {
	if a.Size != b.Size || a.Policy != b.Policy || len(a.Extents) != len(b.Extents) {
		return false
	}
	for i := range a.Extents {
		if a.Extents[i] != b.Extents[i] {
			return false
		}
	}
	return true
}

func TestFlagErrors(t *testing.T) {
	secret, _ := writeSecret(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--secret-file", secret, "--blockd", "a=http://x"}, "--data"},
		{[]string{"--data", t.TempDir(), "--blockd", "a=http://x"}, "--secret-file"},
		{[]string{"--data", t.TempDir(), "--secret-file", secret}, "--blockd"},
		{[]string{"--data", t.TempDir(), "--secret-file", secret, "--blockd", "nourl"}, "NAME=http"},
		{[]string{"fsck"}, "--data"},
		{[]string{"--data", t.TempDir(), "--secret-file", secret, "--blockd", "a=http://x", "--sync", "always"}, "--sync"},
		{[]string{"--store", "mysql://x", "--secret-file", secret, "--blockd", "a=http://x"}, "--store"},
		{[]string{"--store", "postgres://x@/db", "--data", t.TempDir(), "--secret-file", secret, "--blockd", "a=http://x"}, "--data is for the badger store"},
	} {
		cmd := exec.Command(os.Args[0], tc.args...)
		cmd.Env = append(os.Environ(), "METAD_TEST_MAIN=1")
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("metad %v: %v, output %q; want failure mentioning %q", tc.args, err, out, tc.want)
		}
	}
}
