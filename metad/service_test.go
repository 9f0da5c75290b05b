package metad

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"stasis/cas"
)

// eachStore runs a service test on both store backends.
func eachStore(t *testing.T, fn func(t *testing.T, e *env)) {
	if testStore != nil {
		fn(t, newEnv(t, false, 1)) // the backend of RunServiceSuite
		return
	}
	t.Run("mem", func(t *testing.T) { fn(t, newEnv(t, true, 1)) })
	t.Run("badger", func(t *testing.T) { fn(t, newEnv(t, false, 1)) })
}

func wantErr(t testing.TB, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("error %v, want %v", err, want)
	}
}

func TestNamespaceBasics(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		s := e.s
		root, err := s.GetAttr(ctx, Node{Ino: RootIno})
		must(t, err)
		if root.Mode&syscall.S_IFMT != syscall.S_IFDIR || root.Nlink != 2 {
			t.Fatalf("root attr %+v", root)
		}
		d := e.mkdir(t, RootIno, "d")
		f := e.mkfile(t, d.Ino, "f")
		if f.Ino <= RootIno || d.Ino == f.Ino {
			t.Fatalf("inode numbers %d %d", d.Ino, f.Ino)
		}
		a, err := s.Lookup(ctx, Node{Ino: d.Ino}, "f")
		must(t, err)
		if a.Ino != f.Ino || a.Nlink != 1 || a.Mode != syscall.S_IFREG|0o644 {
			t.Fatalf("lookup %+v", a)
		}
		if a, _ := s.GetAttr(ctx, Node{Ino: RootIno}); a.Nlink != 3 {
			t.Fatalf("root nlink %d after mkdir, want 3", a.Nlink)
		}
		_, err = s.Create(ctx, CreateRequest{Parent: d.Ino, Name: "f", Mode: syscall.S_IFREG})
		wantErr(t, err, ErrExists)
		_, err = s.Lookup(ctx, Node{Ino: d.Ino}, "nope")
		wantErr(t, err, ErrNotFound)
		_, err = s.Lookup(ctx, Node{Ino: f.Ino}, "x")
		wantErr(t, err, ErrNotDir)
		// Symlink.
		l, err := s.Create(ctx, CreateRequest{Parent: d.Ino, Name: "l", Mode: syscall.S_IFLNK | 0o777, Target: "f"})
		must(t, err)
		tgt, err := s.Readlink(ctx, Node{Ino: l.Ino})
		must(t, err)
		if tgt != "f" || l.Size != 1 {
			t.Fatalf("readlink %q size %d", tgt, l.Size)
		}
		_, err = s.Readlink(ctx, Node{Ino: f.Ino})
		wantErr(t, err, ErrInvalid)
		// Hard link.
		h, err := s.Link(ctx, f.Ino, RootIno, "hard")
		must(t, err)
		if h.Nlink != 2 {
			t.Fatalf("nlink after link %d", h.Nlink)
		}
		_, err = s.Link(ctx, d.Ino, RootIno, "dirlink")
		wantErr(t, err, ErrIsDir)
		must(t, s.Unlink(ctx, d.Ino, "f"))
		if a, _ := s.GetAttr(ctx, Node{Ino: f.Ino}); a.Nlink != 1 {
			t.Fatalf("nlink after unlink %d", a.Nlink)
		}
		// ReadDir order and paging.
		for _, n := range []string{"c", "a", "b"} {
			e.mkfile(t, d.Ino, n)
		}
		ents, err := s.ReadDir(ctx, Node{Ino: d.Ino}, "", 0)
		must(t, err)
		var names []string
		for _, en := range ents {
			names = append(names, en.Name)
		}
		eq(t, names, []string{"a", "b", "c", "l"})
		if ents[3].Mode&syscall.S_IFMT != syscall.S_IFLNK {
			t.Fatalf("readdir mode %o", ents[3].Mode)
		}
		ents, err = s.ReadDir(ctx, Node{Ino: d.Ino}, "a", 2)
		must(t, err)
		if len(ents) != 2 || ents[0].Name != "b" || ents[1].Name != "c" {
			t.Fatalf("paged readdir %+v", ents)
		}
		// Rmdir.
		wantErr(t, s.Rmdir(ctx, RootIno, "d"), ErrNotEmpty)
		wantErr(t, s.Rmdir(ctx, RootIno, "hard"), ErrNotDir)
		wantErr(t, s.Unlink(ctx, RootIno, "d"), ErrIsDir)
		for _, n := range []string{"a", "b", "c", "l"} {
			must(t, s.Unlink(ctx, d.Ino, n))
		}
		must(t, s.Rmdir(ctx, RootIno, "d"))
		if a, _ := s.GetAttr(ctx, Node{Ino: RootIno}); a.Nlink != 2 {
			t.Fatalf("root nlink %d after rmdir", a.Nlink)
		}
		_, err = s.GetAttr(ctx, Node{Ino: d.Ino})
		wantErr(t, err, ErrNotFound)
		st, err := s.Stats(ctx)
		must(t, err)
		if st.Inodes != 2 { // root and "hard"
			t.Fatalf("stats inodes %d, want 2", st.Inodes)
		}
		e.fsckClean(t)
	})
}

