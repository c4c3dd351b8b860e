package tracer

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/internal/oneline"
)

// The programs that count accept() failing for want of a descriptor, on
// the syscall tracepoints of accept4 (required) and accept (where the
// architecture has it).
var acceptHooks = []struct {
	prog, tracepoint string
	optional         bool
}{
	// Exits first: an entry recorded is always cleared.
	{"tcptrace_accept4_exit", "sys_exit_accept4", false},
	{"tcptrace_accept4_enter", "sys_enter_accept4", false},
	{"tcptrace_accept_exit", "sys_exit_accept", true},
	{"tcptrace_accept_enter", "sys_enter_accept", true},
}

// loadAcceptFailures attaches the accept programs, on the maps already
// loaded. Without them (no syscall tracepoints: CONFIG_FTRACE_SYSCALLS
// off, or tracefs not mountable) accept failures are not counted.
func (t *Tracer) loadAcceptFailures(spec *ebpf.CollectionSpec) {
	err := ensureTracefs()
	var coll *ebpf.Collection
	var links []link.Link
	if err == nil {
		coll, links, err = t.attachAccept(spec)
	}
	if err != nil {
		t.cfg.Logger.Info("the kernel refused the programs that see accept() fail (syscalls:sys_exit_accept4): "+
			"a process out of file descriptors is not reported as such (accept_failed); its listener's queue and drops still are",
			"reason", rootCause(err))
		t.cfg.Logger.Debug("accept programs refused", "error", shortVerifierError(err))
		return
	}
	t.acceptColl, t.acceptLinks = coll, links
}

func (t *Tracer) attachAccept(spec *ebpf.CollectionSpec) (*ebpf.Collection, []link.Link, error) {
	progs := make([]string, len(acceptHooks))
	for i, h := range acceptHooks {
		progs[i] = h.prog
	}
	coll, err := t.loadProgramsOn(spec, progs...)
	if err != nil {
		return nil, nil, err
	}
	var links []link.Link
	fail := func(err error) (*ebpf.Collection, []link.Link, error) {
		for _, l := range links {
			l.Close()
		}
		coll.Close()
		return nil, nil, err
	}
	for _, h := range acceptHooks {
		l, err := link.Tracepoint("syscalls", h.tracepoint, coll.Programs[h.prog], nil)
		switch {
		case err != nil && h.optional:
			// Absent on this architecture or kernel: accept4 is enough.
			t.cfg.Logger.Debug("syscall tracepoint unavailable", "tracepoint", h.tracepoint, "error", err)
			continue
		case err != nil:
			return fail(fmt.Errorf("attach syscalls:%s: %w", h.tracepoint, err))
		}
		links = append(links, l)
	}
	return coll, links, nil
}

// CountsAcceptFailures reports whether accept() failing for want of a
// descriptor is counted and reported (accept_failed, AcceptFailures).
func (t *Tracer) CountsAcceptFailures() bool { return len(t.acceptLinks) > 0 }

// AcceptFailures visits the accept() failures counted in the kernel.
func (t *Tracer) AcceptFailures(fn func(events.AcceptFailure)) error {
	if t.coll == nil || !t.CountsAcceptFailures() {
		return nil
	}
	var (
		k tcptraceAcceptKey
		v tcptraceAcceptVal
	)
	it := t.coll.Maps["accept_fails"].Iterate()
	for it.Next(&k, &v) {
		fn(events.AcceptFailure{
			PID: k.Tgid, Comm: commOf(v.Comm), NetNS: k.Netns, Port: k.Port, Reason: acceptReason(k.Reason),
			Count: v.Count, CgroupID: v.CgroupId, FirstNS: int64(v.FirstNs),
		})
	}
	return it.Err()
}

// AcceptFailuresLost is how many failures were not counted because the
// kernel's table was full, and how many accept() calls were not followed.
func (t *Tracer) AcceptFailuresLost() (lost, untracked uint64, err error) {
	if t.coll == nil || !t.CountsAcceptFailures() {
		return 0, 0, nil
	}
	var errs []error
	for name, dst := range map[string]*uint64{"accept_fails_lost": &lost, "accept_untracked": &untracked} {
		if err := t.coll.Variables[name].Get(dst); err != nil {
			errs = append(errs, fmt.Errorf("read %s: %w", name, err))
		}
	}
	return lost, untracked, oneline.Join(errs...)
}

// acceptReason names enum accept_reason.
func acceptReason(r uint8) string {
	switch r {
	case uint8(tcptraceAcceptReasonACCEPT_EMFILE):
		return "emfile"
	case uint8(tcptraceAcceptReasonACCEPT_ENFILE):
		return "enfile"
	}
	return fmt.Sprintf("unknown_%d", r)
}

// commOf is a kernel comm (char[16]) as events.Comm reads it: up to its
// NUL.
func commOf(c [16]int8) string {
	var b events.Comm
	for i, x := range c {
		b[i] = byte(x)
	}
	return b.String()
}
