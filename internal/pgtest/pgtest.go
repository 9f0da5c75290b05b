// Package pgtest starts a private PostgreSQL server for a test: initdb into
// a directory under t.TempDir(), the server listening only on a unix
// socket in that directory, stopped and removed when the test ends (also
// when it fails). As root the server runs as the postgres system user
// (PostgreSQL refuses to run as root); the directories are chowned to it and
// the temporary directory's parents made traversable for it.
//
// The server binaries come from Debian's postgresql package
// (/usr/lib/postgresql/<version>/bin), which scripts/install-deps.sh
// installs for `make check`. Without them Start fails the test: tests that
// need PostgreSQL never skip silently.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Options tune the server.
type Options struct {
	// Durable keeps PostgreSQL's defaults (fsync on, synchronous commits):
	// for benchmarks. Without it the server runs with fsync=off, which
	// loses nothing unless the machine crashes, to spare the disk in tests.
	Durable bool
}

// Server is a running private PostgreSQL server.
type Server struct {
	dir  string // data directory
	sock string // unix socket directory
	port int
	user string // database superuser
	cmd  *exec.Cmd
	exit chan struct{} // closed when the server process has exited
	err  error         // its wait error, set before exit closes
	dbs  atomic.Int64
}

// BinDir returns the directory of the newest installed PostgreSQL server
// binaries, or an error that says how to install them.
func BinDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	var ok []string
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			ok = append(ok, d)
		}
	}
	if len(ok) == 0 {
		return "", errors.New("pgtest: PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): " +
			"install Debian's postgresql package; scripts/install-deps.sh (run by `make check`) installs it")
	}
	slices.SortFunc(ok, func(a, b string) int { return verOf(a) - verOf(b) })
	return ok[len(ok)-1], nil
}

func verOf(bin string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(bin)))
	return n
}

// Start starts a server for t and registers its shutdown with t.Cleanup.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	bin, err := BinDir()
	if err != nil {
		t.Fatal(err)
	}
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("pgtest: running as root, PostgreSQL needs an unprivileged user and there is no postgres user (%v): install Debian's postgresql package (scripts/install-deps.sh)", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	base := t.TempDir()
	s := &Server{dir: filepath.Join(base, "data"), sock: base, user: "stasis", exit: make(chan struct{})}
	if len(s.sock)+len("/.s.PGSQL.65535") > 107 {
		t.Fatalf("pgtest: socket directory %s is too long for a unix socket path; use a shorter TMPDIR", s.sock)
	}
	if err := os.Mkdir(s.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if cred != nil {
		for _, d := range []string{base, s.dir} {
			if err := os.Chown(d, int(cred.Uid), int(cred.Gid)); err != nil {
				t.Fatal(err)
			}
		}
		if err := traversable(base, int(cred.Uid), int(cred.Gid)); err != nil {
			t.Fatal(err)
		}
	}
	run := func(name string, args ...string) {
		t.Helper()
		c := exec.Command(filepath.Join(bin, name), args...)
		c.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
		c.Env = append(os.Environ(), "LC_ALL=C")
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("pgtest: %s: %v\n%s", name, err, out)
		}
	}
	run("initdb", "-D", s.dir, "-A", "trust", "-U", s.user, "-E", "UTF8", "--locale=C", "--no-sync")
	s.port = freePort(t)
	args := []string{"-D", s.dir, "-p", strconv.Itoa(s.port), "-k", s.sock,
		"-c", "listen_addresses=", "-c", "max_connections=100", "-c", "shared_buffers=32MB"}
	if !o.Durable {
		args = append(args, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	}
	logf, err := os.Create(filepath.Join(base, "postgres.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	// The server is a child of the test binary, not a daemon (pg_ctl
	// would detach it): should the test binary die without running its
	// cleanups, the kernel sends the server SIGQUIT (immediate shutdown;
	// its own children follow the postmaster).
	s.cmd = exec.Command(filepath.Join(bin, "postgres"), args...)
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGQUIT, Setpgid: true}
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.Env = append(os.Environ(), "LC_ALL=C")
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("pgtest: start postgres: %v", err)
	}
	go func() { s.err = s.cmd.Wait(); close(s.exit) }()
	t.Cleanup(func() { s.stop(t, base) })
	if err := s.waitReady(); err != nil {
		log, _ := os.ReadFile(filepath.Join(base, "postgres.log"))
		t.Fatalf("pgtest: %v\n%s", err, log)
	}
	return s
}

// stop shuts the server down (fast shutdown: open sessions are ended) and
// waits for it, killing it if it does not go within a minute.
func (s *Server) stop(t testing.TB, base string) {
	select {
	case <-s.exit:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-s.exit:
	case <-time.After(time.Minute):
		t.Errorf("pgtest: postgres did not stop within a minute of SIGINT; killing it")
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.exit
	}
	if t.Failed() {
		if log, err := os.ReadFile(filepath.Join(base, "postgres.log")); err == nil && len(log) > 0 {
			t.Logf("pgtest: server log:\n%s", tail(log, 4000))
		}
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// waitReady waits until the server accepts connections, or fails when it
// exits first. (No deadline of its own: a server that never comes up is
// ended by the test's timeout, and the cleanup still stops it.)
func (s *Server) waitReady() error {
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := pgx.Connect(ctx, s.DSN("postgres"))
		cancel()
		if err == nil {
			c.Close(context.Background())
			return nil
		}
		select {
		case <-s.exit:
			return fmt.Errorf("postgres exited before accepting connections (%v); last connect error: %v", s.err, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// DSN returns the connection string of database db on the server.
func (s *Server) DSN(db string) string {
	return fmt.Sprintf("postgres://%s@/%s?host=%s&port=%d&sslmode=disable", s.user, db, s.sock, s.port)
}

// NewDatabase creates an empty database and returns its DSN. The database
// goes away with the server.
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("t%d", s.dbs.Add(1))
	ctx := context.Background()
	c, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	return s.DSN(name)
}

// traversable makes sure the user uid:gid can reach dir: every ancestor
// must grant it search permission. Ancestors this process owns (the test's
// temporary directories, a private TMPDIR) get the search bit for others
// added, nothing more; any other one that bars the user is an error.
func traversable(dir string, uid, gid int) error {
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		mode := fi.Mode().Perm()
		ok := mode&0o001 != 0 || (int(st.Uid) == uid && mode&0o100 != 0) || (int(st.Gid) == gid && mode&0o010 != 0)
		if !ok {
			if int(st.Uid) != os.Geteuid() {
				return fmt.Errorf("pgtest: %s (mode %v, owner %d) bars the postgres user from %s: use a TMPDIR whose parents others can search", d, mode, st.Uid, dir)
			}
			if err := os.Chmod(d, fi.Mode()|0o001); err != nil {
				return err
			}
		}
		if d == "/" || d == "." {
			return nil
		}
	}
}

// freePort returns a TCP port nobody listens on at the moment. The server
// listens only on its unix socket, whose name carries the port number, so
// the number only has to be plausible; a free one keeps the name unique.
func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
