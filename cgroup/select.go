package cgroup

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Selected is a cgroup chosen by the user: its path relative to the root,
// its v2 id (the directory's inode, which the kernel programs compare) and
// its level below the root (0 for the root).
type Selected struct {
	Path  string
	ID    uint64
	Level uint32
}

// Within reports whether the cgroup at path is dir or below it (paths
// relative to the root, as Selected.Path and Resolver.Path give them).
func Within(path, dir string) bool {
	return path == dir || strings.HasPrefix(path, strings.TrimSuffix(dir, "/")+"/")
}

// Select finds the cgroup that spec names in the hierarchy mounted at root:
// a path (absolute under root, such as /sys/fs/cgroup/system.slice/nginx.service,
// or relative to root, such as /system.slice/nginx.service), or a container
// id of 12 to 64 hex digits (a prefix, as docker ps shows it), which names
// the outermost cgroup whose path names that container.
func Select(root, spec string) (Selected, error) {
	if spec == "" {
		return Selected{}, fmt.Errorf("empty cgroup")
	}
	if isHex(strings.ToLower(spec)) && !strings.Contains(spec, "/") {
		return selectContainer(root, strings.ToLower(spec))
	}
	rel := spec
	if r, err := filepath.Rel(root, spec); err == nil && filepath.IsAbs(spec) && !strings.HasPrefix(r, "..") {
		rel = r
	}
	rel = filepath.Clean("/" + rel)
	ino, _, err := readDir(filepath.Join(root, rel))
	if err != nil {
		return Selected{}, fmt.Errorf("cgroup %s: %w", spec, err)
	}
	level := uint32(0)
	if rel != "/" {
		level = uint32(strings.Count(rel, "/"))
	}
	return Selected{Path: rel, ID: ino, Level: level}, nil
}

func selectContainer(root, prefix string) (Selected, error) {
	if len(prefix) < 12 || len(prefix) > 64 {
		return Selected{}, fmt.Errorf("container id %q: want 12 to 64 hex digits", prefix)
	}
	dirs, err := walk(root, MaxDirs)
	if err != nil {
		return Selected{}, err
	}
	var found Selected
	var id string
	for ino, path := range dirs {
		ctx := ParsePath(path)
		if !strings.HasPrefix(ctx.ContainerID, prefix) {
			continue
		}
		if id != "" && ctx.ContainerID != id {
			return Selected{}, fmt.Errorf("container id %q is ambiguous: %s and %s", prefix, id[:12], ctx.ContainerID[:12])
		}
		// The outermost: a container's own cgroup, not a child of it.
		if id == "" || len(path) < len(found.Path) {
			id = ctx.ContainerID
			found = Selected{Path: path, ID: ino, Level: uint32(strings.Count(path, "/"))}
		}
	}
	if id == "" {
		return Selected{}, fmt.Errorf("no cgroup under %s names container %s", root, prefix)
	}
	return found, nil
}

// SelfID is the v2 id of this process's cgroup, as the kernel programs see
// a socket's cgroup: /proc/self/cgroup's v2 path under the mounted
// hierarchy (in a cgroup namespace, its root is the process's own cgroup).
func SelfID() (uint64, error) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return 0, err
	}
	path, _, err := ParseProcCgroup(data)
	if err != nil {
		return 0, err
	}
	if path == "" {
		return 0, fmt.Errorf("no cgroup v2 line in /proc/self/cgroup")
	}
	root, err := UnifiedRoot()
	if err != nil {
		return 0, err
	}
	s, err := Select(root, path)
	if err != nil {
		return 0, err
	}
	return s.ID, nil
}
