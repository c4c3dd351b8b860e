package deploy_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/tcptrace/tcptrace/deploy"
)

// Paths are relative to deploy/, the test's working directory.
const (
	base       = "kubernetes"
	promOp     = "kubernetes/prometheus-operator"
	components = "kubernetes/components"
	repoRoot   = ".."
	namespace  = "tcptrace"
)

// The components and what each is for; a new one needs a case here.
var componentNames = []string{"netns-snapshot", "pin-table", "self-healing"}

// requireTool returns a tool's path, or skips the test without it, or
// fails with TCPTRACE_REQUIRE_TOOLS=1.
func requireTool(t *testing.T, name, hint string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("TCPTRACE_REQUIRE_TOOLS") == "1" {
		t.Fatalf("%s not found (%s), and TCPTRACE_REQUIRE_TOOLS=1", name, hint)
	}
	t.Skipf("%s not found (%s); TCPTRACE_REQUIRE_TOOLS=1 makes this a failure", name, hint)
	return ""
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// strictJSON decodes as the API server does: case-sensitive, no unknown
// and no duplicate fields.
func strictJSON(data []byte, out any) error {
	strictErrs, err := kjson.UnmarshalStrict(data, out)
	if err != nil {
		return err
	}
	if len(strictErrs) > 0 {
		return fmt.Errorf("%v", strictErrs)
	}
	return nil
}

// strictYAML decodes a file of one YAML document strictly.
func strictYAML(t *testing.T, name string, out any) {
	t.Helper()
	docs, err := deploy.Documents(readFile(t, name))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if len(docs) != 1 {
		t.Fatalf("%s: %d documents, want 1", name, len(docs))
	}
	if err := strictJSON(docs[0], out); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

// kustomizationFile is what these kustomizations may use; anything else
// (a transformer, a generator) fails the strict decode.
type kustomizationFile struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
	Patches    []struct {
		Path string `json:"path"`
	} `json:"patches"`
}

func kustomization(t *testing.T, dir string) kustomizationFile {
	t.Helper()
	var k kustomizationFile
	strictYAML(t, path.Join(dir, "kustomization.yaml"), &k)
	return k
}

func yamlFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if !e.IsDir() && strings.HasSuffix(e.Name(), ".yaml") && e.Name() != "kustomization.yaml" {
			names = append(names, e.Name())
		}
	}
	return names
}

func TestKustomizationsListTheirFiles(t *testing.T) {
	check := func(dir, kind string, wantPatches bool) {
		k := kustomization(t, dir)
		if k.Kind != kind {
			t.Errorf("%s/kustomization.yaml: kind %q, want %q", dir, k.Kind, kind)
		}
		wantAPI := "kustomize.config.k8s.io/v1beta1"
		if kind == "Component" {
			wantAPI = "kustomize.config.k8s.io/v1alpha1"
		}
		if k.APIVersion != wantAPI {
			t.Errorf("%s/kustomization.yaml: apiVersion %q, want %q", dir, k.APIVersion, wantAPI)
		}
		listed := slices.Clone(k.Resources)
		for _, p := range k.Patches {
			listed = append(listed, p.Path)
		}
		if !wantPatches && len(k.Patches) > 0 {
			t.Errorf("%s/kustomization.yaml: patches: the base files are the objects (deploy.Objects relies on it)", dir)
		}
		sort.Strings(listed)
		if present := yamlFiles(t, dir); !slices.Equal(listed, present) {
			t.Errorf("%s/kustomization.yaml lists %v; the directory has %v", dir, listed, present)
		}
	}
	check(base, "Kustomization", false)
	check(promOp, "Kustomization", false)
	entries, err := os.ReadDir(components)
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, e := range entries {
		if !e.IsDir() {
			t.Errorf("%s/%s: only component directories belong there", components, e.Name())
			continue
		}
		dirs = append(dirs, e.Name())
		check(path.Join(components, e.Name()), "Component", true)
	}
	if !slices.Equal(dirs, componentNames) {
		t.Errorf("components %v, the tests know %v", dirs, componentNames)
	}
}

// newObject returns the API type of an apiVersion and kind.
func newObject(apiVersion, kind string) any {
	switch apiVersion + "/" + kind {
	case "v1/Namespace":
		return &corev1.Namespace{}
	case "v1/ServiceAccount":
		return &corev1.ServiceAccount{}
	case "v1/ResourceQuota":
		return &corev1.ResourceQuota{}
	case "rbac.authorization.k8s.io/v1/ClusterRole":
		return &rbacv1.ClusterRole{}
	case "rbac.authorization.k8s.io/v1/ClusterRoleBinding":
		return &rbacv1.ClusterRoleBinding{}
	case "apps/v1/DaemonSet":
		return &appsv1.DaemonSet{}
	}
	return nil
}

// baseObjects decodes every file of the base strictly into its API type,
// by file name.
func baseObjects(t *testing.T) map[string]any {
	t.Helper()
	objs := make(map[string]any)
	for _, name := range kustomization(t, base).Resources {
		file := path.Join(base, name)
		docs, err := deploy.Documents(readFile(t, file))
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if len(docs) != 1 {
			t.Fatalf("%s: %d documents, want 1", file, len(docs))
		}
		var tm metav1.TypeMeta
		if err := json.Unmarshal(docs[0], &tm); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		obj := newObject(tm.APIVersion, tm.Kind)
		if obj == nil {
			t.Fatalf("%s: %s %s: no API type known to the test", file, tm.APIVersion, tm.Kind)
		}
		if err := strictJSON(docs[0], obj); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		objs[name] = obj
	}
	return objs
}

