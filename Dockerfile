# syntax=docker/dockerfile:1
#
# One Dockerfile, one target per binary:
#   docker build --target controlplane -t tether/controlplane .
#   docker build --target agent        -t tether/agent .
#   docker build --target sessionapp   -t tether/sessionapp .
# Static binaries (CGO_ENABLED=0) on distroless, running as the nonroot user (65532).

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION} AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-trimpath
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .

FROM build AS build-controlplane
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    go build -ldflags="-s -w" -o /out/tether-controlplane ./cmd/tether-controlplane

FROM build AS build-agent
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    go build -ldflags="-s -w" -o /out/tether-agent ./cmd/tether-agent

FROM build AS build-sessionapp
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    go build -ldflags="-s -w" -o /out/sessionapp ./examples/sessionapp

FROM gcr.io/distroless/static-debian12:nonroot AS controlplane
COPY --from=build-controlplane /out/tether-controlplane /usr/local/bin/tether-controlplane
USER nonroot:nonroot
# xDS (gRPC) and admin HTTP (/metrics, /healthz, /readyz, /debug/config). The binary's
# default xDS address is loopback, which no Envoy reaches in a container: listen on every
# address here (--xds-addr on the command line wins; add --xds-tls-cert/--xds-tls-key).
ENV TETHER_XDS_ADDR=:18000
EXPOSE 18000 18001
ENTRYPOINT ["/usr/local/bin/tether-controlplane"]

FROM gcr.io/distroless/static-debian12:nonroot AS agent
COPY --from=build-agent /out/tether-agent /usr/local/bin/tether-agent
USER nonroot:nonroot
EXPOSE 9100
ENTRYPOINT ["/usr/local/bin/tether-agent"]

FROM gcr.io/distroless/static-debian12:nonroot AS sessionapp
COPY --from=build-sessionapp /out/sessionapp /usr/local/bin/sessionapp
USER nonroot:nonroot
EXPOSE 5000
ENTRYPOINT ["/usr/local/bin/sessionapp"]
CMD ["--listen=0.0.0.0:5000"]
