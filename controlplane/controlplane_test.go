package controlplane_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tetherlb/tether/controlplane"
	"github.com/tetherlb/tether/controlplane/admin"
	"github.com/tetherlb/tether/internal/cptest"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/eventually"
	"github.com/tetherlb/tether/internal/xdsclient"
)

const serviceJSON = `{
  "domains": ["*"],
  "pathPrefix": "/",
  "affinity": {"mode": "cookie", "cookieName": "tether-app", "cookiePath": "/", "cookieTTL": "0s", "strict": false},
  "websocket": true,
  "retryInitialOn503": {"enabled": true, "attempts": 2, "perTryTimeout": "15s"},
  "lbPolicy": "least_request",
  "weights": "load",
  "healthCheck": {"path": "/healthcheck", "interval": "5s", "timeout": "2s", "expectedStatuses": [200, 202]},
  "overload": {"status": 503, "retryAfterSeconds": 600, "returnUrl": ""},
  "limits": {"maxConnections": 0, "maxRequests": 0, "maxPendingRequests": 0},
  "slowStart": "0s"
}`

func instanceJSON(id string, port int, state string, sessions int) string {
	return fmt.Sprintf(`{
  "id": %q, "address": "127.0.0.1", "port": %d, "zone": "eu-west-1a", "labels": {"version": "1.4.2"},
  "thresholds": {"maxSessions": 500, "maxCPU": 85, "maxMemory": 70, "maxMemoryMB": 0},
  "load": {"sessions": %d, "cpu": 37.5, "memory": 41.0, "memoryMB": 812},
  "state": %q, "reason": "", "updatedAt": "2026-11-22T15:40:00Z",
  "agent": {"version": "0.1.0", "startedAt": "2026-11-22T15:00:00Z"}
}`, id, port, sessions, state)
}

// twoInstances starts etcd holding service app with instances a1 (available, port 5001) and
// a2 (full, port 5002).
func twoInstances(t testing.TB) *etcdtest.Server {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	put(t, cli, "/tether/services/app", serviceJSON)
	put(t, cli, "/tether/instances/app/a1", instanceJSON("a1", 5001, "available", 120))
	put(t, cli, "/tether/instances/app/a2", instanceJSON("a2", 5002, "full", 500))
	return srv
}

func testLogger(t testing.TB) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
}

// startCP is cptest.Start with nothing but the etcd endpoints.
func startCP(t testing.TB, endpoints []string) *controlplane.ControlPlane {
	t.Helper()
	return cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: endpoints}})
}

// waitReady waits for cp's first listing of the registry.
func waitReady(t *testing.T, cp *controlplane.ControlPlane, within time.Duration, who string) {
	t.Helper()
	select {
	case <-cp.Ready():
	case <-time.After(within):
		t.Fatalf("%s not ready within %s", who, within)
	}
}

func connect(t *testing.T, cp *controlplane.ControlPlane, v xdsclient.Variant, node, group string) *xdsclient.Client {
	t.Helper()
	c := xdsclient.New(v, node, group)
	run(t, cp, c)
	return c
}

// run runs c against cp until the test ends. A stream that fails before then ends every
// WaitFor on c at once with the stream's error (xdsclient.ErrStopped).
func run(t *testing.T, cp *controlplane.ControlPlane, c *xdsclient.Client) {
	t.Helper()
	runClient(t, c, cp.XDSAddr(), nil)
}

func put(t testing.TB, cli *clientv3.Client, key, val string, opts ...clientv3.OpOption) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Put(ctx, key, val, opts...)
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	return resp.Header.Revision
}

