package vlan

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
)

// Naming. Everything an experiment creates on a host is found again by
// name, so teardown needs no state record:
//
//	stx-<exp>             switch namespace: bridges, switch ends, taps, VLANs
//	stx-<exp>-<node>      one namespace per netns node
//
// Experiment names contain no '-', so "stx-<exp>-" is a prefix that only
// that experiment's node namespaces have. Inside the switch namespace,
// interface names (at most 15 bytes) are derived from a hash of the LAN or
// node/interface, so they are stable when the topology is reordered:
//
//	br<10 hex>   the bridge of a LAN
//	ve<10 hex>   switch end of a netns node's interface
//	tp<10 hex>   tap device of a tap node's interface
//	vlan<id>     802.1Q subinterface of the trunk (dot1q backend)
const nsPrefix = "stx-"

// SwitchNamespace is the name of experiment exp's switch namespace.
func SwitchNamespace(exp string) string { return nsPrefix + exp }

// NodeNamespace is the name of the namespace of netns node node.
func NodeNamespace(exp, node string) string { return nsPrefix + exp + "-" + node }

// nodeNamespacePrefix is what every node namespace of exp starts with.
func nodeNamespacePrefix(exp string) string { return nsPrefix + exp + "-" }

func hashName(prefix string, parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return prefix + hex.EncodeToString(h.Sum(nil))[:10]
}

func bridgeName(lan string) string            { return hashName("br", "lan", lan) }
func switchEndName(node, iface string) string { return hashName("ve", "if", node, iface) }
func tapName(node, iface string) string       { return hashName("tp", "if", node, iface) }
func vlanName(id int) string                  { return "vlan" + strconv.Itoa(id) }

// nodeMAC derives a stable, locally administered unicast MAC for a node
// interface. The experiment is part of the hash, so two experiments that
// reuse node names still differ on the wire.
func nodeMAC(exp, node, iface string) MAC {
	h := sha256.Sum256([]byte("mac\x00" + exp + "\x00" + node + "\x00" + iface))
	mac := MAC(h[:6])
	mac[0] = (mac[0] | 0x02) &^ 0x01
	return mac
}