func TestObjectsDecodeStrictly(t *testing.T) {
	objs := baseObjects(t)
	kinds := make(map[string]string)
	for name, obj := range objs {
		meta := obj.(metav1.ObjectMetaAccessor).GetObjectMeta()
		kind := fmt.Sprintf("%T", obj)
		kinds[kind] = name
		clusterScoped := false
		switch obj.(type) {
		case *corev1.Namespace, *rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding:
			clusterScoped = true
		}
		if clusterScoped && meta.GetNamespace() != "" {
			t.Errorf("%s: cluster-scoped, but namespace %q", name, meta.GetNamespace())
		}
		if !clusterScoped && meta.GetNamespace() != namespace {
			t.Errorf("%s: namespace %q, want %q", name, meta.GetNamespace(), namespace)
		}
		if got := meta.GetLabels()["app.kubernetes.io/name"]; got != "tcptrace" {
			t.Errorf("%s: label app.kubernetes.io/name %q, want tcptrace", name, got)
		}
	}
	for _, want := range []string{"*v1.Namespace", "*v1.ServiceAccount", "*v1.ResourceQuota", "*v1.ClusterRole", "*v1.ClusterRoleBinding", "*v1.DaemonSet"} {
		if _, ok := kinds[want]; !ok {
			t.Errorf("no %s in the base", want)
		}
	}
	ns := objs["namespace.yaml"].(*corev1.Namespace)
	if ns.Name != namespace {
		t.Errorf("namespace.yaml: name %q, want %q", ns.Name, namespace)
	}
	if got := ns.Labels["pod-security.kubernetes.io/enforce"]; got != "privileged" {
		t.Errorf("namespace.yaml: pod-security.kubernetes.io/enforce %q: hostPID, hostPath and capabilities need privileged", got)
	}
	rq := objs["resourcequota.yaml"].(*corev1.ResourceQuota)
	ds := objs["daemonset.yaml"].(*appsv1.DaemonSet)
	covered := false
	if sel := rq.Spec.ScopeSelector; sel != nil && len(rq.Spec.Scopes) == 0 {
		for _, e := range sel.MatchExpressions {
			if e.ScopeName == corev1.ResourceQuotaScopePriorityClass && e.Operator == corev1.ScopeSelectorOpIn &&
				slices.Contains(e.Values, ds.Spec.Template.Spec.PriorityClassName) {
				covered = true
			}
		}
	}
	if !covered {
		t.Errorf("resourcequota.yaml does not cover priority class %q", ds.Spec.Template.Spec.PriorityClassName)
	}
	if n := rq.Spec.Hard[corev1.ResourcePods]; n.Value() < 10000 || len(rq.Spec.Hard) != 1 {
		t.Errorf("resourcequota.yaml: hard %v: want pods only, and room for a large cluster", rq.Spec.Hard)
	}

	// deploy.Objects gives the same objects, in the kustomization's order.
	got, err := deploy.Objects()
	if err != nil {
		t.Fatal(err)
	}
	var gotKinds []string
	for _, u := range got {
		gotKinds = append(gotKinds, u.GetKind())
	}
	want := []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ResourceQuota", "DaemonSet"}
	if !slices.Equal(gotKinds, want) {
		t.Errorf("deploy.Objects kinds %v, want %v", gotKinds, want)
	}
	po, err := deploy.PrometheusOperatorObjects()
	if err != nil {
		t.Fatal(err)
	}
	gotKinds = nil
	for _, u := range po {
		gotKinds = append(gotKinds, u.GetKind())
	}
	if want := []string{"PodMonitor", "PrometheusRule"}; !slices.Equal(gotKinds, want) {
		t.Errorf("deploy.PrometheusOperatorObjects kinds %v, want %v", gotKinds, want)
	}
}

func TestRBACReadsPodsOnly(t *testing.T) {
	objs := baseObjects(t)
	role := objs["clusterrole.yaml"].(*rbacv1.ClusterRole)
	if role.AggregationRule != nil {
		t.Error("clusterrole.yaml: aggregationRule")
	}
	if len(role.Rules) != 1 {
		t.Fatalf("clusterrole.yaml: %d rules, want 1", len(role.Rules))
	}
	r := role.Rules[0]
	verbs := slices.Sorted(slices.Values(r.Verbs))
	if !slices.Equal(r.APIGroups, []string{""}) || !slices.Equal(r.Resources, []string{"pods"}) ||
		!slices.Equal(verbs, []string{"get", "list", "watch"}) || len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
		t.Errorf("clusterrole.yaml: rule %+v; want get, list and watch on core pods only", r)
	}
	binding := objs["clusterrolebinding.yaml"].(*rbacv1.ClusterRoleBinding)
	sa := objs["serviceaccount.yaml"].(*corev1.ServiceAccount)
	if binding.RoleRef != (rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name}) {
		t.Errorf("clusterrolebinding.yaml: roleRef %+v", binding.RoleRef)
	}
	wantSubject := rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Name: sa.Name, Namespace: sa.Namespace}
	if !slices.Equal(binding.Subjects, []rbacv1.Subject{wantSubject}) {
		t.Errorf("clusterrolebinding.yaml: subjects %+v, want %+v", binding.Subjects, wantSubject)
	}
	spec := objs["daemonset.yaml"].(*appsv1.DaemonSet).Spec.Template.Spec
	if spec.ServiceAccountName != sa.Name {
		t.Errorf("daemonset.yaml: serviceAccountName %q, want %q", spec.ServiceAccountName, sa.Name)
	}
	if spec.AutomountServiceAccountToken == nil || !*spec.AutomountServiceAccountToken ||
		(sa.AutomountServiceAccountToken != nil && !*sa.AutomountServiceAccountToken) {
		t.Error("the service-account token must be mounted: TCPTRACE_KUBERNETES=on needs it")
	}
}

// daemonSets returns the base DaemonSet and, for each component, the
// DaemonSet with its patches applied as kustomize applies a strategic
// merge patch.
func daemonSets(t *testing.T) map[string]*appsv1.DaemonSet {
	t.Helper()
	baseDS := baseObjects(t)["daemonset.yaml"].(*appsv1.DaemonSet)
	out := map[string]*appsv1.DaemonSet{"base": baseDS}
	orig, err := json.Marshal(baseDS)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range componentNames {
		dir := path.Join(components, c)
		merged := orig
		for _, p := range kustomization(t, dir).Patches {
			file := path.Join(dir, p.Path)
			var patch appsv1.DaemonSet
			strictYAML(t, file, &patch)
			if patch.Name != baseDS.Name || patch.Namespace != baseDS.Namespace {
				t.Fatalf("%s: patches %s/%s, not the DaemonSet %s/%s", file, patch.Namespace, patch.Name, baseDS.Namespace, baseDS.Name)
			}
			docs, err := deploy.Documents(readFile(t, file))
			if err != nil {
				t.Fatal(err)
			}
			if merged, err = strategicpatch.StrategicMergePatch(merged, docs[0], appsv1.DaemonSet{}); err != nil {
				t.Fatalf("%s: %v", file, err)
			}
		}
		var ds appsv1.DaemonSet
		if err := strictJSON(merged, &ds); err != nil {
			t.Fatalf("%s applied: %v", dir, err)
		}
		out[c] = &ds
	}
	return out
}

func tracerContainer(t *testing.T, which string, ds *appsv1.DaemonSet) *corev1.Container {
	t.Helper()
	spec := &ds.Spec.Template.Spec
	if len(spec.Containers) != 1 || len(spec.InitContainers) > 0 {
		t.Fatalf("%s: want one container and no init containers", which)
	}
	return &spec.Containers[0]
}

func envValue(c *corev1.Container, name string) (corev1.EnvVar, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e, true
		}
	}
	return corev1.EnvVar{}, false
}

