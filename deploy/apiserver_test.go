package deploy_test

// These tests give the base manifests to a real kube-apiserver
// (internal/kubetest): the server creates them with strict field
// validation, rejects broken copies of them, and its RBAC lets the
// service account read pods and nothing more. deploy_test.go only decodes
// the files into the client's API types; the server's validation,
// defaulting and authorizer are what a cluster really runs.
//
// All tests of the package share one API server (TestMain). The base
// objects are created once, by the first test that needs them (apiApplied);
// the other objects a test makes carry names of its own.

import (
	"context"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"github.com/tcptrace/tcptrace/deploy"
	"github.com/tcptrace/tcptrace/internal/kubetest"
)

// One API server for the package, started by the first test that asks.
func TestMain(m *testing.M) { kubetest.Main(m) }

// apiTimeout bounds each test's calls to the API server, polls included.
const apiTimeout = 2 * time.Minute

// apiWarnings collects the Warning headers of the server's responses.
type apiWarnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *apiWarnings) HandleWarningHeader(code int, agent, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, text)
}

func (w *apiWarnings) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	msgs := w.msgs
	w.msgs = nil
	return msgs
}

// apiCluster is the shared API server with the base objects created.
type apiCluster struct {
	admin    *rest.Config
	dyn      dynamic.Interface
	mapper   meta.RESTMapper
	objects  []*unstructured.Unstructured // deploy.Objects(), as sent
	created  []*unstructured.Unstructured // the server's answers to the creates
	warnings []string                     // Warning headers of the creates
	warn     *apiWarnings                 // dyn's Warning headers from then on
}

var apiApplied struct {
	sync.Mutex
	c   *apiCluster
	err error
}

// apiApply returns the package's API server with every object of
// deploy.Objects() created on it, in order, with strict field validation;
// the first call creates them, later ones get the same result (or the
// same failure).
func apiApply(t *testing.T) *apiCluster {
	t.Helper()
	admin := kubetest.Start(t)
	apiApplied.Lock()
	defer apiApplied.Unlock()
	if apiApplied.c == nil && apiApplied.err == nil {
		apiApplied.c, apiApplied.err = apiCreateObjects(admin)
	}
	if apiApplied.err != nil {
		t.Fatalf("create the base objects: %v", apiApplied.err)
	}
	return apiApplied.c
}

func apiCreateObjects(admin *rest.Config) (*apiCluster, error) {
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	objs, err := deploy.Objects()
	if err != nil {
		return nil, err
	}
	cfg := rest.CopyConfig(admin)
	w := &apiWarnings{}
	cfg.WarningHandler = w
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, err
	}
	groups, err := restmapper.GetAPIGroupResources(dc)
	if err != nil {
		return nil, fmt.Errorf("discovery: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	c := &apiCluster{admin: admin, dyn: dyn, mapper: restmapper.NewDiscoveryRESTMapper(groups), warn: w}
	for _, obj := range objs {
		c.objects = append(c.objects, obj.DeepCopy())
		ri, err := c.resource(obj)
		if err != nil {
			return nil, err
		}
		got, err := ri.Create(ctx, obj, metav1.CreateOptions{FieldValidation: metav1.FieldValidationStrict})
		if err != nil {
			return nil, fmt.Errorf("create %s: %w", apiName(obj), err)
		}
		c.created = append(c.created, got)
		for _, msg := range w.take() {
			c.warnings = append(c.warnings, apiName(obj)+": "+msg)
		}
	}
	return c, nil
}

// resource maps an object's kind to its resource through discovery, and
// checks the manifest names a namespace exactly when the resource has one
// (the server would quietly drop a cluster-scoped object's namespace).
func (c *apiCluster) resource(obj *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := obj.GroupVersionKind()
	m, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", apiName(obj), err)
	}
	namespaced := m.Scope.Name() == meta.RESTScopeNameNamespace
	if namespaced != (obj.GetNamespace() != "") {
		return nil, fmt.Errorf("%s: namespace %q, but the resource %s is namespaced: %v", apiName(obj), obj.GetNamespace(), m.Resource, namespaced)
	}
	if namespaced {
		return c.dyn.Resource(m.Resource).Namespace(obj.GetNamespace()), nil
	}
	return c.dyn.Resource(m.Resource), nil
}

