#!/usr/bin/env bash
# Runs Tether's control plane beside Traefik's etcd provider against one etcd (see main.go and
# docs/performance.md). Not part of make test. Usage, from the repository root:
#
#   TRAEFIK=/path/to/traefik bench/peer/run.sh          # a Traefik v3 binary you have
#   bench/peer/run.sh                                   # builds Traefik from the Go module proxy
#
# Traefik builds as its own main module: its go.mod has replace directives, so `go install
# ...@version` refuses it; the module is downloaded from the proxy and built in a copy.
set -euo pipefail
TRAEFIK_VERSION=${TRAEFIK_VERSION:-v3.6.12}
WORK=${WORK:-$(mktemp -d /tmp/tether-peer.XXXXXX)}
SERVICES=${SERVICES:-10}
SERVERS=${SERVERS:-3}
CHANGES=${CHANGES:-200}

if [ -z "${TRAEFIK:-}" ]; then
  src=$(cd "$WORK" && GOFLAGS=-mod=mod go mod download -json "github.com/traefik/traefik/v3@$TRAEFIK_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  cp -r "$src" "$WORK/traefik-src" && chmod -R u+w "$WORK/traefik-src"
  (cd "$WORK/traefik-src" && go build -ldflags "-X github.com/traefik/traefik/v3/pkg/version.Version=$TRAEFIK_VERSION" \
    -o "$WORK/traefik" ./cmd/traefik)
  TRAEFIK="$WORK/traefik"
fi
"$TRAEFIK" version

go build -o "$WORK/tether-controlplane" ./cmd/tether-controlplane
go build -tags peer -o "$WORK/peer" ./bench/peer
common=(-traefik "$TRAEFIK" -controlplane "$WORK/tether-controlplane" -services "$SERVICES" -servers "$SERVERS" -changes "$CHANGES")
echo "== Traefik with its defaults"
"$WORK/peer" "${common[@]}"
echo "== Traefik tuned: 10 ms throttle, a default certificate"
"$WORK/peer" "${common[@]}" -traefik-throttle 10ms -traefik-default-cert
