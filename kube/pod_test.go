package kube

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/tcptrace/tcptrace/events"
)

// These tests need no API server: they feed the handlers directly.

func hexID(c byte) string { return strings.Repeat(string(c), 64) }

func TestContainerID(t *testing.T) {
	id := hexID('a')
	for in, want := range map[string]string{
		"containerd://" + id: id,
		"cri-o://" + id:      id,
		"docker://" + id:     id,
		id:                   id,
		"":                   "",
	} {
		if got := containerID(in); got != want {
			t.Errorf("containerID(%q) = %q, want %q", in, got, want)
		}
	}
}

func owned(kind, apiVersion, name string, controller bool, labels map[string]string) *corev1.Pod {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", Labels: labels}}
	if kind != "" {
		pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: apiVersion, Kind: kind, Name: name, UID: "u", Controller: &controller}}
	}
	return pod
}

func TestWorkload(t *testing.T) {
	hash := map[string]string{"pod-template-hash": "5d8f9c7b6"}
	for _, c := range []struct {
		pod        *corev1.Pod
		kind, name string
	}{
		{owned("ReplicaSet", "apps/v1", "web-5d8f9c7b6", true, hash), "Deployment", "web"},
		{owned("ReplicaSet", "apps/v1", "my-web-app-5d8f9c7b6", true, hash), "Deployment", "my-web-app"},
		{owned("ReplicaSet", "apps/v1", "web-5d8f9c7b6", true, nil), "ReplicaSet", "web-5d8f9c7b6"},         // no hash label: a bare ReplicaSet
		{owned("ReplicaSet", "apps/v1", "web-other", true, hash), "ReplicaSet", "web-other"},                // name is not <deployment>-<hash>
		{owned("ReplicaSet", "apps/v1", "-5d8f9c7b6", true, hash), "ReplicaSet", "-5d8f9c7b6"},              // no deployment name left
		{owned("ReplicaSet", "example.com/v1", "web-5d8f9c7b6", true, hash), "ReplicaSet", "web-5d8f9c7b6"}, // not apps
		{owned("DaemonSet", "apps/v1", "agent", true, nil), "DaemonSet", "agent"},
		{owned("StatefulSet", "apps/v1", "db", true, nil), "StatefulSet", "db"},
		{owned("Job", "batch/v1", "backup-29100000", true, nil), "Job", "backup-29100000"},
		{owned("Node", "v1", "node-a", true, nil), "Node", "node-a"},           // a static pod's mirror
		{owned("ReplicaSet", "apps/v1", "web-5d8f9c7b6", false, hash), "", ""}, // an owner that is not the controller
		{owned("", "", "", false, nil), "", ""},
	} {
		kind, name := workload(c.pod)
		if kind != c.kind || name != c.name {
			t.Errorf("owner %+v labels %v: %s/%s, want %s/%s", c.pod.OwnerReferences, c.pod.Labels, kind, name, c.kind, c.name)
		}
	}
}

// unitPods is a Pods that is never started, with a clock the test moves.
func unitPods(t *testing.T, grace time.Duration) (*Pods, *time.Time) {
	t.Helper()
	p, err := New(Config{Node: "node-a", DeletedGrace: grace}, &rest.Config{Host: "https://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_800_000_000, 0)
	p.now = func() time.Time { return now }
	return p, &now
}

func statusPod(uid, name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", UID: types.UID(uid), ResourceVersion: "1"},
		Spec:       corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{Name: "app", Image: "x"}}},
		Status: corev1.PodStatus{
			InitContainerStatuses: []corev1.ContainerStatus{{Name: "init", ContainerID: "docker://" + hexID('c')}},
			ContainerStatuses: []corev1.ContainerStatus{
				{Name: "app", ContainerID: "containerd://" + hexID('a'),
					LastTerminationState: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ContainerID: "containerd://" + hexID('0')}}},
				{Name: "sidecar", ContainerID: "cri-o://" + hexID('b')},
				{Name: "waiting"}, // no id yet
			},
			EphemeralContainerStatuses: []corev1.ContainerStatus{{Name: "debug", ContainerID: "containerd://" + hexID('d')}},
			Conditions:                 []corev1.PodCondition{{Type: corev1.PodReady}},
		},
	}
}

func TestContainersByID(t *testing.T) {
	for _, trimmed := range []bool{false, true} {
		p, _ := unitPods(t, time.Minute)
		pod := statusPod("uid-1", "web")
		if trimmed {
			obj, _ := trim(pod)
			pod = obj.(*corev1.Pod)
			if pod.Spec.Containers != nil || pod.Status.Conditions != nil || pod.Spec.NodeName != "node-a" {
				t.Fatalf("trim kept %+v", pod)
			}
		}
		p.set(pod)
		for id, want := range map[string]string{
			hexID('a'): "app", hexID('0'): "app", hexID('b'): "sidecar", hexID('c'): "init", hexID('d'): "debug",
			hexID('e'): "", "": "",
		} {
			got := p.Lookup("uid-1", id)
			if got.Container != want || got.Pod != "web" || got.Namespace != "ns" || got.Node != "node-a" || got.NotFound {
				t.Errorf("trimmed %v: Lookup(%.8s…) = %+v, want container %q", trimmed, id, got, want)
			}
		}
		if p.Lookup("uid-1", hexID('a')) != p.Lookup("uid-1", hexID('0')) {
			t.Error("a container's current and previous ids give different values")
		}
	}
}

