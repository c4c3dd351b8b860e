package attribute

import (
	"os"
	"path/filepath"
	"syscall"

	"github.com/tcptrace/tcptrace/cgroup"
	"github.com/tcptrace/tcptrace/metrics"
)

// Workloads names the workload of a cgroup id for metrics: Kubernetes
// names when enrichment is on and the pod is known, otherwise the cgroup
// path. Safe for concurrent use.
type Workloads struct {
	root    string
	cgroups *cgroup.Resolver // nil without a cgroup v2 hierarchy
	kube    KubeLookup
}

// NewWorkloads returns a Workloads; kube may be nil.
func NewWorkloads(kube KubeLookup) *Workloads {
	w := &Workloads{kube: kube}
	if root, err := cgroup.UnifiedRoot(); err == nil {
		w.root = root
		w.cgroups = cgroup.NewResolver(root, cgroupRescan)
	}
	return w
}

// Workload implements metrics.Namer. A cgroup is alive while its
// directory exists with the same inode (its id); an id that never
// resolves (0, or no cgroup v2 hierarchy) counts as alive, so its series
// are never dropped.
func (w *Workloads) Workload(id uint64) (metrics.Workload, bool) {
	if id == 0 || w.cgroups == nil {
		return metrics.Workload{}, true
	}
	path, ok := w.cgroups.Path(id)
	if !ok {
		return metrics.Workload{Cgroup: "unknown"}, false
	}
	alive := false
	if fi, err := os.Stat(filepath.Join(w.root, path)); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Ino == id {
			alive = true
		}
	}
	if w.kube != nil {
		ctx := cgroup.ParsePath(path)
		if k := w.kube(ctx.PodUID, ctx.ContainerID); k != nil && !k.NotFound {
			return metrics.Workload{Namespace: k.Namespace, Pod: k.Pod, Container: k.Container}, alive
		}
	}
	return metrics.Workload{Cgroup: path}, alive
}
