package controlplane

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/rs/zerolog"

	"github.com/tetherlb/tether/controlplane/translate"
	"github.com/tetherlb/tether/registry"
)

func phaseState(rev int64, states map[string]registry.InstanceState) *registry.State {
	svc := &registry.Service{Name: "app", Config: registry.DefaultServiceConfig("app"), Instances: map[string]registry.Instance{}}
	ports := map[string]int{"old": 5001, "sick": 5002, "new": 5003, "newfull": 5004}
	for id, s := range states {
		svc.Instances[id] = registry.Instance{ID: id, Address: "10.0.0.1", Port: ports[id], State: s}
	}
	return &registry.State{Revision: rev, Services: map[string]*registry.Service{"app": svc}}
}

// servedHealth translates st and returns the EDS status of each instance.
func servedHealth(t *testing.T, st *registry.State) (map[string]corev3.HealthStatus, []corev3.HealthStatus) {
	t.Helper()
	res := translate.Translate(st, translate.Options{ListenPort: 10000})
	out := map[string]corev3.HealthStatus{}
	for _, cla := range res.Endpoints {
		for _, l := range cla.GetEndpoints() {
			for _, e := range l.GetLbEndpoints() {
				out[e.GetEndpoint().GetHostname()] = e.GetHealthStatus()
			}
		}
	}
	if len(res.Clusters) != 1 {
		t.Fatalf("clusters = %d, want 1", len(res.Clusters))
	}
	return out, res.Clusters[0].GetCommonLbConfig().GetOverrideHostStatus().GetStatuses()
}

// TestFirstPhaseIsDrainingAndReachableBySession holds Envoy rules 3, 7 and 24 for two-phase
// publication: an endpoint in its first phase is sent as DRAINING (rule 7: never picked for a
// new session) in a cluster whose override_host_status admits DRAINING (rule 3: a session
// cookie created by an Envoy that already promoted it still reaches it). The first
// publication is not phased; a new instance and one back from unhealthy are; full and
// unhealthy instances are left as they are; the phase is applied to the state, never inside
// translation (the input state is not modified).
func TestFirstPhaseIsDrainingAndReachableBySession(t *testing.T) {
	ph := newPhaser(zerolog.Nop(), newMetrics(), time.Minute, nil, nil, nil)
	now := time.Now()
	first := phaseState(1, map[string]registry.InstanceState{"old": registry.StateAvailable, "sick": registry.StateUnhealthy})
	got, _ := servedHealth(t, ph.apply(first, now))
	if got["old"] != corev3.HealthStatus_HEALTHY || got["sick"] != corev3.HealthStatus_UNHEALTHY {
		t.Fatalf("first publication = %v, want old HEALTHY, sick UNHEALTHY (not phased)", got)
	}
	next := phaseState(2, map[string]registry.InstanceState{"old": registry.StateAvailable, "sick": registry.StateAvailable,
		"new": registry.StateAvailable, "newfull": registry.StateFull})
	served := ph.apply(next, now)
	got, override := servedHealth(t, served)
	want := map[string]corev3.HealthStatus{"old": corev3.HealthStatus_HEALTHY, "sick": corev3.HealthStatus_DRAINING,
		"new": corev3.HealthStatus_DRAINING, "newfull": corev3.HealthStatus_DRAINING}
	for id, h := range want {
		if got[id] != h {
			t.Errorf("%s served %v, want %v", id, got[id], h)
		}
	}
	admitsDraining := false
	for _, s := range override {
		admitsDraining = admitsDraining || s == corev3.HealthStatus_DRAINING
	}
	if !admitsDraining {
		t.Errorf("override_host_status %v does not admit DRAINING: a first-phase endpoint would lose its sessions", override)
	}
	if next.Services["app"].Instances["new"].State != registry.StateAvailable {
		t.Error("apply modified its input state")
	}
	if served.Services["app"].Instances["new"].Reason != firstPhaseReason {
		t.Errorf("first-phase reason = %q", served.Services["app"].Instances["new"].Reason)
	}
	// The same input gives the same phased service (the translation cache keeps it).
	if again := ph.apply(next, now); again.Services["app"] != served.Services["app"] {
		t.Error("an unchanged state was phased into a new service copy")
	}
	// Promoted: served as the state says from the next publication.
	promoteAll(ph)
	checkFirstIndex(t, ph)
	got, _ = servedHealth(t, ph.apply(next, now))
	checkFirstIndex(t, ph)
	if got["new"] != corev3.HealthStatus_HEALTHY || got["sick"] != corev3.HealthStatus_HEALTHY || got["newfull"] != corev3.HealthStatus_DRAINING {
		t.Errorf("after promotion = %v, want new and sick HEALTHY, newfull DRAINING", got)
	}
	// Gone and back (or unhealthy and back): a new first phase.
	ph.apply(phaseState(3, map[string]registry.InstanceState{"old": registry.StateAvailable, "new": registry.StateUnhealthy}), now)
	got, _ = servedHealth(t, ph.apply(phaseState(4, map[string]registry.InstanceState{"old": registry.StateAvailable, "new": registry.StateAvailable}), now))
	if got["new"] != corev3.HealthStatus_DRAINING || got["old"] != corev3.HealthStatus_HEALTHY {
		t.Errorf("back from unhealthy = %v, want new DRAINING again, old HEALTHY", got)
	}
}