// object returns the manifest of a kind (a copy).
func (c *apiCluster) object(t *testing.T, kind string) *unstructured.Unstructured {
	t.Helper()
	for _, obj := range c.objects {
		if obj.GetKind() == kind {
			return obj.DeepCopy()
		}
	}
	t.Fatalf("deploy.Objects has no %s", kind)
	return nil
}

func apiName(obj *unstructured.Unstructured) string {
	if obj.GetNamespace() == "" {
		return obj.GetKind() + " " + obj.GetName()
	}
	return obj.GetKind() + " " + obj.GetNamespace() + "/" + obj.GetName()
}

// apiMissing lists where got, the server's object, lacks or changed a
// value of want, the manifest: the server may add (defaults, metadata,
// status) but not drop or alter. Quantities compare by value ("100000"
// comes back as "100k").
func apiMissing(path string, want, got any) []string {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: %T, want an object", path, got)}
		}
		var out []string
		for _, k := range slices.Sorted(maps.Keys(w)) {
			gv, ok := g[k]
			if !ok {
				out = append(out, fmt.Sprintf("%s.%s: dropped (was %v)", path, k, w[k]))
				continue
			}
			out = append(out, apiMissing(path+"."+k, w[k], gv)...)
		}
		return out
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return []string{fmt.Sprintf("%s: %v, want %v", path, got, want)}
		}
		var out []string
		for i := range w {
			out = append(out, apiMissing(fmt.Sprintf("%s[%d]", path, i), w[i], g[i])...)
		}
		return out
	case string:
		if g, ok := got.(string); ok && g != w {
			qw, errW := resource.ParseQuantity(w)
			qg, errG := resource.ParseQuantity(g)
			if errW == nil && errG == nil && qw.Cmp(qg) == 0 {
				return nil
			}
		}
	}
	if !reflect.DeepEqual(want, got) {
		return []string{fmt.Sprintf("%s: %v (%T), want %v (%T)", path, got, got, want, want)}
	}
	return nil
}