func TestLookupNotFoundAndEmpty(t *testing.T) {
	p, _ := unitPods(t, time.Minute)
	if k := p.Lookup("", hexID('a')); k != nil {
		t.Fatalf("Lookup without a pod UID = %+v, want nil", k)
	}
	if k := p.Lookup("nope", ""); !k.NotFound || k.Node != "node-a" || k.Pod != "" {
		t.Fatalf("unknown pod: %+v", k)
	}
	if s := p.Stats(); s != (Stats{NotFound: 1}) {
		t.Fatalf("stats %+v", s)
	}
}

// The steady state costs no allocation: the tracer looks up every event.
func TestLookupAllocs(t *testing.T) {
	p, _ := unitPods(t, time.Minute)
	p.set(statusPod("uid-1", "web"))
	var sink *events.K8s
	for _, c := range [][2]string{{"uid-1", hexID('a')}, {"uid-1", ""}, {"uid-1", hexID('e')}, {"uid-2", hexID('a')}} {
		if n := testing.AllocsPerRun(1000, func() { sink = p.Lookup(c[0], c[1]) }); n != 0 {
			t.Errorf("Lookup(%s, %.8s…): %v allocations", c[0], c[1], n)
		}
	}
	_ = sink
}

// An update rebuilds the answers; an unchanged resource version (a relist)
// keeps them.
func TestUpdate(t *testing.T) {
	p, _ := unitPods(t, time.Minute)
	pod := statusPod("uid-1", "web")
	p.set(pod)
	first := p.Lookup("uid-1", hexID('a'))
	p.set(pod.DeepCopy())
	if p.Lookup("uid-1", hexID('a')) != first {
		t.Error("same resource version rebuilt")
	}
	pod = pod.DeepCopy()
	pod.ResourceVersion = "2"
	pod.Status.ContainerStatuses[0].ContainerID = "containerd://" + hexID('f')
	p.set(pod)
	if k := p.Lookup("uid-1", hexID('f')); k.Container != "app" {
		t.Errorf("new container id: %+v", k)
	}
	if k := p.Lookup("uid-1", hexID('a')); k.Container != "" {
		t.Errorf("replaced container id still matches: %+v", k)
	}
	if first.Container != "app" {
		t.Errorf("an update changed a value already handed out: %+v", first)
	}
}

// A deleted pod answers for the grace period, then not, and is forgotten:
// memory does not grow with pod churn.
func TestDeletedGraceAndChurn(t *testing.T) {
	const grace = 5 * time.Minute
	p, now := unitPods(t, grace)
	const n = 10000
	for i := range n {
		pod := statusPod(fmt.Sprint("uid-", i), fmt.Sprint("web-", i))
		p.set(pod)
		if i%2 == 0 {
			p.remove(pod)
		} else {
			p.remove(cache.DeletedFinalStateUnknown{Key: "ns/" + pod.Name, Obj: pod})
		}
	}
	p.remove(statusPod("never-seen", "x")) // no entry made for an unknown pod
	if k := p.Lookup("uid-7", hexID('a')); k.NotFound || k.Pod != "web-7" || k.Container != "app" {
		t.Fatalf("deleted pod within grace: %+v", k)
	}
	*now = now.Add(grace)
	p.purge()
	if k := p.Lookup("uid-8", ""); k.NotFound {
		t.Fatalf("deleted pod at the end of its grace: %+v", k)
	}
	if len(p.pods) != n {
		t.Fatalf("%d pods kept within the grace, want %d", len(p.pods), n)
	}
	*now = now.Add(time.Second)
	if k := p.Lookup("uid-9", ""); !k.NotFound {
		t.Fatalf("deleted pod past its grace, before the purge: %+v", k)
	}
	p.purge()
	if len(p.pods) != 0 {
		t.Fatalf("%d pods kept after the purge", len(p.pods))
	}
	if s := p.Stats(); s != (Stats{Deleted: 2, NotFound: 1}) {
		t.Fatalf("stats %+v", s)
	}
}

func TestNewValidates(t *testing.T) {
	rc := &rest.Config{Host: "https://127.0.0.1:1"}
	if _, err := New(Config{}, rc); err == nil {
		t.Error("no node accepted")
	}
	if _, err := New(Config{Node: "n", DeletedGrace: -time.Second}, rc); err == nil {
		t.Error("negative grace accepted")
	}
	if _, err := New(Config{Node: "n"}, nil); err == nil {
		t.Error("nil rest.Config accepted")
	}
	p, err := New(Config{Node: "n"}, rc)
	if err != nil {
		t.Fatal(err)
	}
	if p.cfg.DeletedGrace != DefaultDeletedGrace || p.Synced() {
		t.Errorf("grace %v synced %v", p.cfg.DeletedGrace, p.Synced())
	}
}

// An unreachable API server warns once a minute at most; routine watch
// ends are not warnings.
func TestWatchErrorLogging(t *testing.T) {
	var buf bytes.Buffer
	p, err := New(Config{Node: "node-a", Logger: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))},
		&rest.Config{Host: "https://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	refused := errors.New("dial tcp 127.0.0.1:1: connect: connection refused")
	for range 5 {
		p.watchError(context.Background(), nil, refused)
	}
	p.watchError(context.Background(), nil, io.EOF)
	p.watchError(context.Background(), nil, io.ErrUnexpectedEOF)
	p.watchError(context.Background(), nil, apierrors.NewResourceExpired("too old resource version"))
	out := buf.String()
	if w, d := strings.Count(out, "level=WARN"), strings.Count(out, "level=DEBUG"); w != 1 || d != 6 {
		t.Fatalf("%d warnings and %d debug lines, want 1 and 6:\n%s", w, d, out)
	}
	p.lastWarn.Store(time.Now().Add(-time.Minute).UnixNano())
	p.watchError(context.Background(), nil, refused)
	if w := strings.Count(buf.String(), "level=WARN"); w != 2 {
		t.Fatalf("no warning a minute later:\n%s", buf.String())
	}
}