func waitFor(t *testing.T, c *xdsclient.Client, what string, cond func(xdsclient.View) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := c.WaitFor(ctx, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// endpoints returns host port -> (health, weight) of every endpoint the client holds.
func endpoints(v xdsclient.View) map[uint32]*endpointv3.LbEndpoint {
	out := map[uint32]*endpointv3.LbEndpoint{}
	for _, m := range v.Resources[resourcev3.EndpointType] {
		for _, l := range m.(*endpointv3.ClusterLoadAssignment).GetEndpoints() {
			for _, e := range l.GetLbEndpoints() {
				out[e.GetEndpoint().GetAddress().GetSocketAddress().GetPortValue()] = e
			}
		}
	}
	return out
}

func hasStatefulSessionFilter(v xdsclient.View) bool {
	for _, m := range v.Resources[resourcev3.ListenerType] {
		for _, fc := range m.(*listenerv3.Listener).GetFilterChains() {
			for _, f := range fc.GetFilters() {
				var h hcm.HttpConnectionManager
				if f.GetTypedConfig().UnmarshalTo(&h) != nil {
					continue
				}
				hasWS := false
				for _, u := range h.GetUpgradeConfigs() {
					hasWS = hasWS || u.GetUpgradeType() == "websocket"
				}
				for _, hf := range h.GetHttpFilters() {
					if hf.GetName() == "envoy.filters.http.stateful_session" && hasWS {
						return true
					}
				}
			}
		}
	}
	return false
}

// routeFacts reports whether some route retries 503s and some route upgrades WebSockets
// with no timeout.
func routeFacts(v xdsclient.View) (retry503, websocket bool) {
	for _, m := range v.Resources[resourcev3.RouteType] {
		for _, vh := range m.(*routev3.RouteConfiguration).GetVirtualHosts() {
			for _, r := range vh.GetRoutes() {
				ra := r.GetRoute()
				if ra == nil {
					continue
				}
				for _, c := range ra.GetRetryPolicy().GetRetriableStatusCodes() {
					retry503 = retry503 || c == 503
				}
				if ra.GetTimeout() != nil && ra.GetTimeout().AsDuration() == 0 {
					for _, u := range ra.GetUpgradeConfigs() {
						websocket = websocket || (u.GetUpgradeType() == "websocket" && (u.GetEnabled() == nil || u.GetEnabled().GetValue()))
					}
					for _, hm := range r.GetMatch().GetHeaders() {
						websocket = websocket || strings.EqualFold(hm.GetName(), "upgrade")
					}
				}
			}
		}
	}
	return
}

func panicThresholdZero(v xdsclient.View) bool {
	if len(v.Resources[resourcev3.ClusterType]) == 0 {
		return false
	}
	for _, m := range v.Resources[resourcev3.ClusterType] {
		c := m.(*clusterv3.Cluster)
		pt := c.GetCommonLbConfig().GetHealthyPanicThreshold()
		if pt == nil || pt.GetValue() != 0 {
			return false
		}
	}
	return true
}

// TestEndToEnd writes the documented schema to a real etcd and follows it to real ADS clients
// of both variants: new instances, a state change, a load change, a malformed entry, an entry
// with an unknown field and a lease expiry.
func TestEndToEnd(t *testing.T) {
	for _, variant := range []xdsclient.Variant{xdsclient.SotW, xdsclient.Delta} {
		t.Run(string(variant), func(t *testing.T) {
			srv := etcdtest.Start(t)
			cli := srv.Client(t)
			cp := startCP(t, srv.Endpoints())
			put(t, cli, "/tether/services/app", serviceJSON)
			put(t, cli, "/tether/instances/app/a1", instanceJSON("a1", 5001, "available", 120))
			put(t, cli, "/tether/instances/app/a2", instanceJSON("a2", 5002, "available", 400))
			c := connect(t, cp, variant, "envoy-1", "default")

			// Routes forward (with the initial-request retry) once an instance is available.
			waitFor(t, c, "two healthy endpoints, and routes with the 503 retry and WebSocket upgrades", func(v xdsclient.View) bool {
				eps := endpoints(v)
				retry, ws := routeFacts(v)
				return retry && ws && len(eps) == 2 && eps[5001].GetHealthStatus() == core.HealthStatus_HEALTHY &&
					eps[5002].GetHealthStatus() == core.HealthStatus_HEALTHY
			})
			v := c.View()
			if !hasStatefulSessionFilter(v) {
				t.Error("listener lacks the stateful session filter with WebSocket upgrades")
			}
			if !panicThresholdZero(v) {
				t.Error("a cluster lacks healthy_panic_threshold 0")
			}
			eps := endpoints(v)
			w1, w2 := eps[5001].GetLoadBalancingWeight().GetValue(), eps[5002].GetLoadBalancingWeight().GetValue()
			if w1 <= w2 {
				t.Errorf("weights: a1 (120/500 sessions) got %d, a2 (400/500) got %d; want a1 heavier", w1, w2)
			}

			// A full instance keeps its sessions but takes no new ones: DRAINING.
			put(t, cli, "/tether/instances/app/a1", instanceJSON("a1", 5001, "full", 520))
			waitFor(t, c, "a1 draining", func(v xdsclient.View) bool {
				return endpoints(v)[5001].GetHealthStatus() == core.HealthStatus_DRAINING
			})

			// A load change touches only endpoints.
			before := c.View()
			put(t, cli, "/tether/instances/app/a2", instanceJSON("a2", 5002, "available", 10))
			waitFor(t, c, "a2 weight up", func(v xdsclient.View) bool {
				return endpoints(v)[5002].GetLoadBalancingWeight().GetValue() > w2
			})
			after := c.View()
			for _, typ := range []string{resourcev3.ClusterType, resourcev3.ListenerType, resourcev3.RouteType} {
				if before.Versions[typ] != after.Versions[typ] {
					t.Errorf("a load change moved the %s version %s -> %s; want only endpoints to change", typ, before.Versions[typ], after.Versions[typ])
				}
			}

			// A malformed entry is rejected alone; an unknown field is ignored.
			put(t, cli, "/tether/instances/app/bad", `{"id":"bad","address":"not-an-ip","port":0,"state":"available"}`)
			put(t, cli, "/tether/instances/app/a3", strings.Replace(instanceJSON("a3", 5003, "available", 0), `"zone"`, `"futureField": {"x": 1}, "zone"`, 1))
			waitFor(t, c, "a3 served beside the bad entry", func(v xdsclient.View) bool {
				eps := endpoints(v)
				return len(eps) == 3 && eps[5003] != nil
			})
			dbg := debugConfig(t, cp)
			if _, ok := dbg.Rejected["/tether/instances/app/bad"]; !ok {
				t.Errorf("/debug/config rejected = %v; want the bad key", dbg.Rejected)
			}
			if n := metric(t, cp, `tether_registry_rejected_entries_total{kind="instance"}`); n < 1 {
				t.Errorf("rejected entries metric = %v; want >= 1", n)
			}

			// A lapsed lease removes the instance.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			lease, err := cli.Grant(ctx, 1)
			if err != nil {
				t.Fatal(err)
			}
			put(t, cli, "/tether/instances/app/a4", instanceJSON("a4", 5004, "available", 0), clientv3.WithLease(lease.ID))
			waitFor(t, c, "a4 registered", func(v xdsclient.View) bool { return endpoints(v)[5004] != nil })
			waitFor(t, c, "a4 gone after its lease", func(v xdsclient.View) bool { return endpoints(v)[5004] == nil && endpoints(v)[5003] != nil })
		})
	}
}

func debugConfig(t *testing.T, cp *controlplane.ControlPlane) admin.DebugConfig {
	t.Helper()
	body := get(t, "http://"+cp.AdminAddr()+"/debug/config", http.StatusOK)
	var d admin.DebugConfig
	if err := json.Unmarshal([]byte(body), &d); err != nil {
		t.Fatalf("decode /debug/config: %v", err)
	}
	return d
}

func get(t *testing.T, url string, want int) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("GET %s: status %d, want %d: %s", url, resp.StatusCode, want, b)
	}
	return string(b)
}

