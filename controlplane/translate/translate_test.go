package translate

import (
	"bytes"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matchingv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/matching/v3"
	statefulsessionv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/stateful_session/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	cookiev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/stateful_session/cookie/v3"
	"google.golang.org/protobuf/proto"

	"github.com/tetherlb/tether/registry"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/golden")

func translateFile(t testing.TB, name string) *Resources {
	t.Helper()
	return Translate(loadState(t, filepath.Join("testdata", "states", name+".json")), Options{})
}

func TestGolden(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "states", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no input states: %v", err)
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".json")
		t.Run(name, func(t *testing.T) {
			res := Translate(loadState(t, f), Options{})
			checkResources(t, res)
			got := renderYAML(t, res)
			golden := filepath.Join("testdata", "golden", name+".yaml")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./controlplane/translate -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from the translation (update with -update): %s", golden, firstDiff(want, got))
			}
		})
	}
	// A golden file whose input state is gone tests nothing: -update deletes it.
	goldens, err := filepath.Glob(filepath.Join("testdata", "golden", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range goldens {
		name := strings.TrimSuffix(filepath.Base(g), ".yaml")
		if _, err := os.Stat(filepath.Join("testdata", "states", name+".json")); err == nil {
			continue
		}
		if !*update {
			t.Errorf("%s has no input state testdata/states/%s.json (delete it with -update)", g, name)
			continue
		}
		if err := os.Remove(g); err != nil {
			t.Fatal(err)
		}
	}
}

// firstDiff describes the first line where two texts differ.
func firstDiff(want, got []byte) string {
	w, g := strings.Split(string(want), "\n"), strings.Split(string(got), "\n")
	for i := range max(len(w), len(g)) {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			return fmt.Sprintf("line %d: want %q, got %q", i+1, wl, gl)
		}
	}
	return "same lines"
}

