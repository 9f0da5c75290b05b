package vlan

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// nlConn is a NETLINK_ROUTE socket bound to one network namespace (the
// namespace of the thread that opened it). It sends requests in batches:
// many messages in one sendmsg, then reads all their acknowledgements, so a
// batch costs two system calls instead of two per object. Messages are
// built with the netlink library's nl package.
//
// The kernel handles the messages of one batch in order and answers each
// one, also after an earlier one failed, so every message gets its own
// result. An nlConn is not safe for concurrent use.
type nlConn struct {
	fd  int
	seq uint32
	pid uint32
	// sends counts batches sent (each one sendmsg and its answers).
	sends int
}

// nlTimeout bounds the wait for the kernel's answers, so a lost
// acknowledgement turns into an error instead of a hang.
const nlTimeout = 10 * time.Second

// nlBatchMax caps messages per sendmsg; the kernel answers each with its
// own skb, and the receive buffer must hold all of them.
const nlBatchMax = 128

// openNL opens a route netlink socket in the calling thread's network
// namespace. Callers that switched namespaces must hold the OS thread.
func openNL() (*nlConn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	c := &nlConn{fd: fd}
	fail := func(what string, err error) (*nlConn, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink socket: %s: %w", what, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fail("bind", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return fail("getsockname", err)
	}
	c.pid = sa.(*unix.SockaddrNetlink).Pid
	// Room for a whole batch of answers; FORCE works for root and falls
	// back to the capped size otherwise.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20); err != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	}
	// Acks without a copy of the request, with the kernel's error text.
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_EXT_ACK, 1)
	tv := unix.NsecToTimeval(nlTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fail("receive timeout", err)
	}
	return c, nil
}

func (c *nlConn) sent() int {
	if c == nil {
		return 0
	}
	return c.sends
}

func (c *nlConn) Close() error {
	if c == nil || c.fd < 0 {
		return nil
	}
	err := unix.Close(c.fd)
	c.fd = -1
	return err
}

// nlMsg is one request of a batch.
type nlMsg struct {
	req *nl.NetlinkRequest
	// what describes the request for error messages ("create bridge br12").
	what string
	// kind is the link kind a create request names, to explain EOPNOTSUPP.
	kind string
	// okErrno, if not zero, is an error that counts as success (ENODEV
	// for deleting what may have vanished meanwhile).
	okErrno syscall.Errno
	// onOK, if set, runs when the kernel confirms the request.
	onOK func()
}

// errNoAnswer is the result of a request the kernel did not answer
// because the batch failed first.
var errNoAnswer = errors.New("netlink: request not answered")

// NLError is the kernel's refusal of one request.
type NLError struct {
	// Op describes the request.
	Op string
	// Errno is the kernel's error number.
	Errno syscall.Errno
	// Msg is the kernel's extended error text, if it sent one.
	Msg string
}

func (e *NLError) Error() string {
	if e.Msg != "" {
		return fmt.Sprintf("%s: %v (kernel: %s)", e.Op, e.Errno, e.Msg)
	}
	return fmt.Sprintf("%s: %v", e.Op, e.Errno)
}

func (e *NLError) Unwrap() error { return e.Errno }

// ErrNoKernelSupport is wrapped by errors caused by a kernel that lacks a
// feature a plan needs, such as 802.1Q VLANs.
var ErrNoKernelSupport = errors.New("kernel lacks")

// kernelFeature names the kernel option behind each link kind we create.
var kernelFeature = map[string]string{
	"vlan":   "802.1Q VLAN support (CONFIG_VLAN_8021Q, module 8021q)",
	"veth":   "virtual ethernet pairs (CONFIG_VETH)",
	"bridge": "ethernet bridging (CONFIG_BRIDGE)",
	"tbf":    "the tbf qdisc (CONFIG_NET_SCH_TBF)",
}