// metric reads one sample from /metrics by its exact name and labels.
func metric(t *testing.T, cp *controlplane.ControlPlane, series string) float64 {
	t.Helper()
	body := get(t, "http://"+cp.AdminAddr()+"/metrics", http.StatusOK)
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, series+" ") {
			var v float64
			if _, err := fmt.Sscan(strings.TrimPrefix(line, series+" "), &v); err == nil {
				return v
			}
		}
	}
	return -1
}

// TestReplicasServeIdenticalVersions runs two control planes on one registry: an Envoy moved
// from one to the other sees the same versions, so nothing is re-sent.
func TestReplicasServeIdenticalVersions(t *testing.T) {
	srv := twoInstances(t)
	cp1, cp2 := startCP(t, srv.Endpoints()), startCP(t, srv.Endpoints())
	for _, variant := range []xdsclient.Variant{xdsclient.SotW, xdsclient.Delta} {
		c1 := connect(t, cp1, variant, "envoy-1", "default")
		c2 := connect(t, cp2, variant, "envoy-2", "default")
		waitFor(t, c1, "full config from replica 1", complete(2))
		waitFor(t, c2, "full config from replica 2", complete(2))
		v1, v2 := c1.View(), c2.View()
		for _, typ := range xdsclient.Types {
			// Every type's version (SotW version_info, delta system_version_info) is derived
			// from content.
			if v1.Versions[typ] != v2.Versions[typ] {
				t.Errorf("%s %s: versions differ: %q vs %q", variant, typ, v1.Versions[typ], v2.Versions[typ])
			}
			for name, rv := range v1.ResourceVersions[typ] {
				if v2.ResourceVersions[typ][name] != rv {
					t.Errorf("%s %s %s: resource versions differ: %q vs %q", variant, typ, name, rv, v2.ResourceVersions[typ][name])
				}
			}
			for name, m := range v1.Resources[typ] {
				if !proto.Equal(m, v2.Resources[typ][name]) {
					t.Errorf("%s %s %s: resources differ between replicas", variant, typ, name)
				}
			}
		}
	}
}

