package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/tcptrace/tcptrace/cgroup"
	"github.com/tcptrace/tcptrace/deploy"
	"github.com/tcptrace/tcptrace/internal/kubetest"
	"github.com/tcptrace/tcptrace/internal/testenv"
)

// writeKubeconfig writes a kubeconfig file for rc.
func writeKubeconfig(t *testing.T, rc *rest.Config) string {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: rc.Host, CertificateAuthorityData: rc.CAData}
	cfg.AuthInfos["test"] = &clientcmdapi.AuthInfo{ClientCertificateData: rc.CertData, ClientKeyData: rc.KeyData, Token: rc.BearerToken}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	cfg.CurrentContext = "test"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// podCgroup makes a cgroup where a kubelet with the cgroupfs driver puts
// a pod's container: /kubepods/pod<uid>/<container id>.
func podCgroup(t *testing.T, uid types.UID, containerID string) string {
	t.Helper()
	root, err := cgroup.UnifiedRoot()
	if err != nil {
		t.Fatalf("no cgroup v2 hierarchy: %v", err)
	}
	top := filepath.Join(root, fmt.Sprintf("kubepods-tcptrace-test-%d", os.Getpid()))
	dir := filepath.Join(top, "pod"+string(uid), containerID)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("create the pod's cgroup: %v", err)
	}
	t.Cleanup(func() {
		os.Remove(dir)
		os.Remove(filepath.Dir(dir))
		os.Remove(top)
	})
	return dir
}

// Against a real API server: a leak in a pod's cgroup is reported with the
// pod's names, its Deployment found through its ReplicaSet, in events and
// in metric labels; after the pod is deleted its late close still gets the
// names (the grace period). Every metric the dashboard and alert rules use
// is in the scrape.
func TestKubernetesNames(t *testing.T) {
	testenv.RequirePrivileged(t)
	rc := kubetest.Start(t)
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const ns, node = "shop", "node-e2e"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	isController := true
	pod, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "web-7d9c5b6f8-x2x4q", Namespace: ns,
			Labels: map[string]string{"pod-template-hash": "7d9c5b6f8"},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-7d9c5b6f8", UID: "6f1c3c2e-0000-4000-8000-000000000001", Controller: &isController,
			}},
		},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "app", Image: "busybox"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	containerID := fmt.Sprintf("%016x", time.Now().UnixNano()) + strings.Repeat("c0", 24)
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{{
		Name: "app", Image: "busybox", ImageID: "docker.io/library/busybox@sha256:" + strings.Repeat("9", 64),
		ContainerID: "containerd://" + containerID,
	}}
	if _, err := cs.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	t.Setenv(helperCgroupEnv, podCgroup(t, pod.UID, containerID))
	h, port, client, _ := leakFrom(t, "leak")
	os.Unsetenv(helperCgroupEnv)
	p, base := startWithMetrics(t, "--port", port, "--threshold", "1s",
		"--kubeconfig", writeKubeconfig(t, rc), "--node-name", node, "--deleted-grace", "1m")
	// The leak starts once tcptrace's pod cache holds the pod: its stuck
	// report, a threshold later, must not race the first sync.
	for deadline := time.Now().Add(eventTimeout); ; time.Sleep(20 * time.Millisecond) {
		if got := series(scrape(t, base), "tcptrace_kubernetes_cached_pods", map[string]string{"state": "live"}); len(got) == 1 && value(got[0]) >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tcptrace's pod cache holds no pod after %v", eventTimeout)
		}
	}
	if err := client.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}

	want := fmt.Sprintf(`{"node":%q,"namespace":%q,"pod":%q,"container":"app","workload":{"kind":"Deployment","name":"web"}}`, node, ns, pod.Name)
	ev := p.next(eventTimeout, "stuck", func(ev jsonEvent) bool { return ev.Event == "stuck" })
	if got := string(ev.K8s); got != want || ev.PodUID != string(pod.UID) || ev.ContainerID != containerID {
		t.Errorf("stuck: k8s %s pod_uid %s container_id %s, want %s %s %s", got, ev.PodUID, ev.ContainerID, want, pod.UID, containerID)
	}

	labels := map[string]string{"namespace": ns, "pod": pod.Name, "container": "app", "cgroup": "", "port": port, "direction": "inbound"}
	fams := scrape(t, base)
	for name, v := range map[string]float64{"tcptrace_close_wait_sockets": 1, "tcptrace_stuck_reported_total": 1} {
		if got := series(fams, name, labels); len(got) != 1 || value(got[0]) != v {
			t.Errorf("%s%v = %v, want one series of %v", name, labels, got, v)
		}
	}
	// Every metric the Grafana dashboard and the alert rules query is in
	// a real scrape.
	names, err := deploy.MetricNames()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		family := name
		if f, ok := fams[name]; !ok || len(f.GetMetric()) == 0 {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if base, ok := strings.CutSuffix(name, suffix); ok && fams[base].GetType() == dto.MetricType_HISTOGRAM {
					family = base
				}
			}
		}
		if len(fams[family].GetMetric()) == 0 {
			t.Errorf("the dashboard or the rules query %s, which the scrape does not have", name)
		}
	}
	if len(names) < 5 {
		t.Errorf("only %d metric names in the dashboard and rules: %v", len(names), names)
	}
	if got := series(fams, "tcptrace_kubernetes_cache_synced", nil); len(got) != 1 || value(got[0]) != 1 {
		t.Errorf("kubernetes_cache_synced %v, want 1", got)
	}
	if code, body := get(t, base+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz %d with the API server up, want 200:\n%s", code, body)
	}

	// The pod is deleted; its process is killed later (as a kubelet
	// would), closing the socket: the names are still known.
	// Grace period 0: no kubelet runs here to confirm a graceful delete.
	now := int64(0)
	if err := cs.CoreV1().Pods(ns).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &now}); err != nil {
		t.Fatal(err)
	}
	// Once tcptrace's informer has seen the delete, the pod is kept as
	// deleted.
	for deadline := time.Now().Add(eventTimeout); ; time.Sleep(20 * time.Millisecond) {
		cached := series(scrape(t, base), "tcptrace_kubernetes_cached_pods", map[string]string{"state": "deleted"})
		if len(cached) == 1 && value(cached[0]) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tcptrace's pod cache did not see the delete within %v: kubernetes_cached_pods{state=deleted} %v", eventTimeout, cached)
		}
	}
	if err := h.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	ev = p.next(eventTimeout, "app_close", func(ev jsonEvent) bool { return ev.Event == "app_close" || ev.Event == "abort" })
	if got := string(ev.K8s); got != want {
		t.Errorf("%s after the pod's deletion: k8s %s, want %s", ev.Event, got, want)
	}
	lookups := series(scrape(t, base), "tcptrace_kubernetes_pod_lookups_total", map[string]string{"result": "deleted"})
	if len(lookups) != 1 || value(lookups[0]) < 1 {
		t.Errorf("pod_lookups_total{result=deleted} %v, want at least 1", lookups)
	}
}