func clusterNamed(t *testing.T, res *Resources, name string) *clusterv3.Cluster {
	t.Helper()
	for _, c := range res.Clusters {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no cluster %s", name)
	return nil
}

func endpointsByID(t *testing.T, res *Resources, cluster string) map[string]*endpointv3.LbEndpoint {
	t.Helper()
	out := map[string]*endpointv3.LbEndpoint{}
	for _, cla := range res.Endpoints {
		if cla.ClusterName != cluster {
			continue
		}
		for _, loc := range cla.Endpoints {
			for _, e := range loc.LbEndpoints {
				out[e.GetEndpoint().GetHostname()] = e
			}
		}
	}
	return out
}

func allRoutes(res *Resources) []*routev3.Route {
	var out []*routev3.Route
	for _, rc := range res.Routes {
		for _, vh := range rc.VirtualHosts {
			out = append(out, vh.Routes...)
		}
	}
	return out
}

func hasHeader(r *routev3.Route, name string) bool {
	return slices.ContainsFunc(r.GetMatch().GetHeaders(), func(h *routev3.HeaderMatcher) bool { return h.Name == name })
}

func TestClusterLoadBalancing(t *testing.T) {
	res := translateFile(t, "affinity-cookie")
	c := clusterNamed(t, res, "tether_app")
	if got := c.GetCommonLbConfig().GetHealthyPanicThreshold(); got == nil || got.Value != 0 {
		t.Errorf("healthy_panic_threshold = %v, want explicit 0", got)
	}
	want := []corev3.HealthStatus{corev3.HealthStatus_HEALTHY, corev3.HealthStatus_DEGRADED, corev3.HealthStatus_DRAINING}
	if got := c.GetCommonLbConfig().GetOverrideHostStatus().GetStatuses(); !slices.Equal(got, want) {
		t.Errorf("override_host_status = %v, want %v", got, want)
	}
	if c.GetCircuitBreakers().GetThresholds()[0].GetRetryBudget() == nil {
		t.Error("no retry budget")
	}
	hc := clusterNamed(t, translateFile(t, "limits-slowstart"), "tether_app").GetHealthChecks()[0].GetHttpHealthCheck()
	if hc.Path != "/healthcheck.wx" || len(hc.ExpectedStatuses) != 2 || hc.ExpectedStatuses[0].Start != 200 || hc.ExpectedStatuses[0].End != 203 {
		t.Errorf("health check = %v, want /healthcheck.wx with [200,203) [204,205)", hc)
	}

	for _, tc := range []struct{ file, cluster string }{{"affinity-source-ip", "tether_legacy"}} {
		c := clusterNamed(t, translateFile(t, tc.file), tc.cluster)
		if c.LbPolicy != clusterv3.Cluster_RING_HASH && c.LbPolicy != clusterv3.Cluster_MAGLEV {
			t.Errorf("%s: lb_policy %v, want a hash policy", tc.file, c.LbPolicy)
		}
	}
}

func TestStatusRanges(t *testing.T) {
	got := statusRanges([]int{204, 200, 202, 201, 202})
	if len(got) != 2 || got[0].Start != 200 || got[0].End != 203 || got[1].Start != 204 || got[1].End != 205 {
		t.Errorf("statusRanges = %v, want [200,203) [204,205)", got)
	}
}

func TestRetryOnlyWithoutMarker(t *testing.T) {
	for _, tc := range []struct{ file, marker string }{
		{"affinity-cookie", "cookie"}, {"affinity-header", "x-session"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			var marked, unmarked int
			for _, r := range allRoutes(translateFile(t, tc.file)) {
				ra := r.GetRoute()
				if ra == nil {
					t.Fatalf("route %s does not forward although instances are available", r.Name)
				}
				if hasHeader(r, tc.marker) {
					marked++
					if ra.RetryPolicy != nil {
						t.Errorf("route %s carries the session marker but retries: %v", r.Name, ra.RetryPolicy)
					}
					continue
				}
				unmarked++
				rp := ra.GetRetryPolicy()
				if !slices.Contains(rp.GetRetriableStatusCodes(), 503) || !strings.Contains(rp.GetRetryOn(), "retriable-status-codes") ||
					len(rp.GetRetryHostPredicate()) != 1 || rp.GetHostSelectionRetryMaxAttempts() < 3 {
					t.Errorf("route %s (no marker) lacks the 503 retry on another host: %v", r.Name, rp)
				}
			}
			if marked == 0 || unmarked == 0 {
				t.Errorf("marked %d, unmarked %d routes: want both", marked, unmarked)
			}
		})
	}
	// Without a marker every forwarding route retries.
	for _, r := range allRoutes(translateFile(t, "affinity-none")) {
		if r.GetRoute().GetRetryPolicy() == nil {
			t.Errorf("none mode: route %s does not retry", r.Name)
		}
	}
}

func TestWebSocketRoutes(t *testing.T) {
	var ws int
	for _, r := range allRoutes(translateFile(t, "affinity-cookie")) {
		ra := r.GetRoute()
		if hasHeader(r, "upgrade") {
			ws++
			if ra.GetTimeout() == nil || ra.GetTimeout().AsDuration() != 0 || ra.GetIdleTimeout().AsDuration() < webSocketIdleTimeout {
				t.Errorf("websocket route %s: timeout %v idle %v, want 0s and >= 1h", r.Name, ra.GetTimeout(), ra.GetIdleTimeout())
			}
		} else if ra.GetTimeout() == nil || ra.GetTimeout().AsDuration() != 0 || ra.GetIdleTimeout().AsDuration() != 5*time.Minute {
			t.Errorf("route %s: timeout %v idle %v, want 0s (none) and the default 5m", r.Name, ra.GetTimeout(), ra.GetIdleTimeout())
		}
	}
	if ws != 2 {
		t.Errorf("%d websocket routes, want 2 (with and without session)", ws)
	}
	for _, r := range allRoutes(translateFile(t, "websocket-off")) {
		if hasHeader(r, "upgrade") {
			t.Errorf("websocket off: route %s matches upgrades", r.Name)
		}
		uc := r.GetRoute().GetUpgradeConfigs()
		if len(uc) != 1 || uc[0].UpgradeType != "websocket" || uc[0].GetEnabled().GetValue() {
			t.Errorf("websocket off: route %s upgrade_configs %v, want websocket disabled", r.Name, uc)
		}
	}
}

