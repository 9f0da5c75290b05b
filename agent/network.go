package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"stasis/qemuhook"
	"stasis/vlan/vswitch"
)

// network is one experiment's switch on this host: in the agent's process
// (Config.SwitchCommand unset: tests, embedding), or in a process of its
// own that outlives the agent, so that an agent restart re-adopts running
// experiments with their network intact.
type network interface {
	vswitch.Checkpointer
	// TrunkAddr is the bound UDP trunk address, "" without a trunk.
	TrunkAddr(ctx context.Context) (string, error)
	// ConnectTrunk joins the switch to peer's switch at addr.
	ConnectTrunk(ctx context.Context, peer, addr string) error
	// Close ends the switch.
	Close() error
	// Detach forgets the switch without ending it (agent shutdown).
	Detach()
}

// portSpec is one node NIC's switch port.
type portSpec struct {
	Name string `json:"name"`
	VLAN int    `json:"vlan"`
	Sock string `json:"sock"`
}

// netConfig is what a switch needs to start: switch.json in a process's
// directory.
type netConfig struct {
	Ports   []portSpec `json:"ports"`
	Trunked bool       `json:"trunked"`
	Bind    string     `json:"bind"` // trunk IP
}

// localNet is a switch in this process.
type localNet struct {
	*vswitch.Switch
	mu    sync.Mutex
	trunk *net.UDPConn // bound, owned until ConnectTrunk hands it over
	addr  string
}

func newLocalNet(cfg netConfig, log *slog.Logger) (*localNet, error) {
	sw, err := vswitch.New(vswitch.Config{Logger: log})
	if err != nil {
		return nil, err
	}
	n := &localNet{Switch: sw}
	for _, p := range cfg.Ports {
		os.Remove(p.Sock) // the caller checked that no live QEMU uses it
		sp, err := vswitch.ListenStream(p.Sock)
		if err != nil {
			n.Close()
			return nil, err
		}
		if err := sw.AddPort(vswitch.PortConfig{Name: p.Name, VLAN: uint16(p.VLAN)}, sp); err != nil {
			sp.Close()
			n.Close()
			return nil, err
		}
	}
	if cfg.Trunked {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(cfg.Bind)})
		if err != nil {
			n.Close()
			return nil, fmt.Errorf("trunk: %w", err)
		}
		n.trunk, n.addr = c, c.LocalAddr().String()
	}
	return n, nil
}

func (n *localNet) TrunkAddr(context.Context) (string, error) { return n.addr, nil }

func (n *localNet) ConnectTrunk(_ context.Context, peer, addr string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.trunk == nil {
		return errors.New("no trunk socket (already connected, or the experiment is on one host)")
	}
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return fmt.Errorf("peer %s: %w", peer, err)
	}
	t, err := vswitch.NewUDPTrunkTo(n.trunk, ua)
	if err != nil {
		return err
	}
	n.trunk = nil // the trunk owns it now
	if err := n.Switch.AddPort(vswitch.PortConfig{Name: "trunk-" + peer, Mode: vswitch.Trunk}, t); err != nil {
		t.Close()
		return err
	}
	return nil
}

func (n *localNet) Close() error {
	n.mu.Lock()
	if n.trunk != nil {
		n.trunk.Close()
		n.trunk = nil
	}
	n.mu.Unlock()
	return n.Switch.Close()
}

func (n *localNet) Detach() { n.Close() } // cannot outlive this process

// procNet is a switch in a process of its own (RunSwitch), driven over
// its unix socket.
type procNet struct {
	*vswitch.Client
	dir string
	hc  *http.Client
}

const (
	switchConfig = "switch.json"
	switchSock   = "switch.sock"
	switchPid    = "switch.pid"
)