// The API server unreachable at start: tracing goes on (a leak in a pod's
// cgroup is reported, saying its pod was not found) and /readyz says why
// it is not ready.
func TestKubernetesUnreachable(t *testing.T) {
	testenv.RequirePrivileged(t)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close() // nothing listens there now
	kubeconfig := writeKubeconfig(t, &rest.Config{Host: "https://" + dead, BearerToken: "x"})
	uid := types.UID("0e1f5a9c-2b3d-4e5f-8a9b-0c1d2e3f4a5b")
	containerID := strings.Repeat("d1", 32)
	t.Setenv(helperCgroupEnv, podCgroup(t, uid, containerID))
	_, port, client, _ := leakFrom(t, "leak")
	os.Unsetenv(helperCgroupEnv)
	p, base := startWithMetrics(t, "--port", port, "--threshold", "1s", "--kubeconfig", kubeconfig, "--node-name", "node-x")
	if err := client.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	ev := p.next(eventTimeout, "stuck", func(ev jsonEvent) bool { return ev.Event == "stuck" })
	if got := string(ev.K8s); got != `{"node":"node-x","pod_not_found":true}` || ev.PodUID != string(uid) {
		t.Errorf("stuck with the API server away: k8s %s pod_uid %s, want pod_not_found for %s", got, ev.PodUID, uid)
	}
	// 503 for Kubernetes alone (the tracer's check may flap while a loaded
	// machine stalls the ring buffer's reader: wait for it, do not sample).
	for deadline := time.Now().Add(eventTimeout); ; time.Sleep(50 * time.Millisecond) {
		code, body := get(t, base+"/readyz")
		if code == http.StatusServiceUnavailable && strings.Contains(body, "kubernetes: pod cache not synced") && strings.Contains(body, "tracer: ok") {
			break
		}
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "kubernetes: pod cache not synced") || time.Now().After(deadline) {
			t.Errorf("/readyz %d %q, want 503 for Kubernetes alone", code, body)
			break
		}
	}
}