// Every object of the base is created, with strict field validation, and
// reads back as written plus the server's defaults.
func TestAPIServerCreatesTheManifests(t *testing.T) {
	c := apiApply(t)
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	if len(c.created) != len(c.objects) || len(c.objects) != 6 {
		t.Fatalf("created %d of %d objects, want 6", len(c.created), len(c.objects))
	}
	if len(c.warnings) > 0 {
		t.Errorf("the server warned:\n%s", strings.Join(c.warnings, "\n"))
	}
	for i, want := range c.objects {
		if ts := c.created[i].GetCreationTimestamp(); c.created[i].GetUID() == "" || ts.IsZero() {
			t.Errorf("%s: the create's answer has no uid or creation time", apiName(want))
		}
		ri, err := c.resource(want)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ri.Get(ctx, want.GetName(), metav1.GetOptions{})
		if err != nil {
			t.Fatalf("read back %s: %v", apiName(want), err)
		}
		if got.GetUID() != c.created[i].GetUID() {
			t.Errorf("%s: uid %s, created as %s", apiName(want), got.GetUID(), c.created[i].GetUID())
		}
		for _, m := range apiMissing("", want.Object, got.Object) {
			t.Errorf("%s read back: %s", apiName(want), m)
		}
	}

	// The DaemonSet in detail, decoded from what the server stored.
	dsObj := c.created[slices.IndexFunc(c.objects, func(o *unstructured.Unstructured) bool { return o.GetKind() == "DaemonSet" })]
	ri, err := c.resource(dsObj)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ri.Get(ctx, dsObj.GetName(), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var ds appsv1.DaemonSet
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(got.Object, &ds, true); err != nil {
		t.Fatalf("the stored DaemonSet does not decode strictly into apps/v1: %v", err)
	}
	var sent appsv1.DaemonSet
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(c.object(t, "DaemonSet").Object, &sent); err != nil {
		t.Fatal(err)
	}
	if ds.Generation != 1 || ds.Spec.RevisionHistoryLimit == nil || *ds.Spec.RevisionHistoryLimit != 10 {
		t.Errorf("generation %d revisionHistoryLimit %v: want 1 and the default 10", ds.Generation, ds.Spec.RevisionHistoryLimit)
	}
	spec := ds.Spec.Template.Spec
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers", len(spec.Containers))
	}
	ctr, sentCtr := spec.Containers[0], sent.Spec.Template.Spec.Containers[0]
	sc := ctr.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("securityContext.capabilities lost")
	}
	if !reflect.DeepEqual(sc.Capabilities, sentCtr.SecurityContext.Capabilities) || len(sc.Capabilities.Add) < 4 {
		t.Errorf("capabilities %+v, sent %+v", sc.Capabilities, sentCtr.SecurityContext.Capabilities)
	}
	if sc.Privileged == nil || *sc.Privileged || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.SeccompProfile == nil ||
		sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault || sc.AppArmorProfile == nil ||
		sc.AppArmorProfile.Type != corev1.AppArmorProfileTypeUnconfined {
		t.Errorf("securityContext %+v: not as sent", sc)
	}
	for _, p := range []struct {
		name       string
		got, sent  *corev1.Probe
		wantPathIs string
	}{
		{"livenessProbe", ctr.LivenessProbe, sentCtr.LivenessProbe, "/healthz"},
		{"readinessProbe", ctr.ReadinessProbe, sentCtr.ReadinessProbe, "/readyz"},
	} {
		if p.got == nil || p.got.HTTPGet == nil {
			t.Errorf("%s lost", p.name)
			continue
		}
		h := p.got.HTTPGet
		if h.Path != p.wantPathIs || h.Port != p.sent.HTTPGet.Port || h.Port.StrVal != ctr.Ports[0].Name {
			t.Errorf("%s: %s on port %v, sent %s on %v (container port %q)", p.name, h.Path, h.Port.String(), p.sent.HTTPGet.Path, p.sent.HTTPGet.Port.String(), ctr.Ports[0].Name)
		}
		// Defaulted: the scheme, the success threshold; kept: the rest.
		if h.Scheme != corev1.URISchemeHTTP || p.got.SuccessThreshold != 1 ||
			p.got.PeriodSeconds != p.sent.PeriodSeconds || p.got.TimeoutSeconds != p.sent.TimeoutSeconds ||
			p.got.FailureThreshold != p.sent.FailureThreshold {
			t.Errorf("%s: %+v, sent %+v", p.name, p.got, p.sent)
		}
	}
	node, ok := envValue(&ctr, "TCPTRACE_NODE_NAME")
	if !ok || node.ValueFrom == nil || node.ValueFrom.FieldRef == nil ||
		node.ValueFrom.FieldRef.FieldPath != "spec.nodeName" || node.ValueFrom.FieldRef.APIVersion != "v1" {
		t.Errorf("TCPTRACE_NODE_NAME: %+v; want fieldRef spec.nodeName with the defaulted apiVersion v1", node)
	}
	if ctr.ImagePullPolicy == "" || ctr.TerminationMessagePath == "" || spec.DNSPolicy != corev1.DNSClusterFirst ||
		spec.RestartPolicy != corev1.RestartPolicyAlways || spec.SchedulerName == "" {
		t.Errorf("pod template not defaulted: imagePullPolicy %q terminationMessagePath %q dnsPolicy %q restartPolicy %q schedulerName %q",
			ctr.ImagePullPolicy, ctr.TerminationMessagePath, spec.DNSPolicy, spec.RestartPolicy, spec.SchedulerName)
	}
	if !spec.HostPID || spec.PriorityClassName != "system-node-critical" || spec.ServiceAccountName != sent.Spec.Template.Spec.ServiceAccountName {
		t.Errorf("hostPID %v priorityClassName %q serviceAccountName %q: not as sent", spec.HostPID, spec.PriorityClassName, spec.ServiceAccountName)
	}
	if len(spec.Volumes) != 1 || spec.Volumes[0].HostPath == nil || spec.Volumes[0].HostPath.Path != "/sys/fs/cgroup" {
		t.Errorf("volumes %+v: the cgroup hostPath lost", spec.Volumes)
	}
}

