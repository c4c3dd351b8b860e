// Package cgroup gives a socket's cgroup its container context: it parses
// cgroup paths as container runtimes write them (ParsePath), parses
// /proc/<pid>/cgroup (ParseProcCgroup, ContextFromProc), and maps the cgroup
// v2 ids the eBPF side reads from sk->sk_cgrp_data back to paths (Resolver).
//
// The package has no global mutable state.
package cgroup

import "strings"

// Runtime names a Context can carry.
const (
	RuntimeDocker     = "docker"
	RuntimeContainerd = "containerd"
	RuntimeCRIO       = "cri-o"
	RuntimePodman     = "podman"
)

// Context is what a cgroup path says about the container around it. Empty
// fields mean the path does not say; Runtime is set only with ContainerID.
type Context struct {
	ContainerID string // 64 lowercase hex digits
	PodUID      string // Kubernetes pod UID, dashed and lowercase
	Runtime     string // one of the Runtime constants, or "" when unknown
}

// idPrefixes are the "<prefix><id>[.scope]" cgroup names runtimes create.
// Longer prefixes come first: "crio-" would otherwise claim "crio-conmon-".
var idPrefixes = [...]struct{ prefix, runtime string }{
	{"cri-containerd-", RuntimeContainerd}, // containerd CRI, systemd driver
	{"crio-conmon-", RuntimeCRIO},          // CRI-O's monitor of that container
	{"crio-", RuntimeCRIO},
	{"docker-", RuntimeDocker}, // systemd driver; also cri-dockerd pods
	{"libpod-conmon-", RuntimePodman},
	{"libpod-", RuntimePodman},
	{"nerdctl-", RuntimeContainerd}, // nerdctl, systemd driver
}

// colonPrefixes are the runtime names in runc's "slice:prefix:id" systemd
// spec, which shows up literally as a cgroup name in v1 controllers that
// systemd does not manage, e.g.
// /system.slice/containerd.service/kubepods-burstable-pod<uid>.slice:cri-containerd:<id>.
var colonPrefixes = [...]struct{ prefix, runtime string }{
	{"cri-containerd", RuntimeContainerd},
	{"crio", RuntimeCRIO},
	{"docker", RuntimeDocker},
}

// deletedSuffix marks a dead cgroup on the v2 line of /proc/<pid>/cgroup.
const deletedSuffix = " (deleted)"

// ParsePath reads the container context from a cgroup path of either
// hierarchy, as Docker, containerd (plain and CRI), CRI-O and Podman name
// cgroups under the cgroupfs and systemd drivers. The last container id in
// the path wins, because nested containers are more specific. A pod cgroup
// below a container (a Kubernetes node running in a container, as kind does)
// starts a new context, so an outer container id is never paired with an
// inner pod. Anything unrecognised, including control characters anywhere
// in the path, gives an empty Context.
func ParsePath(path string) Context {
	path = strings.TrimSuffix(path, deletedSuffix)
	if !strings.HasPrefix(path, "/") || hasControl(path) {
		return Context{}
	}
	var ctx Context
	inKubepods := false
	parent := ""
	for _, seg := range strings.Split(path[1:], "/") {
		if strings.Contains(seg, "kubepods") {
			inKubepods = true
		}
		parts := strings.Split(seg, ":")
		if len(parts) == 3 {
			// runc's "slice:prefix:id" taken literally as a name.
			if uid, ok := podSegment(parts[0], inKubepods); ok {
				ctx = Context{PodUID: uid}
			}
			for _, p := range colonPrefixes {
				if parts[1] == p.prefix && isID(parts[2]) {
					ctx.ContainerID, ctx.Runtime = strings.ToLower(parts[2]), p.runtime
				}
			}
		} else if uid, ok := podSegment(seg, inKubepods); ok {
			ctx = Context{PodUID: uid}
		} else if id, rt, ok := containerSegment(seg, parent, inKubepods); ok {
			ctx.ContainerID, ctx.Runtime = id, rt
		}
		parent = seg
	}
	return ctx
}

// containerSegment recognises one cgroup name as a container's.
func containerSegment(seg, parent string, inKubepods bool) (id, runtime string, ok bool) {
	if isID(seg) {
		// A bare id is only trusted where its parent says whose it is:
		// Docker's cgroupfs "/docker/<id>", or a Kubernetes pod under
		// cgroupfs, where Docker, containerd and CRI-O's infra all look
		// alike. Elsewhere (nerdctl's "/default/<id>") it could be anything.
		switch {
		case parent == "docker":
			return strings.ToLower(seg), RuntimeDocker, true
		case inKubepods && isPodDir(parent):
			return strings.ToLower(seg), "", true
		}
		return "", "", false
	}
	name := strings.TrimSuffix(seg, ".scope")
	for _, p := range idPrefixes {
		if rest, found := strings.CutPrefix(name, p.prefix); found && isID(rest) {
			return strings.ToLower(rest), p.runtime, true
		}
	}
	return "", "", false
}

// podSegment recognises a Kubernetes pod cgroup: "pod<uid>" (cgroupfs) or
// "kubepods[-<qos>]-pod<uid_with_underscores>.slice" (systemd). Static pods
// are named by a 32-hex config hash instead of a UUID; that is not the pod's
// API UID, so they are recognised as pods with no UID.
func podSegment(seg string, inKubepods bool) (uid string, ok bool) {
	var raw string
	if name, found := strings.CutSuffix(seg, ".slice"); found {
		i := strings.LastIndex(name, "-pod")
		if i < 0 || !strings.Contains(name[:i], "kubepods") {
			return "", false
		}
		raw = name[i+len("-pod"):]
	} else if inKubepods && strings.HasPrefix(seg, "pod") {
		raw = seg[len("pod"):]
	} else {
		return "", false
	}
	if len(raw) == 32 && isHex(raw) {
		return "", true
	}
	return normUUID(raw)
}

// isPodDir reports whether a cgroupfs name is a pod's, so a bare id below it
// is a container.
func isPodDir(seg string) bool {
	_, ok := podSegment(seg, true)
	return ok && !strings.HasSuffix(seg, ".slice")
}

// normUUID accepts a UUID with '-' or '_' separators (systemd escapes '-'
// in unit names) and returns it dashed and lowercase.
func normUUID(s string) (string, bool) {
	if len(s) != 36 {
		return "", false
	}
	sep := s[8]
	if sep != '-' && sep != '_' {
		return "", false
	}
	b := []byte(s)
	for i, c := range b {
		switch i {
		case 8, 13, 18, 23:
			if c != sep {
				return "", false
			}
			b[i] = '-'
		default:
			if !isHexByte(c) {
				return "", false
			}
			if 'A' <= c && c <= 'F' {
				b[i] = c + 'a' - 'A'
			}
		}
	}
	return string(b), true
}

// isID reports whether s is a full container id: exactly 64 hex digits.
// Short ids are never written into cgroup names, so anything else is not one.
func isID(s string) bool {
	return len(s) == 64 && isHex(s)
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isHexByte(s[i]) {
			return false
		}
	}
	return true
}

func isHexByte(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return true
		}
	}
	return false
}
