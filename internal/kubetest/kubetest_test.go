package kubetest

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

func TestMain(m *testing.M) { Main(m) }

// The server is real: a namespace created through it can be read back.
func TestStart(t *testing.T) {
	cfg := Start(t)
	cs := kubernetes.NewForConfigOrDie(cfg)
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kubetest-start"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	list, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ns := range list.Items {
		found = found || ns.Name == "kubetest-start"
	}
	if !found {
		t.Fatalf("namespace kubetest-start not listed among %d", len(list.Items))
	}
	v, err := cs.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("server %s", v.GitVersion)
}

// The impersonated identity is exactly a service account's, and RBAC
// applies to it: allowed what a RoleBinding grants, nothing else.
func TestAsServiceAccount(t *testing.T) {
	admin := Start(t)
	cs := kubernetes.NewForConfigOrDie(admin)
	ctx := context.Background()
	const ns = "kubetest-sa"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sa := kubernetes.NewForConfigOrDie(AsServiceAccount(admin, ns, "reader"))

	review, err := sa.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ui := review.Status.UserInfo
	want := map[string]bool{"system:serviceaccounts": true, "system:serviceaccounts:" + ns: true, "system:authenticated": true}
	if ui.Username != "system:serviceaccount:"+ns+":reader" || len(ui.Groups) != len(want) {
		t.Fatalf("user info %+v", ui)
	}
	for _, g := range ui.Groups {
		if !want[g] {
			t.Fatalf("unexpected group %q in %+v", g, ui)
		}
	}

	if _, err := sa.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("list pods before the binding: %v, want forbidden", err)
	}
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-reader", Namespace: ns},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list"}}},
	}
	if _, err := cs.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-reader", Namespace: ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "pod-reader"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "reader", Namespace: ns}},
	}
	if _, err := cs.RbacV1().RoleBindings(ns).Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The authorizer learns of the binding from its own watch: allowed
	// once it has, which a loaded machine makes later.
	for deadline := time.Now().Add(60 * time.Second); ; {
		_, err := sa.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err == nil {
			break
		}
		if !apierrors.IsForbidden(err) || time.Now().After(deadline) {
			t.Fatalf("list pods with the binding: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := sa.CoreV1().Pods("default").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("list pods in another namespace: %v, want forbidden", err)
	}
	if _, err := sa.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("list namespaces: %v, want forbidden", err)
	}
}

// recordTB stands in for a test's TB to see how Start gives up.
type recordTB struct {
	testing.TB
	skip, fatal string
}

func (r *recordTB) Skipf(format string, args ...any) {
	r.skip = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (r *recordTB) Fatalf(format string, args ...any) {
	r.fatal = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// Without binaries Start skips, saying how to build them; with
// RequireEnv=1 it fails instead.
func TestAssetsMissing(t *testing.T) {
	t.Setenv(AssetsEnv, t.TempDir())
	for _, require := range []string{"", "1"} {
		t.Setenv(RequireEnv, require)
		r := &recordTB{TB: t}
		done := make(chan struct{})
		go func() {
			defer close(done)
			Start(r)
			t.Error("Start returned without binaries")
		}()
		<-done
		msg := r.skip
		if require == "1" {
			msg = r.fatal
			if r.skip != "" {
				t.Errorf("skipped with %s=1: %s", RequireEnv, r.skip)
			}
		} else if r.fatal != "" {
			t.Errorf("failed without %s: %s", RequireEnv, r.fatal)
		}
		if !strings.Contains(msg, "no etcd in") || (require == "" && !strings.Contains(msg, "scripts/kubebins.sh")) {
			t.Errorf("%s=%q: message %q", RequireEnv, require, msg)
		}
	}
}