func capNames(cs []corev1.Capability) []string {
	var s []string
	for _, c := range cs {
		s = append(s, string(c))
	}
	return slices.Sorted(slices.Values(s))
}

func TestDaemonSetSecurity(t *testing.T) {
	for which, ds := range daemonSets(t) {
		spec := ds.Spec.Template.Spec
		c := tracerContainer(t, which, ds)
		if !spec.HostPID || spec.HostNetwork || spec.HostIPC {
			t.Errorf("%s: hostPID %v hostNetwork %v hostIPC %v; want the host's PIDs only", which, spec.HostPID, spec.HostNetwork, spec.HostIPC)
		}
		sc := c.SecurityContext
		if sc == nil {
			t.Fatalf("%s: no securityContext", which)
		}
		if sc.Privileged == nil || *sc.Privileged {
			t.Errorf("%s: privileged must be set to false", which)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("%s: allowPrivilegeEscalation must be set to false", which)
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("%s: readOnlyRootFilesystem must be true", which)
		}
		if sc.RunAsUser == nil || *sc.RunAsUser != 0 || (sc.RunAsNonRoot != nil && *sc.RunAsNonRoot) {
			t.Errorf("%s: want runAsUser 0: only uid 0 gets the added capabilities", which)
		}
		if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s: seccompProfile %+v, want RuntimeDefault", which, sc.SeccompProfile)
		}
		if sc.Capabilities == nil || !slices.Equal(capNames(sc.Capabilities.Drop), []string{"ALL"}) {
			t.Errorf("%s: capabilities must drop ALL", which)
		} else {
			for _, cp := range sc.Capabilities.Add {
				// The API server checks some rules (SYS_ADMIN with
				// allowPrivilegeEscalation) on the CAP_ spelling only.
				if !regexp.MustCompile(`^[A-Z_]+$`).MatchString(string(cp)) || strings.HasPrefix(string(cp), "CAP_") {
					t.Errorf("%s: capability %q: spell it as BPF, without CAP_", which, cp)
				}
			}
		}
		if spec.PriorityClassName != "system-node-critical" {
			t.Errorf("%s: priorityClassName %q", which, spec.PriorityClassName)
		}
		if !slices.ContainsFunc(spec.Tolerations, func(tol corev1.Toleration) bool {
			return tol.Operator == corev1.TolerationOpExists && tol.Key == "" && tol.Effect == ""
		}) {
			t.Errorf("%s: want a toleration with operator Exists and no key or effect: every node", which)
		}
		u := ds.Spec.UpdateStrategy
		if u.Type != appsv1.RollingUpdateDaemonSetStrategyType || u.RollingUpdate == nil ||
			u.RollingUpdate.MaxUnavailable == nil || *u.RollingUpdate.MaxUnavailable != intstr.FromString("10%") {
			t.Errorf("%s: updateStrategy %+v, want RollingUpdate with maxUnavailable 10%%", which, u)
		}
		if g := spec.TerminationGracePeriodSeconds; g == nil || *g < 10 || *g > 60 {
			t.Errorf("%s: terminationGracePeriodSeconds %v, want about 30", which, g)
		}
		sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
		if err != nil || !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
			t.Errorf("%s: the selector does not match the pod template's labels (%v)", which, err)
		}

		// hostPath volumes: the cgroup hierarchy read-only; bpffs
		// read-write only with --pin-table.
		hostPaths := make(map[string]string)
		for _, v := range spec.Volumes {
			if v.HostPath != nil {
				hostPaths[v.Name] = v.HostPath.Path
			}
		}
		pinned := false
		for _, m := range c.VolumeMounts {
			hp, ok := hostPaths[m.Name]
			if !ok {
				continue
			}
			switch {
			case hp == "/sys/fs/cgroup" && m.MountPath == "/sys/fs/cgroup":
				if !m.ReadOnly {
					t.Errorf("%s: /sys/fs/cgroup must be mounted read-only", which)
				}
			case hp == "/sys/fs/bpf" && m.MountPath == "/sys/fs/bpf":
				pinned = !m.ReadOnly
				if m.ReadOnly {
					t.Errorf("%s: /sys/fs/bpf mounted read-only: --pin-table writes there", which)
				}
			default:
				t.Errorf("%s: hostPath %s at %s: not one the tests know", which, hp, m.MountPath)
			}
			if m.MountPropagation != nil && *m.MountPropagation != corev1.MountPropagationNone {
				t.Errorf("%s: %s: mount propagation %s is not needed", which, m.MountPath, *m.MountPropagation)
			}
		}
		if !slices.Contains(slices.Collect(maps.Values(hostPaths)), "/sys/fs/cgroup") {
			t.Errorf("%s: the host's /sys/fs/cgroup is not mounted", which)
		}
		pin, _ := envValue(c, "TCPTRACE_PIN_TABLE")
		pinOn, _ := strconv.ParseBool(pin.Value)
		if pinOn != pinned {
			t.Errorf("%s: TCPTRACE_PIN_TABLE %q but /sys/fs/bpf mounted read-write: %v", which, pin.Value, pinned)
		}
		if _, ok := envValue(c, "TCPTRACE_PIN_DIR"); ok {
			t.Errorf("%s: TCPTRACE_PIN_DIR: the default, under the /sys/fs/bpf mount, is the one to use", which)
		}
		if pinned != (which == "pin-table") {
			t.Errorf("%s: pinned %v: only the pin-table component pins", which, pinned)
		}
	}
}

// readmeCapabilities reads the least-privilege table of the Kernel
// requirements in docs/operations.md: its rows start with a capability
// name, marked "(optional)" when it is.
func readmeCapabilities(t *testing.T) (required, optional []string) {
	t.Helper()
	readme := string(readFile(t, filepath.Join(repoRoot, "docs", "operations.md")))
	start := strings.Index(readme, "\n## Kernel requirements")
	if start < 0 {
		t.Fatal("docs/operations.md: no Kernel requirements section")
	}
	section := readme[start+1:]
	if end := strings.Index(section, "\n## "); end >= 0 {
		section = section[:end]
	}
	row := regexp.MustCompile("(?m)^\\s*\\|\\s*`CAP_([A-Z_]+)`([^|]*)\\|")
	for _, m := range row.FindAllStringSubmatch(section, -1) {
		if strings.Contains(m[2], "optional") {
			optional = append(optional, m[1])
		} else {
			required = append(required, m[1])
		}
	}
	if !slices.Contains(required, "BPF") || !slices.Contains(required, "PERFMON") {
		t.Fatalf("docs/operations.md: capability table not found or changed shape (required %v, optional %v)", required, optional)
	}
	return required, optional
}

// Capabilities the DaemonSet needs that the README's table does not list,
// and why. Once the README lists one, its entry here is no longer used.
var notInREADME = map[string]string{}

