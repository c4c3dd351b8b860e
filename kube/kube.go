// Package kube names the Kubernetes pod and container a socket belongs to.
//
// The tracer knows a socket's pod UID and container id from its cgroup path;
// Pods turns them into names from a watch of this node's pods only (a field
// selector on spec.nodeName), so the API server's load and our memory grow
// with the node, not the cluster. The cache is filled in the background and
// never holds tracing up: until it has synced, or while the API server is
// away, lookups answer NotFound and the events go out anyway.
package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/tcptrace/tcptrace/events"
)

// DefaultDeletedGrace is how long a deleted pod still answers lookups when
// Config leaves it zero: events about a pod's sockets (a stuck CLOSE-WAIT
// reported at its threshold, the abort when the pod's network namespace
// goes) often arrive after the API server has forgotten the pod.
const DefaultDeletedGrace = 5 * time.Minute

// Config configures Pods.
type Config struct {
	// Node is this node's name (downward API spec.nodeName); required.
	Node string
	// DeletedGrace is how long a deleted pod still answers lookups;
	// DefaultDeletedGrace when zero.
	DeletedGrace time.Duration
	// Logger gets our messages and client-go's (klog); slog.Default()
	// when nil.
	Logger *slog.Logger
}

// Stats counts lookups since New (every lookup with a pod UID counts
// once), and the pods the cache holds now.
type Stats struct {
	Hits     uint64 // answered from a live pod
	NotFound uint64 // pod unknown, or deleted longer ago than the grace
	Deleted  uint64 // answered from a deleted pod within its grace

	LivePods    int // pods of the node that exist
	DeletedPods int // deleted pods kept for their grace period
}

// Pods is a node-scoped cache of pods, safe for concurrent use.
type Pods struct {
	cfg      Config
	log      *slog.Logger
	informer cache.SharedIndexInformer
	handler  cache.ResourceEventHandlerRegistration
	notFound *events.K8s // the one NotFound answer
	now      func() time.Time
	start    sync.Once

	// The informer keeps pods by namespace/name; we keep what a lookup
	// needs by UID, built once per pod version, so a lookup is two map
	// reads under a read lock and allocates nothing.
	mu   sync.RWMutex
	pods map[string]*entry

	hits, missed, deleted atomic.Uint64
	lastWarn              atomic.Int64 // unix ns of the last watch-error warning
	// Health probe (see Healthy): how often, and when it last failed
	// (unix ns, 0 when its last try worked) and why.
	rest       rest.Interface
	probeEvery time.Duration
	failedAt   atomic.Int64
	failedErr  atomic.Pointer[error]
}

// entry is one pod's answers, replaced (never changed) on update.
type entry struct {
	resourceVersion string
	pod             *events.K8s            // Container ""
	byID            map[string]*events.K8s // bare container id -> answer
	deletedAt       time.Time              // zero while the pod exists
}

var klogOnce sync.Once

// routeKlog sends klog's output to log, tagged component=client-go, instead
// of raw lines on stderr; klog's verbosity becomes log's level (V(1) and up
// are below Info). Only the first call counts: klog's logger may not be
// swapped while client-go goroutines are logging, and a program makes one
// Pods anyway.
func routeKlog(log *slog.Logger) {
	klogOnce.Do(func() { klog.SetSlogLogger(log.With("component", "client-go")) })
}

// InClusterConfig returns the config of the service account mounted into
// this pod; its error wraps rest.ErrNotInCluster outside a cluster (no
// token or no KUBERNETES_SERVICE_HOST).
func InClusterConfig() (*rest.Config, error) {
	rc, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("kubernetes in-cluster config: %w", err)
	}
	return rc, nil
}