// apiDig walks maps and list indices of an unstructured object without
// copying, so that the caller can change what it finds.
func apiDig(t *testing.T, obj map[string]any, path ...any) map[string]any {
	t.Helper()
	var cur any = obj
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := cur.(map[string]any)
			if !ok {
				t.Fatalf("%v: %T at %q, want an object", path, cur, k)
			}
			cur = m[k]
		case int:
			l, ok := cur.([]any)
			if !ok || k >= len(l) {
				t.Fatalf("%v: %T at [%d], want a list that long", path, cur, k)
			}
			cur = l[k]
		}
	}
	m, ok := cur.(map[string]any)
	if !ok {
		t.Fatalf("%v: %T, want an object", path, cur)
	}
	return m
}

// Broken copies of the manifests are rejected by the server; the unbroken
// ones pass the same path, a strict server-side dry run under a name of
// their own (the real objects exist), so each rejection is the break's.
func TestAPIServerRejectsBrokenManifests(t *testing.T) {
	c := apiApply(t)
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	const copyName = "tcptrace-dry-run"
	// dryRun returns the server's error and warnings.
	dryRun := func(obj *unstructured.Unstructured) (warnings []string, err error) {
		ri, err := c.resource(obj)
		if err != nil {
			t.Fatal(err)
		}
		c.warn.take()
		_, err = ri.Create(ctx, obj, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: metav1.FieldValidationStrict})
		return c.warn.take(), err
	}
	fresh := func(kind string) *unstructured.Unstructured {
		obj := c.object(t, kind)
		obj.SetName(copyName)
		return obj
	}
	container := func(obj *unstructured.Unstructured) map[string]any {
		return apiDig(t, obj.Object, "spec", "template", "spec", "containers", 0)
	}

	for _, kind := range []string{"DaemonSet", "ClusterRole", "ClusterRoleBinding", "ServiceAccount", "ResourceQuota"} {
		if warnings, err := dryRun(fresh(kind)); err != nil || len(warnings) > 0 {
			t.Fatalf("the unbroken %s, as %s: %v; warnings %q", kind, copyName, err, warnings)
		}
	}

	const (
		badRequest = metav1.StatusReasonBadRequest // strict decoding
		invalid    = metav1.StatusReasonInvalid    // validation
	)
	cases := []struct {
		name   string
		kind   string
		break_ func(obj *unstructured.Unstructured)
		reason metav1.StatusReason
		field  string // the field the error names (a Cause's for Invalid)
		detail string // and what else it says
	}{
		{
			name: "unknown container field", kind: "DaemonSet",
			break_: func(obj *unstructured.Unstructured) {
				ctr := container(obj)
				ctr["volumeMount"] = ctr["volumeMounts"]
			},
			reason: badRequest, field: "spec.template.spec.containers[0].volumeMount", detail: "unknown field",
		},
		{
			name: "selector does not match the template", kind: "DaemonSet",
			break_: func(obj *unstructured.Unstructured) {
				apiDig(t, obj.Object, "spec", "selector", "matchLabels")["app.kubernetes.io/name"] = "tcptracer"
			},
			reason: invalid, field: "spec.template.metadata.labels", detail: "`selector` does not match template `labels`",
		},
		{
			name: "downward API field", kind: "DaemonSet",
			break_: func(obj *unstructured.Unstructured) {
				for _, e := range container(obj)["env"].([]any) {
					if e := e.(map[string]any); e["name"] == "TCPTRACE_NODE_NAME" {
						apiDig(t, e, "valueFrom", "fieldRef")["fieldPath"] = "spec.nodeNameX"
						return
					}
				}
				t.Fatal("no TCPTRACE_NODE_NAME")
			},
			reason: invalid, field: "spec.template.spec.containers[0].env[1].valueFrom.fieldRef.fieldPath", detail: "spec.nodeNameX",
		},
		{
			name: "capabilities misspelled", kind: "DaemonSet",
			break_: func(obj *unstructured.Unstructured) {
				sc := apiDig(t, container(obj), "securityContext")
				sc["capabilites"] = sc["capabilities"]
				delete(sc, "capabilities")
			},
			reason: badRequest, field: "spec.template.spec.containers[0].securityContext.capabilites", detail: "unknown field",
		},
		{
			name: "capability list field misspelled", kind: "DaemonSet",
			break_: func(obj *unstructured.Unstructured) {
				caps := apiDig(t, container(obj), "securityContext", "capabilities")
				caps["adds"] = caps["add"]
				delete(caps, "add")
			},
			reason: badRequest, field: "spec.template.spec.containers[0].securityContext.capabilities.adds", detail: "unknown field",
		},
		{
			// The pod's own field is only warned about in a template
			// (below); the probe's is validated.
			name: "negative probe termination grace period", kind: "DaemonSet",
			break_: func(obj *unstructured.Unstructured) {
				apiDig(t, container(obj), "livenessProbe")["terminationGracePeriodSeconds"] = int64(-1)
			},
			reason: invalid, field: "spec.template.spec.containers[0].livenessProbe.terminationGracePeriodSeconds", detail: "must be greater than 0",
		},
		{
			name: "port name", kind: "DaemonSet",
			break_: func(obj *unstructured.Unstructured) {
				// Renamed everywhere, so that only the name's form is wrong.
				ctr := container(obj)
				apiDig(t, ctr, "ports", 0)["name"] = "Metrics_Port"
				apiDig(t, ctr, "livenessProbe", "httpGet")["port"] = "Metrics_Port"
				apiDig(t, ctr, "readinessProbe", "httpGet")["port"] = "Metrics_Port"
			},
			reason: invalid, field: "spec.template.spec.containers[0].ports[0].name", detail: "Metrics_Port",
		},
		{
			name: "ClusterRole verbs misspelled", kind: "ClusterRole",
			break_: func(obj *unstructured.Unstructured) {
				rule := apiDig(t, obj.Object, "rules", 0)
				rule["verb"] = rule["verbs"]
				delete(rule, "verbs")
			},
			reason: badRequest, field: "rules[0].verb", detail: "unknown field",
		},
		{
			name: "ClusterRole without verbs", kind: "ClusterRole",
			break_: func(obj *unstructured.Unstructured) {
				delete(apiDig(t, obj.Object, "rules", 0), "verbs")
			},
			reason: invalid, field: "rules[0].verbs", detail: "Required value",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			obj := fresh(tc.kind)
			tc.break_(obj)
			_, err := dryRun(obj)
			if err == nil {
				t.Fatalf("accepted")
			}
			status, ok := err.(apierrors.APIStatus)
			if !ok {
				t.Fatalf("%T %v: not an API status", err, err)
			}
			st := status.Status()
			if st.Reason != tc.reason {
				t.Errorf("reason %s (code %d), want %s: %v", st.Reason, st.Code, tc.reason, err)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.field) || !strings.Contains(msg, tc.detail) {
				t.Errorf("%v\ndoes not name %s and %q", err, tc.field, tc.detail)
			}
			if tc.reason == invalid {
				named := false
				if st.Details != nil {
					for _, cause := range st.Details.Causes {
						named = named || cause.Field == tc.field
					}
				}
				if !named {
					t.Errorf("no cause for %s in %+v", tc.field, st.Details)
				}
			}
			t.Logf("%v", err)
		})
	}

	// A negative terminationGracePeriodSeconds in a pod template passes
	// validation (only a Pod's is validated; compatibility) with a
	// warning that the pods will get 1 s. The manifests draw no warnings
	// (TestAPIServerCreatesTheManifests), so a change like this one
	// fails there.
	t.Run("negative termination grace period warns", func(t *testing.T) {
		obj := fresh("DaemonSet")
		apiDig(t, obj.Object, "spec", "template", "spec")["terminationGracePeriodSeconds"] = int64(-1)
		warnings, err := dryRun(obj)
		if err != nil {
			t.Logf("rejected now (a newer server?): %v", err)
			return
		}
		if len(warnings) != 1 || !strings.Contains(warnings[0], "spec.template.spec.terminationGracePeriodSeconds: must be >= 0") {
			t.Errorf("warnings %q, want one about spec.template.spec.terminationGracePeriodSeconds", warnings)
		}
	})

	// Dry runs, all of them: nothing of that name was stored.
	for _, kind := range []string{"DaemonSet", "ClusterRole"} {
		obj := fresh(kind)
		ri, err := c.resource(obj)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ri.Get(ctx, copyName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("%s %s after dry runs: %v, want not found", kind, copyName, err)
		}
	}
}

