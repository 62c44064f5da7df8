package translate

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/tetherlb/tether/registry"
)

// request is what route matching reads of an HTTP request: its path and headers (names
// lower-case, as Envoy holds them).
type request struct {
	path    string
	headers map[string]string
}

// firstRoute returns the route Envoy picks for req in vh: the first whose match holds
// (Envoy's VirtualHostImpl::getRouteFromRoutes, source/common/router/config_impl.cc,
// returns the first route in configuration order whose match holds). Only the
// matchers the translation uses are known; any other fails the test, so that a new one is
// added here before a test relies on it.
func firstRoute(t *testing.T, vh *routev3.VirtualHost, req request) *routev3.Route {
	t.Helper()
	for _, r := range vh.GetRoutes() {
		if routeMatches(t, r.GetMatch(), req) {
			return r
		}
	}
	return nil
}

func routeMatches(t *testing.T, m *routev3.RouteMatch, req request) bool {
	t.Helper()
	switch p := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		if !strings.HasPrefix(req.path, p.Prefix) {
			return false
		}
	case *routev3.RouteMatch_PathSeparatedPrefix:
		if req.path != p.PathSeparatedPrefix && !strings.HasPrefix(req.path, p.PathSeparatedPrefix+"/") {
			return false
		}
	default:
		t.Fatalf("route match %v: path specifier %T not simulated", m, p)
	}
	for _, h := range m.GetHeaders() {
		v, present := req.headers[strings.ToLower(h.GetName())]
		var ok bool
		switch {
		case h.GetPresentMatch():
			ok = present
		case h.GetStringMatch().GetSafeRegex() != nil:
			ok = present && regexp.MustCompile(`^(?:`+h.GetStringMatch().GetSafeRegex().GetRegex()+`)$`).MatchString(v)
		case h.GetStringMatch().GetExact() != "":
			sm := h.GetStringMatch()
			ok = present && (v == sm.GetExact() || sm.GetIgnoreCase() && strings.EqualFold(v, sm.GetExact()))
		default:
			t.Fatalf("header matcher %v not simulated", h)
		}
		if ok == h.GetInvertMatch() {
			return false
		}
	}
	return true
}

// TestMarkerRoutesComeFirst routes requests through the generated route table as Envoy
// does, first match wins, for every affinity mode, with WebSockets on and off, with and
// without an available instance: a request carrying the session marker reaches its server
// through a route that never retries (nor answers the overload reply), and only a request
// without it gets the catch-all's 503 retry or overload reply.
func TestMarkerRoutesComeFirst(t *testing.T) {
	modes := []struct {
		mode   registry.AffinityMode
		marker map[string]string // headers that carry the session marker; nil: the mode has none
	}{
		{registry.AffinityCookie, map[string]string{"cookie": "other=1; tether-app=MTAuMC4wLjE6NTAwMQ=="}},
		{registry.AffinityHeader, map[string]string{"x-tether-session": "MTAuMC4wLjE6NTAwMQ=="}},
		{registry.AffinitySourceIP, nil},
		{registry.AffinityNone, nil},
	}
	for _, m := range modes {
		for _, ws := range []bool{true, false} {
			for _, available := range []bool{true, false} {
				name := fmt.Sprintf("%s/websocket=%v/available=%v", m.mode, ws, available)
				t.Run(name, func(t *testing.T) {
					cfg := registry.DefaultServiceConfig("app")
					cfg.Affinity.Mode, cfg.WebSocket = m.mode, ws
					state := registry.StateAvailable
					if !available {
						// Draining, not full: a full source-ip server stays in the
						// ring and takes new users (TestSourceIPRingKeepsFullServers).
						state = registry.StateDraining
					}
					st := &registry.State{Services: map[string]*registry.Service{"app": {
						Name: "app", Config: cfg, Configured: true,
						Instances: map[string]registry.Instance{"a1": {ID: "a1", Address: "10.0.0.1", Port: 5001, State: state}},
					}}}
					res := Translate(st, Options{})
					if len(res.Problems) > 0 || len(res.Routes) != 1 || len(res.Routes[0].GetVirtualHosts()) != 1 {
						t.Fatalf("translation: problems %v, routes %v", res.Problems, res.Routes)
					}
					vh := res.Routes[0].GetVirtualHosts()[0]
					upgrades := []map[string]string{nil}
					if ws {
						upgrades = append(upgrades, map[string]string{"upgrade": "WebSocket", "connection": "Upgrade"})
					}
					for _, up := range upgrades {
						for _, marked := range []bool{true, false} {
							if marked && m.marker == nil {
								continue
							}
							req := request{path: "/page", headers: map[string]string{"cookie": "unrelated=1"}}
							for k, v := range up {
								req.headers[k] = v
							}
							if marked {
								for k, v := range m.marker {
									req.headers[k] = v
								}
							}
							what := fmt.Sprintf("request (marker %v, upgrade %v)", marked, up != nil)
							r := firstRoute(t, vh, req)
							if r == nil {
								t.Fatalf("%s: no route matches", what)
							}
							ra := r.GetRoute()
							switch {
							case marked:
								if ra == nil || ra.GetRetryPolicy() != nil {
									t.Errorf("%s goes to route %s: action %v; want forwarding to its server without a retry", what, r.Name, r.GetAction())
								}
							case available:
								if ra == nil || ra.GetRetryPolicy() == nil {
									t.Errorf("%s goes to route %s: action %v; want forwarding with the 503 retry", what, r.Name, r.GetAction())
								}
							default:
								if r.GetDirectResponse() == nil && r.GetRedirect() == nil {
									t.Errorf("%s goes to route %s: action %v; want the overload reply", what, r.Name, r.GetAction())
								}
							}
							if isWS := ra.GetIdleTimeout().AsDuration() == webSocketIdleTimeout; ra != nil && isWS != (up != nil) {
								t.Errorf("%s goes to route %s, whose idle timeout is %v", what, r.Name, ra.GetIdleTimeout().AsDuration())
							}
						}
					}
				})
			}
		}
	}
}
