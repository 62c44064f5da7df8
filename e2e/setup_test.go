package e2e_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	statefulsessionv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/stateful_session/v3"
	cookiev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/stateful_session/cookie/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tetherlb/tether/controlplane/translate"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/xdsclient"
)

// TestSetupWithoutEnvoy runs the setup of the Envoy tests without Envoy: the rendered
// bootstrap validates and points at the control plane, a simulated Envoy of the bootstrap's
// group and ADS variant gets the listener on the chosen port and three HEALTHY endpoints at
// the running backends, the backends answer directly, and each lever the Envoy tests pull
// (full, refuse mode, removal) shows up where those tests expect it.
func TestSetupWithoutEnvoy(t *testing.T) {
	e := newEnv(t)

	adminPort := etcdtest.FreePort(t)
	_, b := renderBootstrap(t, e.cp.XDSAddr(), adminPort)
	_, xdsPort, _ := net.SplitHostPort(e.cp.XDSAddr())
	var xds *corev3.SocketAddress
	for _, c := range b.GetStaticResources().GetClusters() {
		for _, loc := range c.GetLoadAssignment().GetEndpoints() {
			for _, lb := range loc.GetLbEndpoints() {
				if c.GetName() == "xds_cluster" {
					xds = lb.GetEndpoint().GetAddress().GetSocketAddress()
				}
			}
		}
	}
	if got := strconv.Itoa(int(xds.GetPortValue())); got != xdsPort || xds.GetAddress() != "127.0.0.1" {
		t.Errorf("bootstrap xds_cluster at %s:%s, want the control plane's %s", xds.GetAddress(), got, e.cp.XDSAddr())
	}
	if got := b.GetAdmin().GetAddress().GetSocketAddress().GetPortValue(); int(got) != adminPort {
		t.Errorf("bootstrap admin port %d, want %d", got, adminPort)
	}
	if got := b.GetDynamicResources().GetAdsConfig().GetApiType(); got != corev3.ApiConfigSource_DELTA_GRPC {
		t.Errorf("bootstrap ADS %v, want DELTA_GRPC (the simulated Envoy below uses delta)", got)
	}
	if got := b.GetNode().GetCluster(); got != "default" {
		t.Errorf("bootstrap node.cluster %q, want default (the simulated Envoy's group)", got)
	}

	sim := simulatedEnvoy(t, e.cp.XDSAddr())
	e.waitSim(t, sim, "app1..app3 HEALTHY", allHealthy())
	// Routes are resources of their own: the response that makes a route forward to the
	// service may come after the endpoints' (a service whose servers are all in their first
	// phase answers "a server is starting" until one is promoted).
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := sim.WaitFor(ctx, func(v xdsclient.View) bool { return forwardsTo(v, translate.ClusterName(service)) }); err != nil {
		t.Fatalf("simulated Envoy, waiting for a route forwarding to %s: %v", translate.ClusterName(service), err)
	}
	v := sim.View()
	l, _ := v.Resources[resourcev3.ListenerType][translate.ListenerName].(*listenerv3.Listener)
	if got := l.GetAddress().GetSocketAddress().GetPortValue(); int(got) != e.listenPort {
		t.Errorf("listener %s on port %d, want %d", translate.ListenerName, got, e.listenPort)
	}
	checkSessionCookie(t, v, service, cookieName)
	for _, m := range v.Resources[resourcev3.EndpointType] {
		for _, loc := range m.(*endpointv3.ClusterLoadAssignment).GetEndpoints() {
			for _, lb := range loc.GetLbEndpoints() {
				sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
				addr := net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
				if got, want := lb.GetEndpoint().GetHostname(), e.byAddr[addr]; got != want {
					t.Errorf("endpoint %s has hostname %q, want the instance id %q", addr, got, want)
				}
			}
		}
	}

	// The backends answer directly, and the browser helpers read them.
	for _, name := range names {
		bk := e.backends[name]
		if status, _, err := plainGet(bk.url("/healthcheck")); err != nil || status != http.StatusAccepted {
			t.Fatalf("%s /healthcheck: %d, %v; want 202", name, status, err)
		}
		br := newBrowser(t, bk.url(""))
		for i := 1; i <= 3; i++ {
			p := br.mustPage(t)
			if p.Instance != name || p.Counter != i {
				t.Fatalf("%s directly, request %d: %s counter %d", name, i, p.Instance, p.Counter)
			}
		}
	}
	br := newBrowser(t, e.backends["app1"].url(""))
	p := br.mustPage(t)
	c := br.dialWS(t)
	pushes, counter := holdWS(t, c, time.Second, "app1", p.Session)
	closeWS(t, c)
	if after := br.mustPage(t); pushes < 2 || after.Counter != counter+1 {
		t.Fatalf("WebSocket to app1: %d pushes, counter %d then page counter %d", pushes, counter, after.Counter)
	}

	// Refuse mode: app2 answers 503 to new sessions but stays available in the registry.
	e.setRefuse(t, "app2", true)
	before := refusedCount(t, e.backends["app2"])
	if status, _, err := plainGet(e.backends["app2"].url("/")); err != nil || status != http.StatusServiceUnavailable {
		t.Fatalf("app2 in refuse mode: GET / %d, %v; want 503", status, err)
	}
	if got := refusedCount(t, e.backends["app2"]); got != before+1 {
		t.Fatalf("sessionapp_refused_requests_total went from %d to %d after one refusal", before, got)
	}

	// Full: app1's agent publishes it full, served as DRAINING; and back.
	full := allHealthy()
	full["app1"] = "DRAINING"
	e.setFull(t, "app1", true)
	e.waitSim(t, sim, "app1 DRAINING (full)", full)
	e.setFull(t, "app1", false)
	e.waitSim(t, sim, "app1 HEALTHY again", allHealthy())
	// Both waits required app2 HEALTHY too, many agent samples after refuse mode began.

	// Removal: app3's agent stops and deletes its instance; its process keeps running.
	e.backends["app3"].stop(t)
	e.waitSim(t, sim, "app3 removed", endpointStates{"app1": "HEALTHY", "app2": "HEALTHY"})
	if status, _, err := plainGet(e.backends["app3"].url("/healthcheck")); err != nil || status != http.StatusAccepted {
		t.Fatalf("app3 after its agent stopped: /healthcheck %d, %v; want 202", status, err)
	}
}

