package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/tetherlb/tether/controlplane/translate"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/eventually"

	// The types named in the bootstrap's typed_config fields, registered for protojson.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/downstream_connections/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/fixed_heap/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// The ports of envoy/bootstrap.yaml that a test copy replaces.
const (
	bootstrapXDSPort   = "port_value: 18000"
	bootstrapAdminPort = "port_value: 9901"
)

// envoyBin returns $ENVOY_BIN, or skips the test when it is not set.
func envoyBin(t testing.TB) string {
	t.Helper()
	bin := os.Getenv("ENVOY_BIN")
	if bin == "" {
		t.Skip("ENVOY_BIN not set: skipping the end-to-end tests against a real Envoy")
	}
	return bin
}

// renderBootstrap writes a copy of envoy/bootstrap.yaml pointing at xdsAddr with the admin
// interface on adminPort, checks that it parses and validates as Envoy's Bootstrap, and
// returns its path and the parsed message.
func renderBootstrap(t testing.TB, xdsAddr string, adminPort int) (string, *bootstrapv3.Bootstrap) {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("..", "envoy", "bootstrap.yaml"))
	if err != nil {
		t.Fatalf("read the bootstrap: %v", err)
	}
	host, xdsPort, err := net.SplitHostPort(xdsAddr)
	if err != nil || host != "127.0.0.1" {
		t.Fatalf("xDS address %q: want 127.0.0.1:port, as in the bootstrap (%v)", xdsAddr, err)
	}
	y := string(src)
	for _, r := range [][2]string{
		{bootstrapXDSPort, "port_value: " + xdsPort},
		{bootstrapAdminPort, "port_value: " + strconv.Itoa(adminPort)},
	} {
		if n := strings.Count(y, r[0]); n != 1 {
			t.Fatalf("envoy/bootstrap.yaml holds %q %d times, want once", r[0], n)
		}
		y = strings.Replace(y, r[0], r[1], 1)
	}
	b, err := parseBootstrap([]byte(y))
	if err != nil {
		t.Fatalf("rendered bootstrap: %v\n%s", err, y)
	}
	path := filepath.Join(t.TempDir(), "bootstrap.yaml")
	if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
		t.Fatalf("write the bootstrap: %v", err)
	}
	return path, b
}

// parseBootstrap reads a bootstrap as Envoy would: YAML to JSON, protojson that rejects
// unknown fields, then the protoc-gen-validate rules.
func parseBootstrap(y []byte) (*bootstrapv3.Bootstrap, error) {
	j, err := yaml.YAMLToJSON(y)
	if err != nil {
		return nil, fmt.Errorf("YAML to JSON: %w", err)
	}
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(j, &b); err != nil {
		return nil, fmt.Errorf("not a valid envoy.config.bootstrap.v3.Bootstrap: %w", err)
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("validation: %w", err)
	}
	return &b, nil
}

// plainGet is a GET without cookies, bounded by 5 s.
func plainGet(url string) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", fmt.Errorf("GET %s: %w", url, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return resp.StatusCode, "", fmt.Errorf("GET %s: read body: %w", url, err)
	}
	return resp.StatusCode, string(body), nil
}

// envoyDrainSeconds is Envoy's --drain-time-s in the tests.
const envoyDrainSeconds = 2

// envoy is a running Envoy.
type envoy struct {
	proc  *proc
	admin string // http://127.0.0.1:port
	base  string // the listener, http://127.0.0.1:port
}

// envoyEnv starts an environment by cfg (newEnvWith) and an Envoy on it, or skips the test
// when there is no Envoy to run.
func envoyEnv(t testing.TB, cfg envConfig) (*env, *envoy) {
	t.Helper()
	bin := envoyBin(t)
	e := newEnvWith(t, cfg)
	return e, e.startEnvoy(t, bin)
}

