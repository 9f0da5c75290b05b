package vlan

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Down removes experiment exp's network from this host: its switch
// namespace and every node namespace, found by name, so it needs neither
// the topology nor a state record and works after a crash or a half-done
// Up. Removing an experiment that is not there is not an error.
//
// The kernel frees a namespace and its interfaces once nothing holds it;
// a process still running inside one (or a QEMU holding a tap) keeps it
// alive, though it is no longer reachable by name. 802.1Q subinterfaces are
// deleted explicitly first, so their VLAN ids on the trunk are free when
// Down returns.
func (a *Applier) Down(ctx context.Context, exp string) (*Result, error) {
	if exp == "" || len(exp) > maxExperimentLen || !reExperiment.MatchString(exp) {
		return nil, fmt.Errorf("%w: %w: experiment %q", ErrInvalidTopology, ErrBadName, exp)
	}
	res := &Result{}
	t := time.Now()
	names, err := experimentNamespaces(exp)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, n := range names {
		if n == SwitchNamespace(exp) {
			k, err := deleteVLANLinks(n)
			res.Removed.Links += k
			if err != nil {
				errs = append(errs, err)
			}
		}
	}
	t = res.phase("vlans", t)
	for _, n := range names {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		if err := deleteNetns(n); err != nil {
			errs = append(errs, err)
			continue
		}
		res.Removed.Namespaces++
	}
	res.phase("namespaces", t)
	a.log.Info("vlan: experiment network down", "experiment", exp, "namespaces", res.Removed.Namespaces)
	return res, errors.Join(errs...)
}

// deleteVLANLinks deletes the 802.1Q subinterfaces in namespace name.
func deleteVLANLinks(name string) (int, error) {
	h, err := openNetns(name)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, errNsStale) {
			return 0, nil
		}
		return 0, err
	}
	defer h.close()
	st, err := observe(h)
	if err != nil {
		return 0, err
	}
	var msgs []nlMsg
	for n, l := range st.links {
		if l.kind == "vlan" {
			msgs = append(msgs, delLinkMsg(l.index, "delete 802.1Q subinterface "+n))
		}
	}
	return len(msgs), h.nl.run(msgs)
}
