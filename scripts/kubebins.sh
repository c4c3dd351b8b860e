#!/usr/bin/env bash
# Builds the etcd and kube-apiserver that the Kubernetes tests run against,
# each in a throwaway module of its own (the project never depends on
# k8s.io/kubernetes), and caches them: a cold build takes about 11 minutes
# on 2 cores, a warm one nothing. Prints the directory that holds both
# (give it to the tests as TCPTRACE_KUBE_ASSETS).
set -euo pipefail
export PATH="$PATH:/usr/local/go/bin"
K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
cache=${TCPTRACE_KUBE_CACHE:-$HOME/.cache/tcptrace-kube}
out="$cache/k8s-$K8S_VERSION-etcd-$ETCD_VERSION"
if [ -x "$out/kube-apiserver" ] && [ -x "$out/etcd" ]; then
	echo "$out"
	exit 0
fi
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export GOFLAGS=-mod=mod GOTOOLCHAIN=local

if [ ! -x "$out/etcd" ]; then
	mkdir "$work/etcd" && cd "$work/etcd"
	go mod init etcdbuild >/dev/null 2>&1
	printf 'package tools\nimport _ "go.etcd.io/etcd/server/v3"\n' >tools.go
	go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2
	go build -ldflags "-s -w" -o "$out/etcd.tmp" go.etcd.io/etcd/server/v3 >&2
	mv "$out/etcd.tmp" "$out/etcd"
fi

if [ ! -x "$out/kube-apiserver" ]; then
	mkdir "$work/k8s" && cd "$work/k8s"
	go mod init k8sbuild >/dev/null 2>&1
	go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >dl.json
	gomod=$(sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' dl.json)
	minor=${K8S_VERSION#v1.}
	# k8s.io/kubernetes replaces its staging modules with ./staging paths;
	# point each at the published module of the same release instead.
	{
		echo "require k8s.io/kubernetes $K8S_VERSION"
		grep -E '^\s*k8s.io/[a-z0-9-]+ => ./staging' "$gomod" | awk -v v="v0.$minor" '{print "replace " $1 " => " $1 " " v}'
	} >>go.mod
	printf 'package tools\nimport _ "k8s.io/kubernetes/cmd/kube-apiserver"\n' >tools.go
	go mod tidy >&2
	go build -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor%%.*}" \
		-o "$out/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver >&2
	mv "$out/kube-apiserver.tmp" "$out/kube-apiserver"
fi
echo "$out"
