// Package experiment is the experiment as one unit: the experiment file
// (Spec: nodes, LANs, placement), the experiment manifest written with
// every snapshot, and the coordinator that swaps a whole multi-VM
// experiment out at one consistent cut and back in on any hosts.
//
// The coordinator talks to hosts only through the Host interface (a host
// agent, in process or over its HTTP API); it never imports casfs, metad or
// blockd: it writes files into a casfs mount and takes snapshots with
// mkdir MNT/…/.snapshots/NAME.
package experiment
