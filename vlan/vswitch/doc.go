// Package vswitch is stasis's userspace Ethernet switch: the software switch
// that an experiment's traffic passes through so that the network can be
// checkpointed consistently with the nodes.
//
// # Forwarding
//
// A Switch connects Ports: QEMU socket netdevs over unix sockets
// (StreamPort for -netdev stream, DgramPort for -netdev dgram), tap devices
// (TapPort), kernel interfaces through AF_PACKET (PacketPort), and trunks to
// switch instances on other hosts over UDP (UDPTrunk). It learns MAC
// addresses per VLAN and floods unknown, broadcast and multicast frames within
// the VLAN. An access port belongs to one VLAN and carries untagged frames; an
// Ethernet trunk port carries 802.1Q-tagged frames; a UDP trunk carries each
// frame's VLAN and epoch in its own header, so several hosts form one set of
// VLANs. Frames move in batches through fixed-size buffers from a free list:
// the forwarding path does not allocate.
//
// # Consistent checkpoints
//
// Every port has an epoch. A frame is tagged with the epoch of the port it
// entered through (its sender) and keeps that tag across UDP trunks. A
// checkpoint to epoch E+1 is cut port by port, in the style of Chandy and
// Lamport with epochs standing in for markers:
//
//   - FreezePort cuts a port's receive side: from then on nothing is written
//     to it. Call it just before the node behind the port is paused; it
//     returns once the node has consumed what was already written.
//   - PortCheckpointed is called once the node is paused. The switch drains
//     what the node sent before it stopped, then advances the port's send
//     epoch to E+1 (and cuts its receive side if FreezePort was not called).
//   - A frame from a sender still in epoch E that reaches a port whose receive
//     side is already cut crossed the checkpoint line: it is logged as
//     in-flight state and not delivered.
//   - A frame from a sender already in epoch E+1 that reaches a port not yet
//     cut would be an orphan (received in the checkpoint, sent after it): it
//     is held until that port is cut, and delivered only after Resume.
//   - EndCheckpoint waits until every local port is checkpointed and every
//     trunk peer has sent its end-of-epoch marker, then returns the Log.
//   - Resume replays the log, in order, to each port, then frames that were
//     sent after the checkpoint, then forwards normally. Restore(log) on a
//     fresh switch (after the nodes were restored) replaces the log and
//     drops post-checkpoint frames (the restored senders send them again).
//
// The Log has a versioned file format with per-record checksums (WriteTo,
// ReadLog); a truncated or corrupt log is refused.
//
// The control API is Checkpointer, whose doc comment is the contract. The
// Switch implements it in process; NewHandler serves it over HTTP and
// Client (NewClient over TCP, NewUnixClient over a unix socket) calls it,
// for an orchestration in another process, with the same semantics.
//
// The folder and the package are named vswitch because switch is a
// Go keyword.
package vswitch
