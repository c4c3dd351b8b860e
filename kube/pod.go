package kube

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tcptrace/tcptrace/events"
)

// build makes a pod's answers: one without a container, and one per
// container name shared by all the ids that container has had (current and
// last terminated: a restarted container's old sockets may still report).
func build(node string, pod *corev1.Pod) *entry {
	kind, name := workload(pod)
	base := &events.K8s{
		Node:         node,
		Namespace:    pod.Namespace,
		Pod:          pod.Name,
		WorkloadKind: kind,
		WorkloadName: name,
	}
	e := &entry{resourceVersion: pod.ResourceVersion, pod: base}
	byName := map[string]*events.K8s{}
	for _, list := range [][]corev1.ContainerStatus{
		pod.Status.InitContainerStatuses,
		pod.Status.ContainerStatuses,
		pod.Status.EphemeralContainerStatuses,
	} {
		for i := range list {
			st := &list[i]
			ids := [2]string{st.ContainerID}
			if t := st.LastTerminationState.Terminated; t != nil {
				ids[1] = t.ContainerID
			}
			for _, raw := range ids {
				id := containerID(raw)
				if id == "" {
					continue
				}
				k := byName[st.Name]
				if k == nil {
					c := *base
					c.Container = st.Name
					k = &c
					byName[st.Name] = k
				}
				if e.byID == nil {
					e.byID = map[string]*events.K8s{}
				}
				e.byID[id] = k
			}
		}
	}
	return e
}

// containerID returns the id in a status's "<runtime>://<id>"
// (containerd://, cri-o://, docker://, or any other runtime's scheme): the
// id the runtime also puts in the container's cgroup path.
func containerID(s string) string {
	if _, id, ok := strings.Cut(s, "://"); ok {
		return id
	}
	return s
}

// workload names the pod's controller from its owner references alone, so
// that no ReplicaSet or Job has to be read (or allowed by RBAC): a
// ReplicaSet named "<name>-<pod-template-hash>" is the Deployment's <name>,
// as the Deployment controller names them. Everything else is reported as
// owned: a Job stays a Job, because a pod carries nothing that tells a
// CronJob's Job (named "<cronjob>-<minutes since epoch>") from a Job named
// so by hand. No controller, no workload.
func workload(pod *corev1.Pod) (kind, name string) {
	ref := metav1.GetControllerOfNoCopy(pod)
	if ref == nil {
		return "", ""
	}
	if group, _, _ := strings.Cut(ref.APIVersion, "/"); ref.Kind == "ReplicaSet" && group == "apps" {
		if h := pod.Labels["pod-template-hash"]; h != "" {
			if d, ok := strings.CutSuffix(ref.Name, "-"+h); ok && d != "" {
				return "Deployment", d
			}
		}
	}
	return ref.Kind, ref.Name
}

// trim drops what build does not read before the informer stores a pod:
// specs, annotations and managed fields are most of a pod's size, and a
// node's worth of them would otherwise sit in memory for nothing.
func trim(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	pod.ManagedFields = nil
	pod.Annotations = nil
	pod.Spec = corev1.PodSpec{NodeName: pod.Spec.NodeName}
	pod.Status = corev1.PodStatus{
		InitContainerStatuses:      trimStatuses(pod.Status.InitContainerStatuses),
		ContainerStatuses:          trimStatuses(pod.Status.ContainerStatuses),
		EphemeralContainerStatuses: trimStatuses(pod.Status.EphemeralContainerStatuses),
	}
	return pod, nil
}

func trimStatuses(in []corev1.ContainerStatus) []corev1.ContainerStatus {
	if len(in) == 0 {
		return nil
	}
	out := make([]corev1.ContainerStatus, len(in))
	for i, st := range in {
		out[i] = corev1.ContainerStatus{Name: st.Name, ContainerID: st.ContainerID}
		if t := st.LastTerminationState.Terminated; t != nil && t.ContainerID != "" {
			out[i].LastTerminationState.Terminated = &corev1.ContainerStateTerminated{ContainerID: t.ContainerID}
		}
	}
	return out
}
