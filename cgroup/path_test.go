package cgroup

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
)

const (
	id1 = "0ba8ac17e4e7a31fb82279503552fe94e64bab4745bf6fd2ff231e7c8ca8bed0"
	id2 = "358607a37e7ada357032e7f5729c9ae6a3efdb7962acbcbe47ff6a3c5506cb1c"
	// Dashed and systemd-escaped forms of one pod UID.
	uid    = "2ca4a155-3599-498d-bb9d-4446693fa3ea"
	uidEsc = "2ca4a155_3599_498d_bb9d_4446693fa3ea"
	// A static pod's cgroup is named by a config hash, not its API UID.
	staticHash = "8daa50c3a64c9ff60bb9eab7b44b56fd"
)

func TestParsePath(t *testing.T) {
	tests := []struct {
		name string
		path string
		want Context
	}{
		// Docker.
		{"docker v1 cgroupfs", "/docker/" + id1, Context{ContainerID: id1, Runtime: "docker"}},
		{"docker v2 systemd", "/system.slice/docker-" + id1 + ".scope", Context{ContainerID: id1, Runtime: "docker"}},
		{"docker cgroup-parent slice", "/ci.slice/ci-runners.slice/docker-" + id1 + ".scope", Context{ContainerID: id1, Runtime: "docker"}},
		{"docker rootless systemd", "/user.slice/user-1000.slice/user@1000.service/user.slice/docker-" + id1 + ".scope", Context{ContainerID: id1, Runtime: "docker"}},
		{"docker in docker", "/docker/" + id1 + "/docker/" + id2, Context{ContainerID: id2, Runtime: "docker"}},
		{"docker systemd nested init", "/system.slice/docker-" + id1 + ".scope/init.scope", Context{ContainerID: id1, Runtime: "docker"}},
		{"uppercase id lowered", "/docker/" + strings.ToUpper(id1), Context{ContainerID: id1, Runtime: "docker"}},
		{"dead v2 cgroup", "/system.slice/docker-" + id1 + ".scope (deleted)", Context{ContainerID: id1, Runtime: "docker"}},

		// Kubernetes, cgroupfs driver: the runtime is not in the path.
		{"k8s cgroupfs burstable", "/kubepods/burstable/pod" + uid + "/" + id1, Context{ContainerID: id1, PodUID: uid}},
		{"k8s cgroupfs guaranteed", "/kubepods/pod" + uid + "/" + id1, Context{ContainerID: id1, PodUID: uid}},
		{"k8s cgroupfs besteffort", "/kubepods/besteffort/pod" + uid + "/" + id1, Context{ContainerID: id1, PodUID: uid}},
		{"k8s cgroupfs pod level", "/kubepods/burstable/pod" + uid, Context{PodUID: uid}},
		{"k8s cgroupfs cri-o", "/kubepods/burstable/pod" + uid + "/crio-" + id1, Context{ContainerID: id1, PodUID: uid, Runtime: "cri-o"}},
		{"k8s cgroupfs static pod", "/kubepods/burstable/pod" + staticHash + "/" + id1, Context{ContainerID: id1}},
		{"k8s cgroupfs custom root", "/custom-root/kubepods/besteffort/pod" + uid + "/" + id1, Context{ContainerID: id1, PodUID: uid}},

		// Kubernetes, systemd driver.
		{"k8s systemd containerd", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidEsc + ".slice/cri-containerd-" + id1 + ".scope", Context{ContainerID: id1, PodUID: uid, Runtime: "containerd"}},
		{"k8s systemd cri-o", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidEsc + ".slice/crio-" + id1 + ".scope", Context{ContainerID: id1, PodUID: uid, Runtime: "cri-o"}},
		{"k8s systemd cri-o conmon", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidEsc + ".slice/crio-conmon-" + id1 + ".scope", Context{ContainerID: id1, PodUID: uid, Runtime: "cri-o"}},
		{"k8s systemd docker", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidEsc + ".slice/docker-" + id1 + ".scope", Context{ContainerID: id1, PodUID: uid, Runtime: "docker"}},
		{"k8s systemd guaranteed", "/kubepods.slice/kubepods-pod" + uidEsc + ".slice/cri-containerd-" + id1 + ".scope", Context{ContainerID: id1, PodUID: uid, Runtime: "containerd"}},
		{"k8s systemd pod level", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidEsc + ".slice", Context{PodUID: uid}},
		{"k8s systemd static pod", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + staticHash + ".slice/cri-containerd-" + id1 + ".scope", Context{ContainerID: id1, Runtime: "containerd"}},
		{"k8s systemd v1 colon form", "/system.slice/containerd.service/kubepods-burstable-pod" + uidEsc + ".slice:cri-containerd:" + id1, Context{ContainerID: id1, PodUID: uid, Runtime: "containerd"}},
		{"k8s systemd v1 colon form at root", "/kubepods-besteffort-pod" + uidEsc + ".slice:cri-containerd:" + id1, Context{ContainerID: id1, PodUID: uid, Runtime: "containerd"}},
		{"kind node v2", "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + uidEsc + ".slice/cri-containerd-" + id1 + ".scope", Context{ContainerID: id1, PodUID: uid, Runtime: "containerd"}},
		{"kind node v1 pod in docker", "/docker/" + id2 + "/kubepods/besteffort/pod" + uid + "/" + id1, Context{ContainerID: id1, PodUID: uid}},
		{"kind node v1 pod level in docker", "/docker/" + id2 + "/kubepods/besteffort/pod" + uid, Context{PodUID: uid}},
		{"minikube cri-o in docker", "/docker/" + id2 + "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidEsc + ".slice/crio-" + id1 + ".scope", Context{ContainerID: id1, PodUID: uid, Runtime: "cri-o"}},

		// containerd outside Kubernetes.
		{"nerdctl systemd", "/system.slice/nerdctl-" + id1 + ".scope", Context{ContainerID: id1, Runtime: "containerd"}},
		{"nerdctl rootless", "/user.slice/user-1000.slice/user@1000.service/user.slice/nerdctl-" + id1 + ".scope", Context{ContainerID: id1, Runtime: "containerd"}},

		// Podman.
		{"podman rootful systemd", "/machine.slice/libpod-" + id1 + ".scope", Context{ContainerID: id1, Runtime: "podman"}},
		{"podman rootless", "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + id1 + ".scope", Context{ContainerID: id1, Runtime: "podman"}},
		{"podman container suffix", "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + id1 + ".scope/container", Context{ContainerID: id1, Runtime: "podman"}},
		{"podman rootful container suffix", "/machine.slice/libpod-" + id1 + ".scope/container", Context{ContainerID: id1, Runtime: "podman"}},
		{"podman pod", "/machine.slice/machine-libpod_pod_" + id2 + ".slice/libpod-" + id1 + ".scope", Context{ContainerID: id1, Runtime: "podman"}},
		{"podman conmon", "/machine.slice/libpod-conmon-" + id1 + ".scope", Context{ContainerID: id1, Runtime: "podman"}},
		{"podman cgroupfs", "/libpod_parent/libpod-" + id1, Context{ContainerID: id1, Runtime: "podman"}},

		// Nothing to say.
		{"root", "/", Context{}},
		{"empty", "", Context{}},
		{"sshd", "/system.slice/sshd.service", Context{}},
		{"dockerd itself", "/system.slice/docker.service", Context{}},
		{"containerd and shims", "/system.slice/containerd.service", Context{}},
		{"session", "/user.slice/user-1000.slice/session-3.scope", Context{}},
		{"init", "/init.scope", Context{}},
		{"kubepods qos only", "/kubepods.slice/kubepods-burstable.slice", Context{}},
		{"nerdctl cgroupfs is ambiguous", "/default/" + id1, Context{}},
		{"bare id without context", "/system.slice/" + id1, Context{}},
		{"pod outside kubepods", "/pod" + uid + "/" + id1, Context{}},
		{"63 hex", "/docker/" + id1[:63], Context{}},
		{"65 hex", "/docker/" + id1 + "0", Context{}},
		{"63 hex scope", "/system.slice/docker-" + id1[:63] + ".scope", Context{}},
		{"65 hex scope", "/system.slice/docker-" + id1 + "a.scope", Context{}},
		{"non-hex", "/docker/" + id1[:63] + "g", Context{}},
		{"relative", "docker/" + id1, Context{}},
		{"newline", "/docker/" + id1 + "\n", Context{}},
		{"newline inside", "/system.slice\n/docker-" + id1 + ".scope", Context{}},
		{"nul", "/docker/" + id1 + "\x00", Context{}},
		{"bad uid", "/kubepods/burstable/pod2ca4a155-3599-498d-bb9d_4446693fa3ea", Context{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ParsePath(tt.path); got != tt.want {
				t.Errorf("ParsePath(%q)\n got %+v\nwant %+v", tt.path, got, tt.want)
			}
		})
	}
}

var (
	idRE  = regexp.MustCompile(`^[0-9a-f]{64}$`)
	uidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
)

// checkContext fails unless c keeps the promises of Context's fields.
func checkContext(t *testing.T, input any, c Context) {
	t.Helper()
	if c.ContainerID != "" && !idRE.MatchString(c.ContainerID) {
		t.Errorf("%q: container id %q", input, c.ContainerID)
	}
	if c.PodUID != "" && !uidRE.MatchString(c.PodUID) {
		t.Errorf("%q: pod uid %q", input, c.PodUID)
	}
	switch c.Runtime {
	case "", RuntimeDocker, RuntimeContainerd, RuntimeCRIO, RuntimePodman:
	default:
		t.Errorf("%q: runtime %q", input, c.Runtime)
	}
	if c.Runtime != "" && c.ContainerID == "" {
		t.Errorf("%q: runtime %q without container id", input, c.Runtime)
	}
}

func FuzzParsePath(f *testing.F) {
	f.Add("/kubepods/burstable/pod" + uid + "/" + id1)
	f.Add("/system.slice/docker-" + id1 + ".scope")
	f.Fuzz(func(t *testing.T, path string) {
		checkContext(t, path, ParsePath(path))
	})
}

func TestSelect(t *testing.T) {
	root := t.TempDir()
	const id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for _, d := range []string{
		"system.slice/nginx.service",
		"kubepods.slice/kubepods-pod1.slice/cri-containerd-" + id + ".scope/child",
	} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ino := func(rel string) uint64 {
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(root, rel), &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino
	}
	for spec, want := range map[string]Selected{
		"/system.slice/nginx.service":       {"/system.slice/nginx.service", ino("system.slice/nginx.service"), 2},
		filepath.Join(root, "system.slice"): {"/system.slice", ino("system.slice"), 1},
		"/":                                 {"/", ino("."), 0},
		id[:12]:                             {"/kubepods.slice/kubepods-pod1.slice/cri-containerd-" + id + ".scope", ino("kubepods.slice/kubepods-pod1.slice/cri-containerd-" + id + ".scope"), 3},
		strings.ToUpper(id):                 {"/kubepods.slice/kubepods-pod1.slice/cri-containerd-" + id + ".scope", ino("kubepods.slice/kubepods-pod1.slice/cri-containerd-" + id + ".scope"), 3},
	} {
		got, err := Select(root, spec)
		if err != nil || got != want {
			t.Errorf("Select(%q) = %+v, %v; want %+v", spec, got, err, want)
		}
	}
	for _, bad := range []string{"", "/no/such", "0123456789ab0000", "abc", "ffffffffffffffff"} {
		if got, err := Select(root, bad); err == nil {
			t.Errorf("Select(%q) = %+v, want an error", bad, got)
		}
	}
}

func TestWithin(t *testing.T) {
	for _, c := range []struct {
		path, dir string
		want      bool
	}{
		{"/kubepods/pod-a", "/kubepods/pod-a", true},
		{"/kubepods/pod-a/ctr", "/kubepods/pod-a", true},
		{"/kubepods/pod-a/ctr", "/kubepods/pod-a/", true},
		{"/kubepods/pod-ab", "/kubepods/pod-a", false},
		{"/kubepods", "/kubepods/pod-a", false},
		{"/system.slice/x.service", "/", true},
	} {
		if got := Within(c.path, c.dir); got != c.want {
			t.Errorf("Within(%q, %q) = %v, want %v", c.path, c.dir, got, c.want)
		}
	}
}
