package kube

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/internal/kubetest"
)

// These tests run against a real etcd + kube-apiserver (one for the test
// binary, see kubetest). Each test has a namespace and node names of its
// own; there is no kubelet or scheduler, so pods are created with
// spec.nodeName set (or bound by hand) and their status is written by the
// test.

func TestMain(m *testing.M) {
	// client-go's warnings and errors to stderr; each test's own log gets
	// only Pods' messages.
	routeKlog(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	kubetest.Main(m)
}

// env is one test's API server, client and namespace.
type env struct {
	t   *testing.T
	cfg *rest.Config
	cs  kubernetes.Interface
	ns  string
}

var nonDNS = regexp.MustCompile(`[^a-z0-9-]+`)

func newEnv(t *testing.T) *env {
	t.Helper()
	cfg := kubetest.Start(t)
	e := &env{t: t, cfg: cfg, cs: kubernetes.NewForConfigOrDie(cfg)}
	e.ns = strings.Trim(nonDNS.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	if _, err := e.cs.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: e.ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return e
}

// node is a node name of this test's own.
func (e *env) node(s string) string { return e.ns + "-" + s }

func (e *env) pod(name, node string, edit func(*corev1.Pod)) *corev1.Pod {
	e.t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: e.ns},
		Spec: corev1.PodSpec{
			NodeName:       node,
			InitContainers: []corev1.Container{{Name: "init", Image: "busybox"}},
			Containers:     []corev1.Container{{Name: "app", Image: "busybox"}, {Name: "sidecar", Image: "busybox"}},
		},
	}
	if edit != nil {
		edit(pod)
	}
	pod, err := e.cs.CoreV1().Pods(e.ns).Create(context.Background(), pod, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return pod
}

// running writes the status a kubelet would: the containers' runtime ids.
func (e *env) running(pod *corev1.Pod, ids map[string]string) *corev1.Pod {
	e.t.Helper()
	pod = pod.DeepCopy()
	status := func(name string) corev1.ContainerStatus {
		return corev1.ContainerStatus{Name: name, Image: "busybox", ImageID: "docker.io/library/busybox@sha256:" + hexID('9'), ContainerID: ids[name]}
	}
	pod.Status.InitContainerStatuses = []corev1.ContainerStatus{status("init")}
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{status("app"), status("sidecar")}
	pod, err := e.cs.CoreV1().Pods(e.ns).UpdateStatus(context.Background(), pod, metav1.UpdateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return pod
}

// tlog lets slog (and klog through it) write to the test's log until the
// test ends, and drops what comes later from goroutines still stopping.
type tlog struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (l *tlog) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.done {
		l.t.Log(strings.TrimSuffix(string(b), "\n"))
	}
	return len(b), nil
}

// start makes and starts a Pods for node through rc, stopped with the test.
func start(t *testing.T, rc *rest.Config, node string, grace time.Duration) *Pods {
	t.Helper()
	return startWith(t, rc, node, grace, nil)
}

// startWith is start with set, if not nil, applied before Start.
func startWith(t *testing.T, rc *rest.Config, node string, grace time.Duration, set func(*Pods)) *Pods {
	t.Helper()
	w := &tlog{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
	p, err := New(Config{Node: node, DeletedGrace: grace, Logger: log}, rc)
	if err != nil {
		t.Fatal(err)
	}
	p.probeEvery = 200 * time.Millisecond
	if set != nil {
		set(p)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	// Start only starts goroutines: it returns whether or not the API
	// server answers (TestAPIUnreachable starts it with none reachable).
	started := make(chan struct{})
	go func() { p.Start(ctx); close(started) }()
	select {
	case <-started:
	case <-time.After(60 * time.Second):
		t.Fatal("Start did not return within 60 s")
	}
	return p
}

// eventually polls cond every 20 ms for up to limit.
func eventually(t *testing.T, limit time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	t0 := time.Now()
	for !cond() {
		if time.Since(t0) > limit {
			t.Fatalf("%s: not within %v", what, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(t0)
}

func found(p *Pods, uid types.UID) bool { return !p.Lookup(string(uid), "").NotFound }

func (p *Pods) storeKeys() []string {
	keys := p.informer.GetStore().ListKeys()
	slices.Sort(keys)
	return keys
}

// The watch holds exactly this node's pods: one there before Start, one
// created after the sync, none of another node's. Containers are named from
// the status the kubelet writes, and a status update reaches the cache.
func TestNodeScope(t *testing.T) {
	e := newEnv(t)
	nodeA, nodeB := e.node("node-a"), e.node("node-b")
	ids := map[string]string{"init": "docker://" + hexID('c'), "app": "containerd://" + hexID('a'), "sidecar": "cri-o://" + hexID('b')}
	before := e.running(e.pod("before", nodeA, nil), ids)
	elsewhere := e.pod("elsewhere", nodeB, nil)

	p := start(t, e.cfg, nodeA, 0)
	d := eventually(t, 30*time.Second, "sync", p.Synced)
	t.Logf("synced %v after Start", d)
	after := e.pod("after", nodeA, nil)
	eventually(t, 30*time.Second, "pod created after the sync", func() bool { return found(p, after.UID) })

	if k := p.Lookup(string(elsewhere.UID), ""); !k.NotFound || k.Node != nodeA {
		t.Errorf("another node's pod: %+v", k)
	}
	if got, want := p.storeKeys(), []string{e.ns + "/after", e.ns + "/before"}; !slices.Equal(got, want) {
		t.Errorf("informer holds %v, want %v", got, want)
	}
	for id, want := range map[string]string{hexID('a'): "app", hexID('b'): "sidecar", hexID('c'): "init", hexID('e'): "", "": ""} {
		k := p.Lookup(string(before.UID), id)
		if *k != (events.K8s{Node: nodeA, Namespace: e.ns, Pod: "before", Container: want}) {
			t.Errorf("Lookup(before, %.8s…) = %+v, want container %q", id, k, want)
		}
	}

	e.running(after, map[string]string{"app": "containerd://" + hexID('f')})
	eventually(t, 30*time.Second, "status update", func() bool { return p.Lookup(string(after.UID), hexID('f')).Container == "app" })
}

// The workload comes from the owner references alone.
func TestWorkloadFromOwners(t *testing.T) {
	e := newEnv(t)
	node := e.node("node-a")
	owner := func(apiVersion, kind, name string, labels map[string]string) func(*corev1.Pod) {
		return func(pod *corev1.Pod) {
			yes := true
			pod.Labels = labels
			pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: apiVersion, Kind: kind, Name: name,
				UID: "6f1c2d3e-0000-4000-8000-000000000001", Controller: &yes}} // no garbage collector runs to check it
		}
	}
	cases := []struct {
		pod        *corev1.Pod
		kind, name string
	}{
		{e.pod("web", node, owner("apps/v1", "ReplicaSet", "web-5d8f9c7b6", map[string]string{"pod-template-hash": "5d8f9c7b6"})), "Deployment", "web"},
		{e.pod("bare-rs", node, owner("apps/v1", "ReplicaSet", "bare", nil)), "ReplicaSet", "bare"},
		{e.pod("agent", node, owner("apps/v1", "DaemonSet", "agent", nil)), "DaemonSet", "agent"},
		{e.pod("db-0", node, owner("apps/v1", "StatefulSet", "db", nil)), "StatefulSet", "db"},
		{e.pod("alone", node, nil), "", ""},
	}
	p := start(t, e.cfg, node, 0)
	eventually(t, 30*time.Second, "sync", p.Synced)
	for _, c := range cases {
		k := p.Lookup(string(c.pod.UID), "")
		if k.NotFound || k.Pod != c.pod.Name || k.WorkloadKind != c.kind || k.WorkloadName != c.name {
			t.Errorf("pod %s: %+v, want %s/%s", c.pod.Name, k, c.kind, c.name)
		}
	}
}

// A pod the cache has not seen yet answers NotFound, then its names once
// the watch brings it. It is created unscheduled and bound to the node the
// way the scheduler does it, so the first lookup cannot race the watch.
func TestPodAddedAfterLookup(t *testing.T) {
	e := newEnv(t)
	node := e.node("node-a")
	p := start(t, e.cfg, node, 0)
	eventually(t, 30*time.Second, "sync", p.Synced)
	pod := e.pod("late", "", nil)
	if k := p.Lookup(string(pod.UID), hexID('a')); !k.NotFound {
		t.Fatalf("unscheduled pod: %+v", k)
	}
	err := e.cs.CoreV1().Pods(e.ns).Bind(context.Background(), &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: e.ns},
		Target:     corev1.ObjectReference{Kind: "Node", Name: node},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d := eventually(t, 30*time.Second, "bound pod", func() bool { return found(p, pod.UID) })
	t.Logf("found %v after the binding", d)
	if s := p.Stats(); s.NotFound < 1 || s.Hits < 1 || s.Deleted != 0 {
		t.Errorf("stats %+v", s)
	}
}

// A deleted pod answers for the grace period (counted as Deleted), then
// NotFound, and its entry goes.
func TestDeletedPod(t *testing.T) {
	const grace = 2 * time.Second
	e := newEnv(t)
	node := e.node("node-a")
	pod := e.running(e.pod("doomed", node, nil), map[string]string{"app": "containerd://" + hexID('a')})
	// The grace runs on a clock the test moves: a loaded machine's pause
	// between the delete and the lookup must not end it.
	var clockMu sync.Mutex
	now := time.Now()
	p := startWith(t, e.cfg, node, grace, func(p *Pods) {
		p.now = func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return now }
	})
	eventually(t, 30*time.Second, "sync", p.Synced)
	if k := p.Lookup(string(pod.UID), hexID('a')); k.Container != "app" {
		t.Fatalf("before the delete: %+v", k)
	}
	// No kubelet: a pod bound to a node waits for one to confirm a
	// graceful delete. Grace 0 removes it at once.
	var zero int64
	if err := e.cs.CoreV1().Pods(e.ns).Delete(context.Background(), pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "delete seen", func() bool {
		p.mu.RLock()
		defer p.mu.RUnlock()
		en := p.pods[string(pod.UID)]
		return en != nil && !en.deletedAt.IsZero()
	})
	if k := p.Lookup(string(pod.UID), hexID('a')); k.NotFound || k.Container != "app" || k.Pod != "doomed" {
		t.Fatalf("within the grace: %+v", k)
	}
	if s := p.Stats(); s.Deleted != 1 {
		t.Fatalf("stats %+v, want one Deleted", s)
	}
	clockMu.Lock()
	now = now.Add(grace + time.Millisecond)
	clockMu.Unlock()
	if found(p, pod.UID) {
		t.Fatal("past the grace, the deleted pod still answers")
	}
	eventually(t, 30*time.Second, "purge", func() bool {
		p.mu.RLock()
		defer p.mu.RUnlock()
		return len(p.pods) == 0
	})
}

// proxy forwards TCP to the API server only while up; while down it closes
// every connection, the ones it accepts and the ones it had.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	up     bool
	conns  map[net.Conn]bool
	// refused counts the connections closed at once while down.
	refused int
	// While held is open, accepted connections wait before they are
	// forwarded (a slow API server); waiting counts them.
	held    chan struct{}
	waiting int
}

// hold makes the proxy slow: connections wait until the returned func
// releases them.
func (x *proxy) hold() (release func()) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.held = make(chan struct{})
	held := x.held
	return sync.OnceFunc(func() { close(held) })
}

func (x *proxy) waitingConns() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.waiting
}

