// Package kubetest runs tests against a real etcd and kube-apiserver, started
// by controller-runtime's envtest from local binaries (no kubelet, scheduler
// or controller manager: pods stay where they are put, nothing is garbage
// collected). A fake clientset cannot show what the server really does with
// field selectors, validation, RBAC or a broken connection; this can.
//
// The binaries are built by scripts/kubebins.sh (about 11 minutes cold on 2
// cores; the project itself never depends on k8s.io/kubernetes). Without
// them the tests skip, saying how to build them, or fail when RequireEnv is
// "1", so CI cannot pass by skipping.
//
// One API server per test binary: a package whose TestMain calls Main shares
// one server among all its tests (started on the first Start, ~4-5 s, and
// stopped when the tests end). Tests then keep out of each other's way by
// using namespaces and node names of their own. Without Main, every Start
// starts a server of its own, stopped by tb.Cleanup: isolated, but each costs
// the start again.
package kubetest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
)

const (
	// RequireEnv turns a missing-binaries skip into a failure when "1".
	RequireEnv = "TCPTRACE_REQUIRE_KUBE"
	// AssetsEnv names the directory holding etcd and kube-apiserver
	// (what scripts/kubebins.sh prints). Default: DefaultAssetsDir().
	AssetsEnv = "TCPTRACE_KUBE_ASSETS"

	// versionDir is the cache subdirectory scripts/kubebins.sh builds by
	// default; keep the two in step.
	versionDir = "k8s-v1.37.2-etcd-v3.6.16"
)

// DefaultAssetsDir is where scripts/kubebins.sh puts the binaries unless
// told otherwise: $TCPTRACE_KUBE_CACHE or $HOME/.cache/tcptrace-kube, then
// a directory named after the versions.
func DefaultAssetsDir() string {
	cache := os.Getenv("TCPTRACE_KUBE_CACHE")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return ""
		}
		cache = filepath.Join(home, ".cache", "tcptrace-kube")
	}
	return filepath.Join(cache, versionDir)
}

// assets returns the binaries' directory, or why it cannot be used.
func assets() (dir, reason string) {
	dir, from := os.Getenv(AssetsEnv), AssetsEnv
	if dir == "" {
		dir, from = DefaultAssetsDir(), "default directory"
	}
	for _, name := range []string{"etcd", "kube-apiserver"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			return "", fmt.Sprintf("no %s in %s (%s): %v", name, dir, from, err)
		}
		if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
			return "", fmt.Sprintf("%s in %s (%s) is not an executable file", name, dir, from)
		}
	}
	return dir, ""
}

// server is one running etcd + kube-apiserver.
type server struct {
	env      *envtest.Environment
	cfg      *rest.Config
	watchdog *exec.Cmd
	wdPipe   *os.File
}

var (
	// startMu serializes starts: two at once on a small machine only make
	// both slow, and the watchdog tells its children apart by start order.
	startMu sync.Mutex
	shared  struct {
		inMain bool // Main is running the tests: share one server
		srv    *server
		err    error
	}
	quietCtrlLog sync.Once
)

// Main runs the tests of a package with one API server shared among them
// (see the package doc) and stops it afterwards. Use it as
//
//	func TestMain(m *testing.M) { kubetest.Main(m) }
func Main(m *testing.M) {
	startMu.Lock()
	shared.inMain = true
	startMu.Unlock()
	code := m.Run()
	startMu.Lock()
	if shared.srv != nil {
		shared.srv.stop()
		shared.srv = nil
	}
	startMu.Unlock()
	os.Exit(code)
}

// Start returns an admin (system:masters) config for a real API server:
// the package's shared one under Main, else one of its own stopped by
// tb.Cleanup. It skips when the binaries are missing (fails under
// RequireEnv=1) and fails when they do not start. The config is a copy the
// caller may change.
func Start(tb testing.TB) *rest.Config {
	tb.Helper()
	dir, reason := assets()
	if reason != "" {
		if os.Getenv(RequireEnv) == "1" {
			tb.Fatalf("kube-apiserver test cannot run (%s=1): %s", RequireEnv, reason)
		}
		tb.Skipf("needs etcd and kube-apiserver binaries: %s; build them with scripts/kubebins.sh "+
			"and set %s to the directory it prints (or leave the default); %s=1 fails instead of skipping",
			reason, AssetsEnv, RequireEnv)
	}
	startMu.Lock()
	defer startMu.Unlock()
	if shared.inMain {
		if shared.srv == nil && shared.err == nil {
			shared.srv, shared.err = start(tb, dir)
		}
		if shared.err != nil {
			tb.Fatalf("start etcd + kube-apiserver from %s: %v", dir, shared.err)
		}
		return rest.CopyConfig(shared.srv.cfg)
	}
	srv, err := start(tb, dir)
	if err != nil {
		tb.Fatalf("start etcd + kube-apiserver from %s: %v", dir, err)
	}
	tb.Cleanup(srv.stop)
	return rest.CopyConfig(srv.cfg)
}

