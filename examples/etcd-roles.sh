#!/bin/sh
# etcd-roles.sh creates Tether's least-privilege etcd users and roles, then enables auth.
#
#   tether-controlplane  read on $PREFIX/ (lists and watches the registry), read-write on
#                        $PREFIX/replicas/ only (each replica's report of what its Envoys hold,
#                        under its own lease, so that replicas wait for each other's Envoys)
#   tether-agent         read-write on $PREFIX/instances/ only (cannot touch service configs),
#                        read on $PREFIX/drains/ (to report the operator's drains of its instance)
#   tether-operator      read on $PREFIX/, read-write on $PREFIX/drains/ only: drains and undrains
#                        instances (tether-controlplane drain) but cannot write instances or
#                        service configurations; give a person who must also configure services
#                        the root user, or a role of your own with $PREFIX/services/ as well
#   root                 etcd's administrator (required by etcd before auth can be enabled)
#
# Run it once against a cluster whose auth is not enabled yet, with etcdctl v3 (or, from a
# clone, none: go tool etcdctl is used) and the
# connection settings in the environment, e.g.
#   ETCDCTL_ENDPOINTS=https://10.0.0.1:2379 ETCDCTL_CACERT=ca.pem \
#   ETCDCTL_CERT=admin.pem ETCDCTL_KEY=admin-key.pem \
#   ROOT_PASSWORD=... CONTROLPLANE_PASSWORD=... AGENT_PASSWORD=... OPERATOR_PASSWORD=... \
#   ./examples/etcd-roles.sh
# Passwords reach etcdctl on its standard input (printf is a shell builtin), never on a
# command line where process listings would show them; they must not contain spaces.
# The commands below are applied verbatim by the tests (internal/etcdtest.ApplyRolesScript).
set -eu

# Without an installed etcdctl, use etcd's own at the version Tether uses (go.mod's tool
# directive; needs Go and this repository).
if ! command -v etcdctl >/dev/null 2>&1; then
  ETCDCTL_BIN=$(go -C "$(dirname "$0")/.." tool -n etcdctl) ||
    { echo "etcd-roles.sh: no etcdctl on PATH, and go tool etcdctl failed: install etcdctl v3" >&2; exit 1; }
  etcdctl() { "$ETCDCTL_BIN" "$@"; }
fi

PREFIX="${TETHER_PREFIX:-/tether}"
: "${ROOT_PASSWORD:?set ROOT_PASSWORD}"
: "${CONTROLPLANE_PASSWORD:?set CONTROLPLANE_PASSWORD}"
: "${AGENT_PASSWORD:?set AGENT_PASSWORD}"
: "${OPERATOR_PASSWORD:?set OPERATOR_PASSWORD}"

printf '%s\n' "$ROOT_PASSWORD" | etcdctl user add root --interactive=false
etcdctl user grant-role root root

etcdctl role add tether-controlplane
etcdctl role grant-permission tether-controlplane read --prefix=true "$PREFIX/"
etcdctl role grant-permission tether-controlplane readwrite --prefix=true "$PREFIX/replicas/"
printf '%s\n' "$CONTROLPLANE_PASSWORD" | etcdctl user add tether-controlplane --interactive=false
etcdctl user grant-role tether-controlplane tether-controlplane

etcdctl role add tether-agent
etcdctl role grant-permission tether-agent readwrite --prefix=true "$PREFIX/instances/"
etcdctl role grant-permission tether-agent read --prefix=true "$PREFIX/drains/"
printf '%s\n' "$AGENT_PASSWORD" | etcdctl user add tether-agent --interactive=false
etcdctl user grant-role tether-agent tether-agent

etcdctl role add tether-operator
etcdctl role grant-permission tether-operator read --prefix=true "$PREFIX/"
etcdctl role grant-permission tether-operator readwrite --prefix=true "$PREFIX/drains/"
printf '%s\n' "$OPERATOR_PASSWORD" | etcdctl user add tether-operator --interactive=false
etcdctl user grant-role tether-operator tether-operator

etcdctl auth enable
