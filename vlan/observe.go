package vlan

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// nsState is what exists in one namespace, as far as a plan cares.
type nsState struct {
	links map[string]*linkState
	// maxIndex is the highest interface index in use.
	maxIndex int32
}

type linkState struct {
	index  int32
	kind   string // netlink's link type: "veth", "bridge", "tuntap", "vlan", ...
	master int32
	up     bool
	// peer is the index of a veth's other end (in its namespace).
	peer  int32
	addrs map[netip.Prefix]bool
	// tbfRate is the rate of a root tbf qdisc in bytes/s (0 if none).
	tbfRate uint64
	// created is set on links this run has just created.
	created bool
}

// freshState is the state of a namespace this run just created: only the
// loopback device (and possibly fallback tunnel devices, which use low
// indices and names we never use).
func freshState() *nsState {
	return &nsState{links: map[string]*linkState{}, maxIndex: 1}
}

// observe reads the links, addresses and root qdiscs of namespace h.
func observe(h *nsHandle) (*nsState, error) {
	nh, err := netlink.NewHandleAt(netns.NsHandle(h.fd))
	if err != nil {
		return nil, fmt.Errorf("read netns %s: %w", h.name, err)
	}
	defer nh.Close()
	if err := nh.SetSocketTimeout(nlTimeout); err != nil {
		return nil, err
	}
	links, err := nh.LinkList()
	if err != nil {
		return nil, fmt.Errorf("read netns %s: links: %w", h.name, err)
	}
	st := &nsState{links: map[string]*linkState{}, maxIndex: 1}
	byIndex := map[int]*linkState{}
	for _, l := range links {
		a := l.Attrs()
		ls := &linkState{
			index:  int32(a.Index),
			kind:   l.Type(),
			master: int32(a.MasterIndex),
			up:     a.Flags&net.FlagUp != 0,
			peer:   int32(a.ParentIndex),
			addrs:  map[netip.Prefix]bool{},
		}
		st.links[a.Name] = ls
		byIndex[a.Index] = ls
		st.maxIndex = max(st.maxIndex, int32(a.Index))
	}
	addrs, err := nh.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("read netns %s: addresses: %w", h.name, err)
	}
	for _, a := range addrs {
		ls := byIndex[a.LinkIndex]
		if ls == nil || a.IPNet == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		bits, _ := a.Mask.Size()
		ls.addrs[netip.PrefixFrom(ip.Unmap(), bits)] = true
	}
	qdiscs, err := nh.QdiscList(nil)
	if err != nil {
		return nil, fmt.Errorf("read netns %s: qdiscs: %w", h.name, err)
	}
	for _, q := range qdiscs {
		t, ok := q.(*netlink.Tbf)
		if !ok || t.Attrs().Parent != netlink.HANDLE_ROOT {
			continue
		}
		if ls := byIndex[t.Attrs().LinkIndex]; ls != nil {
			ls.tbfRate = t.Rate
		}
	}
	return st, nil
}
