// Package deploy holds tcptrace's deployment files: the Kubernetes
// manifests (kubernetes/), the Prometheus alerting rules (prometheus/) and
// a Grafana dashboard (grafana/). The Go code gives tests access to them:
// Objects for an API server test, MetricNames for a test against a real
// scrape. deploy_test.go checks the files themselves.
package deploy

import (
	"bufio"
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io"
	"path"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

//go:embed kubernetes/*.yaml kubernetes/prometheus-operator/*.yaml
var manifests embed.FS

// Objects returns the objects of the base kustomization, deploy/kubernetes,
// in the order its kustomization.yaml lists their files (the Namespace
// first): what kubectl apply -k deploy/kubernetes creates. That
// kustomization only lists files, with no transformers (a test keeps it
// so), so the files are the objects.
func Objects() ([]*unstructured.Unstructured, error) {
	return objects("kubernetes")
}

// PrometheusOperatorObjects returns the objects of
// deploy/kubernetes/prometheus-operator: a PodMonitor and a PrometheusRule,
// which need the prometheus-operator CRDs (monitoring.coreos.com/v1).
func PrometheusOperatorObjects() ([]*unstructured.Unstructured, error) {
	return objects("kubernetes/prometheus-operator")
}

// kustomization is the part of a kustomization.yaml that Objects reads;
// decoding is strict, so a field it would ignore is an error.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
}

func objects(dir string) ([]*unstructured.Unstructured, error) {
	data, err := manifests.ReadFile(path.Join(dir, "kustomization.yaml"))
	if err != nil {
		return nil, err
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(data, &k); err != nil {
		return nil, fmt.Errorf("%s/kustomization.yaml: %w", dir, err)
	}
	var objs []*unstructured.Unstructured
	for _, res := range k.Resources {
		name := path.Join(dir, res)
		data, err := manifests.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("%s/kustomization.yaml lists %s: %w", dir, res, err)
		}
		docs, err := Documents(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		for _, doc := range docs {
			u := &unstructured.Unstructured{}
			if err := u.UnmarshalJSON(doc); err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			objs = append(objs, u)
		}
	}
	return objs, nil
}

// Documents splits a YAML stream at its "---" lines and returns each
// document as JSON, skipping empty ones. Duplicate keys are errors.
func Documents(data []byte) ([][]byte, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		j, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			return nil, err
		}
		if t := bytes.TrimSpace(j); len(t) == 0 || string(t) == "null" {
			continue // only comments
		}
		docs = append(docs, j)
	}
}