func TestStatefulSessionPerRoute(t *testing.T) {
	for _, r := range allRoutes(translateFile(t, "affinity-cookie")) {
		var ss statefulsessionv3.StatefulSessionPerRoute
		if err := r.TypedPerFilterConfig[statefulSessionFilter].UnmarshalTo(&ss); err != nil {
			t.Fatalf("route %s: %v", r.Name, err)
		}
		var cs cookiev3.CookieBasedSessionState
		if err := ss.GetStatefulSession().GetSessionState().GetTypedConfig().UnmarshalTo(&cs); err != nil {
			t.Fatalf("route %s: stateful session not on: %v", r.Name, err)
		}
		c := cs.Cookie
		attrs := map[string]string{}
		for _, a := range c.Attributes {
			attrs[a.Name] = a.Value
		}
		if c.Name != "tether-app" || c.Path != "/" || c.Ttl.AsDuration() != 0 || attrs["SameSite"] != "Strict" || !hasKey(attrs, "Secure") {
			t.Errorf("route %s cookie = %v", r.Name, c)
		}
	}
	for _, r := range allRoutes(translateFile(t, "affinity-none")) {
		var ss statefulsessionv3.StatefulSessionPerRoute
		if err := r.TypedPerFilterConfig[statefulSessionFilter].UnmarshalTo(&ss); err != nil || !ss.GetDisabled() {
			t.Errorf("none mode: route %s stateful session not disabled (%v)", r.Name, err)
		}
	}
}

func hasKey(m map[string]string, k string) bool { _, ok := m[k]; return ok }

func TestInstanceStates(t *testing.T) {
	eps := endpointsByID(t, translateFile(t, "instance-states"), "tether_app")
	for id, want := range map[string]corev3.HealthStatus{
		"available": corev3.HealthStatus_HEALTHY,
		"full":      corev3.HealthStatus_DRAINING,
		"draining":  corev3.HealthStatus_DRAINING,
		"unhealthy": corev3.HealthStatus_UNHEALTHY,
	} {
		if e := eps[id]; e == nil || e.HealthStatus != want {
			t.Errorf("instance %s: %v, want %v", id, e.GetHealthStatus(), want)
		}
	}
}

func TestWeights(t *testing.T) {
	eps := endpointsByID(t, translateFile(t, "weights-load"), "tether_app")
	w := func(id string) uint32 { return eps[id].GetLoadBalancingWeight().GetValue() }
	// Headroom: idle 0.93 (memory), half 0.5 (sessions), busy 0.18 (cpu), over 0 (clamped).
	order := []string{"idle", "half", "busy", "over"}
	for i := 1; i < len(order); i++ {
		if w(order[i-1]) <= w(order[i]) {
			t.Errorf("weight %s=%d not above %s=%d", order[i-1], w(order[i-1]), order[i], w(order[i]))
		}
	}
	if w("nolimits") != maxWeight || w("over") != minWeight {
		t.Errorf("weights nolimits %d over %d, want %d and %d", w("nolimits"), w("over"), maxWeight, minWeight)
	}
	eq := endpointsByID(t, translateFile(t, "weights-equal"), "tether_app")
	if a, b := eq["idle"].GetLoadBalancingWeight().GetValue(), eq["busy"].GetLoadBalancingWeight().GetValue(); a != b || a == 0 {
		t.Errorf("equal weights: %d and %d", a, b)
	}
	// Quantization: small noise keeps the weight.
	in := registry.Instance{State: registry.StateAvailable, Thresholds: registry.Thresholds{MaxCPU: 100}, Load: registry.Load{CPU: 41}}
	load := registry.DefaultServiceConfig("app")
	load.Weights = registry.WeightsLoad
	w1 := weight(in, load)
	in.Load.CPU = 42.5
	if w2 := weight(in, load); w1 != w2 {
		t.Errorf("cpu 41%% → %d, 42.5%% → %d: noise changes the weight", w1, w2)
	}
}

