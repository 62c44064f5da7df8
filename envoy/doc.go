// Package envoy holds Tether's Envoy bootstrap files: bootstrap.yaml for a local
// run (control plane at 127.0.0.1:18000) and bootstrap-compose.yaml for the
// docker-compose demo (control plane at controlplane:18000). Both point ADS, in
// its incremental (delta) gRPC variant, at the control plane, which supplies the
// listener, routes, clusters and endpoints. The package has no Go code; its
// tests check the files against Envoy's protobuf schema.
package envoy