// startEnvoy runs Envoy from a rendered copy of envoy/bootstrap.yaml and waits until it is
// live, sees app1..app3 healthy, and answers on the listener.
func (e *env) startEnvoy(t testing.TB, bin string) *envoy {
	t.Helper()
	adminPort := etcdtest.FreePort(t)
	path, _ := renderBootstrap(t, e.cp.XDSAddr(), adminPort)
	// A random base id keeps this Envoy's shared memory apart from any other on the host.
	baseID := 1000 + rand.IntN(1_000_000)
	// A short drain time: were a registry change to modify the listener, Envoy would close
	// the connections of its old filter chain after this, and the tests holding a WebSocket
	// across changes would see it (Envoy's default is 600 s).
	p := startProc(t, "envoy", &output{}, 10*time.Second, bin,
		"-c", path, "--service-node", "e2e", "--service-cluster", "default",
		"--log-level", "warn", "--base-id", strconv.Itoa(baseID), "--drain-time-s", strconv.Itoa(envoyDrainSeconds))
	ev := &envoy{proc: p, admin: fmt.Sprintf("http://127.0.0.1:%d", adminPort), base: fmt.Sprintf("http://127.0.0.1:%d", e.listenPort)}

	alive := func() {
		if done, err := p.exited(); done {
			t.Fatalf("Envoy exited: %v", err)
		}
	}
	eventually.Saying(t, "Envoy's admin /ready answers 200", time.Minute, func() (bool, string) {
		alive()
		status, body, err := plainGet(ev.admin + "/ready")
		if err != nil {
			return false, err.Error()
		}
		return status == http.StatusOK, fmt.Sprintf("%d %s", status, strings.TrimSpace(body))
	})
	e.waitEnvoy(t, ev, "app1..app3 healthy in Envoy", allHealthy())
	eventually.Saying(t, "the listener forwards /healthcheck", 15*time.Second, func() (bool, string) {
		alive()
		status, body, err := plainGet(ev.base + "/healthcheck")
		if err != nil {
			return false, err.Error()
		}
		return status == http.StatusAccepted, fmt.Sprintf("%d %.200s", status, body)
	})
	return ev
}

// adminClusters is the part of Envoy's GET /clusters?format=json (envoy.admin.v3.Clusters,
// with proto field names) that the tests read.
type adminClusters struct {
	ClusterStatuses []struct {
		Name         string `json:"name"`
		HostStatuses []struct {
			Address struct {
				SocketAddress struct {
					Address   string `json:"address"`
					PortValue int    `json:"port_value"`
				} `json:"socket_address"`
			} `json:"address"`
			HealthStatus struct {
				FailedActiveHealthCheck    bool   `json:"failed_active_health_check"`
				FailedOutlierCheck         bool   `json:"failed_outlier_check"`
				PendingActiveHC            bool   `json:"pending_active_hc"`
				PendingDynamicRemoval      bool   `json:"pending_dynamic_removal"`
				ExcludedViaImmediateHCFail bool   `json:"excluded_via_immediate_hc_fail"`
				EDSHealthStatus            string `json:"eds_health_status"`
			} `json:"health_status"`
		} `json:"host_statuses"`
	} `json:"cluster_statuses"`
}

// envoyEndpoints returns how Envoy sees the service's hosts: HEALTHY only when EDS says so and
// the active health check has passed; otherwise the EDS status (DRAINING, ...) or the flag
// that keeps the host out.
func (e *env) envoyEndpoints(ev *envoy) (endpointStates, error) {
	status, body, err := plainGet(ev.admin + "/clusters?format=json")
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("GET /clusters: status %d: %.200s", status, body)
	}
	var cs adminClusters
	if err := json.Unmarshal([]byte(body), &cs); err != nil {
		return nil, fmt.Errorf("decode /clusters?format=json: %w", err)
	}
	out := endpointStates{}
	for _, c := range cs.ClusterStatuses {
		if c.Name != translate.ClusterName(e.service) {
			continue
		}
		for _, h := range c.HostStatuses {
			addr := net.JoinHostPort(h.Address.SocketAddress.Address, strconv.Itoa(h.Address.SocketAddress.PortValue))
			key := addr
			if n, ok := e.byAddr[addr]; ok {
				key = n
			}
			hs := h.HealthStatus
			state := "HEALTHY"
			switch {
			case hs.EDSHealthStatus != "" && hs.EDSHealthStatus != "HEALTHY":
				state = hs.EDSHealthStatus
			case hs.FailedActiveHealthCheck:
				state = "FAILED_ACTIVE_HEALTH_CHECK"
			case hs.PendingActiveHC:
				state = "PENDING_ACTIVE_HC"
			case hs.FailedOutlierCheck:
				state = "FAILED_OUTLIER_CHECK"
			case hs.ExcludedViaImmediateHCFail:
				state = "EXCLUDED_VIA_IMMEDIATE_HC_FAIL"
			case hs.PendingDynamicRemoval:
				state = "PENDING_DYNAMIC_REMOVAL"
			}
			out[key] = state
		}
	}
	return out, nil
}

// waitEnvoy waits until Envoy sees exactly the want endpoint states.
func (e *env) waitEnvoy(t testing.TB, ev *envoy, what string, want endpointStates) {
	t.Helper()
	eventually.Saying(t, what, 30*time.Second, func() (bool, string) {
		if done, err := ev.proc.exited(); done {
			t.Fatalf("Envoy exited: %v", err)
		}
		got, err := e.envoyEndpoints(ev)
		if err != nil {
			return false, err.Error()
		}
		return statesAre(got, want), fmt.Sprint(got)
	})
}