// TestNACKIsCountedAndLogged has a client reject every cluster update.
func TestNACKIsCountedAndLogged(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	put(t, cli, "/tether/instances/app/a1", instanceJSON("a1", 5001, "available", 1))
	cp := startCP(t, srv.Endpoints())
	for i, variant := range []xdsclient.Variant{xdsclient.SotW, xdsclient.Delta} {
		c := xdsclient.New(variant, "nacker-"+string(variant), "default")
		c.NACK = func(typeURL string, _ map[string]proto.Message) string {
			if typeURL == resourcev3.ClusterType {
				return "test rejects clusters"
			}
			return ""
		}
		s := runClient(t, c, cp.XDSAddr(), nil)
		waitFor(t, c, "a NACK sent", func(v xdsclient.View) bool { return v.NACKs > 0 })
		want := float64(i + 1)
		eventually.Saying(t, fmt.Sprintf("%s: tether_xds_nacks_total{type=\"Cluster\"} >= %v", variant, want), 5*time.Second, func() (bool, string) {
			got := metric(t, cp, `tether_xds_nacks_total{type="Cluster"}`)
			return got >= want, fmt.Sprint(got)
		})
		var nacks int
		for _, cl := range cp.Clients() {
			if cl.NodeID == "nacker-"+string(variant) {
				nacks = cl.NACKs
			}
		}
		if nacks < 1 {
			t.Errorf("%s: Clients() shows %d NACKs for the client; want >= 1", variant, nacks)
		}
		s.running(t, string(variant)+": the NACKing client")
		s.stop(t)
	}
}

