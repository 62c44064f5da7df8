package controlplane

import (
	"testing"
	"time"

	"github.com/tetherlb/tether/registry"
)

func vanishState(rev int64, insts ...registry.Instance) *registry.State {
	svc := &registry.Service{Name: "app", Instances: map[string]registry.Instance{}}
	for _, in := range insts {
		svc.Instances[in.ID] = in
	}
	return &registry.State{Revision: rev, Services: map[string]*registry.Service{"app": svc}}
}

// The grace in a fake clock: a non-draining instance that vanishes is served as DRAINING
// until the grace ends, then goes; one that comes back is served from the registry at once;
// one its agent marked leaving (a deregistration) goes at once, while a draining one (an
// operator's drain whose lease lapsed) is kept; a service gone altogether keeps its own
// configuration while one of its instances is kept.
func TestVanishGrace(t *testing.T) {
	t0 := time.Unix(1000, 0)
	a := registry.Instance{ID: "a", Address: "10.0.0.1", Port: 1, State: registry.StateAvailable}
	b := registry.Instance{ID: "b", Address: "10.0.0.2", Port: 1, State: registry.StateFull}
	d := registry.Instance{ID: "d", Address: "10.0.0.3", Port: 1, State: registry.StateDraining, Leaving: true}
	e := registry.Instance{ID: "e", Address: "10.0.0.4", Port: 1, State: registry.StateDraining}
	g := newVanishGrace(5 * time.Second)

	out, rel := g.apply(vanishState(1, a, b, d, e), t0)
	if len(out.Services["app"].Instances) != 4 || !rel.IsZero() {
		t.Fatalf("first state: %d instances, release %v", len(out.Services["app"].Instances), rel)
	}
	in := vanishState(2, b) // a, d and e leave
	out, rel = g.apply(in, t0.Add(time.Second))
	got := out.Services["app"].Instances
	if _, ok := got["d"]; ok {
		t.Error("the instance marked leaving was kept: a deregistration must go at once")
	}
	if k, ok := got["e"]; !ok || k.State != registry.StateDraining {
		t.Errorf("the drained instance whose lease lapsed was not kept (%+v, %v): its users would move", k, ok)
	}
	if k, ok := got["a"]; !ok || k.State != registry.StateDraining || k.Address != a.Address {
		t.Errorf("vanished a served as %+v (kept %v), want its value as DRAINING", k, ok)
	}
	if !rel.Equal(t0.Add(6 * time.Second)) {
		t.Errorf("release at %v, want %v", rel, t0.Add(6*time.Second))
	}
	if len(in.Services["app"].Instances) != 1 {
		t.Error("apply modified its input")
	}
	// Still within the grace: kept; at its end: gone.
	out, _ = g.apply(in, t0.Add(5900*time.Millisecond))
	if _, ok := out.Services["app"].Instances["a"]; !ok {
		t.Error("a gone before the end of its grace")
	}
	out, rel = g.apply(in, t0.Add(6*time.Second))
	if _, ok := out.Services["app"].Instances["a"]; ok || !rel.IsZero() || g.held.count() != 0 {
		t.Errorf("a still kept at the end of its grace (release %v, held %d)", rel, g.held.count())
	}

	// Back within the grace: served from the registry as written.
	g = newVanishGrace(5 * time.Second)
	g.apply(vanishState(1, a, b), t0)
	g.apply(vanishState(2, b), t0.Add(time.Second))
	out, rel = g.apply(vanishState(3, a, b), t0.Add(2*time.Second))
	if k := out.Services["app"].Instances["a"]; k.State != registry.StateAvailable || !rel.IsZero() || g.held.count() != 0 {
		t.Errorf("a back: served %+v, release %v, held %d; want as the registry says, nothing held", k, rel, g.held.count())
	}

	// The whole service gone: kept with its configuration.
	g = newVanishGrace(5 * time.Second)
	first := vanishState(1, a)
	first.Services["app"].Config.Affinity.CookieName = "mine"
	g.apply(first, t0)
	out, _ = g.apply(&registry.State{Revision: 2, Services: map[string]*registry.Service{}}, t0.Add(time.Second))
	if s := out.Services["app"]; s == nil || s.Config.Affinity.CookieName != "mine" || len(s.Instances) != 1 {
		t.Errorf("service gone: served %+v, want its own configuration with a kept", s)
	}
}