func TestCapabilitiesAreTheREADMEs(t *testing.T) {
	required, optional := readmeCapabilities(t)
	t.Logf("README: required %v, optional %v", required, optional)
	sets := daemonSets(t)
	baseAdd := capNames(tracerContainer(t, "base", sets["base"]).SecurityContext.Capabilities.Add)
	want := slices.Clone(required)
	for c, why := range notInREADME {
		if slices.Contains(required, c) || slices.Contains(optional, c) {
			t.Logf("README now lists %s: its entry in notInREADME can go", c)
			continue
		}
		t.Logf("%s is not in the README's table: %s", c, why)
		want = append(want, c)
	}
	want = slices.Compact(slices.Sorted(slices.Values(want)))
	if !slices.Equal(baseAdd, want) {
		t.Errorf("daemonset.yaml adds %v; want the README's required capabilities plus notInREADME: %v", baseAdd, want)
	}
	// Each one says why, in a comment on its line.
	text := string(readFile(t, path.Join(base, "daemonset.yaml")))
	for _, c := range baseAdd {
		if !regexp.MustCompile(`(?m)^[ \t]*- ` + c + `[ \t]+#[ \t]*\S`).MatchString(text) {
			t.Errorf("daemonset.yaml: capability %s has no comment saying why", c)
		}
	}
	for _, name := range componentNames {
		got := capNames(tracerContainer(t, name, sets[name]).SecurityContext.Capabilities.Add)
		wantC := baseAdd
		switch name {
		case "netns-snapshot":
			if !slices.Contains(optional, "SYS_ADMIN") {
				t.Errorf("README: CAP_SYS_ADMIN is no longer optional")
			}
			wantC = slices.Sorted(slices.Values(append(slices.Clone(baseAdd), "SYS_ADMIN")))
		case "self-healing":
			if !slices.Contains(optional, "SYS_ADMIN") || !slices.Contains(optional, "NET_ADMIN") {
				t.Errorf("README: CAP_SYS_ADMIN and CAP_NET_ADMIN are no longer optional")
			}
			wantC = slices.Sorted(slices.Values(append(slices.Clone(baseAdd), "NET_ADMIN", "SYS_ADMIN")))
		}
		if !slices.Equal(got, wantC) {
			t.Errorf("%s: adds %v, want %v", name, got, wantC)
		}
	}
}

// closewaitHelp builds tcptrace and returns tcptrace closewait --help.
func closewaitHelp(t *testing.T) string {
	t.Helper()
	goTool := requireTool(t, "go", "the Go toolchain")
	bin := filepath.Join(t.TempDir(), "tcptrace")
	build := exec.Command(goTool, "build", "-o", bin, "./cmd/tcptrace")
	build.Dir = repoRoot
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/tcptrace: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "closewait", "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("tcptrace closewait --help: %v\n%s", err, out)
	}
	return string(out)
}

// listenPort returns the port of the container's --listen argument or
// TCPTRACE_LISTEN.
func listenPort(t *testing.T, which string, c *corev1.Container) int {
	t.Helper()
	addr, found := "", false
	for i, a := range c.Args {
		switch {
		case strings.HasPrefix(a, "--listen="):
			addr, found = strings.TrimPrefix(a, "--listen="), true
		case a == "--listen" && i+1 < len(c.Args):
			addr, found = c.Args[i+1], true
		}
	}
	if !found {
		if e, ok := envValue(c, "TCPTRACE_LISTEN"); ok {
			addr, found = e.Value, true
		}
	}
	if !found {
		t.Fatalf("%s: neither --listen nor TCPTRACE_LISTEN", which)
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%s: listen address %q: %v", which, addr, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		t.Fatalf("%s: listen address %q: want a fixed port", which, addr)
	}
	return p
}

func TestDaemonSetFlagsAreReal(t *testing.T) {
	help := closewaitHelp(t)
	envs := make(map[string]bool)
	for _, m := range regexp.MustCompile(`\[\$(TCPTRACE_[A-Z0-9_]+)\]`).FindAllStringSubmatch(help, -1) {
		envs[m[1]] = true
	}
	flags := make(map[string]bool)
	for _, m := range regexp.MustCompile(`(?m)(?:^|[\s,\[])--([a-z][a-z0-9-]*)`).FindAllStringSubmatch(help, -1) {
		flags[m[1]] = true
	}
	if !envs["TCPTRACE_THRESHOLD"] || !flags["threshold"] {
		t.Fatalf("tcptrace closewait --help: no flags found in:\n%s", help)
	}
	for which, ds := range daemonSets(t) {
		c := tracerContainer(t, which, ds)
		if len(c.Args) == 0 || c.Args[0] != "closewait" {
			t.Errorf("%s: args %q: want the closewait command first", which, c.Args)
		}
		for _, a := range c.Args[1:] {
			if !strings.HasPrefix(a, "--") {
				t.Errorf("%s: argument %q: write flags as --name=value", which, a)
				continue
			}
			name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
			if !flags[name] {
				t.Errorf("%s: argument %q: tcptrace closewait has no flag --%s", which, a, name)
			}
		}
		for _, e := range c.Env {
			if strings.HasPrefix(e.Name, "TCPTRACE_") && !envs[e.Name] {
				t.Errorf("%s: env %s is no flag's variable (tcptrace closewait --help)", which, e.Name)
			}
			if e.Name == "TCPTRACE_PIN_TABLE" {
				if _, err := strconv.ParseBool(e.Value); err != nil {
					t.Errorf("%s: TCPTRACE_PIN_TABLE %q: want true or false", which, e.Value)
				}
			}
		}
		if !slices.Contains(c.Args, "--output=json") {
			t.Errorf("%s: want --output=json: the log is JSON lines whatever the terminal", which)
		}
		listenPort(t, which, c)
		if e, ok := envValue(c, "TCPTRACE_KUBERNETES"); !ok || e.Value != "on" {
			t.Errorf("%s: TCPTRACE_KUBERNETES %q, want on: fail loudly without a token", which, e.Value)
		}
		node, ok := envValue(c, "TCPTRACE_NODE_NAME")
		if !ok || node.ValueFrom == nil || node.ValueFrom.FieldRef == nil || node.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
			t.Errorf("%s: TCPTRACE_NODE_NAME must come from fieldRef spec.nodeName", which)
		}
	}
}