// TestEtcdRestart restarts etcd under a running control plane: the last configuration stays
// served the whole time (no response ever leaves a1 out), and changes made after the restart
// arrive. etcd's client resumes the control plane's watch on the restarted server without an
// error reaching the watcher, so the outage is proven by the control plane's own client
// losing its connection before etcd starts again.
func TestEtcdRestart(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	put(t, cli, "/tether/instances/app/a1", instanceJSON("a1", 5001, "available", 1))
	conns := etcdtest.NewConnWatch()
	cp := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{
		Endpoints: srv.Endpoints(), DialOptions: []grpc.DialOption{conns.DialOption()},
	}})
	c := xdsclient.New(xdsclient.Delta, "envoy-1", "default")
	var lost atomic.Value // the first response that left a1 out
	c.OnUpdate = func(u xdsclient.Update) {
		if len(u.Removed) > 0 {
			lost.CompareAndSwap(nil, fmt.Sprintf("%s removed %v", u.TypeURL, u.Removed))
		}
		if u.TypeURL != resourcev3.EndpointType {
			return
		}
		for name, m := range u.Resources {
			if endpoints(xdsclient.View{Resources: map[string]map[string]proto.Message{u.TypeURL: {name: m}}})[5001] == nil {
				lost.CompareAndSwap(nil, fmt.Sprintf("endpoints %s without a1", name))
			}
		}
	}
	run(t, cp, c)
	waitFor(t, c, "a1", func(v xdsclient.View) bool { return endpoints(v)[5001] != nil })
	broke := conns.NextEnd(t)
	srv.Stop()
	select {
	case <-broke:
	case <-time.After(30 * time.Second):
		t.Fatal("the control plane's etcd connection never ended after etcd stopped")
	}
	srv.StartAgain(t)
	put(t, srv.Client(t), "/tether/instances/app/a2", instanceJSON("a2", 5002, "available", 1))
	waitFor(t, c, "a2 after the restart", func(v xdsclient.View) bool {
		return endpoints(v)[5001] != nil && endpoints(v)[5002] != nil
	})
	if l := lost.Load(); l != nil {
		t.Errorf("a1 was not served throughout the restart: %s", l)
	}
}

// TestReadyzWithoutEtcd: a control plane that never listed the registry is not ready.
func TestReadyzWithoutEtcd(t *testing.T) {
	dead := fmt.Sprintf("http://127.0.0.1:%d", etcdtest.FreePort(t))
	cp := startCP(t, []string{dead})
	get(t, "http://"+cp.AdminAddr()+"/healthz", http.StatusOK)
	get(t, "http://"+cp.AdminAddr()+"/readyz", http.StatusServiceUnavailable)
}

// TestEmbeddedEtcd starts the control plane with no etcd endpoints: it runs its own etcd,
// which clients reach on the embedded client URL.
func TestEmbeddedEtcd(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var cp *controlplane.ControlPlane
	var clientURL string
	for attempt := 1; ; attempt++ {
		// A free port may be taken by a test running in parallel before etcd binds it.
		clientURL = fmt.Sprintf("http://127.0.0.1:%d", etcdtest.FreePort(t))
		var err error
		cp, err = controlplane.Start(ctx, controlplane.Config{
			DataDir: t.TempDir(), EmbeddedClientURL: clientURL,
			EmbeddedPeerURL: fmt.Sprintf("http://127.0.0.1:%d", etcdtest.FreePort(t)),
			XDSAddr:         "127.0.0.1:0", AdminAddr: "127.0.0.1:0", AllowLoopback: true, Logger: testLogger(t),
		})
		if err == nil {
			break
		}
		if !strings.Contains(err.Error(), "address already in use") || attempt == 3 {
			t.Fatalf("start: %v", err)
		}
	}
	waitReady(t, cp, 15*time.Second, "the control plane with embedded etcd")
	get(t, "http://"+cp.AdminAddr()+"/readyz", http.StatusOK)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{clientURL}, DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	put(t, cli, "/tether/instances/app/a1", instanceJSON("a1", 5001, "available", 1))
	c := connect(t, cp, xdsclient.SotW, "envoy-1", "")
	waitFor(t, c, "a1 via embedded etcd", func(v xdsclient.View) bool { return endpoints(v)[5001] != nil })
	if err := cp.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
}

