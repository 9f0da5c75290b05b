// Package vlan builds an experiment's network on one host in software, in
// one batch, and tears it down again.
//
// Testbeds wire experiments with hardware switch VLANs, which takes minutes
// for a hundred nodes. This package takes a [Topology] (nodes, their
// interfaces, LANs with members, optional per-link rate limits), checks it
// ([Topology.Validate]), turns it into a pure [Plan] of kernel objects
// ([NewPlan]) and realizes the plan through netlink ([Applier]).
//
// Layout on a host, for experiment E:
//
//   - a switch namespace "stx-E" holds one bridge per LAN and the switch
//     side of every link. Nothing of the experiment lives in the host's own
//     namespace, so experiments are isolated from each other and from the
//     host even when they reuse addresses.
//   - every netns node N lives in its own namespace "stx-E-N"; each of its
//     interfaces is one end of a veth pair whose other end is a port of its
//     LAN's bridge in the switch namespace.
//   - every tap node (a QEMU guest) gets a persistent tap device per
//     interface in the switch namespace, enslaved to its LAN's bridge. QEMU
//     attaches with a file descriptor from [OpenTap] or by running inside
//     the switch namespace.
//   - with the dot1q backend, every LAN also gets an 802.1Q subinterface of
//     the host's trunk, created directly in the switch namespace and
//     enslaved to the LAN's bridge, which carries the LAN to other hosts.
//     (The kernel this was developed on has no 802.1Q support; that
//     backend's plan is tested, and its refusal, but it has not run.)
//
// Realization is idempotent (applying a plan twice changes nothing, and
// applying it to a damaged network repairs it) and reversible:
// [Applier.Down] finds everything by namespace name, so it needs no state
// record and works after a crash, and a failed [Applier.Up] removes what it
// created before it returns. [Applier.Show] compares a plan with what
// exists.
//
// Up talks to the kernel in batches: one netlink socket per namespace,
// opened while the namespace is created, many requests per sendmsg; both
// ends of a veth pair in one request, the node end placed directly in the
// node's namespace with a chosen interface index, so no lookups are
// needed. Before Up returns it makes the kernel apply pending carrier
// changes, so the network forwards at once.
package vlan