func TestOverload(t *testing.T) {
	check := func(file string, status uint32, header, value string) {
		t.Helper()
		res := translateFile(t, file)
		var direct, forward int
		for _, r := range allRoutes(res) {
			if hasHeader(r, "cookie") {
				forward++
				if r.GetRoute() == nil {
					t.Errorf("%s: session route %s does not reach the cluster", file, r.Name)
				}
				continue
			}
			direct++
			dr := r.GetDirectResponse()
			if dr.GetStatus() != status || !slices.ContainsFunc(r.ResponseHeadersToAdd, func(h *corev3.HeaderValueOption) bool {
				return h.Header.Key == header && h.Header.Value == value
			}) {
				t.Errorf("%s: route %s = %v headers %v, want %d with %s: %s", file, r.Name, dr, r.ResponseHeadersToAdd, status, header, value)
			}
		}
		if direct == 0 || forward == 0 {
			t.Errorf("%s: %d direct, %d forwarding routes", file, direct, forward)
		}
		if mappers := listenerMappers(t, res); !slices.EqualFunc(mappers, localReplyMappers(), func(a, b *hcmv3.ResponseMapper) bool { return proto.Equal(a, b) }) {
			t.Errorf("%s: the listener's local reply mappers are not the fixed ones: %v", file, mappers)
		}
	}
	check("all-full", 503, "retry-after", "120")
	check("return-url", 302, "location", "https://status.example.com/busy?from=app")
	check("no-instances", 503, "retry-after", "600")
}

func listenerMappers(t *testing.T, res *Resources) []*hcmv3.ResponseMapper {
	t.Helper()
	var hcm hcmv3.HttpConnectionManager
	if err := res.Listeners[0].FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		t.Fatal(err)
	}
	return hcm.GetLocalReplyConfig().GetMappers()
}

func TestDomainsAndConflicts(t *testing.T) {
	res := translateFile(t, "mixed-domains")
	vhosts := map[string][]string{}
	for _, vh := range res.Routes[0].VirtualHosts {
		for _, r := range vh.Routes {
			vhosts[vh.Name] = append(vhosts[vh.Name], r.Name)
		}
	}
	if got := vhosts["*"]; len(got) == 0 || !strings.HasPrefix(got[0], "admin/") || !strings.HasPrefix(got[len(got)-1], "portal/") {
		t.Errorf(`virtual host "*" routes %v: want admin (/admin) before portal (/)`, got)
	}
	if _, ok := vhosts["admin.example.com"]; !ok {
		t.Errorf("no lower-cased virtual host admin.example.com: %v", vhosts)
	}
	if len(res.Problems) != 0 {
		t.Errorf("problems %v", res.Problems)
	}

	res = translateFile(t, "conflict")
	if len(res.Problems) != 1 || res.Problems[0].Service != "beta" || !strings.Contains(res.Problems[0].Message, "alpha") {
		t.Errorf("problems %v, want beta losing shop.example.com / to alpha", res.Problems)
	}
	for _, vh := range res.Routes[0].VirtualHosts {
		for _, r := range vh.Routes {
			if strings.HasPrefix(r.Name, "beta/") {
				t.Errorf("beta's route %s kept in %s", r.Name, vh.Name)
			}
		}
	}
	if len(res.Clusters) != 3 {
		t.Errorf("%d clusters, want 3 (the loser keeps its cluster)", len(res.Clusters))
	}
}

func TestBadServiceIsLeftOut(t *testing.T) {
	st := loadState(t, filepath.Join("testdata", "states", "affinity-cookie.json"))
	bad := registry.DefaultServiceConfig("bad")
	bad.Domains = nil
	st.Services["bad"] = &registry.Service{Name: "bad", Config: bad}
	st.Services["app"].Instances["broken"] = registry.Instance{ID: "broken", Address: "not-an-ip", Port: 1, State: registry.StateAvailable}
	res := Translate(st, Options{})
	checkResources(t, res)
	var msgs []string
	for _, p := range res.Problems {
		msgs = append(msgs, p.Service+": "+p.Message)
	}
	if len(res.Problems) != 2 || !strings.Contains(strings.Join(msgs, "\n"), "bad: service left out") ||
		!strings.Contains(strings.Join(msgs, "\n"), "instance broken left out") {
		t.Errorf("problems:\n%s", strings.Join(msgs, "\n"))
	}
	if len(res.Clusters) != 1 || res.Clusters[0].Name != "tether_app" || len(endpointsByID(t, res, "tether_app")) != 2 {
		t.Errorf("clusters %d, want only tether_app with its 2 valid instances", len(res.Clusters))
	}
}