// apiPod is a pod put on a node, as the scheduler would.
func apiPod(ns, name, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			NodeName:   node,
			Containers: []corev1.Container{{Name: "app", Image: "registry.example/app:1"}},
		},
	}
}

func apiPodNames(pods []corev1.Pod) []string {
	var names []string
	for _, p := range pods {
		names = append(names, p.Namespace+"/"+p.Name)
	}
	return slices.Sorted(slices.Values(names))
}

// apiRuns counts the runs of a test that makes objects of fixed names.
var apiRuns atomic.Int64

// apiRule is one verb on one resource (resource/subresource) of a group.
type apiRule struct{ group, resource, verb string }

// The service account of the manifests, bound by them to their
// ClusterRole, can get, list and watch pods cluster-wide, by node as the
// agent does, and nothing else.
func TestAPIServerRBACIsEnoughAndNoMore(t *testing.T) {
	c := apiApply(t)
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	saObj := c.object(t, "ServiceAccount")
	saNS, saName := saObj.GetNamespace(), saObj.GetName()
	admin := kubernetes.NewForConfigOrDie(c.admin)
	sa := kubernetes.NewForConfigOrDie(kubetest.AsServiceAccount(c.admin, saNS, saName))

	// Pods on two nodes, and a secret and a config map, in a namespace of
	// this run's (-count=N reuses the server); a pod in the tracer's
	// namespace too.
	run := apiRuns.Add(1)
	ns := fmt.Sprintf("tcptrace-rbac-test-%d", run)
	nodeA, nodeB := fmt.Sprintf("rbac-node-a-%d", run), fmt.Sprintf("rbac-node-b-%d", run)
	inTracerNS := fmt.Sprintf("rbac-a-%d", run)
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*corev1.Pod{apiPod(ns, "a1", nodeA), apiPod(ns, "b1", nodeB), apiPod(saNS, inTracerNS, nodeA)} {
		if _, err := admin.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := admin.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "s"}, StringData: map[string]string{"k": "v"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cm"}, Data: map[string]string{"k": "v"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// Allowed: get, list and watch pods, anywhere.
	all, err := sa.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list pods cluster-wide: %v", err)
	}
	for _, want := range []string{ns + "/a1", ns + "/b1", saNS + "/" + inTracerNS} {
		if !slices.Contains(apiPodNames(all.Items), want) {
			t.Errorf("list pods cluster-wide: %v, no %s", apiPodNames(all.Items), want)
		}
	}
	onA := fields.OneTermEqualSelector("spec.nodeName", nodeA).String()
	byNode, err := sa.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{FieldSelector: onA})
	if err != nil {
		t.Fatalf("list pods with %s: %v", onA, err)
	}
	if got, want := apiPodNames(byNode.Items), []string{ns + "/a1", saNS + "/" + inTracerNS}; !slices.Equal(got, want) {
		t.Errorf("list pods with %s: %v, want %v", onA, got, want)
	}
	// As the informer lists: from the watch cache, in pages.
	page, err := sa.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{FieldSelector: onA, ResourceVersion: "0", Limit: 500})
	if err != nil {
		t.Fatalf("list pods with %s, resourceVersion 0: %v", onA, err)
	}
	if got := apiPodNames(page.Items); !slices.Contains(got, ns+"/a1") || slices.Contains(got, ns+"/b1") {
		t.Errorf("list pods with %s, resourceVersion 0: %v", onA, got)
	}
	if p, err := sa.CoreV1().Pods(ns).Get(ctx, "a1", metav1.GetOptions{}); err != nil || p.Spec.NodeName != nodeA {
		t.Errorf("get pod %s/a1: %v", ns, err)
	}
	w, err := sa.CoreV1().Pods(metav1.NamespaceAll).Watch(ctx, metav1.ListOptions{
		FieldSelector: onA, ResourceVersion: byNode.ResourceVersion, AllowWatchBookmarks: true,
	})
	if err != nil {
		t.Fatalf("watch pods with %s: %v", onA, err)
	}
	// b2 first: events come in order, so the first one is a2's only if
	// the selector held b2 back.
	for _, p := range []*corev1.Pod{apiPod(ns, "b2", nodeB), apiPod(ns, "a2", nodeA)} {
		if _, err := admin.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	func() {
		defer w.Stop()
		deadline := time.NewTimer(30 * time.Second)
		defer deadline.Stop()
		for {
			select {
			case ev, ok := <-w.ResultChan():
				if !ok {
					t.Fatal("watch ended before a2 was added")
				}
				if ev.Type == watch.Bookmark {
					continue
				}
				p, isPod := ev.Object.(*corev1.Pod)
				if ev.Type != watch.Added || !isPod || p.Name != "a2" {
					t.Fatalf("watch: %s %v, want a2 added", ev.Type, ev.Object)
				}
				return
			case <-deadline.C:
				t.Fatal("watch: no event for a2 in 30 s")
			}
		}
	}()

	// Forbidden: everything else. Writes are dry runs, so that a wrong
	// answer changes nothing.
	dry := []string{metav1.DryRunAll}
	forbidden := []struct {
		what string
		call func() error
	}{
		{"list secrets cluster-wide", func() error {
			_, err := sa.CoreV1().Secrets(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
			return err
		}},
		{"list secrets in " + ns, func() error {
			_, err := sa.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
			return err
		}},
		{"get secret " + ns + "/s", func() error {
			_, err := sa.CoreV1().Secrets(ns).Get(ctx, "s", metav1.GetOptions{})
			return err
		}},
		{"get configmap " + ns + "/cm", func() error {
			_, err := sa.CoreV1().ConfigMaps(ns).Get(ctx, "cm", metav1.GetOptions{})
			return err
		}},
		{"list nodes", func() error {
			_, err := sa.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
			return err
		}},
		{"create pod", func() error {
			_, err := sa.CoreV1().Pods(ns).Create(ctx, apiPod(ns, "by-sa", nodeA), metav1.CreateOptions{DryRun: dry})
			return err
		}},
		{"delete pod", func() error {
			return sa.CoreV1().Pods(ns).Delete(ctx, "a1", metav1.DeleteOptions{DryRun: dry})
		}},
		{"patch pod", func() error {
			_, err := sa.CoreV1().Pods(ns).Patch(ctx, "a1", types.MergePatchType, []byte(`{"metadata":{"labels":{"x":"y"}}}`), metav1.PatchOptions{DryRun: dry})
			return err
		}},
		{"update pod status", func() error {
			p, err := admin.CoreV1().Pods(ns).Get(ctx, "a1", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			_, err = sa.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{DryRun: dry})
			return err
		}},
		{"evict pod", func() error {
			return sa.CoreV1().Pods(ns).EvictV1(ctx, &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: "a1", Namespace: ns}, DeleteOptions: &metav1.DeleteOptions{DryRun: dry}})
		}},
		{"list namespaces", func() error {
			_, err := sa.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
			return err
		}},
		{"list deployments", func() error {
			_, err := sa.AppsV1().Deployments(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
			return err
		}},
	}
	for _, f := range forbidden {
		if err := f.call(); !apierrors.IsForbidden(err) {
			t.Errorf("%s as %s/%s: %v, want forbidden", f.what, saNS, saName, err)
		}
	}
	if _, err := admin.CoreV1().Pods(ns).Get(ctx, "a1", metav1.GetOptions{}); err != nil {
		t.Errorf("pod a1 after the forbidden calls: %v", err)
	}

	// The authorizer's own answers: SelfSubjectAccessReview as the
	// service account, SubjectAccessReview about it as admin.
	user := "system:serviceaccount:" + saNS + ":" + saName
	groups := []string{"system:serviceaccounts", "system:serviceaccounts:" + saNS, "system:authenticated"}
	reviews := []struct {
		attr    authzv1.ResourceAttributes
		allowed bool
	}{
		{authzv1.ResourceAttributes{Verb: "get", Resource: "pods"}, true},
		{authzv1.ResourceAttributes{Verb: "list", Resource: "pods"}, true},
		{authzv1.ResourceAttributes{Verb: "watch", Resource: "pods"}, true},
		{authzv1.ResourceAttributes{Verb: "get", Resource: "pods", Namespace: ns, Name: "a1"}, true},
		{authzv1.ResourceAttributes{Verb: "list", Resource: "pods", Namespace: "kube-system"}, true},
		{authzv1.ResourceAttributes{Verb: "update", Resource: "pods"}, false},
		{authzv1.ResourceAttributes{Verb: "patch", Resource: "pods"}, false},
		{authzv1.ResourceAttributes{Verb: "create", Resource: "pods"}, false},
		{authzv1.ResourceAttributes{Verb: "delete", Resource: "pods"}, false},
		{authzv1.ResourceAttributes{Verb: "deletecollection", Resource: "pods"}, false},
		{authzv1.ResourceAttributes{Verb: "get", Resource: "pods", Subresource: "log"}, false},
		{authzv1.ResourceAttributes{Verb: "create", Resource: "pods", Subresource: "exec"}, false},
		{authzv1.ResourceAttributes{Verb: "create", Resource: "pods", Subresource: "eviction"}, false},
		{authzv1.ResourceAttributes{Verb: "update", Resource: "pods", Subresource: "status"}, false},
		{authzv1.ResourceAttributes{Verb: "list", Resource: "secrets"}, false},
		{authzv1.ResourceAttributes{Verb: "get", Resource: "configmaps"}, false},
		{authzv1.ResourceAttributes{Verb: "list", Resource: "nodes"}, false},
		{authzv1.ResourceAttributes{Verb: "get", Resource: "nodes", Subresource: "proxy"}, false},
		{authzv1.ResourceAttributes{Verb: "list", Group: "apps", Resource: "daemonsets"}, false},
		{authzv1.ResourceAttributes{Verb: "escalate", Group: "rbac.authorization.k8s.io", Resource: "clusterroles"}, false},
		{authzv1.ResourceAttributes{Verb: "impersonate", Resource: "serviceaccounts"}, false},
		{authzv1.ResourceAttributes{Verb: "create", Resource: "serviceaccounts", Subresource: "token"}, false},
	}
	for _, r := range reviews {
		attr := r.attr
		self, err := sa.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authzv1.SelfSubjectAccessReview{
			Spec: authzv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &attr},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("SelfSubjectAccessReview %+v: %v", attr, err)
		}
		other, err := admin.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{
			Spec: authzv1.SubjectAccessReviewSpec{ResourceAttributes: &attr, User: user, Groups: groups},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("SubjectAccessReview %+v: %v", attr, err)
		}
		if self.Status.Allowed != r.allowed || other.Status.Allowed != r.allowed {
			t.Errorf("%s %s/%s in %q: allowed %v (self), %v (subject); want %v (%s)", attr.Verb, attr.Resource, attr.Subresource,
				attr.Namespace, self.Status.Allowed, other.Status.Allowed, r.allowed, self.Status.Reason)
		}
	}

	// No more: the service account's resource rules, less those of a
	// service account without bindings (what every authenticated user
	// may do), are get, list and watch on pods.
	rulesOf := func(cs kubernetes.Interface) map[apiRule]bool {
		review, err := cs.AuthorizationV1().SelfSubjectRulesReviews().Create(ctx, &authzv1.SelfSubjectRulesReview{
			Spec: authzv1.SelfSubjectRulesReviewSpec{Namespace: ns},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("SelfSubjectRulesReview: %v", err)
		}
		if review.Status.Incomplete {
			t.Fatalf("SelfSubjectRulesReview incomplete: %s", review.Status.EvaluationError)
		}
		out := make(map[apiRule]bool)
		for _, r := range review.Status.ResourceRules {
			if len(r.ResourceNames) > 0 {
				continue // named objects only; none of the tracer's
			}
			for _, g := range r.APIGroups {
				for _, res := range r.Resources {
					for _, v := range r.Verbs {
						out[apiRule{g, res, v}] = true
					}
				}
			}
		}
		return out
	}
	nobody := kubernetes.NewForConfigOrDie(kubetest.AsServiceAccount(c.admin, ns, "nobody"))
	baseline := rulesOf(nobody)
	var extra []string
	for r := range rulesOf(sa) {
		if !baseline[r] {
			extra = append(extra, fmt.Sprintf("%s %s/%s", r.verb, r.group, r.resource))
		}
	}
	slices.Sort(extra)
	if want := []string{"get /pods", "list /pods", "watch /pods"}; !slices.Equal(extra, want) {
		t.Errorf("rules beyond an unbound service account's: %v, want %v", extra, want)
	}
}
