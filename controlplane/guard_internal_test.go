package controlplane

import (
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tetherlb/tether/registry"
)

// reg builds a registry state of service app from "id", "id state" or "id state sessions";
// state "leaving" is a draining instance carrying its agent's leaving mark.
func reg(rev int64, insts ...string) *registry.State {
	cfg := registry.DefaultServiceConfig("app")
	cfg.Affinity.CookieName = "app-session"
	svc := &registry.Service{Name: "app", Config: cfg, Configured: true, Created: 1, Revision: rev, Instances: map[string]registry.Instance{}}
	for _, spec := range insts {
		var id, state string
		sessions := 0
		if _, err := fmt.Sscanf(spec, "%s %s %d", &id, &state, &sessions); err != nil && id == "" {
			panic(spec)
		}
		if state == "" {
			state = string(registry.StateAvailable)
		}
		leaving := state == "leaving"
		if leaving {
			state = string(registry.StateDraining)
		}
		svc.Instances[id] = registry.Instance{ID: id, Address: "10.0.0.1", Port: 5000, State: registry.InstanceState(state),
			Load: registry.Load{Sessions: sessions}, Leaving: leaving}
	}
	st := &registry.State{Revision: rev, Services: map[string]*registry.Service{}}
	if len(insts) > 0 {
		st.Services["app"] = svc
	}
	return st
}

// served returns the served instance IDs of app, sorted.
func served(st *registry.State) []string {
	if svc := st.Services["app"]; svc != nil {
		return slices.Sorted(maps.Keys(svc.Instances))
	}
	return nil
}