func TestListener(t *testing.T) {
	res := Translate(&registry.State{}, Options{ListenPort: 8080})
	checkResources(t, res)
	l := res.Listeners[0]
	if l.Name != ListenerName || l.GetAddress().GetSocketAddress().GetPortValue() != 8080 {
		t.Errorf("listener %s port %d", l.Name, l.GetAddress().GetSocketAddress().GetPortValue())
	}
	var hcm hcmv3.HttpConnectionManager
	if err := l.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range hcm.HttpFilters {
		names = append(names, f.Name)
	}
	if !slices.Equal(names, []string{headerMutationFilter, statefulSessionFilter, routerFilter}) {
		t.Errorf("http filters %v", names)
	}
	// The stateful session filter is wrapped (TestRefusedResponseSetsNoCookie); the filter
	// inside is inert, each route turns it on or off.
	var ewm matchingv3.ExtensionWithMatcher
	var ss statefulsessionv3.StatefulSession
	if err := hcm.HttpFilters[1].GetTypedConfig().UnmarshalTo(&ewm); err != nil {
		t.Errorf("stateful session filter not wrapped: %v", err)
	} else if err := ewm.GetExtensionConfig().GetTypedConfig().UnmarshalTo(&ss); err != nil || ss.SessionState != nil {
		t.Errorf("listener-level stateful session must be inert: %v %v", &ss, err)
	}
	if !hcm.GetUseRemoteAddress().GetValue() || hcm.GetRds().GetRouteConfigName() != RouteConfigName || hcm.GetRds().GetConfigSource().GetAds() == nil {
		t.Errorf("hcm: %v", &hcm)
	}
	if len(res.Routes) != 1 || len(res.Routes[0].VirtualHosts) != 0 || len(res.Clusters) != 0 {
		t.Errorf("empty registry: %d route configs, clusters %d", len(res.Routes), len(res.Clusters))
	}
}

func TestDeterminism(t *testing.T) {
	st := loadState(t, filepath.Join("testdata", "states", "mixed-domains.json"))
	a, b := Translate(st, Options{}), Translate(st, Options{})
	ma, mb := allMessages(a), allMessages(b)
	if len(ma) != len(mb) || len(ma) == 0 {
		t.Fatalf("%d vs %d resources", len(ma), len(mb))
	}
	opts := proto.MarshalOptions{Deterministic: true}
	for i := range ma {
		if !proto.Equal(ma[i], mb[i]) {
			t.Errorf("resource %d differs between two translations", i)
		}
		ba, err1 := opts.Marshal(ma[i])
		bb, err2 := opts.Marshal(mb[i])
		if err1 != nil || err2 != nil || !bytes.Equal(ba, bb) {
			t.Errorf("resource %d: deterministic bytes differ (%v %v)", i, err1, err2)
		}
	}
}

