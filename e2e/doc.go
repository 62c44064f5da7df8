// Package e2e holds Tether's end-to-end tests: a real embedded etcd, the control plane,
// three examples/sessionapp processes with their agents, and a real Envoy started from a
// copy of envoy/bootstrap.yaml rendered with free loopback ports.
//
// The tests against Envoy run only when ENVOY_BIN names an Envoy binary (1.3x):
//
//	ENVOY_BIN=/usr/local/bin/envoy go test -race -count=1 -run TestEnvoy -v ./e2e/
//
// Without it they skip; TestSetupWithoutEnvoy still runs the same setup and checks it with
// the simulated Envoy of internal/xdsclient. Everything listens on 127.0.0.1 except Envoy's
// listener, which the control plane binds to 0.0.0.0 (it has no listen-address option).
package e2e
