package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// buildBinary compiles casfs into a temporary directory.
func buildBinary(t testing.TB) string {
	t.Helper()
	return buildPkg(t, ".")
}

// buildPkg compiles a main package into a temporary directory.
func buildPkg(t testing.TB, pkg string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), filepath.Base(pkg))
	if pkg == "." {
		bin = filepath.Join(filepath.Dir(bin), "casfs")
	}
	out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func mounted(mnt string) bool {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == mnt {
			return true
		}
	}
	return false
}

// mountProc is a running `casfs mount`; Exited is closed when it has exited.
type mountProc struct {
	*exec.Cmd
	Exited chan struct{}
}

// startMount runs `casfs mount --data data mnt` and waits for the mount.
// Cleanup kills the process (by pid) and detaches the mount if still there.
func startMount(t testing.TB, bin, data, mnt string) *mountProc {
	t.Helper()
	return startMountArgs(t, bin, mnt, "--data", data)
}

// startMountArgs runs `casfs mount ARGS... mnt` and waits for the mount.
func startMountArgs(t testing.TB, bin, mnt string, args ...string) *mountProc {
	t.Helper()
	cmd := exec.Command(bin, append(append([]string{"mount", "--log-level", "warn"}, args...), mnt)...)
	var logb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logb, &logb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
		if mounted(mnt) {
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
		if t.Failed() {
			t.Logf("casfs log:\n%s", logb.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !mounted(mnt) {
		select {
		case <-exited:
			t.Fatalf("casfs exited before mounting:\n%s", logb.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("casfs did not mount within 30s:\n%s", logb.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return &mountProc{Cmd: cmd, Exited: exited}
}

// compressibleData returns n bytes of distinct log lines: LZ4 shrinks
// them several times, and no two 64 KiB chunks are equal.
func compressibleData(n int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "%08d node-%d swapped out memory in %d ms\n", i, i%7, i*13%1000)
	}
	return b.Bytes()[:n]
}

// cliStats is the part of `casfs stats` output the tests check.
type cliStats struct {
	Logical          uint64  `json:"logical_bytes"`
	StoredRaw        uint64  `json:"stored_raw"`
	StoredEncoded    uint64  `json:"stored_encoded"`
	Chunks           uint64  `json:"chunks"`
	BlockChunks      uint64  `json:"block_chunks"`
	BlocksUnreported int     `json:"blocks_unreported"`
	CompressionRatio float64 `json:"compression_ratio"`
	Mount            struct {
		Written uint64 `json:"bytes_written"`
	} `json:"mount"`
}

// checkStoredBytes checks the stored sizes of a store holding raw distinct
// bytes of which at least incompressible do not shrink.
func checkStoredBytes(t *testing.T, st cliStats, raw, incompressible uint64) {
	t.Helper()
	t.Logf("stored raw %d, encoded %d, ratio %.3f, chunks %d, blockd holds %d",
		st.StoredRaw, st.StoredEncoded, st.CompressionRatio, st.Chunks, st.BlockChunks)
	if st.StoredRaw != raw || st.StoredEncoded == 0 || st.StoredEncoded >= st.StoredRaw ||
		st.StoredEncoded < incompressible || st.BlocksUnreported != 0 {
		t.Errorf("stored raw %d, encoded %d (unreported blockds %d); want raw %d, encoded in [%d, %d)",
			st.StoredRaw, st.StoredEncoded, st.BlocksUnreported, raw, incompressible, raw)
	}
	if st.Chunks == 0 || st.BlockChunks != st.Chunks {
		t.Errorf("chunks %d, blockd holds %d; want the same, non-zero", st.Chunks, st.BlockChunks)
	}
	want := float64(st.StoredRaw) / float64(st.StoredEncoded)
	if st.CompressionRatio <= 1 || st.CompressionRatio < want*0.999 || st.CompressionRatio > want*1.001 {
		t.Errorf("compression ratio %v, want %v", st.CompressionRatio, want)
	}
}

func randData(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 3))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// TestSIGKILLKeepsClosedFiles kills the casfs process without warning and
// checks that every file closed before the kill is intact after a remount.
func TestSIGKILLKeepsClosedFiles(t *testing.T) {
	bin := buildBinary(t)
	data, mnt := t.TempDir(), t.TempDir()
	cmd := startMount(t, bin, data, mnt)

	files := map[string][]byte{
		"small":         []byte("closed before the kill\n"),
		"dir/big":       randData(1, 9<<20+5),
		"dir/rewritten": randData(2, 3<<20),
	}
	if err := os.Mkdir(filepath.Join(mnt, "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(mnt, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Rewrite part of one file in place and close it.
	f, err := os.OpenFile(filepath.Join(mnt, "dir/rewritten"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	patch := randData(3, 100000)
	if _, err := f.WriteAt(patch, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	copy(files["dir/rewritten"][1<<20:], patch)
	// A file still open (never closed) when the kill comes.
	open, err := os.Create(filepath.Join(mnt, "open"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := open.Write(randData(4, 2<<20)); err != nil {
		t.Fatal(err)
	}

	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	open.Close() // fails or not; the process is gone
	if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
		t.Fatalf("detaching the dead mount: %v", err)
	}

	cmd2 := startMount(t, bin, data, mnt)
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(mnt, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s after SIGKILL and remount: %d bytes (%v), want the %d closed", name, len(got), err, len(want))
		}
	}
	if fi, err := os.Stat(filepath.Join(mnt, "open")); err == nil && fi.Size() != 0 {
		t.Errorf("a file never closed shows %d bytes; want its last committed (empty) content", fi.Size())
	}

	// A clean stop (SIGTERM, as Ctrl-C) unmounts and exits 0.
	if err := cmd2.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for mounted(mnt) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if mounted(mnt) {
		t.Fatal("still mounted 30s after SIGTERM")
	}
}

// TestCLI drives stats, snapshot and unmount against a running mount.
func TestCLI(t *testing.T) {
	bin := buildBinary(t)
	data, mnt := t.TempDir(), t.TempDir()
	cmd := startMount(t, bin, data, mnt)
	if err := os.MkdirAll(filepath.Join(mnt, "exp"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "exp/f"), randData(9, 200000), 0o644); err != nil {
		t.Fatal(err)
	}
	text := compressibleData(1 << 20)
	if err := os.WriteFile(filepath.Join(mnt, "exp/log"), text, 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("casfs %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	var st cliStats
	if err := json.Unmarshal([]byte(run("stats", mnt)), &st); err != nil {
		t.Fatal(err)
	}
	const logical = 200000 + 1<<20
	if st.Logical != logical || st.Mount.Written != logical {
		t.Errorf("stats: %+v", st)
	}
	// Bytes stored, raw and compressed (embedded mode: metad asks its
	// in-process block store): the random file does not shrink, the text
	// does.
	checkStoredBytes(t, st, logical, 200000)
	run("snapshot", filepath.Join(mnt, "exp"), "s1")
	if got := run("snapshot", "--list", filepath.Join(mnt, "exp")); got != "s1\n" {
		t.Errorf("snapshot --list: %q", got)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "exp/.snapshots/s1/f")); err != nil || len(b) != 200000 {
		t.Errorf("snapshot content: %d bytes, %v", len(b), err)
	}
	run("snapshot", "--delete", filepath.Join(mnt, "exp"), "s1")
	if _, err := exec.Command(bin, "stats", t.TempDir()).CombinedOutput(); err == nil {
		t.Error("stats of a non-casfs directory succeeded")
	}
	run("unmount", mnt)
	select {
	case <-cmd.Exited:
	case <-time.After(30 * time.Second):
		t.Fatal("casfs did not exit after unmount")
	}
	if mounted(mnt) {
		t.Fatal("still mounted after casfs unmount")
	}
}
