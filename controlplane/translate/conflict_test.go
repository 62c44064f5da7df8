package translate

import (
	"strings"
	"testing"

	"github.com/tetherlb/tether/registry"
)

// claimant is a service on the default "*" and "/" with one available instance.
func claimant(name string, configured bool, created int64) *registry.Service {
	return &registry.Service{Name: name, Config: registry.DefaultServiceConfig(name), Configured: configured, Created: created, Revision: created,
		Instances: map[string]registry.Instance{"i": {ID: "i", Address: "10.0.0.1", Port: 5000, State: registry.StateAvailable}}}
}

// catchAllOwner returns the service whose routes serve "*" "/", and the services reported
// as losing a route.
func catchAllOwner(t *testing.T, res *Resources) (string, []string) {
	t.Helper()
	owner := ""
	for _, vh := range res.Routes[0].VirtualHosts {
		if vh.Name != "*" {
			continue
		}
		for _, r := range vh.Routes {
			name, _, _ := strings.Cut(r.Name, "/")
			if owner != "" && owner != name {
				t.Fatalf("both %s and %s have routes on * /", owner, name)
			}
			owner = name
		}
	}
	var losers []string
	for _, p := range res.Problems {
		if strings.Contains(p.Message, "is held by service") {
			losers = append(losers, p.Service)
		}
	}
	return owner, losers
}

func TestConflictResolution(t *testing.T) {
	tests := []struct {
		name     string
		services []*registry.Service
		want     string
		why      string // in the losers' problem
	}{
		// An agent started with --service ap beside the configured app: "ap" sorts first,
		// and its claim is even older, but app keeps its users.
		{"configured beats an older unconfigured", []*registry.Service{claimant("app", true, 10), claimant("ap", false, 5)}, "app", "configured"},
		{"older configured claim beats name order", []*registry.Service{claimant("zeta", true, 3), claimant("alpha", true, 7)}, "zeta", "older claim"},
		{"older unconfigured claim beats name order", []*registry.Service{claimant("b", false, 2), claimant("a", false, 9)}, "b", "older claim"},
		{"a known claim beats an unknown one", []*registry.Service{claimant("b", false, 4), claimant("a", false, 0)}, "b", "older claim"},
		{"equal claims go by name", []*registry.Service{claimant("b", true, 0), claimant("a", true, 0)}, "a", "first by name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := &registry.State{Revision: 20, Services: map[string]*registry.Service{}}
			for _, s := range tc.services {
				st.Services[s.Name] = s
			}
			res := Translate(st, Options{})
			owner, losers := catchAllOwner(t, res)
			if owner != tc.want {
				t.Errorf("* / served by %q, want %q", owner, tc.want)
			}
			if len(losers) != len(tc.services)-1 {
				t.Errorf("losers %v, want every service but %s", losers, tc.want)
			}
			for _, p := range res.Problems {
				if !strings.Contains(p.Message, tc.why) {
					t.Errorf("problem %q does not say %q", p.Message, tc.why)
				}
			}
			if len(res.Clusters) != len(tc.services) {
				t.Errorf("%d clusters, want %d: a loser keeps its cluster", len(res.Clusters), len(tc.services))
			}
		})
	}
}

// The Cache reuses the route configuration while every service's routes are unchanged; a
// change of rank alone (app's configuration deleted, its routes identical) must still move
// the contested route.
func TestConflictFollowsRankThroughCache(t *testing.T) {
	c := NewCache(Options{})
	app, ap := claimant("app", true, 10), claimant("ap", false, 5)
	st := &registry.State{Revision: 20, Services: map[string]*registry.Service{"app": app, "ap": ap}}
	if owner, _ := catchAllOwner(t, c.Translate(st)); owner != "app" {
		t.Fatalf("* / served by %q, want app", owner)
	}
	unconfigured := claimant("app", false, 12) // same default configuration, now a younger claim
	st = &registry.State{Revision: 21, Services: map[string]*registry.Service{"app": unconfigured, "ap": ap}}
	if owner, _ := catchAllOwner(t, c.Translate(st)); owner != "ap" {
		t.Errorf("after app's configuration went: * / served by %q, want the older ap", owner)
	}
}

