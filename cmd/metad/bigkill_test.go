package main

import (
	"context"
	"encoding/binary"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"stasis/cas"
	"stasis/metad"
)

var fsckQueues = regexp.MustCompile(`pending commits (\d+), queued releases (\d+)`)

// fsckQueued runs the fsck subcommand, requires it clean and returns the
// pending commits and queued releases it saw.
func fsckQueued(t *testing.T, data string) (pending, releases int) {
	t.Helper()
	code, out := runFsckCmd(t, data)
	if code != 0 {
		t.Fatalf("fsck: exit %d\n%s", code, out)
	}
	m := fsckQueues.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("fsck output without queue counts:\n%s", out)
	}
	p, _ := strconv.Atoi(m[1])
	r, _ := strconv.Atoi(m[2])
	return p, r
}

// TestSIGKILLMidBigCommit kills a real metad (--small: about 26k writes per
// transaction) with SIGKILL while it applies a commit of 30k distinct chunks
// in batches, and while it releases such a manifest in batches. After each
// kill fsck is clean, and after restart the file is its old or its new
// manifest and the store works; the interrupted commit is rolled back and
// the release finished.
func TestSIGKILLMidBigCommit(t *testing.T) {
	// Generous: on a loaded 2-core machine each commit takes several
	// seconds and every round restarts metad twice and runs fsck twice.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	secret, keys := writeSecret(t)
	b0 := startDaemon(t, blockdBinary(t), "--data", t.TempDir(), "--secret-file", secret, "--name", "b0")
	data := t.TempDir()
	args := []string{"--data", data, "--secret-file", secret, "--blockd", "b0=" + b0.url(), "--gc-interval", "0"}
	md := startDaemon(t, "", args...)
	c := metad.NewClient(md.url(), keys, "test", nil)

	// Two versions of a file, 30k tiny distinct chunks each (metad does not
	// care how long the data is; the manifest says 4 KiB per chunk).
	const n = 30_000
	version := func(v int) ([]cas.ChunkID, map[cas.ChunkID][]byte) {
		ids := make([]cas.ChunkID, n)
		data := make(map[cas.ChunkID][]byte, n)
		for i := range ids {
			b := binary.BigEndian.AppendUint64([]byte("big kill"), uint64(v*n+i))
			ids[i] = cas.Sum(b)
			data[ids[i]] = b
		}
		return ids, data
	}
	var vids [2][]cas.ChunkID
	for v := range 2 {
		ids, d := version(v)
		vids[v] = ids
		for i := 0; i < n; i += 5000 {
			plan, err := c.PrepareUpload(ctx, ids[i:i+5000])
			if err != nil {
				t.Fatal(err)
			}
			if err := upload(ctx, plan, d); err != nil {
				t.Fatal(err)
			}
		}
	}
	a, err := c.Create(ctx, metad.CreateRequest{Parent: metad.RootIno, Name: "big", Mode: syscall.S_IFREG | 0o644})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := c.Commit(ctx, metad.CommitRequest{Ino: a.Ino, Manifest: manifestOf(vids[0]...)}); err != nil {
		t.Fatal(err)
	}
	full := time.Since(start)
	t.Logf("commit of %d chunks: %v", n, full)

	// Kill during commits of the other version, at growing delays, until
	// one kill lands while the commit is pending. A commit that finished
	// before its kill shows the machine got faster: later delays scale with
	// the time that commit took, so the kills keep landing inside commits.
	cur, sawPending := 0, false
	for round := 0; round < 8 && !sawPending; round++ {
		next := 1 - cur
		type result struct {
			err error
			dur time.Duration
		}
		done := make(chan result, 1)
		go func() {
			start := time.Now()
			_, err := c.Commit(ctx, metad.CommitRequest{Ino: a.Ino, Manifest: manifestOf(vids[next]...)})
			done <- result{err, time.Since(start)}
		}()
		delay := full * time.Duration(2+round%6) / 8
		time.Sleep(delay)
		md.kill()
		res := <-done
		acked := res.err == nil
		if acked && res.dur < full {
			full = res.dur
		}
		p, r := fsckQueued(t, data)
		t.Logf("round %d: killed after %v: acknowledged %v, pending commits %d, queued releases %d", round, delay, acked, p, r)
		sawPending = sawPending || p > 0
		md = startDaemon(t, "", args...)
		c = metad.NewClient(md.url(), keys, "test", nil)
		rp, err := c.ReadPlan(ctx, metad.Node{Ino: a.Ino})
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case manifestsEqual(rp.Manifest, manifestOf(vids[next]...)):
			cur = next
		case acked:
			t.Fatalf("round %d: acknowledged commit lost", round)
		case !manifestsEqual(rp.Manifest, manifestOf(vids[cur]...)):
			t.Fatalf("round %d: file is neither its old nor its new version", round)
		}
		md.stop(t) // a clean stop after recovery: fsck must find nothing queued
		if p, r := fsckQueued(t, data); p != 0 {
			t.Fatalf("round %d: %d pending commits after recovery (%d releases)", round, p, r)
		}
		md = startDaemon(t, "", args...)
		c = metad.NewClient(md.url(), keys, "test", nil)
	}
	if !sawPending {
		t.Fatal("no kill landed during a batched commit")
	}

	// Kill while the unlinked file's manifest is released in batches.
	if err := c.Unlink(ctx, metad.RootIno, "big"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(full / 4)
	md.kill()
	p, r := fsckQueued(t, data)
	t.Logf("killed during release: pending commits %d, queued releases %d", p, r)
	md = startDaemon(t, "", args...)
	c = metad.NewClient(md.url(), keys, "test", nil)
	if _, err := c.GC(ctx); err != nil { // finishes every queued release first
		t.Fatal(err)
	}
	st, err := c.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Chunks != 0 {
		t.Fatalf("%d chunks still counted after the file and its releases are gone", st.Chunks)
	}
	md.stop(t)
	if p, r := fsckQueued(t, data); p != 0 || r != 0 {
		t.Fatalf("after GC: pending commits %d, queued releases %d", p, r)
	}
}