// A first state's departures (keys etcd's history shows deleted before this control plane
// started) are kept as if seen go now: the grace runs from the first state, a service gone
// altogether is served with the defaults and its keys' claim, and what its agent marked
// leaving or last wrote before the lookback goes at once. Only the first state's departures
// count: a later state naming some (it never does) keeps nothing.
func TestVanishGraceKeepsTheFirstStatesDepartures(t *testing.T) {
	t0 := time.Unix(1000, 0)
	recent := registry.Instance{ID: "r", Address: "10.0.0.1", Port: 1, State: registry.StateAvailable, UpdatedAt: t0.Add(-time.Second)}
	old := registry.Instance{ID: "o", Address: "10.0.0.2", Port: 1, State: registry.StateAvailable, UpdatedAt: t0.Add(-time.Minute)}
	leaving := registry.Instance{ID: "l", Address: "10.0.0.3", Port: 1, State: registry.StateDraining, Leaving: true, UpdatedAt: t0}
	gone := registry.Instance{ID: "g", Address: "10.0.0.4", Port: 1, State: registry.StateFull, UpdatedAt: t0}
	b := registry.Instance{ID: "b", Address: "10.0.0.5", Port: 1, State: registry.StateAvailable}

	first := vanishState(1, b)
	first.Departures = []registry.Departure{
		{Service: "app", Instance: recent, Created: 3},
		{Service: "app", Instance: old, Created: 3},
		{Service: "app", Instance: leaving, Created: 3},
		{Service: "gone", Instance: gone, Created: 7},
	}
	g := newVanishGrace(5 * time.Second)
	g.lookback = 10 * time.Second
	out, rel := g.apply(first, t0)
	app := out.Services["app"].Instances
	if k, ok := app["r"]; !ok || k.State != registry.StateDraining || k.Address != recent.Address {
		t.Errorf("the recent departure served as %+v (kept %v), want its last value as DRAINING", k, ok)
	}
	if _, ok := app["o"]; ok {
		t.Error("a departure older than the lookback was kept")
	}
	if _, ok := app["l"]; ok {
		t.Error("a departure marked leaving was kept: a deregistration must go at once")
	}
	if _, ok := app["b"]; !ok || len(app) != 2 {
		t.Errorf("app served %v, want b and the recent departure", app)
	}
	s := out.Services["gone"]
	if s == nil || s.Created != 7 || s.Config.Affinity.CookieName != registry.DefaultCookieName("gone") || s.Instances["g"].State != registry.StateDraining || len(s.Instances) != 1 {
		t.Fatalf("the service gone altogether served as %+v, want its departure with the defaults and its keys' claim", s)
	}
	if !rel.Equal(t0.Add(5*time.Second)) || g.held.count() != 2 {
		t.Errorf("release at %v, %d held; want %v (the grace from the first state), 2", rel, g.held.count(), t0.Add(5*time.Second))
	}
	if len(first.Services["app"].Instances) != 1 || len(first.Services) != 1 {
		t.Error("apply modified its input")
	}

	later := vanishState(2, b)
	later.Departures = []registry.Departure{{Service: "app", Instance: registry.Instance{ID: "x", Address: "10.0.0.6", Port: 1, UpdatedAt: t0}}}
	out, _ = g.apply(later, t0.Add(time.Second))
	if _, ok := out.Services["app"].Instances["x"]; ok {
		t.Error("a later state's departure was kept: only the first state's were not seen go")
	}
	out, rel = g.apply(later, t0.Add(5*time.Second))
	if len(out.Services["app"].Instances) != 1 || out.Services["gone"] != nil || !rel.IsZero() || g.held.count() != 0 {
		t.Errorf("at the grace's end: %v served, gone %v, release %v; want b alone", out.Services["app"].Instances, out.Services["gone"], rel)
	}
}
