#!/usr/bin/env bash
# Local demo without Docker: the control plane on its embedded etcd, three sessionapp
# instances with their agents on loopback, and Envoy when an `envoy` binary is on PATH.
# Ctrl-C stops everything: agents drain first, then the apps, then the control plane.
set -euo pipefail
# Job control puts every background process in its own process group, so a Ctrl-C in the
# terminal reaches only this script, which then stops the others in order.
set -m
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
DATA=$(mktemp -d -t tether-demo.XXXXXX)
ADMIN=127.0.0.1:18001
agents=() apps=() others=()

stop() {
  trap - EXIT INT TERM
  echo; echo "demo: stopping (agents drain first)..."
  [ ${#agents[@]} -gt 0 ] && kill -TERM "${agents[@]}" 2>/dev/null || true
  for p in "${agents[@]}"; do wait "$p" 2>/dev/null || true; done
  [ ${#apps[@]} -gt 0 ] && kill -TERM "${apps[@]}" 2>/dev/null || true
  [ ${#others[@]} -gt 0 ] && kill -TERM "${others[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$DATA"
  echo "demo: stopped"
}
trap stop EXIT INT TERM

for b in tether-controlplane tether-agent sessionapp; do
  [ -x "$BIN/$b" ] || { echo "demo: $BIN/$b is missing: run make build (or make demo)" >&2; exit 2; }
done

# listening HOST PORT: whether something accepts connections there.
listening() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# Every port the demo takes must be free: a control plane left running (`make run`) would
# answer the readiness check below in this demo's place, and every part would then fail.
busy=()
for p in 2379 2380 18000 18001 5001 5002 5003 18101 18102 18103 10000 9901; do
  listening 127.0.0.1 "$p" && busy+=("127.0.0.1:$p")
done
if [ ${#busy[@]} -gt 0 ]; then
  echo "demo: ports in use: ${busy[*]}" >&2
  echo "demo: stop what holds them first: a control plane from \`make run\` (Ctrl-C in its terminal), another demo, or docker compose down" >&2
  trap - EXIT INT TERM; rm -rf "$DATA"
  exit 1
fi

# The demo's backends and Envoy share this host: allow loopback backends (never in production).
"$BIN/tether-controlplane" --data-dir "$DATA/etcd" --admin-addr "$ADMIN" --allow-loopback-backends --log-format console --log-level warn &
cp=$!
others+=($cp)
ready=
for _ in $(seq 1 120); do
  # This demo's own control plane: one that has exited cannot be ready.
  kill -0 "$cp" 2>/dev/null || { echo "demo: the control plane exited (its error is above)" >&2; exit 1; }
  curl -fsS "http://$ADMIN/readyz" >/dev/null 2>&1 && { ready=1; break; }
  sleep 0.5
done
[ -n "$ready" ] || { echo "demo: control plane not ready after 60 s" >&2; exit 1; }

for i in 1 2 3; do
  port=500$i
  "$BIN/sessionapp" --listen "127.0.0.1:$port" --name "app$i" &
  apps+=($!)
  for _ in $(seq 1 50); do listening 127.0.0.1 "$port" && break; sleep 0.1; done
  "$BIN/tether-agent" --service app --id "app$i" --address 127.0.0.1 --port "$port" \
    --health-url "http://127.0.0.1:$port/healthcheck" --sessions-url "http://127.0.0.1:$port/sessions" \
    --label version=1 --max-sessions 100 --interval 1s --drain-timeout 5s --metrics-addr "127.0.0.1:$((18100 + i))" \
    --log-format console --log-level warn &
  agents+=($!)
done

if command -v envoy >/dev/null 2>&1; then
  envoy -c envoy/bootstrap.yaml --service-node envoy-demo --service-cluster default --log-level warn &
  others+=($!)
  envoy_line="  through Envoy:   http://127.0.0.1:10000/   (Envoy admin http://127.0.0.1:9901/)"
else
  envoy_line="  no envoy on PATH: install Envoy 1.3x (https://www.envoyproxy.io/docs/envoy/latest/start/install)
                   and run: envoy -c envoy/bootstrap.yaml --service-cluster default"
fi

cat <<MSG

Tether demo is up.
  monitor:         http://$ADMIN/        (/metrics, /debug/config, /api/state)
  apps directly:   http://127.0.0.1:5001/  http://127.0.0.1:5002/  http://127.0.0.1:5003/
$envoy_line
  status:          $BIN/tether-controlplane status --allow-loopback-backends
  registry:        go tool etcdctl --endpoints 127.0.0.1:2379 get --prefix /tether/   (or an installed etcdctl)
  fill app1:       curl -X POST 'http://127.0.0.1:5001/load?sessions=150'   (over its 100 sessions: full)
  empty it:        curl -X POST 'http://127.0.0.1:5001/load?sessions=0'
  drain app2:      $BIN/tether-controlplane drain app/app2        (undo: add --undo)
  drain a version: $BIN/tether-controlplane drain app --label version=1 --wait   (see docs/deploy.md)
Press Ctrl-C to stop.
MSG
wait "${others[0]}"