func TestBadNames(t *testing.T) {
	e := newEnv(t, true, 1)
	ctx := context.Background()
	for _, name := range []string{"", ".", "..", "a/b", "a\x00b", strings.Repeat("x", 256)} {
		_, err := e.s.Create(ctx, CreateRequest{Parent: RootIno, Name: name, Mode: syscall.S_IFREG})
		wantErr(t, err, ErrInvalid)
		_, err = e.s.Lookup(ctx, Node{Ino: RootIno}, name)
		wantErr(t, err, ErrInvalid)
		wantErr(t, e.s.Rename(ctx, RootIno, "x", RootIno, name, 0), ErrInvalid)
		_, err = e.s.CreateSnapshot(ctx, RootIno, name)
		wantErr(t, err, ErrInvalid)
	}
	e.mkfile(t, RootIno, strings.Repeat("y", 255)) // the longest legal name
	_, err := e.s.Create(ctx, CreateRequest{Parent: 999, Name: "x", Mode: syscall.S_IFREG})
	wantErr(t, err, ErrNotFound)
	_, err = e.s.Create(ctx, CreateRequest{Parent: RootIno, Name: "x", Mode: syscall.S_IFREG, Policy: "bogus"})
	wantErr(t, err, ErrInvalid)
	_, err = e.s.Create(ctx, CreateRequest{Parent: RootIno, Name: "x", Mode: syscall.S_IFLNK})
	wantErr(t, err, ErrInvalid)
	ents, _ := e.s.ReadDir(ctx, Node{Ino: RootIno}, "", 0)
	if len(ents) != 1 {
		t.Fatalf("bad requests created entries: %+v", ents)
	}
	e.fsckClean(t)
}

func TestRename(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		s := e.s
		a := e.mkdir(t, RootIno, "a")
		b := e.mkdir(t, RootIno, "b")
		ab := e.mkdir(t, a.Ino, "sub")
		f := e.mkfile(t, a.Ino, "f")
		g := e.mkfile(t, b.Ino, "g")
		// Across directories.
		must(t, s.Rename(ctx, a.Ino, "f", b.Ino, "f2", 0))
		if x, err := s.Lookup(ctx, Node{Ino: b.Ino}, "f2"); err != nil || x.Ino != f.Ino {
			t.Fatalf("after rename: %+v %v", x, err)
		}
		_, err := s.Lookup(ctx, Node{Ino: a.Ino}, "f")
		wantErr(t, err, ErrNotFound)
		// Over an existing file: the target is unlinked.
		must(t, s.Rename(ctx, b.Ino, "f2", b.Ino, "g", 0))
		_, err = s.GetAttr(ctx, Node{Ino: g.Ino})
		wantErr(t, err, ErrNotFound)
		// NoReplace.
		e.mkfile(t, b.Ino, "h")
		wantErr(t, s.Rename(ctx, b.Ino, "g", b.Ino, "h", RenameNoReplace), ErrExists)
		// Directory into its own subtree.
		wantErr(t, s.Rename(ctx, RootIno, "a", ab.Ino, "x", 0), ErrInvalid)
		wantErr(t, s.Rename(ctx, RootIno, "a", a.Ino, "x", 0), ErrInvalid)
		// Directory over a file and file over a directory.
		wantErr(t, s.Rename(ctx, RootIno, "a", b.Ino, "h", 0), ErrNotDir)
		wantErr(t, s.Rename(ctx, b.Ino, "h", RootIno, "a", 0), ErrIsDir)
		// Directory over a non-empty directory, then over an empty one.
		e.mkdir(t, RootIno, "c")
		wantErr(t, s.Rename(ctx, RootIno, "c", RootIno, "a", 0), ErrNotEmpty)
		must(t, s.Rename(ctx, a.Ino, "sub", RootIno, "c", 0))
		if x, _ := s.GetAttr(ctx, Node{Ino: a.Ino}); x.Nlink != 2 {
			t.Fatalf("a nlink %d after its subdir moved out", x.Nlink)
		}
		if x, _ := s.Lookup(ctx, Node{Ino: RootIno}, "c"); x.Ino != ab.Ino {
			t.Fatalf("c is %d, want %d", x.Ino, ab.Ino)
		}
		// Exchange a file and a directory across directories.
		must(t, s.Rename(ctx, b.Ino, "h", RootIno, "c", RenameExchange))
		if x, _ := s.Lookup(ctx, Node{Ino: b.Ino}, "h"); x.Ino != ab.Ino {
			t.Fatal("exchange did not swap")
		}
		wantErr(t, s.Rename(ctx, b.Ino, "h", RootIno, "nothing", RenameExchange), ErrNotFound)
		wantErr(t, s.Rename(ctx, RootIno, "a", RootIno, "b", RenameExchange|RenameNoReplace), ErrInvalid)
		// Same inode under both names: no-op.
		x := e.mkfile(t, RootIno, "x")
		_, err = s.Link(ctx, x.Ino, RootIno, "y")
		must(t, err)
		must(t, s.Rename(ctx, RootIno, "x", RootIno, "y", 0))
		if a, _ := s.GetAttr(ctx, Node{Ino: x.Ino}); a.Nlink != 2 {
			t.Fatalf("nlink %d after rename onto own hard link", a.Nlink)
		}
		e.fsckClean(t)
	})
}