// exec sends msgs in batches and returns one error per message (nil for
// success). The returned error is for the socket itself: when it is not
// nil, the results of unanswered messages are unknown.
func (c *nlConn) exec(msgs []nlMsg) ([]error, error) {
	results := make([]error, len(msgs))
	for i := range results {
		results[i] = errNoAnswer
	}
	var err error
	for start := 0; start < len(msgs) && err == nil; start += nlBatchMax {
		end := min(start+nlBatchMax, len(msgs))
		err = c.execBatch(msgs[start:end], results[start:end])
	}
	for i, r := range results {
		if r == nil && msgs[i].onOK != nil {
			msgs[i].onOK()
		}
	}
	return results, err
}

// run runs msgs and returns the first failure, if any.
func (c *nlConn) run(msgs []nlMsg) error {
	res, err := c.exec(msgs)
	if err != nil {
		return err
	}
	return errors.Join(res...)
}

func (c *nlConn) execBatch(msgs []nlMsg, results []error) error {
	if len(msgs) == 0 {
		return nil
	}
	first := c.seq + 1
	var buf []byte
	for _, m := range msgs {
		c.seq++
		m.req.Seq = c.seq
		m.req.Flags |= unix.NLM_F_REQUEST | unix.NLM_F_ACK
		buf = append(buf, m.req.Serialize()...)
	}
	c.sends++
	if err := unix.Sendto(c.fd, buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}
	pending := len(msgs)
	rb := make([]byte, 64<<10)
	for pending > 0 {
		n, from, err := unix.Recvfrom(c.fd, rb, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) {
				return fmt.Errorf("netlink: no answer from the kernel within %v", nlTimeout)
			}
			return fmt.Errorf("netlink receive: %w", err)
		}
		if sa, ok := from.(*unix.SockaddrNetlink); !ok || sa.Pid != 0 {
			continue
		}
		replies, err := syscall.ParseNetlinkMessage(rb[:n])
		if err != nil {
			return fmt.Errorf("netlink receive: %w", err)
		}
		for _, r := range replies {
			if r.Header.Type != unix.NLMSG_ERROR {
				continue
			}
			i := int(r.Header.Seq - first)
			if r.Header.Seq < first || i >= len(msgs) || r.Header.Pid != c.pid {
				continue
			}
			results[i] = ackError(r, msgs[i])
			pending--
		}
	}
	return nil
}

// ackError decodes an NLMSG_ERROR answer; errno 0 is success.
func ackError(r syscall.NetlinkMessage, m nlMsg) error {
	if len(r.Data) < 4 {
		return &NLError{Op: m.what, Errno: unix.EPROTO, Msg: "short acknowledgement"}
	}
	errno := -int32(binary.NativeEndian.Uint32(r.Data[:4]))
	if errno == 0 || (m.okErrno != 0 && syscall.Errno(errno) == m.okErrno) {
		return nil
	}
	e := &NLError{Op: m.what, Errno: syscall.Errno(errno)}
	if r.Header.Flags&unix.NLM_F_ACK_TLVS != 0 {
		rest := r.Data[4:]
		// With NETLINK_CAP_ACK only the request's header is echoed
		// (unless the kernel echoed it whole); skip it.
		if len(rest) >= unix.SizeofNlMsghdr {
			skip := unix.SizeofNlMsghdr
			if r.Header.Flags&unix.NLM_F_CAPPED == 0 {
				skip = int(binary.NativeEndian.Uint32(rest[:4]))
			}
			skip = (skip + 3) &^ 3
			if skip <= len(rest) {
				if attrs, err := nl.ParseRouteAttr(rest[skip:]); err == nil {
					for _, a := range attrs {
						if a.Attr.Type == unix.NLMSGERR_ATTR_MSG {
							e.Msg = unix.ByteSliceToString(a.Value)
						}
					}
				}
			}
		}
	}
	if e.Errno == unix.EOPNOTSUPP && m.kind != "" {
		if feat, ok := kernelFeature[m.kind]; ok {
			return fmt.Errorf("%w %s: %w", ErrNoKernelSupport, feat, e)
		}
	}
	return e
}

// Message builders. Every create carries NLM_F_EXCL, so an object that
// exists already is an EEXIST error instead of being silently modified.

const createFlags = unix.NLM_F_CREATE | unix.NLM_F_EXCL