// TestMassDisappearanceIsHeld revokes the lease of most of a service's instances at once, as
// when leases lapse during an etcd outage: they stay served for the grace period, while a
// deliberate deregistration (a last value marked leaving) goes at once. Every endpoint
// update the Envoy receives is recorded: from the revocation until the grace ends, none
// lacks a held instance or serves one otherwise than it was, and the release comes no
// earlier than the grace after the revocation began (the guard did hold them: it counted
// the three).
func TestMassDisappearanceIsHeld(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	grace := 2 * time.Second
	cp := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()}, HoldGrace: grace})
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		put(t, cli, fmt.Sprintf("/tether/instances/app/m%d", i), instanceJSON(fmt.Sprintf("m%d", i), 5000+i, "available", 1), clientv3.WithLease(lease.ID))
	}
	put(t, cli, "/tether/instances/app/m4", instanceJSON("m4", 5004, "available", 1))
	put(t, cli, "/tether/instances/app/m5", instanceJSON("m5", 5005, "draining", 1))
	c := xdsclient.New(xdsclient.Delta, "envoy-1", "default")
	var mu sync.Mutex
	type seenUpdate struct {
		n  int // endpoints held, -1 when m1-m3 are not all HEALTHY
		at time.Time
	}
	var counts []seenUpdate
	c.OnUpdate = func(u xdsclient.Update) {
		if u.TypeURL == resourcev3.EndpointType {
			v := c.View()
			n := len(endpoints(v))
			for port := uint32(5001); port <= 5003 && n == 4; port++ {
				if health(v, port) != core.HealthStatus_HEALTHY {
					n = -1 // held instances are served as they last were, not DRAINING
				}
			}
			mu.Lock()
			counts = append(counts, seenUpdate{n, time.Now()})
			mu.Unlock()
		}
	}
	run(t, cp, c)
	waitFor(t, c, "five endpoints", func(v xdsclient.View) bool { return len(endpoints(v)) == 5 })

	// A deliberate deregistration goes at once: the stopping agent marks its last value as
	// leaving before it deletes its key; the delete follows once the control plane has
	// published the revision of the mark.
	marked := put(t, cli, "/tether/instances/app/m5", strings.Replace(instanceJSON("m5", 5005, "draining", 0), `"reason": ""`, `"reason": "", "leaving": true`, 1))
	eventually.True(t, "the leaving mark published", 15*time.Second, func() bool { return metric(t, cp, "tether_registry_revision") >= float64(marked) })
	if _, err := cli.Delete(ctx, "/tether/instances/app/m5"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, c, "draining m5 removed", func(v xdsclient.View) bool { return len(endpoints(v)) == 4 })

	// Three of four at once: held.
	mu.Lock()
	before := len(counts)
	mu.Unlock()
	revoking := time.Now() // the guard's hold starts after this
	if _, err := cli.Revoke(ctx, lease.ID); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, "the guard counts the three", 15*time.Second, func() bool { return metric(t, cp, `tether_mass_removals_total{service="app"}`) == 3 })
	waitFor(t, c, "held instances released after the grace period", func(v xdsclient.View) bool { return len(endpoints(v)) == 1 })
	if held := time.Since(revoking); held < grace {
		t.Errorf("instances released %s after the revocation began; want the %s grace at least", held, grace)
	}
	mu.Lock()
	after := slices.Clone(counts[before:])
	mu.Unlock()
	for _, u := range after {
		if u.n != 4 && u.at.Sub(revoking) < grace {
			t.Fatalf("%s after the revocation began, an endpoint update held %d endpoints (-1: a held one not HEALTHY): want all 4 as they were for the %s grace", u.at.Sub(revoking), u.n, grace)
		}
	}
	if got := metric(t, cp, "tether_held_instances"); got != 0 {
		t.Errorf("tether_held_instances = %v after the release; want 0", got)
	}
}