// A service whose configuration is rejected with no valid version to fall back to is left
// out and reported, and keeps its domains and path reserved: they answer 503 "service
// misconfigured", never another service's servers (here web, unconfigured on "*" "/").
// Its defaults are never served.
func TestConfigErrorLeavesServiceOut(t *testing.T) {
	bad := claimant("app", true, 3)
	bad.ConfigError = "configuration rejected: affinity.mode: \"sticky\""
	bad.Config = registry.ServiceConfig{Domains: []string{"*"}, PathPrefix: "/"}
	st := &registry.State{Revision: 20, Services: map[string]*registry.Service{"app": bad, "web": claimant("web", false, 9)}}
	res := Translate(st, Options{})
	if owner, _ := catchAllOwner(t, res); owner != "app" {
		t.Fatalf("* / held by %q, want app's reservation", owner)
	}
	for _, vh := range res.Routes[0].VirtualHosts {
		for _, r := range vh.Routes {
			dr := r.GetDirectResponse()
			if dr == nil || dr.GetStatus() != 503 || !strings.Contains(dr.GetBody().GetInlineString(), "misconfigured") {
				t.Errorf("route %s: %v, want a direct 503 service misconfigured", r.GetName(), r.GetAction())
			}
		}
	}
	if len(res.Clusters) != 1 || res.Clusters[0].Name != ClusterName("web") {
		t.Errorf("clusters %v, want web's only", res.Clusters)
	}
	var appLeftOut, webLost bool
	for _, p := range res.Problems {
		appLeftOut = appLeftOut || p.Service == "app" && strings.Contains(p.Message, "sticky")
		webLost = webLost || p.Service == "web" && strings.Contains(p.Message, "held by service app")
	}
	if !appLeftOut || !webLost || len(res.Problems) != 2 {
		t.Errorf("problems %v, want app left out with its error and web's lost route", res.Problems)
	}

	// Nothing to reserve (the value named no readable domains): left out, nothing held.
	bad.Config = registry.ServiceConfig{}
	res = Translate(st, Options{})
	if owner, _ := catchAllOwner(t, res); owner != "web" {
		t.Errorf("nothing reserved: * / served by %q, want web", owner)
	}
}

// The fields of a rejected configuration served with their defaults are each reported.
func TestConfigProblemsReported(t *testing.T) {
	app := claimant("app", true, 3)
	app.ConfigProblems = []string{`lbPolicy: "fastest" is not one of least_request`}
	res := Translate(&registry.State{Revision: 20, Services: map[string]*registry.Service{"app": app}}, Options{})
	if len(res.Clusters) != 1 || len(res.Problems) != 1 || !strings.Contains(res.Problems[0].Message, "fastest") {
		t.Errorf("clusters %d, problems %v: want app served and its defaulted field reported", len(res.Clusters), res.Problems)
	}
}

// Issue 24 #12: one service listing a domain with a port must not turn on host-port
// matching for every other service (b.test would then stop matching "b.test:10000"). Ports
// are ignored everywhere, the port of a domain is dropped and reported.
func TestPortInOneDomainChangesNoOtherService(t *testing.T) {
	a, b := claimant("a", true, 3), claimant("b", true, 4)
	a.Config.Domains = []string{"a.test:8080"}
	b.Config.Domains = []string{"b.test"}
	res := Translate(&registry.State{Revision: 20, Services: map[string]*registry.Service{"a": a, "b": b}}, Options{})
	rc := res.Routes[0]
	if !rc.GetIgnorePortInHostMatching() {
		t.Errorf("ignore_port_in_host_matching is off: b.test no longer matches a Host with a port")
	}
	var names []string
	for _, vh := range rc.GetVirtualHosts() {
		names = append(names, strings.Join(vh.GetDomains(), ","))
	}
	if strings.Join(names, " ") != "a.test b.test" {
		t.Errorf("virtual host domains %v, want a.test b.test (the port dropped)", names)
	}
	found := false
	for _, p := range res.Problems {
		found = found || p.Service == "a" && strings.Contains(p.Message, "a.test:8080")
	}
	if !found {
		t.Errorf("problems %v: the dropped port is not reported", res.Problems)
	}
}
