package cgroup

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return uint64(fi.Sys().(*syscall.Stat_t).Ino)
}

func mkdirs(t *testing.T, root string, rels ...string) {
	t.Helper()
	for _, rel := range rels {
		if err := os.MkdirAll(filepath.Join(root, rel), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// fakeClock is a Resolver clock the test moves by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newTestResolver(root string, minRescan time.Duration) (*Resolver, *fakeClock) {
	clock := &fakeClock{t: time.Unix(1_000_000, 0)}
	r := NewResolver(root, minRescan)
	r.now = clock.now
	return r, clock
}

func scans(r *Resolver) int {
	r.scanMu.Lock()
	defer r.scanMu.Unlock()
	return r.scans
}

func TestResolverTree(t *testing.T) {
	root := t.TempDir()
	scope := "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidEsc + ".slice/cri-containerd-" + id1 + ".scope"
	mkdirs(t, root, "system.slice/sshd.service", "init.scope", scope)
	// Files and symlinks in the hierarchy are not cgroups.
	if err := os.WriteFile(filepath.Join(root, "cgroup.procs"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(root, "system.slice"), filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	r, _ := newTestResolver(root, time.Hour)
	for _, rel := range []string{"/", "/system.slice", "/system.slice/sshd.service", "/init.scope", "/" + scope} {
		got, ok := r.Path(inode(t, filepath.Join(root, rel)))
		if !ok || got != rel {
			t.Errorf("Path(inode of %s) = %q, %v", rel, got, ok)
		}
	}
	if got, ok := r.Path(inode(t, filepath.Join(root, "cgroup.procs"))); ok {
		t.Errorf("a file resolved to %q", got)
	}
	if n := scans(r); n != 1 {
		t.Errorf("%d scans, want 1", n)
	}
	if c := ParsePath(mustPath(t, r, inode(t, filepath.Join(root, scope)))); c.ContainerID != id1 || c.PodUID != uid {
		t.Errorf("context of resolved path: %+v", c)
	}
}

func mustPath(t *testing.T, r *Resolver, id uint64) string {
	t.Helper()
	p, ok := r.Path(id)
	if !ok {
		t.Fatalf("id %d does not resolve", id)
	}
	return p
}

func TestResolverMissRescans(t *testing.T) {
	root := t.TempDir()
	mkdirs(t, root, "system.slice")
	r, clock := newTestResolver(root, time.Second)
	mustPath(t, r, inode(t, root))

	// A cgroup created after the scan resolves once the last scan is old
	// enough.
	mkdirs(t, root, "system.slice/docker-"+id1+".scope")
	newID := inode(t, filepath.Join(root, "system.slice/docker-"+id1+".scope"))
	if p, ok := r.Path(newID); ok {
		t.Fatalf("resolved to %q within minRescan", p)
	}
	if n := scans(r); n != 1 {
		t.Fatalf("%d scans within minRescan, want 1", n)
	}
	clock.advance(time.Second)
	if p := mustPath(t, r, newID); p != "/system.slice/docker-"+id1+".scope" {
		t.Errorf("got %q", p)
	}
	if n := scans(r); n != 2 {
		t.Errorf("%d scans, want 2", n)
	}

	// Hits never rescan; a removed cgroup drops out at the next rescan.
	mustPath(t, r, newID)
	if err := os.Remove(filepath.Join(root, "system.slice/docker-"+id1+".scope")); err != nil {
		t.Fatal(err)
	}
	mustPath(t, r, newID)
	if n := scans(r); n != 2 {
		t.Errorf("%d scans after hits, want 2", n)
	}
	if err := r.Scan(); err != nil {
		t.Fatal(err)
	}
	if p, ok := r.Path(newID); ok {
		t.Errorf("removed cgroup still resolves to %q", p)
	}
}

func TestResolverRateLimit(t *testing.T) {
	r, clock := newTestResolver(t.TempDir(), time.Minute)
	const unknown = 1<<64 - 1
	for i := range 100 {
		if _, ok := r.Path(unknown); ok {
			t.Fatal("unknown id resolved")
		}
		clock.advance(time.Second)
		if i == 58 {
			if n := scans(r); n != 1 {
				t.Fatalf("%d scans in 59 s, want 1", n)
			}
		}
	}
	if n := scans(r); n != 2 {
		t.Errorf("%d scans in 100 s, want 2", n)
	}
}

func TestResolverMissingRoot(t *testing.T) {
	r, clock := newTestResolver(filepath.Join(t.TempDir(), "gone"), time.Minute)
	if err := r.Scan(); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Scan: %v, want not exist", err)
	}
	if _, ok := r.Path(1); ok {
		t.Error("resolved under a missing root")
	}
	clock.advance(time.Second)
	r.Path(1)
	if n := scans(r); n != 1 {
		t.Errorf("%d scans, want 1: a failed scan must rate-limit too", n)
	}
}

func TestResolverConcurrent(t *testing.T) {
	root := t.TempDir()
	var ids []uint64
	for _, d := range []string{"a", "a/b", "c", "c/d/e"} {
		mkdirs(t, root, d)
		ids = append(ids, inode(t, filepath.Join(root, d)))
	}
	r := NewResolver(root, 0)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				if _, ok := r.Path(ids[(g+i)%len(ids)]); !ok {
					t.Error("miss")
					return
				}
				r.Path(1<<63 + uint64(i)) // misses rescan concurrently
			}
		}()
	}
	wg.Wait()
}