func TestDaemonSetProbesAndPort(t *testing.T) {
	ds := daemonSets(t)["base"]
	c := tracerContainer(t, "base", ds)
	port := listenPort(t, "base", c)
	var named string
	for _, p := range c.Ports {
		if int(p.ContainerPort) == port {
			named = p.Name
			if p.Protocol != corev1.ProtocolTCP {
				t.Errorf("container port %d: protocol %s", port, p.Protocol)
			}
		}
	}
	if named != "metrics" {
		t.Fatalf("no container port named metrics for the listen port %d (ports %+v)", port, c.Ports)
	}
	probePort := func(what string, p *corev1.Probe, path string) {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s: want an httpGet probe", what)
			return
		}
		if p.HTTPGet.Path != path {
			t.Errorf("%s: path %q, want %q", what, p.HTTPGet.Path, path)
		}
		if pp := p.HTTPGet.Port; pp != intstr.FromString(named) && pp != intstr.FromInt32(int32(port)) {
			t.Errorf("%s: port %s, want %s (%d)", what, pp.String(), named, port)
		}
	}
	probePort("livenessProbe", c.LivenessProbe, "/healthz")
	probePort("readinessProbe", c.ReadinessProbe, "/readyz")
	if c.StartupProbe != nil {
		probePort("startupProbe", c.StartupProbe, "/healthz")
	}
	ann := ds.Spec.Template.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != strconv.Itoa(port) || ann["prometheus.io/path"] != "/metrics" {
		t.Errorf("prometheus.io annotations %v: want scrape true, port %d, path /metrics", ann, port)
	}

	// The PodMonitor scrapes that port of these pods.
	var pm podMonitor
	strictYAML(t, path.Join(promOp, "podmonitor.yaml"), &pm)
	if pm.APIVersion != "monitoring.coreos.com/v1" || pm.Kind != "PodMonitor" {
		t.Errorf("podmonitor.yaml: %s %s", pm.APIVersion, pm.Kind)
	}
	if pm.Metadata.Namespace != ds.Namespace || pm.Spec.NamespaceSelector != nil {
		t.Errorf("podmonitor.yaml: namespace %q: want the DaemonSet's (%q), which a PodMonitor selects by default", pm.Metadata.Namespace, ds.Namespace)
	}
	sel, err := metav1.LabelSelectorAsSelector(&pm.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("podmonitor.yaml: selector does not match the DaemonSet's pods (%v)", err)
	}
	if pm.Spec.ScrapeClassicHistograms == nil || !*pm.Spec.ScrapeClassicHistograms {
		t.Error("podmonitor.yaml: scrapeClassicHistograms must be true: the rules and dashboard read _bucket series")
	}
	if len(pm.Spec.PodMetricsEndpoints) != 1 {
		t.Fatalf("podmonitor.yaml: %d endpoints, want 1", len(pm.Spec.PodMetricsEndpoints))
	}
	ep := pm.Spec.PodMetricsEndpoints[0]
	if ep.Port != named || ep.Path != "/metrics" || !ep.HonorLabels {
		t.Errorf("podmonitor.yaml: endpoint %+v: want port %s, path /metrics, honorLabels true", ep, named)
	}
	// The target's namespace, pod and container labels are dropped: with
	// honorLabels they would fill the empty workload labels of a plain
	// host process's sockets with tcptrace's own pod.
	dropped := false
	for _, r := range ep.Relabelings {
		if r.Action == "labeldrop" && regexp.MustCompile("^(?:"+r.Regex+")$").MatchString("namespace") &&
			regexp.MustCompile("^(?:"+r.Regex+")$").MatchString("pod") && regexp.MustCompile("^(?:"+r.Regex+")$").MatchString("container") {
			dropped = true
		}
	}
	if !dropped {
		t.Error("podmonitor.yaml: no labeldrop of the target's namespace, pod and container labels")
	}
}

