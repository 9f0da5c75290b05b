package experiment

import (
	"context"
	"path/filepath"
	"time"

	"stasis/hypervisor"
)

// Host is one machine's agent as the coordinator sees it: it owns the
// QEMU processes and the switch of each experiment's nodes placed on it.
// Every method names the experiment by its Key; a host may run parts of
// many experiments.
//
// The checkpoint methods are called in this order, each on every host of
// the experiment before the next starts (EndCheckpoint on all hosts at
// once, since each waits for its trunk peers' markers):
//
//	Preflight → Freeze → Cut → EndCheckpoint → Save → (Destroy | Resume)
//
// Until Destroy, nothing a host does loses guest state: after a failure at
// any step the coordinator calls Resume (or leaves the nodes paused) and
// the experiment runs on as if nothing had happened. Methods must be safe
// to repeat after a partial failure (Resume of running nodes, Destroy of
// nodes already gone succeed).
type Host interface {
	// Name is the host's name, as placements name it.
	Name() string
	// Start boots fresh nodes (no snapshot) and builds this host's part
	// of the network. It returns the host's trunk address ("ip:port") for
	// its peers, or "" when the experiment lives on this host alone.
	Start(ctx context.Context, req StartRequest) (trunk string, err error)
	// Connect joins this host's switch to the other hosts' switches
	// (peers: host name → trunk address). Called once every host started.
	Connect(ctx context.Context, key Key, peers map[string]string) error
	// Preflight runs every check that can fail before any node is paused:
	// the nodes are alive and can be saved in their capture mode.
	Preflight(ctx context.Context, key Key) error
	// Freeze begins checkpoint epoch on the host's switch, then freezes
	// each node's ports and pauses it, all nodes at once.
	Freeze(ctx context.Context, key Key, epoch uint64) error
	// Cut tells the switch that every node is paused (PortCheckpointed
	// for each port): it drains what the nodes sent before they stopped.
	Cut(ctx context.Context, key Key) error
	// EndCheckpoint waits for the trunk peers' markers and returns the
	// switch's in-flight log, encoded (vswitch.Log.WriteTo).
	EndCheckpoint(ctx context.Context, key Key) ([]byte, error)
	// Save writes each paused node into dir/NODE (hypervisor.Checkpoint
	// with the experiment's pause instant), in parallel. dir is relative to
	// the experiments directory on the host's casfs mount (Key.Dir()):
	// every host mounts the same casfs, not necessarily at the same path.
	// It never resumes and never destroys. Errors name the node.
	Save(ctx context.Context, key Key, dir string, paused time.Time, p ProgressFunc) ([]NodeSaved, error)
	// Resume undoes a checkpoint that will not complete: the switch
	// delivers what it logged and forwards again, then every node
	// continues.
	Resume(ctx context.Context, key Key) error
	// Destroy ends the experiment's nodes and switch on this host and
	// removes their local files.
	Destroy(ctx context.Context, key Key) error
	// Restore rebuilds this host's part of the network from its log and
	// restores each node paused from its snapshot directory. Like Start
	// it returns the trunk address.
	Restore(ctx context.Context, req RestoreRequest) (trunk string, err error)
	// Continue resumes the switch (replaying logged frames) and then every
	// node, after Restore on every host.
	Continue(ctx context.Context, key Key) error
	// Status reports the experiment's nodes on this host.
	Status(ctx context.Context, key Key) ([]NodeStatus, error)
}

// Key names an experiment.
type Key struct {
	Project string `json:"project"`
	Name    string `json:"name"`
}

func (k Key) String() string { return k.Project + "/" + k.Name }

// Dir is the experiment's directory relative to the experiments directory
// (PROJECT/NAME).
func (k Key) Dir() string { return filepath.Join(k.Project, k.Name) }

// StartRequest asks a host to boot nodes of an experiment.
type StartRequest struct {
	Key   Key      `json:"key"`
	Spec  []byte   `json:"spec"`  // the experiment file (YAML)
	Nodes []string `json:"nodes"` // the nodes placed on this host
	// Trunked says the experiment spans hosts: the host opens a trunk.
	Trunked bool `json:"trunked"`
}

// RestoreRequest asks a host to restore nodes of an experiment from a
// snapshot.
type RestoreRequest struct {
	StartRequest
	// Snapshot is the experiment snapshot's directory relative to the
	// experiments directory on the host's casfs mount
	// ("PROJECT/NAME/.snapshots/SNAPSHOT"); node NODE is in Snapshot/NODE.
	Snapshot string `json:"snapshot"`
	// Log is this host's share of the network's in-flight frames: the
	// entries of every switch's log whose destination port is on this
	// host, as one encoded vswitch.Log.
	Log []byte `json:"log"`
}

// NodeSaved is what Save did for one node.
type NodeSaved struct {
	Node   string                    `json:"node"`
	Result *hypervisor.SwapoutResult `json:"-"`
	// Manifest is the BLAKE3-256 of the node's manifest.json.
	Manifest string        `json:"manifest_blake3"`
	Bytes    int64         `json:"bytes"`
	Save     time.Duration `json:"save_ns"`
	Verify   time.Duration `json:"verify_ns"`
}

// NodeStatus is one node as its host sees it.
type NodeStatus struct {
	Node   string `json:"node"`
	Host   string `json:"host"`
	State  string `json:"state"` // QEMU's run state ("running", "paused", ...) or "gone"
	Pid    int    `json:"pid,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// ProgressFunc receives per-node progress: node, phase, bytes done, total
// (-1 unknown). It may be called from several goroutines.
type ProgressFunc func(node, phase string, done, total int64)