// startProcNet starts `cmd --dir dir` (detached) with cfg and waits until
// its API answers.
func startProcNet(ctx context.Context, command []string, dir string, cfg netConfig, timeout time.Duration) (*procNet, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	b, _ := json.Marshal(cfg)
	if err := os.WriteFile(filepath.Join(dir, switchConfig), b, 0o644); err != nil {
		return nil, err
	}
	os.Remove(filepath.Join(dir, switchSock))
	logf, err := os.OpenFile(filepath.Join(dir, "switch.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(command[0], append(command[1:], "--dir", dir)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start switch: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	n := attachNet(dir)
	deadline := time.Now().Add(timeout)
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := n.Status(cctx)
		cancel()
		if err == nil {
			return n, nil
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(filepath.Join(dir, "switch.log"))
			return nil, fmt.Errorf("switch process exited at start: %s", lastLines(string(b), 5))
		default:
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			cmd.Process.Kill()
			<-exited
			return nil, fmt.Errorf("switch process did not answer on %s: %w", filepath.Join(dir, switchSock), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// attachNet talks to the switch process serving in dir.
func attachNet(dir string) *procNet {
	sock := filepath.Join(dir, switchSock)
	c := vswitch.NewUnixClient(sock)
	return &procNet{Client: c, dir: dir, hc: c.HTTP}
}

func (n *procNet) call(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://vswitch"+path, body)
	if err != nil {
		return err
	}
	resp, err := n.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("switch process: %s: %s", resp.Status, bytes.TrimSpace(b))
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}

type trunkMsg struct {
	Peer string `json:"peer,omitempty"`
	Addr string `json:"addr"`
}

func (n *procNet) TrunkAddr(ctx context.Context) (string, error) {
	var m trunkMsg
	err := n.call(ctx, http.MethodGet, "/v1/trunk", nil, &m)
	return m.Addr, err
}

func (n *procNet) ConnectTrunk(ctx context.Context, peer, addr string) error {
	return n.call(ctx, http.MethodPost, "/v1/trunk", trunkMsg{Peer: peer, Addr: addr}, nil)
}

// Close asks the switch process to end and waits for it to go.
func (n *procNet) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pid := readPid(n.dir)
	err := n.call(ctx, http.MethodPost, "/v1/shutdown", nil, nil)
	for i := 0; pid > 0 && qemuhook.Alive(pid) && i < 200; i++ {
		time.Sleep(25 * time.Millisecond)
	}
	if pid > 0 && qemuhook.Alive(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	n.Client.CloseIdleConnections()
	if err != nil && pid > 0 && !qemuhook.Alive(pid) {
		return nil // gone either way
	}
	return err
}

func (n *procNet) Detach() { n.Client.CloseIdleConnections() }

func readPid(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, switchPid))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(string(bytes.TrimSpace(b)))
	return pid
}

// RunSwitch is the switch process (`stasis agent switch --dir DIR`): it
// builds the switch DIR/switch.json describes and serves its control API
// (vswitch's, plus trunk and shutdown) on DIR/switch.sock until told to
// stop or ctx ends.
func RunSwitch(ctx context.Context, dir string, log *slog.Logger) error {
	b, err := os.ReadFile(filepath.Join(dir, switchConfig))
	if err != nil {
		return err
	}
	var cfg netConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return fmt.Errorf("%s: %w", switchConfig, err)
	}
	n, err := newLocalNet(cfg, log)
	if err != nil {
		return err
	}
	defer n.Close()
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	mux := http.NewServeMux()
	mux.Handle("/v1/", vswitch.NewHandler(n.Switch))
	mux.HandleFunc("GET /v1/trunk", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, trunkMsg{Addr: n.addr})
	})
	mux.HandleFunc("POST /v1/trunk", func(w http.ResponseWriter, r *http.Request) {
		var m trunkMsg
		if err := decode(r, &m); err != nil {
			writeJSON(w, http.StatusBadRequest, apiError{Error: err.Error()})
			return
		}
		if err := n.ConnectTrunk(r.Context(), m.Peer, m.Addr); err != nil {
			writeJSON(w, http.StatusConflict, apiError{Error: err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, struct{}{})
	})
	mux.HandleFunc("POST /v1/shutdown", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, struct{}{})
		stop()
	})
	ln, err := listenUnix(filepath.Join(dir, switchSock))
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, switchPid), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		ln.Close()
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	log.Info("switch serving", "dir", dir, "ports", len(cfg.Ports), "trunk", n.addr)
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