// podMonitor has the PodMonitor fields these files use; their names are
// those of the prometheus-operator CRD (monitoring.coreos.com/v1, v0.93).
type podMonitor struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   metav1.ObjectMeta `json:"metadata"`
	Spec       struct {
		Selector                metav1.LabelSelector `json:"selector"`
		NamespaceSelector       *struct{}            `json:"namespaceSelector"`
		ScrapeClassicHistograms *bool                `json:"scrapeClassicHistograms"`
		PodMetricsEndpoints     []struct {
			Port        string `json:"port"`
			Path        string `json:"path"`
			Interval    string `json:"interval"`
			HonorLabels bool   `json:"honorLabels"`
			Relabelings []struct {
				SourceLabels []string `json:"sourceLabels"`
				TargetLabel  string   `json:"targetLabel"`
				Action       string   `json:"action"`
				Regex        string   `json:"regex"`
			} `json:"relabelings"`
		} `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

func TestDaemonSetResources(t *testing.T) {
	for which, ds := range daemonSets(t) {
		r := tracerContainer(t, which, ds).Resources
		for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			if _, ok := r.Requests[name]; !ok {
				t.Errorf("%s: no %s request", which, name)
			}
		}
		if _, ok := r.Limits[corev1.ResourceMemory]; !ok {
			t.Errorf("%s: no memory limit", which)
		}
		for name, limit := range r.Limits {
			if req, ok := r.Requests[name]; ok && req.Cmp(limit) > 0 {
				t.Errorf("%s: %s request %s above its limit %s", which, name, req.String(), limit.String())
			}
		}
	}
}

// dockerfile is the Dockerfile's instructions, continuation lines joined.
func dockerfile(t *testing.T) []string {
	t.Helper()
	var lines []string
	cur := ""
	sc := bufio.NewScanner(bytes.NewReader(readFile(t, filepath.Join(repoRoot, "Dockerfile"))))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if cur == "" && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		if strings.HasSuffix(line, `\`) {
			cur += strings.TrimSuffix(line, `\`) + " "
			continue
		}
		lines = append(lines, cur+line)
		cur = ""
	}
	return lines
}

func TestDockerfileMatchesTheDaemonSet(t *testing.T) {
	var (
		stage, buildStage, builder string
		out, copied, entrypoint    string
		user                       string
		versionArg                 bool
		stages                     int
	)
	for _, line := range dockerfile(t) {
		inst, rest, _ := strings.Cut(line, " ")
		switch strings.ToUpper(inst) {
		case "FROM":
			stages++
			fields := strings.Fields(rest)
			image := fields[0]
			if strings.HasPrefix(image, "--platform") {
				image = fields[1]
			}
			stage = image
			if len(fields) >= 3 && strings.EqualFold(fields[len(fields)-2], "AS") {
				stage = fields[len(fields)-1]
			}
			if strings.HasPrefix(image, "golang:") {
				builder, buildStage = strings.TrimPrefix(image, "golang:"), stage
			}
		case "ARG":
			if stage == buildStage && strings.HasPrefix(rest, "VERSION") {
				versionArg = true
			}
		case "RUN":
			if !strings.Contains(rest, "go build") {
				continue
			}
			for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-X main.version=$VERSION", " ./cmd/tcptrace"} {
				if !strings.Contains(rest, want) {
					t.Errorf("Dockerfile: go build without %q: %s", want, rest)
				}
			}
			if m := regexp.MustCompile(`\s-o\s+(\S+)`).FindStringSubmatch(rest); m != nil {
				out = m[1]
			}
		case "COPY":
			f := strings.Fields(rest)
			if len(f) == 3 && f[0] == "--from="+buildStage {
				if f[1] != out {
					t.Errorf("Dockerfile: copies %s from the build stage, which writes %s", f[1], out)
				}
				copied = f[2]
			}
		case "ENTRYPOINT":
			var ep []string
			if err := json.Unmarshal([]byte(rest), &ep); err != nil || len(ep) == 0 {
				t.Errorf("Dockerfile: ENTRYPOINT %s: want the exec form", rest)
			} else {
				entrypoint = ep[0]
			}
		case "USER":
			user = rest
		}
	}
	if stages < 2 || builder == "" || out == "" || copied == "" || entrypoint == "" {
		t.Fatalf("Dockerfile: stages %d, builder %q, build output %q, copied to %q, entrypoint %q", stages, builder, out, copied, entrypoint)
	}
	if !versionArg {
		t.Error("Dockerfile: the build stage declares no ARG VERSION")
	}
	if entrypoint != copied {
		t.Errorf("Dockerfile: ENTRYPOINT %s, but the binary is copied to %s", entrypoint, copied)
	}
	if user != "0" && user != "0:0" && user != "root" {
		t.Errorf("Dockerfile: USER %q: the image runs as uid 0 (capabilities)", user)
	}
	ds := daemonSets(t)["base"]
	if cmd := tracerContainer(t, "base", ds).Command; len(cmd) == 0 || cmd[0] != entrypoint {
		t.Errorf("daemonset.yaml: command %q, want the image's %s", cmd, entrypoint)
	}

	// The builder's Go is at least go.mod's.
	gomod := string(readFile(t, filepath.Join(repoRoot, "go.mod")))
	m := regexp.MustCompile(`(?m)^go (\d+)\.(\d+)`).FindStringSubmatch(gomod)
	b := regexp.MustCompile(`^(\d+)\.(\d+)`).FindStringSubmatch(builder)
	if m == nil || b == nil {
		t.Fatalf("go.mod go directive %v, builder golang:%s", m, builder)
	}
	atoi := func(s string) int { n, _ := strconv.Atoi(s); return n }
	if atoi(b[1]) < atoi(m[1]) || (atoi(b[1]) == atoi(m[1]) && atoi(b[2]) < atoi(m[2])) {
		t.Errorf("Dockerfile: golang:%s is older than go.mod's go %s.%s", builder, m[1], m[2])
	}
	// -X main.version needs the variable.
	files, _ := filepath.Glob(filepath.Join(repoRoot, "cmd", "tcptrace", "*.go"))
	found := false
	for _, f := range files {
		if !strings.HasSuffix(f, "_test.go") && regexp.MustCompile(`(?m)^var version\b`).Match(readFile(t, f)) {
			found = true
		}
	}
	if !found {
		t.Error("cmd/tcptrace declares no var version for -X main.version")
	}
}

// dockerignore turns .dockerignore into regular expressions, for the
// pattern forms it uses (no exceptions, no character classes).
func dockerignore(t *testing.T) []*regexp.Regexp {
	t.Helper()
	var res []*regexp.Regexp
	sc := bufio.NewScanner(bytes.NewReader(readFile(t, filepath.Join(repoRoot, ".dockerignore"))))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "!") || strings.ContainsAny(line, `[\`) {
			t.Fatalf(".dockerignore: %q: a pattern form this test does not handle", line)
		}
		p := path.Clean(strings.TrimPrefix(line, "/"))
		var b strings.Builder
		b.WriteString("^")
		for i := 0; i < len(p); {
			switch {
			case strings.HasPrefix(p[i:], "**/"):
				b.WriteString("(?:.*/)?")
				i += 3
			case strings.HasPrefix(p[i:], "**"):
				b.WriteString(".*")
				i += 2
			case p[i] == '*':
				b.WriteString("[^/]*")
				i++
			case p[i] == '?':
				b.WriteString("[^/]")
				i++
			default:
				b.WriteString(regexp.QuoteMeta(p[i : i+1]))
				i++
			}
		}
		b.WriteString("$")
		res = append(res, regexp.MustCompile(b.String()))
	}
	return res
}

// excluded says whether Docker leaves a file out of the context: a
// pattern matches it or one of its directories.
func excluded(patterns []*regexp.Regexp, rel string) bool {
	for p := rel; p != "." && p != "/" && p != ""; p = path.Dir(p) {
		for _, re := range patterns {
			if re.MatchString(p) {
				return true
			}
		}
	}
	return false
}

func TestDockerignoreKeepsBuildInputs(t *testing.T) {
	patterns := dockerignore(t)
	goTool := requireTool(t, "go", "the Go toolchain")
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	need := []string{"go.mod", "go.sum"}
	for _, arch := range []string{"amd64", "arm64"} {
		cmd := exec.Command(goTool, "list", "-deps", "-json=ImportPath,Dir,Module,GoFiles,EmbedFiles,SFiles,SysoFiles", "./cmd/tcptrace")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH="+arch, "CGO_ENABLED=0")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go list (%s): %v", arch, err)
		}
		dec := json.NewDecoder(bytes.NewReader(out))
		for dec.More() {
			var p struct {
				ImportPath, Dir                        string
				Module                                 *struct{ Main bool }
				GoFiles, EmbedFiles, SFiles, SysoFiles []string
			}
			if err := dec.Decode(&p); err != nil {
				t.Fatal(err)
			}
			if p.Module == nil || !p.Module.Main {
				continue
			}
			for _, f := range slices.Concat(p.GoFiles, p.EmbedFiles, p.SFiles, p.SysoFiles) {
				rel, err := filepath.Rel(root, filepath.Join(p.Dir, f))
				if err != nil {
					t.Fatal(err)
				}
				need = append(need, filepath.ToSlash(rel))
			}
		}
	}
	need = slices.Compact(slices.Sorted(slices.Values(need)))
	if len(need) < 10 {
		t.Fatalf("go list found only %v", need)
	}
	for _, f := range need {
		if excluded(patterns, f) {
			t.Errorf(".dockerignore excludes %s, which go build ./cmd/tcptrace reads", f)
		}
	}
	// And it keeps out what is large or irrelevant.
	for _, f := range []string{".git/HEAD", "bin/tcptrace", "vmlinux/x86/vmlinux.h", "deploy/deploy_test.go", "owner/owner_test.go", "cgroup/testdata/x"} {
		if !excluded(patterns, f) {
			t.Errorf(".dockerignore keeps %s", f)
		}
	}
}

func TestMakefileImage(t *testing.T) {
	mk := string(readFile(t, filepath.Join(repoRoot, "Makefile")))
	m := regexp.MustCompile(`(?m)^IMAGE \?= (\S+):\$\(VERSION\)$`).FindStringSubmatch(mk)
	if m == nil {
		t.Fatal("Makefile: no IMAGE ?= <repository>:$(VERSION)")
	}
	if !regexp.MustCompile(`(?m)^image:\n\tdocker build -t \$\(IMAGE\) --build-arg VERSION=\$\(VERSION\) \.$`).MatchString(mk) {
		t.Error("Makefile: the image target is not docker build -t $(IMAGE) --build-arg VERSION=$(VERSION) .")
	}
	if !regexp.MustCompile(`(?m)^\.PHONY:.*\bimage\b`).MatchString(mk) {
		t.Error("Makefile: image is not .PHONY")
	}
	image := tracerContainer(t, "base", daemonSets(t)["base"]).Image
	if repo, _, _ := strings.Cut(image, ":"); repo != m[1] {
		t.Errorf("daemonset.yaml: image %s, but make image builds %s", image, m[1])
	}
}

// rulesFile is a Prometheus rule file, strictly: the fields promtool and
// the PrometheusRule CRD know.
type rulesFile struct {
	Groups []struct {
		Name     string `json:"name"`
		Interval string `json:"interval"`
		Rules    []struct {
			Alert       string            `json:"alert"`
			Record      string            `json:"record"`
			Expr        string            `json:"expr"`
			For         string            `json:"for"`
			Labels      map[string]string `json:"labels"`
			Annotations map[string]string `json:"annotations"`
		} `json:"rules"`
	} `json:"groups"`
}

// rulesTestFile is a promtool test file, strictly.
type rulesTestFile struct {
	RuleFiles          []string `json:"rule_files"`
	EvaluationInterval string   `json:"evaluation_interval"`
	Tests              []struct {
		Name        string `json:"name"`
		Interval    string `json:"interval"`
		InputSeries []struct {
			Series string `json:"series"`
			Values string `json:"values"`
		} `json:"input_series"`
		AlertRuleTest []struct {
			EvalTime  string `json:"eval_time"`
			Alertname string `json:"alertname"`
			ExpAlerts []struct {
				ExpLabels      map[string]string `json:"exp_labels"`
				ExpAnnotations map[string]string `json:"exp_annotations"`
			} `json:"exp_alerts"`
		} `json:"alert_rule_test"`
	} `json:"tests"`
}

func TestPrometheusRules(t *testing.T) {
	var rules rulesFile
	strictYAML(t, "prometheus/rules.yaml", &rules)
	if len(rules.Groups) != 1 || rules.Groups[0].Name != "tcptrace" {
		t.Fatalf("rules.yaml: want one group, tcptrace")
	}
	var alerts []string
	for _, r := range rules.Groups[0].Rules {
		alerts = append(alerts, r.Alert)
		switch r.Labels["severity"] {
		case "critical", "warning", "info":
		default:
			t.Errorf("%s: severity %q", r.Alert, r.Labels["severity"])
		}
		if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
			t.Errorf("%s: want summary and description annotations", r.Alert)
		}
	}
	want := []string{"TCPTraceCloseWaitOld", "TCPTraceDown", "TCPTraceEventsLost", "TCPTraceSlowClose", "TCPTraceStuckSockets"}
	if got := slices.Sorted(slices.Values(alerts)); !slices.Equal(got, want) {
		t.Errorf("rules.yaml: alerts %v, want %v", got, want)
	}

	// Each alert is tested firing, and tested quiet.
	var tests rulesTestFile
	strictYAML(t, "prometheus/rules_test.yaml", &tests)
	if !slices.Equal(tests.RuleFiles, []string{"rules.yaml"}) {
		t.Errorf("rules_test.yaml: rule_files %v", tests.RuleFiles)
	}
	fires, quiet := make(map[string]int), make(map[string]int)
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname]++
			} else {
				quiet[a.Alertname]++
			}
		}
	}
	for _, a := range want {
		if fires[a] == 0 || quiet[a] == 0 {
			t.Errorf("rules_test.yaml: %s has %d firing and %d quiet cases; want both", a, fires[a], quiet[a])
		}
	}
}

func TestPromtool(t *testing.T) {
	promtool := requireTool(t, "promtool", "Debian package prometheus")
	for _, args := range [][]string{{"check", "rules", "rules.yaml"}, {"test", "rules", "rules_test.yaml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = "prometheus"
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

const prometheusRuleFile = promOp + "/prometheusrule.yaml"

// generatePrometheusRule wraps prometheus/rules.yaml in a PrometheusRule.
func generatePrometheusRule(t *testing.T) []byte {
	t.Helper()
	var spec map[string]any
	if err := yaml.Unmarshal(readFile(t, "prometheus/rules.yaml"), &spec); err != nil {
		t.Fatal(err)
	}
	obj := map[string]any{
		"apiVersion": "monitoring.coreos.com/v1",
		"kind":       "PrometheusRule",
		"metadata": map[string]any{
			"name":      "tcptrace",
			"namespace": namespace,
			"labels":    map[string]any{"app.kubernetes.io/name": "tcptrace"},
		},
		"spec": spec,
	}
	out, err := yaml.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	header := "# Generated from deploy/prometheus/rules.yaml by go test ./deploy: edit that\n" +
		"# file, then run TCPTRACE_UPDATE_GENERATED=1 go test ./deploy -run TestPrometheusRuleIsGenerated\n"
	return append([]byte(header), out...)
}

func TestPrometheusRuleIsGenerated(t *testing.T) {
	want := generatePrometheusRule(t)
	if os.Getenv("TCPTRACE_UPDATE_GENERATED") == "1" {
		if err := os.WriteFile(prometheusRuleFile, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(prometheusRuleFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from prometheus/rules.yaml: run TCPTRACE_UPDATE_GENERATED=1 go test ./deploy -run TestPrometheusRuleIsGenerated", prometheusRuleFile)
	}
	// It decodes strictly: the CRD's fields.
	var pr struct {
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Metadata   metav1.ObjectMeta `json:"metadata"`
		Spec       rulesFile         `json:"spec"`
	}
	strictYAML(t, prometheusRuleFile, &pr)
	if pr.Kind != "PrometheusRule" || len(pr.Spec.Groups) == 0 {
		t.Errorf("%s: kind %s, %d groups", prometheusRuleFile, pr.Kind, len(pr.Spec.Groups))
	}
}

func TestDashboard(t *testing.T) {
	data := readFile(t, "grafana/tcptrace.json")
	var d map[string]any
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("grafana/tcptrace.json: %v", err)
	}
	if d["uid"] != "tcptrace" || d["title"] == "" {
		t.Errorf("uid %v title %v", d["uid"], d["title"])
	}
	if _, ok := d["schemaVersion"].(float64); !ok {
		t.Error("no schemaVersion")
	}
	vars := make(map[string]map[string]any)
	for _, v := range d["templating"].(map[string]any)["list"].([]any) {
		v := v.(map[string]any)
		vars[v["name"].(string)] = v
	}
	if ds := vars["datasource"]; ds == nil || ds["type"] != "datasource" || ds["query"] != "prometheus" {
		t.Errorf("want a datasource variable of type datasource, query prometheus: %v", ds)
	}
	for _, name := range []string{"namespace", "pod"} {
		if v := vars[name]; v == nil || v["type"] != "query" || v["allValue"] != ".*" {
			t.Errorf("want a query variable %s with allValue .* (a plain host's series have no %s): %v", name, name, v)
		}
	}
	wantDS := map[string]any{"type": "prometheus", "uid": "${datasource}"}
	ids := make(map[float64]bool)
	type rect struct{ x, y, w, h float64 }
	var rects []rect
	var types []string
	var walk func(ps []any)
	walk = func(ps []any) {
		for _, p := range ps {
			p := p.(map[string]any)
			title, _ := p["title"].(string)
			id, _ := p["id"].(float64)
			if ids[id] {
				t.Errorf("panel %q: id %v used twice", title, id)
			}
			ids[id] = true
			types = append(types, p["type"].(string))
			g := p["gridPos"].(map[string]any)
			r := rect{g["x"].(float64), g["y"].(float64), g["w"].(float64), g["h"].(float64)}
			if r.x+r.w > 24 {
				t.Errorf("panel %q: wider than the dashboard", title)
			}
			for _, o := range rects {
				if r.x < o.x+o.w && o.x < r.x+r.w && r.y < o.y+o.h && o.y < r.y+r.h {
					t.Errorf("panel %q overlaps another", title)
				}
			}
			rects = append(rects, r)
			if p["type"] == "row" {
				walk(p["panels"].([]any))
				continue
			}
			if fmt.Sprint(p["datasource"]) != fmt.Sprint(wantDS) {
				t.Errorf("panel %q: datasource %v, want the variable", title, p["datasource"])
			}
			targets, _ := p["targets"].([]any)
			if len(targets) == 0 {
				t.Errorf("panel %q: no targets", title)
			}
			for _, tg := range targets {
				tg := tg.(map[string]any)
				if fmt.Sprint(tg["datasource"]) != fmt.Sprint(wantDS) {
					t.Errorf("panel %q: target datasource %v, want the variable", title, tg["datasource"])
				}
				expr, _ := tg["expr"].(string)
				workload := false
				for _, n := range deploy.MetricNamesIn(expr) {
					if workloadMetric(n) {
						workload = true
					}
				}
				if workload && (!strings.Contains(expr, `namespace=~"$namespace"`) || !strings.Contains(expr, `pod=~"$pod"`)) {
					t.Errorf("panel %q: %s: does not follow the namespace and pod variables", title, expr)
				}
				if p["type"] == "heatmap" && (tg["format"] != "heatmap" || !strings.Contains(expr, "_bucket")) {
					t.Errorf("panel %q: a heatmap of _bucket series wants format heatmap", title)
				}
			}
		}
	}
	walk(d["panels"].([]any))
	for _, want := range []string{"heatmap", "timeseries", "stat", "table"} {
		if !slices.Contains(types, want) {
			t.Errorf("no %s panel", want)
		}
	}
}

// tcptrace's metrics: names as in a text-format scrape, and whether the
// series carry workload labels. The real-kernel tests check MetricNames
// against a real scrape.
var knownMetrics = map[string]bool{
	"tcptrace_close_wait_sockets":               true,
	"tcptrace_close_wait_oldest_seconds":        true,
	"tcptrace_close_wait_entered_total":         true,
	"tcptrace_close_wait_closed_total":          true,
	"tcptrace_close_wait_aborted_total":         true,
	"tcptrace_fin_to_close_seconds_bucket":      true,
	"tcptrace_fin_to_close_seconds_sum":         true,
	"tcptrace_fin_to_close_seconds_count":       true,
	"tcptrace_stuck_sockets":                    true,
	"tcptrace_stuck_reported_total":             true,
	"tcptrace_events_lost_total":                false,
	"tcptrace_kernel_aggregate_overflows_total": false,
	"tcptrace_build_info":                       false,
	"tcptrace_hook_info":                        false,
	"tcptrace_metrics_series":                   false,
	"tcptrace_metrics_series_folded_total":      false,
	"tcptrace_kubernetes_cache_synced":          false,
	"tcptrace_kubernetes_pod_lookups_total":     false,
}

func workloadMetric(name string) bool { return knownMetrics[name] }

func TestMetricNames(t *testing.T) {
	names, err := deploy.MetricNames()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d names: %v", len(names), names)
	for _, n := range names {
		if _, ok := knownMetrics[n]; !ok {
			t.Errorf("%s: queried, but not a tcptrace metric the tests know", n)
		}
	}
	// The dashboard and rules show every family (a histogram by its buckets).
	for n := range knownMetrics {
		if strings.HasSuffix(n, "_sum") || strings.HasSuffix(n, "_count") {
			continue
		}
		if !slices.Contains(names, n) {
			t.Errorf("%s: neither the rules nor the dashboard show it", n)
		}
	}
	// Every family is named in the Go source that defines metrics (files
	// that import client_golang: "close_wait_sockets" in
	// metrics/metrics.go), so a rename there fails here too.
	var src []byte
	err = filepath.WalkDir(repoRoot, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() && (e.Name() == ".git" || e.Name() == "deploy" || e.Name() == "internal" || e.Name() == "testdata") {
			return filepath.SkipDir
		}
		if !e.IsDir() && strings.HasSuffix(p, ".go") && !strings.HasSuffix(p, "_test.go") {
			data, err := os.ReadFile(p)
			if bytes.Contains(data, []byte(`"github.com/prometheus/client_golang/prometheus"`)) {
				src = append(src, data...)
			}
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		family := strings.TrimPrefix(n, "tcptrace_")
		if strings.HasPrefix(n, "tcptrace_fin_to_close_seconds_") {
			family = "fin_to_close_seconds"
		}
		if !bytes.Contains(src, []byte(`"`+family+`"`)) && !bytes.Contains(src, []byte(`"_`+family+`"`)) {
			t.Errorf("%s: %q is in no Go source of tcptrace", n, family)
		}
	}
	qs, err := deploy.Queries()
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qs {
		if strings.TrimSpace(q.Expr) == "" {
			t.Errorf("%s: empty query", q.Source)
		}
	}
}
