package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"stasis/metad"
)

// metric reads one unlabelled metric of the daemon at url.
func metric(t *testing.T, url, name string) string {
	t.Helper()
	r, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	body, err := io.ReadAll(r.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	t.Fatalf("metric %s missing", name)
	return ""
}

// TestSIGKILLUnsyncedNamespace runs metad in --sync=commits mode with the
// background flush out of reach, makes a burst of namespace changes that
// are committed but never synced (the daemon's metrics say so), kills the
// process with SIGKILL and restarts it: every change is there. (What a power
// loss would do to unsynced changes cannot be tested here.)
func TestSIGKILLUnsyncedNamespace(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	secret, keys := writeSecret(t)
	data := t.TempDir()
	// Namespace changes never reach blockd: an address nobody serves will do.
	args := []string{"--data", data, "--secret-file", secret, "--blockd", "b0=http://127.0.0.1:9", "--gc-interval", "0",
		"--sync", "commits", "--flush-interval", "1h"}
	md := startDaemon(t, "", args...)
	c := metad.NewClient(md.url(), keys, "test", nil)

	// want is the expected tree: path -> description.
	want := map[string]string{}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	const dirs, files = 5, 60
	mtime := time.Unix(1_600_000_000, 123).UTC()
	for d := range dirs {
		da, err := c.Create(ctx, metad.CreateRequest{Parent: metad.RootIno, Name: fmt.Sprintf("d%d", d), Mode: syscall.S_IFDIR | 0o755})
		must(err)
		want[fmt.Sprintf("/d%d", d)] = "dir 755"
		for f := range files {
			name := fmt.Sprintf("f%02d", f)
			fa, err := c.Create(ctx, metad.CreateRequest{Parent: da.Ino, Name: name, Mode: syscall.S_IFREG | 0o644})
			must(err)
			path := fmt.Sprintf("/d%d/%s", d, name)
			switch f % 5 {
			case 0: // chmod + utimes
				mode := uint32(0o600)
				_, err = c.SetAttr(ctx, fa.Ino, metad.SetAttrRequest{Mode: &mode, Mtime: &mtime})
				must(err)
				want[path] = fmt.Sprintf("file 600 mtime %d", mtime.UnixNano())
			case 1: // renamed
				must(c.Rename(ctx, da.Ino, name, da.Ino, name+".renamed", 0))
				want[path+".renamed"] = "file 644"
			case 2: // unlinked
				must(c.Unlink(ctx, da.Ino, name))
			case 3: // xattr
				must(c.SetXattr(ctx, fa.Ino, "user.k", []byte(path), 0))
				want[path] = "file 644 xattr " + path
			default:
				want[path] = "file 644"
			}
		}
		_, err = c.Create(ctx, metad.CreateRequest{Parent: da.Ino, Name: "link", Mode: syscall.S_IFLNK | 0o777, Target: "../target"})
		must(err)
		want[fmt.Sprintf("/d%d/link", d)] = "symlink ../target"
	}
	if got := metric(t, md.url(), "metad_store_unsynced"); got != "1" {
		t.Fatalf("metad_store_unsynced = %s before the kill; the burst was synced, so the test proves nothing", got)
	}
	if got := metric(t, md.url(), "metad_store_syncs_total"); got != "0" {
		t.Fatalf("metad_store_syncs_total = %s before the kill, want 0", got)
	}
	md.kill()

	md2 := startDaemon(t, "", args...)
	c2 := metad.NewClient(md2.url(), keys, "test", nil)
	got := map[string]string{}
	var walk func(dir metad.Ino, prefix string)
	walk = func(dir metad.Ino, prefix string) {
		ents, err := c2.ReadDir(ctx, metad.Node{Ino: dir}, "", 0)
		must(err)
		for _, e := range ents {
			path := prefix + "/" + e.Name
			a, err := c2.GetAttr(ctx, metad.Node{Ino: e.Ino})
			must(err)
			switch a.Mode & syscall.S_IFMT {
			case syscall.S_IFDIR:
				got[path] = fmt.Sprintf("dir %o", a.Mode&0o777)
				walk(e.Ino, path)
			case syscall.S_IFLNK:
				target, err := c2.Readlink(ctx, metad.Node{Ino: e.Ino})
				must(err)
				got[path] = "symlink " + target
			default:
				desc := fmt.Sprintf("file %o", a.Mode&0o777)
				if a.Mode&0o777 == 0o600 {
					desc += fmt.Sprintf(" mtime %d", a.Mtime.UnixNano())
				}
				if v, err := c2.GetXattr(ctx, metad.Node{Ino: e.Ino}, "user.k"); err == nil {
					desc += " xattr " + string(v)
				}
				got[path] = desc
			}
		}
	}
	walk(metad.RootIno, "")
	var diffs []string
	for p, w := range want {
		if got[p] != w {
			diffs = append(diffs, fmt.Sprintf("%s: got %q, want %q", p, got[p], w))
		}
	}
	for p, g := range got {
		if _, ok := want[p]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: unexpected %q", p, g))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		t.Fatalf("%d differences after SIGKILL and restart, e.g.:\n%s", len(diffs), strings.Join(diffs[:min(len(diffs), 10)], "\n"))
	}
	// POST /v1/sync through the real daemon.
	must(c2.Sync(ctx))
	if got := metric(t, md2.url(), "metad_store_unsynced"); got != "0" {
		t.Fatalf("metad_store_unsynced = %s after Sync", got)
	}
	md2.stop(t)
}
