package qemuhook

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"stasis/hypervisor"
	"stasis/internal/testguest"
	"stasis/internal/testguest/casfsmount"
)

// benchLogger logs debug lines to stderr when STASIS_BENCH_DEBUG is set.
func benchLogger() *slog.Logger {
	if os.Getenv("STASIS_BENCH_DEBUG") == "" {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// qemuVersion is the installed QEMU's major and minor version.
func qemuVersion(tb testing.TB) (int, int) {
	out, err := exec.Command("qemu-system-x86_64", "--version").Output()
	if err != nil {
		tb.Fatal(err)
	}
	m := regexp.MustCompile(`version (\d+)\.(\d+)`).FindSubmatch(out)
	if m == nil {
		tb.Fatalf("cannot parse %q", out)
	}
	maj, _ := strconv.Atoi(string(m[1]))
	min, _ := strconv.Atoi(string(m[2]))
	return maj, min
}

// BenchmarkSwap measures swapout downtime and swapin time of a 512 MiB guest
// (20 MiB of random data in its tmpfs) for each capture mode, saving to a
// local directory and to casfs (embedded, badger on local disk). Boot is not
// timed. Run with -benchtime 1x: each iteration boots a guest.
func BenchmarkSwap(b *testing.B) {
	f := testguest.Require(b)
	maj, _ := qemuVersion(b)
	for _, mode := range []string{ModeStream, ModeRAMFile, ModeMappedRAM} {
		for _, target := range []string{"local", "casfs"} {
			b.Run(mode+"/"+target, func(b *testing.B) {
				if mode == ModeMappedRAM && maj < 9 {
					b.Skipf("mapped-ram needs QEMU >= 9; this is QEMU %d", maj)
				}
				var root string
				var mnt *casfsmount.Mount
				if target == "casfs" {
					mnt = casfsmount.New(b, casfsmount.Options{})
					root = mnt.Dir
				} else {
					root = b.TempDir()
				}
				var down, swapin time.Duration
				var saved, up, upFirst int64
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
					dir := b.TempDir()
					shm, err := os.MkdirTemp("/dev/shm", "stasis-bench-")
					if err != nil {
						b.Fatal(err)
					}
					b.Cleanup(func() { os.RemoveAll(shm) })
					cfg := testguest.Config{Dir: dir, Name: "bench", MemMiB: 512, KernelArgs: []string{"stasis.fill=20"}}
					if mode == ModeRAMFile {
						cfg.RAMFile = filepath.Join(shm, "guest.ram")
					}
					g := testguest.Start(b, f, cfg)
					if _, err := g.Console.WaitTick(ctx, func(tk testguest.Tick) bool { return tk.N >= 2 }); err != nil {
						q, _ := os.ReadFile(g.Log)
						c, _ := os.ReadFile(g.Console.Path)
						b.Fatalf("%v\nqemu: %s\nconsole: %s", err, q, tailStr(string(c), 2000))
					}
					m, err := Connect(ctx, Config{QMP: g.QMP, Mode: mode, Logger: benchLogger()})
					if err != nil {
						b.Fatal(err)
					}
					var u0 uint64
					if mnt != nil {
						st, _ := mnt.Stats(ctx)
						u0 = st.Mount.BytesUploadedEnc
					}
					snap := filepath.Join(root, "snap"+strconv.Itoa(i))
					b.StartTimer()
					res, err := hypervisor.Swapout(ctx, m, snap, hypervisor.SwapoutOptions{Logger: benchLogger()})
					b.StopTimer()
					if err != nil {
						b.Fatal(err)
					}
					m.Close()
					<-g.Exited()
					down += res.Downtime
					saved += res.Bytes
					if mnt != nil {
						st, _ := mnt.Stats(ctx)
						if i == 0 {
							upFirst = int64(st.Mount.BytesUploadedEnc - u0)
						} else {
							up += int64(st.Mount.BytesUploadedEnc - u0)
						}
					}
					os.RemoveAll(shm)
					local, err := os.MkdirTemp("/dev/shm", "stasis-bench-in-")
					if err != nil {
						b.Fatal(err)
					}
					b.Cleanup(func() { os.RemoveAll(local) })
					b.StartTimer()
					t0 := time.Now()
					r, err := Restore(ctx, snap, RestoreOptions{LocalDir: local})
					swapin += time.Since(t0)
					b.StopTimer()
					if err != nil {
						b.Fatal(err)
					}
					b.Cleanup(r.Kill)
					g.Console.Done = r.Exited()
					if _, err := g.Console.WaitTick(ctx, nil); err != nil {
						b.Fatal(err)
					}
					r.Kill()
					os.RemoveAll(local)
					cancel()
				}
				n := float64(b.N)
				b.ReportMetric(down.Seconds()/n, "downtime-s")
				b.ReportMetric(swapin.Seconds()/n, "swapin-s")
				b.ReportMetric(float64(saved)/n/1e6, "saved-MB")
				if mnt != nil {
					// The first swapout into a fresh casfs uploads the kernel
					// and everything common; later guests only what is new.
					b.ReportMetric(float64(upFirst)/1e6, "upload-first-MB")
					if b.N > 1 {
						b.ReportMetric(float64(up)/(n-1)/1e6, "upload-next-MB")
					}
				}
			})
		}
	}
}