// refusals returns how many connections the proxy refused so far.
func (x *proxy) refusals() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.refused
}

func newProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	x := &proxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	t.Cleanup(func() { ln.Close(); x.set(false) })
	go x.serve()
	return x
}

func (x *proxy) serve() {
	for {
		c, err := x.ln.Accept()
		if err != nil {
			return
		}
		go x.forward(c)
	}
}

func (x *proxy) forward(c net.Conn) {
	x.mu.Lock()
	held := x.held
	if held != nil {
		x.waiting++
	}
	x.mu.Unlock()
	if held != nil {
		<-held
	}
	x.mu.Lock()
	up := x.up
	if !up {
		x.refused++
	}
	x.mu.Unlock()
	if !up {
		c.Close()
		return
	}
	s, err := net.Dial("tcp", x.target)
	if err != nil {
		c.Close()
		return
	}
	x.mu.Lock()
	if !x.up { // went down while we dialed
		x.mu.Unlock()
		c.Close()
		s.Close()
		return
	}
	x.conns[c], x.conns[s] = true, true
	x.mu.Unlock()
	go func() { io.Copy(s, c); s.Close(); c.Close() }()
	io.Copy(c, s)
	c.Close()
	s.Close()
	x.mu.Lock()
	delete(x.conns, c)
	delete(x.conns, s)
	x.mu.Unlock()
}

