package sim

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

// realEnvoy is a real Envoy process (Options.EnvoyBin) in the gateway group beside the
// modelled ones: a share of the users' requests goes through it, so that the invariants are
// checked against Envoy itself and the model is held to it. Faults that slow or reconnect an
// Envoy touch only the modelled ones.
type realEnvoy struct {
	cmd    *exec.Cmd
	done   chan struct{}
	listen int // the listener port the control plane gives every Envoy
	admin  int
}

// realBootstrap points delta ADS at the control plane, as envoy/bootstrap.yaml does.
const realBootstrap = `node: {id: %q, cluster: %q}
dynamic_resources:
  ads_config:
    api_type: DELTA_GRPC
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services: [{envoy_grpc: {cluster_name: xds_cluster}}]
  lds_config: {ads: {}, resource_api_version: V3}
  cds_config: {ads: {}, resource_api_version: V3}
static_resources:
  clusters:
  - name: xds_cluster
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: xds_cluster
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: %s}}}}]}]
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: %d}}
`

func (s *Sim) startRealEnvoy(listen int) (*realEnvoy, error) {
	admin, err := freePort()
	if err != nil {
		return nil, err
	}
	_, xdsPort, err := net.SplitHostPort(s.cpAddr(0))
	if err != nil {
		return nil, err
	}
	cfg := filepath.Join(s.dir, "envoy-real.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(realBootstrap, "envoy-real", "gw", xdsPort, admin)), 0o600); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(s.dir, "envoy-real.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(s.opts.EnvoyBin, "-c", cfg, //nolint:gosec // G204: the Envoy binary the operator of the run named "--concurrency", "1", "--disable-hot-restart",
		"--base-id", strconv.Itoa(int(s.opts.Seed%1000)+1000), "--log-level", "warn")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return nil, fmt.Errorf("start envoy %s: %w", s.opts.EnvoyBin, err)
	}
	r := &realEnvoy{cmd: cmd, done: make(chan struct{}), listen: listen, admin: admin}
	go func() {
		_ = cmd.Wait()
		_ = logf.Close()
		close(r.done)
	}()
	return r, nil
}

// serve sends one request through the real Envoy. What Envoy did inside (the override, the
// hosts tried) is not visible: the response says only who answered.
func (r *realEnvoy) serve(ctx context.Context, client *http.Client, req request) (response, error) {
	hr, err := http.NewRequestWithContext(ctx, req.method, "http://127.0.0.1:"+strconv.Itoa(r.listen)+req.path, nil)
	if err != nil {
		return response{}, err
	}
	hr.Host = req.host
	hr.Header = req.header.Clone()
	hr.Header.Set("X-Forwarded-For", req.sourceIP)
	resp, err := client.Do(hr)
	if err != nil {
		return response{}, err
	}
	_ = resp.Body.Close()
	out := response{status: resp.StatusCode, header: resp.Header, route: "(real Envoy)", override: "(real Envoy)",
		upstream: resp.Header.Get(serverHeader)}
	if out.upstream == "" && resp.StatusCode >= 500 {
		out.flag = "local"
	}
	return out, nil
}

func (r *realEnvoy) stop() {
	_ = r.cmd.Process.Kill()
	select {
	case <-r.done:
	case <-time.After(5 * time.Second):
	}
}
