package testguest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrExited means the process writing the console exited.
var ErrExited = errors.New("qemu exited")

// Tick is one parsed "STASIS ..." line.
type Tick struct {
	ID    string
	N     int
	Boot  string
	Clock int64   // guest wall clock, Unix seconds
	Up    float64 // guest uptime, seconds
	Disk  int     // counter read back from the disk before writing N; -1 if none
}

// ParseTick parses a console line; ok is false for other lines.
func ParseTick(line string) (t Tick, ok bool) {
	line = strings.TrimSpace(line)
	if !strings.HasPrefix(line, "STASIS ") {
		return Tick{}, false
	}
	t.Disk = -1
	seen := 0
	for _, f := range strings.Fields(line)[1:] {
		k, v, found := strings.Cut(f, "=")
		if !found {
			continue
		}
		var err error
		switch k {
		case "id":
			t.ID = v
		case "n":
			t.N, err = strconv.Atoi(v)
			seen++
		case "boot":
			t.Boot = v
			seen++
		case "clock":
			t.Clock, err = strconv.ParseInt(v, 10, 64)
			seen++
		case "up":
			t.Up, err = strconv.ParseFloat(v, 64)
		case "disk":
			if v != "none" {
				t.Disk, err = strconv.Atoi(v)
			}
		}
		if err != nil {
			return Tick{}, false
		}
	}
	return t, seen == 3
}

// Console follows the guest's serial console log file.
type Console struct {
	Path string
	// Done, when set, ends a Wait early once closed (the writer exited).
	Done <-chan struct{}
	mu   sync.Mutex
	off  int64
	part []byte
}

// NewConsole follows path from its current end (or its start if absent).
func NewConsole(path string) *Console {
	c := &Console{Path: path}
	if fi, err := os.Stat(path); err == nil {
		c.off = fi.Size()
	}
	return c
}

// Wait returns the first new line for which match is true, polling the file
// until ctx ends.
func (c *Console) Wait(ctx context.Context, match func(line string) bool) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	gone := false
	for {
		lines, err := c.readLocked()
		if err != nil {
			return "", err
		}
		for i, l := range lines {
			if match(l) {
				// Put back what follows for the next Wait.
				rest := lines[i+1:]
				if len(rest) > 0 {
					var b bytes.Buffer
					for _, r := range rest {
						b.WriteString(r)
						b.WriteByte('\n')
					}
					c.part = append(b.Bytes(), c.part...)
				}
				return l, nil
			}
		}
		if c.Done != nil && gone {
			return "", fmt.Errorf("testguest: waiting on console %s: %w", c.Path, ErrExited)
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("testguest: waiting on console %s: %w", c.Path, ctx.Err())
		case <-c.Done:
			gone = true // one more read for what it wrote last
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// WaitTick returns the first new tick for which match is true (nil: any).
func (c *Console) WaitTick(ctx context.Context, match func(Tick) bool) (Tick, error) {
	var t Tick
	_, err := c.Wait(ctx, func(l string) bool {
		var ok bool
		t, ok = ParseTick(l)
		return ok && (match == nil || match(t))
	})
	return t, err
}

// readLocked returns the complete new lines since the last read.
func (c *Console) readLocked() ([]string, error) {
	f, err := os.Open(c.Path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, c.off, 1<<40))
	if err != nil {
		return nil, err
	}
	c.off += int64(len(b))
	data := append(c.part, b...)
	i := bytes.LastIndexByte(data, '\n')
	if i < 0 {
		c.part = data
		return nil, nil
	}
	c.part = append([]byte(nil), data[i+1:]...)
	var lines []string
	for _, l := range strings.Split(string(data[:i]), "\n") {
		lines = append(lines, strings.TrimRight(l, "\r"))
	}
	return lines, nil
}

// Exec runs a shell command in the guest over the ttyS1 shell (Config.Shell)
// and returns its output (with \r removed) and exit status. One command at
// a time per guest.
func (g *Guest) Exec(ctx context.Context, command string) (string, int, error) {
	if g.Shell == "" {
		return "", -1, errors.New("testguest: guest started without Shell")
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", g.Shell)
	if err != nil {
		return "", -1, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	// The quotes keep the markers out of the tty's echo of the command.
	if _, err := fmt.Fprintf(conn, "echo @@BE''GIN@@; %s; echo @@E''ND@@ $?\n", command); err != nil {
		return "", -1, err
	}
	var out strings.Builder
	in := false
	r := bufio.NewReader(conn)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return out.String(), -1, fmt.Errorf("testguest: exec %q: %w", command, err)
		}
		line = strings.TrimRight(line, "\r\n")
		switch {
		case !in && strings.HasSuffix(line, "@@BEGIN@@"):
			in = true
		case in && strings.Contains(line, "@@END@@ "):
			pre, status, _ := strings.Cut(line, "@@END@@ ")
			out.WriteString(pre)
			rc, err := strconv.Atoi(strings.TrimSpace(status))
			if err != nil {
				return out.String(), -1, fmt.Errorf("testguest: exec %q: bad status %q", command, status)
			}
			return out.String(), rc, nil
		case in:
			out.WriteString(line)
			out.WriteByte('\n')
		}
	}
}