func TestRemovalGuard(t *testing.T) {
	six := []string{"m1", "m2", "m3", "m4", "m5", "m6"}
	type step struct {
		at   time.Duration // since the start, on the fake clock
		reg  *registry.State
		want []string // served instances of app
	}
	tests := []struct {
		name  string
		share float64
		steps []step
	}{
		{"leases lapsing in batches are counted over the window and all held", 0.5, []step{
			{0, reg(1, six...), six},
			{400 * time.Millisecond, reg(2, "m3", "m4", "m5", "m6"), []string{"m3", "m4", "m5", "m6"}},
			{800 * time.Millisecond, reg(3, "m4", "m5", "m6"), []string{"m4", "m5", "m6"}},
			// 4 of 6 gone within the window: every one of them comes back.
			{1200 * time.Millisecond, reg(4, "m5", "m6"), six},
			{1600 * time.Millisecond, reg(5, "m6"), six},
			{2000 * time.Millisecond, reg(6), six},
			// The grace (10 s from each one's hold) runs out.
			{11300 * time.Millisecond, reg(7), []string{"m5", "m6"}},
			{12100 * time.Millisecond, reg(7), nil},
		}},
		{"a deliberate deregistration inside a mass removal goes at once", 0.5, []step{
			{0, reg(1, "m1", "m2", "m3", "l1 leaving"), []string{"l1", "m1", "m2", "m3"}},
			{time.Second, reg(2), []string{"m1", "m2", "m3"}},
		}},
		// Issue 24: an operator's drain lasts hours and its servers hold sessions; their
		// agents write draining all along. A storm must not take them.
		{"operator-drained instances are held like any other", 0.5, []step{
			{0, reg(1, "d1 draining 50", "d2 draining 50", "d3 draining 50", "d4 draining 50", "a1", "a2"),
				[]string{"a1", "a2", "d1", "d2", "d3", "d4"}},
			{time.Second, reg(2), []string{"a1", "a2", "d1", "d2", "d3", "d4"}},
		}},
		{"draining instances count toward the share as they count in the base", 0.5, []step{
			{0, reg(1, "d1 draining", "d2 draining", "a1", "a2"), []string{"a1", "a2", "d1", "d2"}},
			// Two of four, exactly the share: they go, the draining one as the other.
			{time.Second, reg(2, "d2", "a2"), []string{"a2", "d2"}},
			// A third: every one of them is held.
			{2 * time.Second, reg(3, "a2"), []string{"a1", "a2", "d1", "d2"}},
		}},
		{"instances leaving on purpose are not in the base", 0.5, []step{
			{0, reg(1, "l1 leaving", "l2 leaving", "l3 leaving", "l4 leaving", "m1", "m2"), []string{"l1", "l2", "l3", "l4", "m1", "m2"}},
			// A deploy stops four old servers as one of the two left lapses: one of two.
			{time.Second, reg(2, "m2"), []string{"m2"}},
			// The other lapses too: two of two, both held.
			{2 * time.Second, reg(3), []string{"m1", "m2"}},
		}},
		{"a share exactly at the threshold goes, one more is held", 0.5, []step{
			{0, reg(1, "m1", "m2", "m3", "m4"), []string{"m1", "m2", "m3", "m4"}},
			{time.Second, reg(2, "m3", "m4"), []string{"m3", "m4"}},
			{2 * time.Second, reg(3, "m4"), []string{"m1", "m2", "m3", "m4"}},
		}},
		{"removals further apart than the window are not counted together", 0.5, []step{
			{0, reg(1, "m1", "m2", "m3", "m4"), []string{"m1", "m2", "m3", "m4"}},
			{time.Second, reg(2, "m2", "m3", "m4"), []string{"m2", "m3", "m4"}},
			{12 * time.Second, reg(3, "m3", "m4"), []string{"m3", "m4"}},
			{24 * time.Second, reg(4, "m4"), []string{"m4"}},
		}},
		// The window is 10 s from its first removal: one removal a millisecond before its end is
		// counted with the first ones, one at its end opens a new window.
		{"a removal just inside the window is counted with the first ones", 0.5, []step{
			{0, reg(1, "m1", "m2", "m3", "m4"), []string{"m1", "m2", "m3", "m4"}},
			{time.Second, reg(2, "m3", "m4"), []string{"m3", "m4"}},
			{11*time.Second - time.Millisecond, reg(3, "m4"), []string{"m1", "m2", "m3", "m4"}},
		}},
		{"a removal at the window's end opens a new window", 0.5, []step{
			{0, reg(1, "m1", "m2", "m3", "m4"), []string{"m1", "m2", "m3", "m4"}},
			{time.Second, reg(2, "m3", "m4"), []string{"m3", "m4"}},
			{11 * time.Second, reg(3, "m4"), []string{"m4"}},
		}},
		// Held instances are no longer the service's: a later window takes its share of the
		// instances left, so the last one lapsing after the first window closed is held too.
		{"a later window's base leaves out the instances held before", 0.5, []step{
			{0, reg(1, "m1", "m2", "m3", "m4", "m5"), []string{"m1", "m2", "m3", "m4", "m5"}},
			{time.Second, reg(2, "m2", "m3", "m4", "m5"), []string{"m2", "m3", "m4", "m5"}},
			{5 * time.Second, reg(3, "m5"), []string{"m1", "m2", "m3", "m4", "m5"}},
			// The window (from 1 s) closed at 11 s; m1-m4 are held until 15 s.
			{12 * time.Second, reg(4), []string{"m1", "m2", "m3", "m4", "m5"}},
		}},
		{"an instance back within the window is no longer counted", 0.5, []step{
			{0, reg(1, six...), six},
			{time.Second, reg(2, "m4", "m5", "m6"), []string{"m4", "m5", "m6"}},
			{2 * time.Second, reg(3, six...), six},
			// One of six is gone now, not four.
			{3 * time.Second, reg(4, "m1", "m2", "m3", "m4", "m5"), []string{"m1", "m2", "m3", "m4", "m5"}},
		}},
		// Documented decision: with the last instance go all the service's users, and there is
		// no other instance to move them to.
		{"a lone last instance is held", 0.5, []step{
			{0, reg(1, "m1"), []string{"m1"}},
			{time.Second, reg(2), []string{"m1"}},
			{11 * time.Second, reg(2), nil},
		}},
		{"the guard disabled", -1, []step{
			{0, reg(1, six...), six},
			{time.Second, reg(2), nil},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := newRemovalGuard(tc.share, 10*time.Second, 10*time.Second, zerolog.Nop(), nil)
			for i, s := range tc.steps {
				out, _ := g.apply(s.reg, t0.Add(s.at))
				if got := served(out); !slices.Equal(got, s.want) {
					t.Fatalf("step %d (at %s): served %v, want %v", i, s.at, got, s.want)
				}
			}
		})
	}
}

// An instance that comes back during the grace period is served from the registry (its new
// load, state), not as held, and is not released when the grace period ends.
func TestRemovalGuardServesReturningInstanceFresh(t *testing.T) {
	g := newRemovalGuard(0.5, 10*time.Second, 10*time.Second, zerolog.Nop(), nil)
	g.apply(reg(1, "m1 available 5", "m2 available 5", "m3 available 5"), t0)
	out, release := g.apply(reg(2, "m3 available 5"), t0.Add(time.Second))
	if got := served(out); len(got) != 3 || release != t0.Add(11*time.Second) {
		t.Fatalf("served %v release %v, want m1 and m2 held until %v", got, release, t0.Add(11*time.Second))
	}
	out, release = g.apply(reg(3, "m1 full 9", "m3 available 5"), t0.Add(2*time.Second))
	if in := out.Services["app"].Instances["m1"]; in.State != registry.StateFull || in.Load.Sessions != 9 {
		t.Errorf("returning m1 served as %+v, want the registry's (full, 9 sessions)", in)
	}
	if g.held.count() != 1 {
		t.Errorf("%d held, want m2 only", g.held.count())
	}
	out, _ = g.apply(reg(3, "m1 full 9", "m3 available 5"), release)
	if got := served(out); !slices.Equal(got, []string{"m1", "m3"}) {
		t.Errorf("after the grace period: served %v, want m1 and m3", got)
	}
}

