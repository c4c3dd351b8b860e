// Package attribute fills in who holds a socket and which container it
// belongs to: the owner processes, found through /proc by socket inode, and
// the container context, from the socket's cgroup path.
package attribute

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/tcptrace/tcptrace/cgroup"
	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/owner"
)

// cgroupRescan bounds how often an unknown cgroup id rewalks the hierarchy.
const cgroupRescan = 5 * time.Second

// maxContexts bounds the cache of container contexts by cgroup id.
const maxContexts = 65536

// Attributor is used from one goroutine, the event loop.
type Attributor struct {
	owners  *owner.Resolver
	cgroups *cgroup.Resolver // nil without a cgroup v2 hierarchy
	// Container context by cgroup id; a cgroup's path never changes.
	contexts map[uint64]cgroup.Context
	// Container context by owner process, from its /proc/<pid>/cgroup, for
	// sockets whose own cgroup says nothing: read once per process, not
	// once per socket (a leak means thousands of sockets of one process).
	procContexts map[*events.Process]cgroup.Context
	kube         KubeLookup
}

// New prepares an Attributor. Without a cgroup v2 hierarchy, container
// context comes only from the owners' /proc/<pid>/cgroup.
func New(log *slog.Logger) *Attributor {
	a := &Attributor{
		owners:       owner.NewResolver(owner.Config{}),
		contexts:     make(map[uint64]cgroup.Context),
		procContexts: make(map[*events.Process]cgroup.Context),
	}
	if root, err := cgroup.UnifiedRoot(); err != nil {
		log.Info("no cgroup v2 hierarchy: container context from owner processes only", "error", err)
	} else {
		a.cgroups = cgroup.NewResolver(root, cgroupRescan)
	}
	return a
}

// KubeLookup names a pod and container (package kube); nil when the pod
// UID is empty.
type KubeLookup func(podUID, containerID string) *events.K8s

// SetKube turns on Kubernetes names for events with a pod UID.
func (a *Attributor) SetKube(k KubeLookup) { a.kube = k }

// Socket sets the container context of any socket event, and its
// Kubernetes names when enrichment is on. A context the event already has
// (from an owner process) is kept when the cgroup says nothing.
func (a *Attributor) Socket(ev *events.Event) {
	if ctx := a.cgroupContext(ev.CgroupID); ctx.ContainerID != "" || ctx.PodUID != "" {
		ev.ContainerID, ev.PodUID = ctx.ContainerID, ctx.PodUID
	}
	a.names(ev)
}

func (a *Attributor) names(ev *events.Event) {
	if a.kube != nil && ev.PodUID != "" {
		ev.K8s = a.kube(ev.PodUID, ev.ContainerID)
	}
}

func (a *Attributor) cgroupContext(id uint64) cgroup.Context {
	if id == 0 || a.cgroups == nil {
		return cgroup.Context{}
	}
	if ctx, ok := a.contexts[id]; ok {
		return ctx
	}
	path, ok := a.cgroups.Path(id)
	if !ok {
		return cgroup.Context{} // not cached: it may appear at a later rescan
	}
	ctx := cgroup.ParsePath(path)
	if len(a.contexts) >= maxContexts {
		// Cgroups come and go with pods: start over rather than grow.
		clear(a.contexts)
	}
	a.contexts[id] = ctx
	return ctx
}

// Owners resolves the processes holding an open socket's descriptors,
// scanning /proc if need be (within the resolver's bounds): for stuck
// reports and sockets found at start-up. It takes the container context
// from the first owner when the socket's cgroup said nothing. When no
// holder is known and the scan budget allows no scan yet, it returns how
// long until one may run, so that the caller can ask again then rather
// than report the socket unresolved.
func (a *Attributor) Owners(ev *events.Event) (retry time.Duration) {
	if ev.Inode == 0 {
		ev.Owners, ev.OwnerSource = nil, events.OwnerNoFile
		return 0
	}
	var hints []int
	if ev.Kind == events.KindAcceptFailed && ev.Task.PID != 0 {
		// The process whose accept() failed holds the listener: looked at
		// first, the answer needs no full scan.
		hints = []int{int(ev.Task.PID)}
	}
	found, _, wait := a.owners.ResolveWait(ev.Inode, uint64(ev.NetNS), hints)
	a.setOwners(ev, found)
	return wait
}

// CachedOwners is Owners without scanning, for every socket entering
// CLOSE-WAIT: most close soon, and a scan per socket would cost a /proc walk
// per connection on a busy server. Owners seen by earlier scans are reported.
func (a *Attributor) CachedOwners(ev *events.Event) {
	if ev.Inode == 0 {
		ev.Owners, ev.OwnerSource = nil, events.OwnerNoFile
		return
	}
	found, _ := a.owners.Cached(ev.Inode)
	a.setOwners(ev, found)
}

func (a *Attributor) setOwners(ev *events.Event, found []owner.Owner) {
	if len(found) == 0 {
		ev.Owners, ev.OwnerSource = nil, events.OwnerUnresolved
		return
	}
	ev.Owners = found
	ev.OwnerSource = events.OwnerProc
	if ev.ContainerID == "" && ev.PodUID == "" {
		// cgroup v1 hosts: the socket's cgroup is the v2 root.
		ctx := a.processContext(found[0].Process)
		ev.ContainerID, ev.PodUID = ctx.ContainerID, ctx.PodUID
		a.names(ev)
	}
}

// processContext is the container context of an owner process. A Process
// value stands for one process incarnation, so the answer never goes stale.
func (a *Attributor) processContext(p *events.Process) cgroup.Context {
	if ctx, ok := a.procContexts[p]; ok {
		return ctx
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", p.PID))
	if err != nil {
		return cgroup.Context{} // gone: try again next time
	}
	if len(a.procContexts) >= maxContexts {
		clear(a.procContexts)
	}
	ctx := cgroup.ContextFromProc(data)
	a.procContexts[p] = ctx
	return ctx
}

// Closed forgets a socket that left CLOSE-WAIT. Its event keeps the owners
// the tracker last saw, or says why there are none.
func (a *Attributor) Closed(ev *events.Event) {
	if ev.Inode != 0 {
		a.owners.Forget(ev.Inode)
	}
	if len(ev.Owners) == 0 && ev.Inode == 0 {
		ev.OwnerSource = events.OwnerNoFile
	}
}

// Stats reports the cost of owner resolution.
func (a *Attributor) Stats() owner.Stats { return a.owners.Stats() }