// simulatedEnvoy connects an xdsclient with the node cluster and ADS variant of
// envoy/bootstrap.yaml.
func simulatedEnvoy(t *testing.T, xdsAddr string) *xdsclient.Client {
	t.Helper()
	conn, err := grpc.NewClient(xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial xDS %s: %v", xdsAddr, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := xdsclient.New(xdsclient.Delta, "e2e-simulated", "default")
	// A stream that fails ends every WaitFor on c at once with its error (xdsclient.ErrStopped).
	done := c.Start(ctx, conn)
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Logf("simulated Envoy stopped: %v", err)
		}
		conn.Close()
	})
	return c
}

// simEndpoints is how the simulated Envoy sees the service's endpoints: EDS health status by
// instance name (address for an unknown one).
func (e *env) simEndpoints(v xdsclient.View) endpointStates {
	out := endpointStates{}
	cla, _ := v.Resources[resourcev3.EndpointType][translate.ClusterName(e.service)].(*endpointv3.ClusterLoadAssignment)
	for _, loc := range cla.GetEndpoints() {
		for _, lb := range loc.GetLbEndpoints() {
			sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
			addr := net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
			key := addr
			if n, ok := e.byAddr[addr]; ok {
				key = n
			}
			out[key] = lb.GetHealthStatus().String()
		}
	}
	return out
}

// waitSim waits until the simulated Envoy holds exactly the want endpoint states.
func (e *env) waitSim(t *testing.T, sim *xdsclient.Client, what string, want endpointStates) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var last endpointStates
	if err := sim.WaitFor(ctx, func(v xdsclient.View) bool {
		last = e.simEndpoints(v)
		return statesAre(last, want)
	}); err != nil {
		t.Fatalf("simulated Envoy, waiting for %s: %v; last seen %v", what, err, last)
	}
}

// checkSessionCookie checks the fact the Envoy tests rely on: every route forwarding to the
// service turns on the cookie session state with cookieName, without the Secure attribute
// (a browser, and Go's cookie jar, would not send a Secure cookie over plain HTTP).
func checkSessionCookie(t *testing.T, v xdsclient.View, service, cookieName string) {
	t.Helper()
	rc, _ := v.Resources[resourcev3.RouteType][translate.RouteConfigName].(*routev3.RouteConfiguration)
	routes := 0
	for _, vh := range rc.GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			if r.GetRoute().GetCluster() != translate.ClusterName(service) {
				continue
			}
			routes++
			name, attrs, err := sessionCookie(r)
			if err != nil {
				t.Errorf("route %s: %v", r.GetName(), err)
				continue
			}
			if name != cookieName {
				t.Errorf("route %s: session cookie %q, want %q", r.GetName(), name, cookieName)
			}
			for _, a := range attrs {
				if a == "Secure" {
					t.Errorf("route %s: the session cookie is Secure: it would not come back over plain HTTP", r.GetName())
				}
			}
		}
	}
	if routes == 0 {
		t.Errorf("no route forwards to %s in %s", translate.ClusterName(service), translate.RouteConfigName)
	}
}

// sessionCookie returns the cookie name and attribute names of a route's stateful session
// configuration.
func sessionCookie(r *routev3.Route) (string, []string, error) {
	a, ok := r.GetTypedPerFilterConfig()["envoy.filters.http.stateful_session"]
	if !ok {
		return "", nil, fmt.Errorf("no stateful session configuration")
	}
	var per statefulsessionv3.StatefulSessionPerRoute
	if err := a.UnmarshalTo(&per); err != nil {
		return "", nil, fmt.Errorf("stateful session configuration: %w", err)
	}
	var cs cookiev3.CookieBasedSessionState
	if err := per.GetStatefulSession().GetSessionState().GetTypedConfig().UnmarshalTo(&cs); err != nil {
		return "", nil, fmt.Errorf("session state is not cookie-based: %w", err)
	}
	var attrs []string
	for _, at := range cs.GetCookie().GetAttributes() {
		attrs = append(attrs, at.GetName())
	}
	return cs.GetCookie().GetName(), attrs, nil
}

// forwardsTo reports whether a route of v forwards to cluster.
func forwardsTo(v xdsclient.View, cluster string) bool {
	rc, _ := v.Resources[resourcev3.RouteType][translate.RouteConfigName].(*routev3.RouteConfiguration)
	for _, vh := range rc.GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			if r.GetRoute().GetCluster() == cluster {
				return true
			}
		}
	}
	return false
}