func TestWalkBound(t *testing.T) {
	root := t.TempDir()
	mkdirs(t, root, "a/b/c", "d/e", "f")
	m, err := walk(root, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 3 {
		t.Errorf("walked %d directories with a bound of 3: %v", len(m), m)
	}
	if m[inode(t, root)] != "/" {
		t.Errorf("root missing: %v", m)
	}
}

func TestCgroup2Mount(t *testing.T) {
	tests := []struct {
		name, mountinfo, want string
	}{
		{
			"hybrid",
			"31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n" +
				"32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu\n" +
				"41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:4 - cgroup2 cgroup2 rw\n",
			"/sys/fs/cgroup/unified",
		},
		{
			"elsewhere, escaped",
			"25 1 0:22 / /run/my\\040cgroups rw,nosuid - cgroup2 none rw,nsdelegate\n",
			"/run/my cgroups",
		},
		{
			"hierarchy root preferred over a subtree",
			"50 1 0:30 /system.slice /mnt/sub rw - cgroup2 cgroup2 rw\n" +
				"51 1 0:30 / /mnt/cg rw shared:1 master:2 - cgroup2 cgroup2 rw\n",
			"/mnt/cg",
		},
		{"none", "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n", ""},
		{"truncated", "41 31 0:38 / /x rw -", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := cgroup2Mount([]byte(tt.mountinfo))
			if got != tt.want || ok != (tt.want != "") {
				t.Errorf("got %q, %v; want %q", got, ok, tt.want)
			}
		})
	}
}

// TestResolverRealHierarchy checks the premise on this kernel: the id of
// this process's cgroup, the inode of its directory, resolves back to the
// path /proc/self/cgroup gives.
func TestResolverRealHierarchy(t *testing.T) {
	root, err := UnifiedRoot()
	if err != nil {
		t.Skip(err)
	}
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	self, _, err := ParseProcCgroup(data)
	if err != nil {
		t.Fatal(err)
	}
	if self == "" {
		t.Skipf("no v2 line in %q", data)
	}
	dir := filepath.Join(root, self)
	if _, err := os.Stat(dir); err != nil {
		// In a cgroup namespace the path can lie outside what is mounted.
		t.Skipf("this cgroup is not under %s: %v", root, err)
	}
	id := inode(t, dir)
	r := NewResolver(root, time.Second)
	if err := r.Scan(); err != nil {
		t.Fatal(err)
	}
	if got := mustPath(t, r, id); got != self {
		t.Errorf("Path(%d) = %q, want %q", id, got, self)
	}
	if got := mustPath(t, r, inode(t, root)); got != "/" {
		t.Errorf("root resolves to %q", got)
	}

	checkHandle(t, dir, id)

	// A cgroup of our own, when allowed, checks an id other than the root's
	// (this process's cgroup often is the root) and the miss-rescan path.
	child, err := os.MkdirTemp(dir, "tcptrace-test-")
	if err != nil {
		t.Logf("no child cgroup: %v", err)
		return
	}
	t.Cleanup(func() { os.Remove(child) })
	want := filepath.Join(self, filepath.Base(child))
	r = NewResolver(root, 0)
	if got := mustPath(t, r, inode(t, child)); got != want {
		t.Errorf("child resolves to %q, want %q", got, want)
	}
	checkHandle(t, child, inode(t, child))
}

// checkHandle checks the premise against the kernel's own name for a cgroup
// id, the directory's file handle.
func checkHandle(t *testing.T, dir string, id uint64) {
	t.Helper()
	h, _, err := unix.NameToHandleAt(unix.AT_FDCWD, dir, 0)
	if err != nil {
		t.Logf("no file handle to cross-check: %v", err)
		return
	}
	if b := h.Bytes(); len(b) != 8 || binary.NativeEndian.Uint64(b) != id {
		t.Errorf("%s: file handle %x, inode %d", dir, b, id)
	}
}

func FuzzCgroup2Mount(f *testing.F) {
	f.Add([]byte("29 23 0:26 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"))
	f.Add([]byte("35 24 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n36 24 0:31 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"))
	f.Add([]byte("1 2 0:3 / /with\\040space rw - cgroup2 none rw\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		path, ok := cgroup2Mount(b)
		if ok && (path == "" || path[0] != '/') {
			t.Fatalf("cgroup2Mount(%q) = %q: not an absolute path", b, path)
		}
	})
}