func (x *proxy) set(up bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.up = up
	if !up {
		for c := range x.conns {
			c.Close()
		}
	}
}

// With the API server unreachable, Start returns at once, the cache is not
// synced and lookups answer NotFound; when it comes back, names do. Later,
// an outage keeps what the cache has and misses only what happens
// meanwhile, until the watch is back. The wait is client-go's reflector
// backoff (0.8 s doubling, jittered), a few seconds here.
func TestAPIUnreachable(t *testing.T) {
	e := newEnv(t)
	node := e.node("node-a")
	first := e.pod("first", node, nil)

	rc := rest.CopyConfig(e.cfg)
	host := strings.TrimPrefix(strings.TrimSuffix(rc.Host, "/"), "https://")
	x := newProxy(t, host)
	rc.Host = "https://" + x.ln.Addr().String() // same 127.0.0.1, so the certificate still fits

	p := start(t, rc, node, 0) // checks that Start returns
	// The client tried, and was refused, twice: its first list and a retry.
	eventually(t, 60*time.Second, "two connections refused", func() bool { return x.refusals() >= 2 })
	if p.Synced() {
		t.Fatal("synced through a proxy that is down")
	}
	if k := p.Lookup(string(first.UID), ""); !k.NotFound || k.Node != node {
		t.Fatalf("lookup while down: %+v", k)
	}
	// The failure is recorded when the failed list returns to the informer.
	eventually(t, 60*time.Second, "Healthy to fail while the API server is unreachable", func() bool { return p.Healthy() != nil })

	x.set(true)
	d := eventually(t, 60*time.Second, "sync once the API server is reachable", p.Synced)
	t.Logf("synced %v after the API server became reachable", d)
	if k := p.Lookup(string(first.UID), ""); k.NotFound || k.Pod != "first" {
		t.Fatalf("after the sync: %+v", k)
	}
	eventually(t, 10*time.Second, "Healthy once the API server answers", func() bool { return p.Healthy() == nil })

	x.set(false)
	second := e.pod("second", node, nil) // through the direct config
	// The watch broke and its retries were refused: what the cache holds
	// now is what it keeps in an outage.
	before := x.refusals()
	eventually(t, 60*time.Second, "the watch's retries refused", func() bool { return x.refusals() >= before+2 })
	if k := p.Lookup(string(first.UID), ""); k.NotFound {
		t.Fatalf("cached pod lost in an outage: %+v", k)
	}
	if !found(p, first.UID) || found(p, second.UID) {
		t.Fatal("pod created during the outage seen through a proxy that is down")
	}
	if !p.Synced() {
		t.Error("Synced went false in an outage")
	}
	// Readiness says the API server is away: the watch failed since.
	eventually(t, 30*time.Second, "Healthy to fail in an outage", func() bool { return p.Healthy() != nil })
	t.Logf("in the outage: %v", p.Healthy())
	x.set(true)
	d = eventually(t, 60*time.Second, "pod created during the outage", func() bool { return found(p, second.UID) })
	t.Logf("pod created during the outage found %v after the API server came back", d)
	eventually(t, 10*time.Second, "Healthy once the API server is back", func() bool { return p.Healthy() == nil })
}

