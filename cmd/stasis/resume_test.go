package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"stasis/internal/testguest"
	"stasis/qemuhook"
)

// TestResumeCLI resumes a real guest paused by hand and one left paused by
// swapout --keep, and refuses one that runs.
func TestResumeCLI(t *testing.T) {
	f := testguest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	g := testguest.Start(t, f, testguest.Config{Dir: t.TempDir(), Name: "resume"})
	last, err := g.Console.WaitTick(ctx, func(tk testguest.Tick) bool { return tk.N >= 2 })
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	resume := func() (resumeSummary, error) {
		out.Reset()
		var s resumeSummary
		err := runResume(ctx, &resumeOptions{qmp: g.QMP, jsonOut: true, out: &out, errOut: os.Stderr}, nil)
		if err == nil {
			if jerr := json.Unmarshal(out.Bytes(), &s); jerr != nil {
				t.Fatalf("%v: %s", jerr, out.String())
			}
		}
		return s, err
	}
	// drain returns the last tick the guest printed so far.
	drain := func() testguest.Tick {
		for {
			c, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			tk, err := g.Console.WaitTick(c, nil)
			cancel()
			if err != nil {
				return last
			}
			last = tk
		}
	}

	if _, err := resume(); err == nil || !strings.Contains(err.Error(), `"running", not paused`) {
		t.Fatalf("resume of a running VM: %v", err)
	}

	m, err := qemuhook.Connect(ctx, qemuhook.Config{QMP: g.QMP})
	if err != nil {
		t.Fatal(err)
	}
	err = m.Pause(ctx)
	m.Close()
	if err != nil {
		t.Fatal(err)
	}
	before := drain()
	s, err := resume()
	if err != nil {
		t.Fatal(err)
	}
	if s.Before != "paused" || s.After != "running" || s.Pid != g.Pid() || s.QMP != g.QMP {
		t.Fatalf("summary %+v", s)
	}
	if last, err = g.Console.WaitTick(ctx, nil); err != nil || last.N != before.N+1 {
		t.Fatalf("after resume %+v %v, before %+v", last, err, before)
	}

	// swapout --keep leaves it paused after a completed save.
	o := swapOpts(&out)
	o.qmp, o.to, o.keep = g.QMP, filepath.Join(t.TempDir(), "snap"), true
	out.Reset()
	if err := runSwapout(ctx, o, nil); err != nil {
		t.Fatal(err)
	}
	before = drain()
	if s, err = resume(); err != nil {
		t.Fatal(err)
	}
	if s.Before != "postmigrate" || s.After != "running" {
		t.Fatalf("summary after swapout --keep %+v", s)
	}
	tk, err := g.Console.WaitTick(ctx, func(tk testguest.Tick) bool { return tk.N >= before.N+2 })
	if err != nil || tk.Boot != before.Boot || tk.Disk != tk.N-1 {
		t.Fatalf("after resume %+v %v (disk not written?), before %+v", tk, err, before)
	}

	if err := runResume(ctx, &resumeOptions{out: &out, errOut: os.Stderr}, nil); err == nil {
		t.Error("resume without --qmp accepted")
	}
	// The help text is wired.
	var help bytes.Buffer
	rootCmd.SetOut(&help)
	rootCmd.SetArgs([]string{"resume", "--help"})
	if err := rootCmd.Execute(); err != nil || !strings.Contains(help.String(), "--qmp") || !strings.Contains(help.String(), "not paused") {
		t.Fatalf("resume --help: %v\n%s", err, help.String())
	}
}