func TestCacheRetranslatesOnlyChanged(t *testing.T) {
	st1 := loadState(t, filepath.Join("testdata", "states", "mixed-domains.json"))
	c := NewCache(Options{})
	r1 := c.Translate(st1)

	// The watcher's next State: same pointers for unchanged services, a new one for api.
	st2 := &registry.State{Revision: 2, Services: maps.Clone(st1.Services)}
	api := *st1.Services["api"]
	api.Instances = map[string]registry.Instance{}
	for id, in := range st1.Services["api"].Instances {
		in.Load.Sessions = 480 // headroom 0.04
		api.Instances[id] = in
	}
	api.Revision = 2
	st2.Services["api"] = &api
	r2 := c.Translate(st2)

	byName := func(res *Resources) map[string]*clusterv3.Cluster {
		m := map[string]*clusterv3.Cluster{}
		for _, cl := range res.Clusters {
			m[cl.Name] = cl
		}
		return m
	}
	c1, c2 := byName(r1), byName(r2)
	for _, name := range []string{"tether_admin", "tether_portal"} {
		if c1[name] == nil || c1[name] != c2[name] {
			t.Errorf("%s was re-translated although its service did not change", name)
		}
	}
	if c1["tether_api"] != c2["tether_api"] {
		t.Error("tether_api's cluster did not change, yet a new pointer was handed out: the publisher would re-hash it")
	}
	eps := func(res *Resources) *endpointv3.ClusterLoadAssignment {
		for _, e := range res.Endpoints {
			if e.GetClusterName() == "tether_api" {
				return e
			}
		}
		return nil
	}
	if eps(r1) == eps(r2) || proto.Equal(eps(r1), eps(r2)) {
		t.Error("tether_api's endpoints were not re-translated after its load changed")
	}
	if r1.Routes[0] != r2.Routes[0] {
		t.Error("the route configuration was rebuilt although no route changed")
	}
	fresh := Translate(st2, Options{})
	m2, mf := allMessages(r2), allMessages(fresh)
	for i := range mf {
		if !proto.Equal(m2[i], mf[i]) {
			t.Errorf("cached translation differs from a fresh one at resource %d", i)
		}
	}
	if w := endpointsByID(t, r2, "tether_api")["v1"].GetLoadBalancingWeight().GetValue(); w != minWeight {
		t.Errorf("api weight after load change = %d, want %d", w, minWeight)
	}

	// A service removed from the State is dropped.
	delete(st2.Services, "admin")
	if _, ok := byName(c.Translate(st2))["tether_admin"]; ok {
		t.Error("removed service still translated")
	}
}

// TestRegistrationTouchesOnlyEndpoints: an instance joining or leaving a service that still
// has an available instance changes that service's endpoints and nothing else, so a delta
// Envoy receives one ClusterLoadAssignment, not the shared route configuration.
func TestRegistrationTouchesOnlyEndpoints(t *testing.T) {
	st1 := loadState(t, filepath.Join("testdata", "states", "mixed-domains.json"))
	st2 := &registry.State{Revision: 2, Services: maps.Clone(st1.Services)}
	api := *st1.Services["api"]
	api.Instances = map[string]registry.Instance{}
	var extra registry.Instance
	for id, in := range st1.Services["api"].Instances {
		api.Instances[id] = in
		extra = in
	}
	for i := range 6 { // enough to move any instance-count-derived setting
		extra.ID, extra.Port = fmt.Sprintf("new-%d", i), 6100+i
		api.Instances[extra.ID] = extra
	}
	st2.Services["api"] = &api
	r1, r2 := Translate(st1, Options{}), Translate(st2, Options{})
	for i, pair := range [][2][]proto.Message{
		{as[proto.Message](r1.Listeners), as[proto.Message](r2.Listeners)},
		{as[proto.Message](r1.Routes), as[proto.Message](r2.Routes)},
		{as[proto.Message](r1.Clusters), as[proto.Message](r2.Clusters)},
	} {
		for j := range pair[0] {
			if !proto.Equal(pair[0][j], pair[1][j]) {
				t.Errorf("resource kind %d #%d changed when an instance registered; want only endpoints to change", i, j)
			}
		}
	}
	if proto.Equal(endpointsByID(t, r1, "tether_api")[extra.ID], endpointsByID(t, r2, "tether_api")[extra.ID]) {
		t.Error("the new instance is missing from tether_api's endpoints")
	}
}