// promoteAll ends every first phase, as evaluations would.
func promoteAll(ph *phaser) {
	ph.mu.Lock()
	defer ph.mu.Unlock()
	for _, e := range ph.reach {
		e.promoted = e.promoted || e.first
	}
}

// checkFirstIndex fails unless ph.first holds exactly the endpoints of ph.reach in their first
// phase: the evaluation visits only those.
func checkFirstIndex(t *testing.T, ph *phaser) {
	t.Helper()
	ph.mu.Lock()
	defer ph.mu.Unlock()
	n := 0
	for k, e := range ph.reach {
		if e.first {
			n++
			if ph.first[k] != e {
				t.Errorf("%v is in its first phase but not indexed", k)
			}
		}
	}
	if n != len(ph.first) {
		t.Errorf("%d endpoints indexed as in their first phase, want %d", len(ph.first), n)
	}
}

// TestApplyCostsWhatChangedAndForgetsNothing: apply passes over services whose pointer it saw
// last time; over a random copy-on-write history (services changed, added and removed,
// instances gone, unhealthy, moved to a new port) it must track exactly the reachable
// endpoints of the last state, and phase exactly the new ones, as a walk of every instance
// would.
func TestApplyCostsWhatChangedAndForgetsNothing(t *testing.T) {
	ph := newPhaser(zerolog.Nop(), newMetrics(), time.Minute, nil, nil, nil)
	rng := rand.New(rand.NewPCG(1, 2))
	st := &registry.State{Revision: 1, Services: map[string]*registry.Service{}}
	now := time.Now()
	for rev := int64(1); rev <= 400; rev++ {
		next := &registry.State{Revision: rev, Services: maps.Clone(st.Services)}
		for range 1 + rng.IntN(3) {
			name := fmt.Sprintf("s%d", rng.IntN(6))
			if rng.IntN(10) == 0 {
				delete(next.Services, name)
				continue
			}
			svc := &registry.Service{Name: name, Config: registry.DefaultServiceConfig(name), Instances: map[string]registry.Instance{}}
			if old := next.Services[name]; old != nil {
				svc.Instances = maps.Clone(old.Instances)
			}
			id := fmt.Sprintf("i%d", rng.IntN(5))
			switch rng.IntN(4) {
			case 0:
				delete(svc.Instances, id)
			case 1:
				svc.Instances[id] = registry.Instance{ID: id, Address: "10.0.0.1", Port: 5000 + rng.IntN(2), State: registry.StateUnhealthy}
			default:
				svc.Instances[id] = registry.Instance{ID: id, Address: "10.0.0.1", Port: 5000 + rng.IntN(2), State: registry.StateAvailable}
			}
			next.Services[name] = svc
		}
		prevReach := map[epKey]bool{}
		ph.mu.Lock()
		for k := range ph.reach {
			prevReach[k] = true
		}
		if rng.IntN(3) == 0 { // promote some
			for _, e := range ph.first {
				e.promoted = true
			}
		}
		ph.mu.Unlock()
		served := ph.apply(next, now)
		st = next

		want := map[epKey]bool{}
		for name, svc := range st.Services {
			for _, in := range svc.Instances {
				if reachable(in) {
					want[epKey{translate.ClusterName(name), in.ID, hostPort(in)}] = true
				}
			}
		}
		ph.mu.Lock()
		if len(ph.reach) != len(want) {
			t.Fatalf("revision %d: %d endpoints tracked, want %d", rev, len(ph.reach), len(want))
		}
		for k := range want {
			e := ph.reach[k]
			if e == nil {
				t.Fatalf("revision %d: reachable endpoint %v not tracked", rev, k)
			}
			if !prevReach[k] && rev > 1 && (!e.first || e.promoted) {
				t.Fatalf("revision %d: new endpoint %v not in its first phase", rev, k)
			}
			in := served.Services[st.Services[svcOf(st, k)].Name].Instances[k.id]
			if e.first && (in.State == registry.StateAvailable || in.State == registry.StateFull) && !in.FirstPhase {
				t.Fatalf("revision %d: %v in its first phase served as its state says", rev, k)
			}
		}
		ph.mu.Unlock()
		checkFirstIndex(t, ph)
	}
}

