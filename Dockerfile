# syntax=docker/dockerfile:1
# tcptrace image: make image (docker build -t $(IMAGE) --build-arg VERSION=$(VERSION) .).
# Needs BuildKit (Docker 23+ default). The eBPF objects are committed, so
# no clang: a static Go build for the target platform, e.g.
# docker buildx build --platform linux/amd64,linux/arm64 .

FROM --platform=$BUILDPLATFORM golang:1.26 AS build
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=dev
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w -X main.version=$VERSION" -o /out/tcptrace ./cmd/tcptrace

# Static base: CA certificates and /etc/passwd, no shell.
FROM gcr.io/distroless/static-debian12:latest
COPY --from=build /out/tcptrace /usr/local/bin/tcptrace
# Root, on purpose: without ambient capabilities only uid 0 gets the
# capabilities a container is given. The DaemonSet drops ALL and adds back
# the few tcptrace needs (deploy/kubernetes/daemonset.yaml).
USER 0:0
ENTRYPOINT ["/usr/local/bin/tcptrace"]
CMD ["closewait", "--output", "json"]