// TestCacheMatchesTranslateOverAHistory: over a random copy-on-write history of load and
// state changes, registrations, removals, domain moves (which create and resolve conflicts)
// and services added and removed, the cache, which reuses the last assembly when only
// clusters and endpoints changed, hands out exactly what a fresh Translate does.
func TestCacheMatchesTranslateOverAHistory(t *testing.T) {
	base := loadState(t, filepath.Join("testdata", "states", "mixed-domains.json"))
	names := slices.Sorted(maps.Keys(base.Services))
	c := NewCache(Options{})
	st := base
	rng := rand.New(rand.NewPCG(3, 4))
	states := []registry.InstanceState{registry.StateAvailable, registry.StateFull, registry.StateDraining, registry.StateUnhealthy}
	for step := range 300 {
		next := &registry.State{Revision: int64(step + 2), Services: maps.Clone(st.Services)}
		name := names[rng.IntN(len(names))]
		if rng.IntN(12) == 0 {
			name = fmt.Sprintf("extra%d", rng.IntN(3)) // a service that comes and goes
		}
		old := next.Services[name]
		if old == nil {
			old = base.Services[names[rng.IntN(len(names))]]
		}
		svc := *old
		svc.Name = name
		svc.Instances = maps.Clone(old.Instances)
		ids := slices.Sorted(maps.Keys(svc.Instances))
		switch k := rng.IntN(10); {
		case k < 5 && len(ids) > 0: // load
			id := ids[rng.IntN(len(ids))]
			in := svc.Instances[id]
			in.Load.Sessions = rng.IntN(600)
			svc.Instances[id] = in
		case k < 7 && len(ids) > 0: // state
			id := ids[rng.IntN(len(ids))]
			in := svc.Instances[id]
			in.State = states[rng.IntN(len(states))]
			svc.Instances[id] = in
		case k < 8 && len(ids) > 0: // gone
			delete(svc.Instances, ids[rng.IntN(len(ids))])
		case k < 9: // registered
			id := fmt.Sprintf("new%d", step)
			svc.Instances[id] = registry.Instance{ID: id, Address: "10.9.0.1", Port: 6000 + step, State: registry.StateAvailable,
				Thresholds: registry.Thresholds{MaxSessions: 500}}
		default: // domain moved, or the service removed
			if rng.IntN(3) == 0 {
				delete(next.Services, name)
				st = next
				checkCacheMatches(t, step, c, st)
				continue
			}
			other := base.Services[names[rng.IntN(len(names))]]
			svc.Config.Domains = slices.Clone(other.Config.Domains)
			svc.Configured = rng.IntN(2) == 0
			svc.Created = int64(rng.IntN(5))
		}
		next.Services[name] = &svc
		st = next
		checkCacheMatches(t, step, c, st)
	}
}

func checkCacheMatches(t *testing.T, step int, c *Cache, st *registry.State) {
	t.Helper()
	got, want := c.Translate(st), Translate(st, Options{})
	gm, wm := allMessages(got), allMessages(want)
	if len(gm) != len(wm) {
		t.Fatalf("step %d: cache gave %d resources, a fresh translation %d", step, len(gm), len(wm))
	}
	for i := range wm {
		if !proto.Equal(gm[i], wm[i]) {
			t.Fatalf("step %d: cached translation differs from a fresh one at resource %d", step, i)
		}
	}
	if !slices.Equal(got.Problems, want.Problems) {
		t.Fatalf("step %d: problems %v, want %v", step, got.Problems, want.Problems)
	}
}

// TestCacheDomainChangeReachesRoutes: a service whose domains change and nothing else (its
// routes are equal, and kept by pointer) gets a route configuration with the new domains.
// The route configuration memo once compared only the routes, and served the old domains.
func TestCacheDomainChangeReachesRoutes(t *testing.T) {
	st := loadState(t, filepath.Join("testdata", "states", "mixed-domains.json"))
	c := NewCache(Options{})
	c.Translate(st)
	next := &registry.State{Revision: st.Revision + 1, Services: maps.Clone(st.Services)}
	api := *st.Services["api"]
	api.Config.Domains = []string{"moved.example.com"}
	next.Services["api"] = &api
	if !slices.ContainsFunc(c.Translate(next).Routes[0].GetVirtualHosts(), func(vh *routev3.VirtualHost) bool {
		return slices.Contains(vh.GetDomains(), "moved.example.com")
	}) {
		t.Error("the new domain of api is in no virtual host")
	}
}