// svcOf returns the service whose cluster is k's.
func svcOf(st *registry.State, k epKey) string {
	for name := range st.Services {
		if translate.ClusterName(name) == k.cluster {
			return name
		}
	}
	return ""
}

// TestScaleOutFromAllFullSaysAMoment holds the first phase to what a new user sees: when
// every server that could take a new session is still in its first phase (scale-out while
// all others are full), a new user must not be told to come back later than the phase can
// last (--publish-settle), nor be sent to the overload page (returnUrl): the reply is a 503
// whose Retry-After is at most the settle time. Once promoted, the route forwards.
func TestScaleOutFromAllFullSaysAMoment(t *testing.T) {
	const settle = 10 * time.Second
	for _, returnURL := range []string{"", "https://status.example.com/full"} {
		ph := newPhaser(zerolog.Nop(), newMetrics(), settle, nil, nil, nil)
		now := time.Now()
		with := func(st *registry.State) *registry.State {
			st.Services["app"].Config.Overload.ReturnURL = returnURL
			return st
		}
		ph.apply(with(phaseState(1, map[string]registry.InstanceState{"old": registry.StateFull})), now)
		next := with(phaseState(2, map[string]registry.InstanceState{"old": registry.StateFull, "new": registry.StateAvailable}))
		res := translate.Translate(ph.apply(next, now), translate.Options{ListenPort: 10000, PublishSettle: settle})
		initial := routeNamed(t, res, "app/initial")
		dr := initial.GetDirectResponse()
		if dr == nil {
			t.Fatalf("returnUrl %q: initial route forwards during the first phase: Envoy finds no healthy host and answers the overload reply", returnURL)
		}
		hdr := map[string]string{}
		for _, h := range initial.GetResponseHeadersToAdd() {
			hdr[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
		}
		ra, err := strconv.Atoi(hdr["retry-after"])
		if dr.GetStatus() != 503 || err != nil || ra < 1 || time.Duration(ra)*time.Second > settle || hdr["location"] != "" {
			t.Errorf("returnUrl %q: first-phase reply status %d, headers %v; want 503 with Retry-After between 1 and %v, no redirect", returnURL, dr.GetStatus(), hdr, settle)
		}
		promoteAll(ph)
		res = translate.Translate(ph.apply(next, now), translate.Options{ListenPort: 10000, PublishSettle: settle})
		if routeNamed(t, res, "app/initial").GetDirectResponse() != nil {
			t.Errorf("returnUrl %q: promoted, the initial route still answers directly", returnURL)
		}
	}
}

func routeNamed(t *testing.T, res *translate.Resources, name string) *routev3.Route {
	t.Helper()
	for _, rc := range res.Routes {
		for _, vh := range rc.GetVirtualHosts() {
			for _, r := range vh.GetRoutes() {
				if r.GetName() == name {
					return r
				}
			}
		}
	}
	t.Fatalf("no route %s", name)
	return nil
}

// TestSourceIPFullServerHasAFirstPhase: in source-ip mode a full server is served HEALTHY (it
// stays in the hash ring, envoy-rules row 12), so a new full server joins the ring only after
// its first phase, like an available one: an Envoy must not hash new users to a server
// another Envoy does not know.
func TestSourceIPFullServerHasAFirstPhase(t *testing.T) {
	ph := newPhaser(zerolog.Nop(), newMetrics(), time.Minute, nil, nil, nil)
	now := time.Now()
	sourceIP := func(st *registry.State) *registry.State {
		st.Services["app"].Config.Affinity.Mode = registry.AffinitySourceIP
		return st
	}
	ph.apply(sourceIP(phaseState(1, map[string]registry.InstanceState{"old": registry.StateAvailable})), now)
	next := sourceIP(phaseState(2, map[string]registry.InstanceState{"old": registry.StateFull, "newfull": registry.StateFull}))
	got, _ := servedHealth(t, ph.apply(next, now))
	if got["old"] != corev3.HealthStatus_HEALTHY || got["newfull"] != corev3.HealthStatus_DRAINING {
		t.Errorf("first phase = %v, want old HEALTHY (full, in the ring), newfull DRAINING", got)
	}
	promoteAll(ph)
	if got, _ = servedHealth(t, ph.apply(next, now)); got["newfull"] != corev3.HealthStatus_HEALTHY {
		t.Errorf("promoted = %v, want newfull HEALTHY (full, in the ring)", got)
	}
}