// A slow API server (its answers held back, as long as the test likes)
// holds nothing up: Start returns, lookups answer NotFound at once from the
// empty cache, and once the answers come the cache syncs and names pods.
func TestAPISlow(t *testing.T) {
	e := newEnv(t)
	node := e.node("node-a")
	first := e.pod("first", node, nil)
	rc := rest.CopyConfig(e.cfg)
	host := strings.TrimPrefix(strings.TrimSuffix(rc.Host, "/"), "https://")
	x := newProxy(t, host)
	x.set(true)
	release := x.hold()
	t.Cleanup(release)
	rc.Host = "https://" + x.ln.Addr().String()

	p := start(t, rc, node, 0)
	eventually(t, 60*time.Second, "the list held at the API server", func() bool { return x.waitingConns() >= 1 })
	for range 100 {
		if k := p.Lookup(string(first.UID), ""); !k.NotFound || k.Node != node {
			t.Fatalf("lookup while the API server is slow: %+v", k)
		}
	}
	if p.Synced() {
		t.Fatal("synced while every answer was held back")
	}
	release()
	eventually(t, 60*time.Second, "sync once the API server answers", p.Synced)
	if k := p.Lookup(string(first.UID), ""); k.NotFound || k.Pod != "first" {
		t.Errorf("after the sync: %+v", k)
	}
}