// linkMsg starts an RTM_NEWLINK request for a new link named name with
// interface index index (0 lets the kernel choose), brought up at once.
func linkMsg(name string, index int32) (*nl.NetlinkRequest, *nl.IfInfomsg) {
	req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, createFlags)
	ifi := nl.NewIfInfomsg(unix.AF_UNSPEC)
	ifi.Index = index
	ifi.Flags = unix.IFF_UP
	ifi.Change = unix.IFF_UP
	req.AddData(ifi)
	req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)))
	return req, ifi
}

// newBridgeMsg creates a bridge, up. Without STP, ports forward at once.
func newBridgeMsg(name string, index int32) nlMsg {
	req, _ := linkMsg(name, index)
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("bridge"))
	req.AddData(info)
	return nlMsg{req: req, what: "create bridge " + name, kind: "bridge"}
}

// vethSpec describes a veth pair created from the switch namespace with
// its peer directly in a node namespace.
type vethSpec struct {
	name        string // switch end
	index       int32  // switch end's index; needed for peerIndex to apply
	master      int32  // bridge index in the switch namespace
	peerName    string
	peerIndex   int32 // peer's index in the node namespace
	peerNsFd    int
	peerMAC     []byte
	description string
}

// newVethMsg creates both ends of a veth pair in one request: the switch
// end enslaved to its bridge and up, the peer in the node's namespace with
// a fixed index and MAC (still down).
func newVethMsg(v vethSpec) nlMsg {
	req, _ := linkMsg(v.name, v.index)
	if v.master != 0 {
		req.AddData(nl.NewRtAttr(unix.IFLA_MASTER, nl.Uint32Attr(uint32(v.master))))
	}
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("veth"))
	data := info.AddRtAttr(nl.IFLA_INFO_DATA, nil)
	peer := data.AddRtAttr(nl.VETH_INFO_PEER, nil)
	pifi := nl.NewIfInfomsgChild(peer, unix.AF_UNSPEC)
	pifi.Index = v.peerIndex
	// The peer cannot come up in this request: veth refuses to open an
	// end whose peer is not registered yet (ENOTCONN). The node batch
	// brings it up.
	peer.AddRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(v.peerName))
	if len(v.peerMAC) == 6 {
		peer.AddRtAttr(unix.IFLA_ADDRESS, v.peerMAC)
	}
	peer.AddRtAttr(unix.IFLA_NET_NS_FD, nl.Uint32Attr(uint32(v.peerNsFd)))
	req.AddData(info)
	return nlMsg{req: req, what: "create veth " + v.description, kind: "veth"}
}

// newVLANMsg creates an 802.1Q subinterface of the trunk (an index in the
// sender's namespace) directly in the namespace nsFd, with interface index
// index there. It stays down until enslaved.
func newVLANMsg(name string, index, trunk int32, id int, nsFd int) nlMsg {
	req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, createFlags)
	ifi := nl.NewIfInfomsg(unix.AF_UNSPEC)
	ifi.Index = index
	req.AddData(ifi)
	req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)))
	req.AddData(nl.NewRtAttr(unix.IFLA_LINK, nl.Uint32Attr(uint32(trunk))))
	req.AddData(nl.NewRtAttr(unix.IFLA_NET_NS_FD, nl.Uint32Attr(uint32(nsFd))))
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("vlan"))
	data := info.AddRtAttr(nl.IFLA_INFO_DATA, nil)
	data.AddRtAttr(nl.IFLA_VLAN_ID, nl.Uint16Attr(uint16(id)))
	req.AddData(info)
	return nlMsg{req: req, what: fmt.Sprintf("create 802.1Q subinterface %s (VLAN %d)", name, id), kind: "vlan"}
}

// setLinkMsg enslaves link index to master (if master is not 0) and brings
// it up.
func setLinkMsg(index, master int32, what string) nlMsg {
	req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, 0)
	ifi := nl.NewIfInfomsg(unix.AF_UNSPEC)
	ifi.Index = index
	ifi.Flags = unix.IFF_UP
	ifi.Change = unix.IFF_UP
	req.AddData(ifi)
	if master != 0 {
		req.AddData(nl.NewRtAttr(unix.IFLA_MASTER, nl.Uint32Attr(uint32(master))))
	}
	return nlMsg{req: req, what: what}
}