// When a service leaves the registry altogether, its held instances are served with its
// configuration as last served: never the defaults, whose cookie name would end every session.
func TestRemovalGuardKeepsConfigOfVanishedService(t *testing.T) {
	g := newRemovalGuard(0.5, 10*time.Second, 10*time.Second, zerolog.Nop(), nil)
	g.apply(reg(1, "m1", "m2", "l1 leaving"), t0)
	out, _ := g.apply(reg(2), t0.Add(time.Second))
	svc := out.Services["app"]
	if svc == nil || svc.Config.Affinity.CookieName != "app-session" || !svc.Configured {
		t.Fatalf("held service %+v, want app's own configuration", svc)
	}
	if got := served(out); !slices.Equal(got, []string{"m1", "m2"}) {
		t.Errorf("served %v, want m1 and m2 held and l1, which left on purpose, gone", got)
	}
}

// A share or a grace of zero or less disables the guard: nothing is held, not even for no
// time (onHold feeds tether_mass_removals_total, which would count holds that never were).
func TestRemovalGuardDisabledHoldsNothing(t *testing.T) {
	six := []string{"m1", "m2", "m3", "m4", "m5", "m6"}
	for _, c := range []struct {
		share float64
		grace time.Duration
	}{{0, 10 * time.Second}, {-1, 10 * time.Second}, {0.5, 0}, {0.5, -time.Second}} {
		t.Run(fmt.Sprintf("share %g grace %s", c.share, c.grace), func(t *testing.T) {
			holds := 0
			g := newRemovalGuard(c.share, c.grace, 10*time.Second, zerolog.Nop(), func(string, int) { holds++ })
			g.apply(reg(1, six...), t0)
			out, release := g.apply(reg(2), t0.Add(time.Second))
			if got := served(out); got != nil || !release.IsZero() || holds != 0 || g.held.count() != 0 {
				t.Errorf("served %v, release %v, %d holds, %d held: want nothing held", got, release, holds, g.held.count())
			}
		})
	}
}

// The states apply is given are the registry's, shared copy-on-write with the watcher and
// the other consumers: held instances go into a copy, never into the state passed in.
func TestRemovalGuardLeavesItsInputAlone(t *testing.T) {
	g := newRemovalGuard(0.5, 10*time.Second, 10*time.Second, zerolog.Nop(), nil)
	g.apply(reg(1, "m1", "m2", "m3"), t0)
	for i, next := range []*registry.State{reg(2, "m3"), reg(3)} {
		before := served(next)
		out, _ := g.apply(next, t0.Add(time.Duration(i+1)*time.Second))
		if got := served(out); !slices.Equal(got, []string{"m1", "m2", "m3"}) {
			t.Fatalf("step %d: served %v, want m1, m2 and m3 held", i, got)
		}
		if got := served(next); !slices.Equal(got, before) {
			t.Errorf("step %d: the state given to apply now has %v, had %v", i, got, before)
		}
	}
}

// An unconfigured service's claim to its domains is its oldest instance's. Held instances
// keep the claim they had while a newer instance is all the registry holds (a server that
// joined just after a lease storm): a younger service claiming the same domain, a typo of the
// name, must not take the route from the held instances' users (soak seed 1567242511).
func TestHeldInstancesKeepTheirServicesClaim(t *testing.T) {
	unconfigured := func(st *registry.State, created int64) *registry.State {
		if svc := st.Services["app"]; svc != nil {
			svc.Configured, svc.Created = false, created
		}
		return st
	}
	g := newRemovalGuard(0.5, 10*time.Second, 10*time.Second, zerolog.Nop(), nil)
	g.apply(unconfigured(reg(1, "m1", "m2", "m3"), 4), t0)
	out, _ := g.apply(unconfigured(reg(2, "n1"), 569), t0.Add(time.Second))
	if got := served(out); !slices.Equal(got, []string{"m1", "m2", "m3", "n1"}) {
		t.Fatalf("served %v, want m1, m2 and m3 held beside n1", got)
	}
	if c := out.Services["app"].Created; c != 4 {
		t.Errorf("the service's claim while its instances are held: revision %d, want 4 (theirs), not 569 (n1's)", c)
	}
	// Once nothing is held, the claim is the registry's again.
	out, _ = g.apply(unconfigured(reg(3, "n1"), 569), t0.Add(12*time.Second))
	if c := out.Services["app"].Created; !slices.Equal(served(out), []string{"n1"}) || c != 569 {
		t.Errorf("after the grace: served %v, claim %d; want n1 alone and 569", served(out), c)
	}
}