func TestXattrAndSetAttr(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		s := e.s
		f := e.mkfile(t, RootIno, "f")
		must(t, s.SetXattr(ctx, f.Ino, "user.a", []byte("1"), 0))
		wantErr(t, s.SetXattr(ctx, f.Ino, "user.a", []byte("2"), XattrCreate), ErrExists)
		wantErr(t, s.SetXattr(ctx, f.Ino, "user.b", []byte("2"), XattrReplace), ErrNoData)
		must(t, s.SetXattr(ctx, f.Ino, "user.b", nil, 0))
		names, err := s.ListXattr(ctx, Node{Ino: f.Ino})
		must(t, err)
		eq(t, names, []string{"user.a", "user.b"})
		v, err := s.GetXattr(ctx, Node{Ino: f.Ino}, "user.a")
		must(t, err)
		if string(v) != "1" {
			t.Fatalf("xattr %q", v)
		}
		must(t, s.RemoveXattr(ctx, f.Ino, "user.a"))
		_, err = s.GetXattr(ctx, Node{Ino: f.Ino}, "user.a")
		wantErr(t, err, ErrNoData)
		wantErr(t, s.RemoveXattr(ctx, f.Ino, "user.a"), ErrNoData)
		wantErr(t, s.SetXattr(ctx, f.Ino, "", nil, 0), ErrInvalid)
		wantErr(t, s.SetXattr(ctx, f.Ino, "user.big", make([]byte, MaxXattrValue+1), 0), ErrNoSpace)
		// Policy inheritance through the xattr.
		d := e.mkdir(t, RootIno, "d")
		wantErr(t, s.SetXattr(ctx, d.Ino, PolicyXattr, []byte("nonsense"), 0), ErrInvalid)
		must(t, s.SetXattr(ctx, d.Ino, PolicyXattr, []byte("cdc:16k"), 0))
		sub := e.mkdir(t, d.Ino, "sub")
		g := e.mkfile(t, sub.Ino, "g")
		plan, err := s.ReadPlan(ctx, Node{Ino: g.Ino})
		must(t, err)
		if plan.Manifest.Policy != cas.CDC(16<<10) {
			t.Fatalf("inherited policy %v", plan.Manifest.Policy)
		}
		// SetAttr.
		mode, uid := uint32(0o600|syscall.S_IFDIR), uint32(7)
		mt := time.Unix(1234, 5)
		a, err := s.SetAttr(ctx, f.Ino, SetAttrRequest{Mode: &mode, Uid: &uid, Mtime: &mt})
		must(t, err)
		if a.Mode != syscall.S_IFREG|0o600 || a.Uid != 7 || !a.Mtime.Equal(mt) {
			t.Fatalf("setattr %+v", a)
		}
		size := uint64(1 << 20)
		a, err = s.SetAttr(ctx, f.Ino, SetAttrRequest{Size: &size})
		must(t, err)
		if a.Size != size || a.Gen != 1 {
			t.Fatalf("extend: %+v", a)
		}
		_, err = s.SetAttr(ctx, d.Ino, SetAttrRequest{Size: &size})
		wantErr(t, err, ErrIsDir)
		_, err = s.SetAttr(ctx, 999, SetAttrRequest{Uid: &uid})
		wantErr(t, err, ErrNotFound)
		e.fsckClean(t)
	})
}