// TestLightClientHoldsTheSameNames checks the load harness's light simulated Envoy against a
// full one: the same resource names and versions, and endpoint updates that decode to what
// the full client holds.
func TestLightClientHoldsTheSameNames(t *testing.T) {
	srv := twoInstances(t)
	cp := startCP(t, srv.Endpoints())
	for _, variant := range []xdsclient.Variant{xdsclient.SotW, xdsclient.Delta} {
		full := connect(t, cp, variant, "full-"+string(variant), "default")
		waitFor(t, full, "full config", complete(2))
		// The registry no longer changes: what the full client holds now is the whole
		// configuration, which the light client's condition compares against.
		fv := full.View()

		light := xdsclient.New(variant, "light-"+string(variant), "default")
		light.Light = true
		cla := make(chan *anypb.Any, 16)
		light.OnUpdate = func(u xdsclient.Update) {
			if u.TypeURL != resourcev3.EndpointType {
				return
			}
			a, ok := u.Resources["tether_app"].(*anypb.Any)
			if !ok {
				t.Errorf("%s: light endpoint update holds %T, want *anypb.Any (names %v)", variant, u.Resources["tether_app"], u.Names)
				return
			}
			select {
			case cla <- a:
			default:
			}
		}
		run(t, cp, light)
		waitFor(t, light, "light config", func(v xdsclient.View) bool {
			for _, typ := range xdsclient.Types {
				if len(v.Resources[typ]) != len(fv.Resources[typ]) || !maps.Equal(v.ResourceVersions[typ], fv.ResourceVersions[typ]) {
					return false
				}
				for name := range fv.Resources[typ] {
					if _, ok := v.Resources[typ][name]; !ok {
						return false
					}
				}
			}
			return true
		})
		lv := light.View()
		for _, typ := range xdsclient.Types {
			for name, m := range lv.Resources[typ] {
				if m != nil {
					t.Errorf("%s %s %s: light client keeps %T, want nothing", variant, typ, name, m)
				}
				if _, ok := fv.Resources[typ][name]; !ok {
					t.Errorf("%s %s: light client holds %q, the full one does not", variant, typ, name)
				}
			}
			for name, rv := range fv.ResourceVersions[typ] {
				if lv.ResourceVersions[typ][name] != rv {
					t.Errorf("%s %s %s: versions %q (light) and %q (full)", variant, typ, name, lv.ResourceVersions[typ][name], rv)
				}
			}
		}
		var got endpointv3.ClusterLoadAssignment
		select {
		case a := <-cla:
			if err := a.UnmarshalTo(&got); err != nil {
				t.Fatalf("%s: decode light endpoint update: %v", variant, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: light client saw no endpoint update", variant)
		}
		if want := fv.Resources[resourcev3.EndpointType]["tether_app"]; !proto.Equal(&got, want) {
			t.Errorf("%s: light endpoint update differs from the full client's:\n%v\n%v", variant, &got, want)
		}
	}
}

// TestStartReleasesListenersOnFailure: when the admin address is taken, Start fails naming
// the flag and leaves the xDS address, bound just before, free again.
func TestStartReleasesListenersOnFailure(t *testing.T) {
	srv := etcdtest.Start(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	xdsAddr := fmt.Sprintf("127.0.0.1:%d", etcdtest.FreePort(t))
	_, err = controlplane.Start(context.Background(), controlplane.Config{
		Etcd:    clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 2 * time.Second},
		XDSAddr: xdsAddr, AdminAddr: taken.Addr().String(), Logger: testLogger(t),
	})
	if err == nil || !strings.Contains(err.Error(), "--admin-addr") {
		t.Fatalf("Start with the admin address taken: %v; want an error naming --admin-addr", err)
	}
	l, err := net.Listen("tcp", xdsAddr)
	if err != nil {
		t.Fatalf("the xDS address is still bound after the failed Start: %v", err)
	}
	l.Close()
}