// New validates cfg and prepares the watch of cfg.Node's pods through rc;
// nothing talks to the API server before Start.
//
// The first New also routes klog, client-go's process-wide logger, to
// cfg.Logger (see routeKlog).
func New(cfg Config, rc *rest.Config) (*Pods, error) {
	if cfg.Node == "" {
		return nil, errors.New("kube: Config.Node is required (the downward API's spec.nodeName)")
	}
	if cfg.DeletedGrace < 0 {
		return nil, fmt.Errorf("kube: negative DeletedGrace %v", cfg.DeletedGrace)
	}
	if cfg.DeletedGrace == 0 {
		cfg.DeletedGrace = DefaultDeletedGrace
	}
	if rc == nil {
		return nil, errors.New("kube: no rest.Config")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	routeKlog(cfg.Logger)

	rc = rest.CopyConfig(rc)
	if rc.UserAgent == "" {
		rc.UserAgent = "tcptrace"
	}
	// Protobuf: pods are the bulk of what we read.
	rc.ContentType = "application/vnd.kubernetes.protobuf"
	rc.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	client, err := podClient(rc)
	if err != nil {
		return nil, fmt.Errorf("kube: client: %w", err)
	}

	p := &Pods{
		cfg:      cfg,
		log:      cfg.Logger,
		notFound: &events.K8s{Node: cfg.Node, NotFound: true},
		now:      time.Now,
		pods:     map[string]*entry{},
		rest:     client,

		probeEvery: defaultProbeEvery,
	}
	nodeOnly := fields.OneTermEqualSelector("spec.nodeName", cfg.Node).String()
	lw := cache.NewFilteredListWatchFromClient(client, "pods", metav1.NamespaceAll,
		func(o *metav1.ListOptions) { o.FieldSelector = nodeOnly })
	p.informer = cache.NewSharedIndexInformerWithOptions(lw, &corev1.Pod{},
		cache.SharedIndexInformerOptions{}) // no resync: the handlers keep no state to repair
	if err := p.informer.SetTransform(trim); err != nil {
		return nil, fmt.Errorf("kube: %w", err)
	}
	if err := p.informer.SetWatchErrorHandlerWithContext(p.watchError); err != nil {
		return nil, fmt.Errorf("kube: %w", err)
	}
	p.handler, err = p.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { p.set(obj) },
		UpdateFunc: func(_, obj any) { p.set(obj) },
		DeleteFunc: p.remove,
	})
	if err != nil {
		return nil, fmt.Errorf("kube: %w", err)
	}
	return p, nil
}

// Start runs the watch and the purge of deleted pods in the background
// until ctx ends. It returns at once: the reflector lists, watches and, when
// the API server is unreachable, retries with client-go's backoff (0.8 s
// doubling to a cap of 30 s, jittered up to 2x, reset after 2 minutes
// without a failure), so names come back within about a minute of the API
// server's return. Later calls do nothing.
func (p *Pods) Start(ctx context.Context) {
	p.start.Do(func() {
		go p.informer.RunWithContext(ctx)
		go p.purgeLoop(ctx)
		go p.probeLoop(ctx)
		go func() {
			t0 := time.Now()
			if cache.WaitForCacheSync(ctx.Done(), p.handler.HasSynced) {
				p.mu.RLock()
				n := len(p.pods)
				p.mu.RUnlock()
				p.log.Info("kubernetes pod cache synced", "node", p.cfg.Node, "pods", n, "after", time.Since(t0).Round(time.Millisecond))
			}
		}()
	})
}

// Synced reports whether the cache has held this node's pods at least once
// (it stays true through later outages: the cache then answers from what it
// last saw).
func (p *Pods) Synced() bool { return p.handler.HasSynced() }

// Lookup returns the names of pod podUID's container containerID (64 hex
// digits, or "" for the pod alone). It returns nil when podUID is "", and a
// value with NotFound (and Node) when the pod is unknown; Container is ""
// when the id matches none of the pod's containers. The result is shared:
// callers must not modify it.
func (p *Pods) Lookup(podUID, containerID string) *events.K8s {
	if podUID == "" {
		return nil
	}
	p.mu.RLock()
	e := p.pods[podUID]
	p.mu.RUnlock()
	if e == nil {
		p.missed.Add(1)
		return p.notFound
	}
	if !e.deletedAt.IsZero() {
		if p.now().Sub(e.deletedAt) > p.cfg.DeletedGrace {
			p.missed.Add(1)
			return p.notFound
		}
		p.deleted.Add(1)
	} else {
		p.hits.Add(1)
	}
	if k := e.byID[containerID]; k != nil {
		return k
	}
	return e.pod
}

// Stats returns the lookup counts so far and the pods cached now.
func (p *Pods) Stats() Stats {
	st := Stats{Hits: p.hits.Load(), NotFound: p.missed.Load(), Deleted: p.deleted.Load()}
	p.mu.RLock()
	for _, e := range p.pods {
		if e.deletedAt.IsZero() {
			st.LivePods++
		} else {
			st.DeletedPods++
		}
	}
	p.mu.RUnlock()
	return st
}