// syncLinkMsg asks for link index. The answer itself is ignored: the
// point is that the kernel, before it answers a single-link query, runs
// the link's pending carrier change (linkwatch), which otherwise happens
// later in a work queue; until then the link drops what it sends and a
// bridge does not forward to it.
func syncLinkMsg(index int32, what string) nlMsg {
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, 0)
	ifi := nl.NewIfInfomsg(unix.AF_UNSPEC)
	ifi.Index = index
	req.AddData(ifi)
	req.AddData(nl.NewRtAttr(unix.IFLA_EXT_MASK, nl.Uint32Attr(0)))
	return nlMsg{req: req, what: "sync " + what}
}

// delLinkMsg deletes link index.
func delLinkMsg(index int32, what string) nlMsg {
	req := nl.NewNetlinkRequest(unix.RTM_DELLINK, 0)
	ifi := nl.NewIfInfomsg(unix.AF_UNSPEC)
	ifi.Index = index
	req.AddData(ifi)
	return nlMsg{req: req, what: what}
}

// newAddrMsg adds prefix p to link index.
func newAddrMsg(index int32, p prefixAttr, what string) nlMsg {
	req := nl.NewNetlinkRequest(unix.RTM_NEWADDR, createFlags)
	msg := nl.NewIfAddrmsg(p.family)
	msg.Index = uint32(index)
	msg.Prefixlen = uint8(p.bits)
	msg.Flags = p.flags
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.IFA_LOCAL, p.addr))
	req.AddData(nl.NewRtAttr(unix.IFA_ADDRESS, p.addr))
	if p.brd != nil {
		req.AddData(nl.NewRtAttr(unix.IFA_BROADCAST, p.brd))
	}
	return nlMsg{req: req, what: what}
}

// tbfSpec is a token bucket on one link's egress.
type tbfSpec struct {
	index int32
	rate  Rate
}

// tbfParams derives tbf's burst (bucket size) and limit (queue) from the
// rate: the bucket holds 10 ms of traffic but at least a few full frames,
// and the queue adds 50 ms of backlog, like tc's "latency 50ms".
func tbfParams(r Rate) (burst, limit uint32) {
	bps := r.BytesPerSecond()
	b := max(bps/100, 4*1514)
	l := b + bps/20
	return uint32(min(b, 1<<30)), uint32(min(l, 1<<31))
}

// newTbfMsg installs (or replaces) a root tbf qdisc on link index.
func newTbfMsg(t tbfSpec, what string) nlMsg {
	req := nl.NewNetlinkRequest(unix.RTM_NEWQDISC, unix.NLM_F_CREATE|unix.NLM_F_REPLACE)
	msg := &nl.TcMsg{Family: nl.FAMILY_ALL, Ifindex: t.index, Handle: 0x8000 << 16, Parent: tcHandleRoot}
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(nl.TCA_KIND, nl.ZeroTerminated("tbf")))
	burst, limit := tbfParams(t.rate)
	bps := t.rate.BytesPerSecond()
	opt := nl.TcTbfQopt{Limit: limit}
	opt.Rate.Rate = uint32(min(bps, 1<<32-1))
	options := nl.NewRtAttr(nl.TCA_OPTIONS, nil)
	options.AddRtAttr(nl.TCA_TBF_PARMS, opt.Serialize())
	if bps >= 1<<32 {
		options.AddRtAttr(nl.TCA_TBF_RATE64, nl.Uint64Attr(bps))
	}
	options.AddRtAttr(nl.TCA_TBF_BURST, nl.Uint32Attr(burst))
	req.AddData(options)
	return nlMsg{req: req, what: what, kind: "tbf"}
}

// delQdiscMsg deletes link index's root qdisc.
func delQdiscMsg(index int32, what string) nlMsg {
	req := nl.NewNetlinkRequest(unix.RTM_DELQDISC, 0)
	req.AddData(&nl.TcMsg{Family: nl.FAMILY_ALL, Ifindex: index, Parent: tcHandleRoot})
	return nlMsg{req: req, what: what}
}

// tcHandleRoot is TC_H_ROOT, the parent of a root qdisc.
const tcHandleRoot = 0xFFFFFFFF
