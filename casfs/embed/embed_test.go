package embed_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"stasis/casfs"
	"stasis/casfs/embed"
	"stasis/metad"
)

// TestReopenKeepsFilesAndSecret writes a file through embedded stores,
// closes everything, reopens the directory and reads it back.
func TestReopenKeepsFilesAndSecret(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	data := bytes.Repeat([]byte("stasis "), 50000)
	var ino metad.Ino
	var secret []byte
	for round := range 2 {
		st, err := embed.Open(embed.Config{Dir: dir, Small: true})
		if err != nil {
			t.Fatal(err)
		}
		fsys, err := casfs.New(casfs.Config{Meta: st.Meta, Transport: st.Transport, StagingDir: st.StagingDir})
		if err != nil {
			t.Fatal(err)
		}
		s, err := os.ReadFile(filepath.Join(dir, "secret"))
		if err != nil {
			t.Fatal(err)
		}
		if fi, _ := os.Stat(filepath.Join(dir, "secret")); fi.Mode().Perm() != 0o600 {
			t.Errorf("secret mode %v", fi.Mode().Perm())
		}
		if round == 0 {
			secret = s
			a, err := fsys.Create(ctx, metad.CreateRequest{Parent: metad.RootIno, Name: "f", Mode: syscall.S_IFREG | 0o644})
			if err != nil {
				t.Fatal(err)
			}
			ino = a.Ino
			h, _, err := fsys.Open(ctx, metad.Node{Ino: ino}, syscall.O_WRONLY)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := h.Write(ctx, data, 0); err != nil {
				t.Fatal(err)
			}
			if err := h.Release(ctx); err != nil {
				t.Fatal(err)
			}
		} else {
			if !bytes.Equal(s, secret) {
				t.Error("secret changed on reopen")
			}
			h, _, err := fsys.Open(ctx, metad.Node{Ino: ino}, syscall.O_RDONLY)
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, len(data)+10)
			n, err := h.Read(ctx, buf, 0)
			if err != nil || !bytes.Equal(buf[:n], data) {
				t.Fatalf("after reopen read %d bytes (%v)", n, err)
			}
			h.Release(ctx)
		}
		if err := fsys.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := embed.Open(embed.Config{}); err == nil {
		t.Error("Open without Dir succeeded")
	}
}