// set records a pod that was added or updated.
func (p *Pods) set(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	uid := string(pod.UID)
	p.mu.RLock()
	old := p.pods[uid]
	p.mu.RUnlock()
	// A relist replays every pod as an update; skip the unchanged ones.
	if old != nil && old.deletedAt.IsZero() && old.resourceVersion == pod.ResourceVersion {
		return
	}
	e := build(p.cfg.Node, pod)
	p.mu.Lock()
	p.pods[uid] = e
	p.mu.Unlock()
}

// remove starts a deleted pod's grace period.
func (p *Pods) remove(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj // deleted while we were not watching
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	old := p.pods[string(pod.UID)]
	if old == nil || !old.deletedAt.IsZero() {
		return
	}
	e := *old
	e.deletedAt = now
	p.pods[string(pod.UID)] = &e
}

// purgeLoop forgets deleted pods past their grace, so memory follows the
// pods on the node, not the pods it has ever run. Lookup checks the grace
// itself; this only bounds memory.
func (p *Pods) purgeLoop(ctx context.Context) {
	t := time.NewTicker(min(max(p.cfg.DeletedGrace/2, 50*time.Millisecond), time.Minute))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			p.purge()
		}
	}
}

func (p *Pods) purge() {
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	for uid, e := range p.pods {
		if !e.deletedAt.IsZero() && now.Sub(e.deletedAt) > p.cfg.DeletedGrace {
			delete(p.pods, uid)
		}
	}
}

// watchError replaces client-go's handler, which logs every failed list or
// watch as an error: an unreachable API server would log one every 30-60 s
// for as long as it lasts. We warn once a minute at most, the rest at debug.
// A watch the server ends, or a resource version it has compacted away,
// is routine and only logged at debug.
func (p *Pods) watchError(ctx context.Context, _ *cache.Reflector, err error) {
	if errors.Is(err, io.EOF) {
		return
	}

	level := slog.LevelDebug
	if !errors.Is(err, io.ErrUnexpectedEOF) && !apierrors.IsResourceExpired(err) && !apierrors.IsGone(err) {
		now := time.Now().UnixNano()
		last := p.lastWarn.Load()
		if now-last >= int64(time.Minute) && p.lastWarn.CompareAndSwap(last, now) {
			level = slog.LevelWarn
		}
	}
	p.log.Log(ctx, level, "kubernetes pod watch failed; retrying (lookups answer from the cache meanwhile)",
		"node", p.cfg.Node, "synced", p.Synced(), "err", err)
}

// defaultProbeEvery is how often Healthy's probe asks the API server.
const defaultProbeEvery = 10 * time.Second

// probeLoop asks the API server for /livez, which every client may read
// (the system:public-info-viewer role), so that readiness can say when it
// is away. The informer's own errors cannot tell: an outage can look like
// the routine end of a watch.
func (p *Pods) probeLoop(ctx context.Context) {
	t := time.NewTicker(p.probeEvery)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, min(p.probeEvery, 5*time.Second))
		_, err := p.rest.Get().AbsPath("/livez").DoRaw(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			p.failedErr.Store(&err)
			if p.failedAt.Load() == 0 {
				p.failedAt.Store(time.Now().UnixNano())
			}
		} else {
			p.failedAt.Store(0)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Healthy returns an error while the API server does not answer: the
// last probe (every 10 s) failed. Lookups then answer from the cache as it
// last was.
func (p *Pods) Healthy() error {
	at := p.failedAt.Load()
	if at == 0 {
		return nil
	}
	msg := "unknown error"
	if e := p.failedErr.Load(); e != nil {
		msg = (*e).Error()
	}
	return fmt.Errorf("API server unreachable for %v: %s", time.Since(time.Unix(0, at)).Round(time.Second), msg)
}

// podClient is a REST client for core/v1 alone. client-go's clientset and
// informer factory register every API group in their scheme: linking them
// doubled tcptrace's binary and added 25 MiB of resident memory on every
// node, for pods, which is all we read.
func podClient(rc *rest.Config) (*rest.RESTClient, error) {
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	metav1.AddToGroupVersion(scheme, corev1.SchemeGroupVersion)
	rc.GroupVersion = &corev1.SchemeGroupVersion
	rc.APIPath = "/api"
	rc.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	return rest.RESTClientFor(rc)
}