// AsServiceAccount returns a copy of cfg (an admin's: it must be allowed to
// impersonate) that acts as the service account namespace/name, with the
// groups the API server gives a service account's token, so RBAC decides
// exactly as it would for the real pod.
func AsServiceAccount(cfg *rest.Config, namespace, name string) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.Impersonate = rest.ImpersonationConfig{
		UserName: "system:serviceaccount:" + namespace + ":" + name,
		Groups: []string{
			"system:serviceaccounts",
			"system:serviceaccounts:" + namespace,
			"system:authenticated",
		},
	}
	return c
}

func start(tb testing.TB, dir string) (*server, error) {
	quietCtrlLog.Do(func() {
		// Else controller-runtime prints a stack trace to stderr 30 s
		// after its first log line. Failures come back as errors anyway.
		ctrllog.SetLogger(logr.Discard())
	})
	env := &envtest.Environment{
		BinaryAssetsDirectory: dir,
		// Explicit paths, so that a KUBEBUILDER_ASSETS meant for
		// something else cannot swap the binaries.
		ControlPlane: envtest.ControlPlane{
			APIServer: &envtest.APIServer{Path: filepath.Join(dir, "kube-apiserver")},
			Etcd:      &envtest.Etcd{Path: filepath.Join(dir, "etcd")},
		},
		// The default 20 s is tight on a loaded 2-core machine.
		ControlPlaneStartTimeout: 90 * time.Second,
		ControlPlaneStopTimeout:  30 * time.Second,
	}
	before := children()
	t0 := time.Now()
	cfg, err := env.Start()
	if err != nil {
		_ = env.Stop()
		return nil, err
	}
	tb.Logf("kubetest: etcd + kube-apiserver from %s ready in %v at %s", dir, time.Since(t0).Round(time.Millisecond), cfg.Host)
	srv := &server{env: env, cfg: cfg}
	var pids []int
	for pid := range children() {
		if !before[pid] {
			pids = append(pids, pid)
		}
	}
	if err := srv.startWatchdog(pids, env.ControlPlane.Etcd.DataDir, env.ControlPlane.APIServer.CertDir); err != nil {
		tb.Logf("kubetest: no watchdog (servers may outlive a crashed test): %v", err)
	}
	return srv, nil
}

func (s *server) stop() {
	if s.watchdog != nil {
		// Stop the watchdog first: it must not kill pids that are
		// gone and perhaps reused by the time it would run.
		_ = s.watchdog.Process.Kill()
		_ = s.watchdog.Wait()
		_ = s.wdPipe.Close()
	}
	if err := s.env.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "kubetest: stop etcd + kube-apiserver: %v\n", err)
	}
}

// startWatchdog makes sure the servers die with the test binary. envtest
// starts them in process groups of their own without a parent-death
// signal, so a test binary killed by -timeout or ^C would leave ~300 MB of
// etcd and apiserver behind on a shared machine. The watchdog, a shell in
// its own process group, waits for EOF on a pipe whose only writer is this
// process (closed by the kernel however it ends), then kills them and
// removes their temporary directories.
func (s *server) startWatchdog(pids []int, dirs ...string) error {
	if len(pids) == 0 {
		return errors.New("did not find the server processes")
	}
	var script strings.Builder
	script.WriteString("cat >/dev/null; kill -9")
	for _, pid := range pids {
		script.WriteString(" " + strconv.Itoa(pid))
	}
	script.WriteString(" 2>/dev/null; rm -rf")
	for _, d := range dirs {
		if d != "" {
			script.WriteString(" '" + strings.ReplaceAll(d, "'", `'\''`) + "'")
		}
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd := exec.Command("sh", "-c", script.String())
	cmd.Stdin = r
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return err
	}
	r.Close()
	s.watchdog, s.wdPipe = cmd, w
	return nil
}

// children returns the pids of this process's etcd and kube-apiserver
// children, read from /proc.
func children() map[int]bool {
	self := os.Getpid()
	out := map[int]bool{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and parens.
		open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
		if open < 0 || end < open {
			continue
		}
		comm := string(b[open+1 : end])
		if comm != "etcd" && comm != "kube-apiserver" {
			continue
		}
		if f := strings.Fields(string(b[end+1:])); len(f) > 1 {
			if ppid, _ := strconv.Atoi(f[1]); ppid == self {
				out[pid] = true
			}
		}
	}
	return out
}
