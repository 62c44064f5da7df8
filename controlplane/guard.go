package controlplane

import (
	"maps"
	"slices"
	"sort"
	"time"

	"github.com/rs/zerolog"

	"github.com/tetherlb/tether/internal/mutation"
	"github.com/tetherlb/tether/registry"
)

// removalGuard holds back mass disappearances. Leases lapsing in an etcd outage or a
// partition do not leave in one update: each lapses at its agent's last keep-alive plus the
// TTL and etcd revokes them in batches, so the guard counts a service's removals over a
// window (about the agents' lease TTL) from the first one, against the number of instances
// the service had then. When more than share of them have left (not back, not draining),
// every one of them that is still gone is served again, as it last was, for grace (those
// already withdrawn come back: their users still have sessions there). Below the share,
// removals go at once, so a single instance crashing among several leaves at once.
// A service's only instance leaving is more than any share below 1: it is held, since with
// it goes every user of the service and there is no other instance to move them to.
// Only a deliberate deregistration is never counted or held: an instance whose last value
// carries its agent's leaving mark (registry.Instance.Leaving, written by a stopping agent
// after its drain). A draining instance is held like any other: an operator's drain lasts
// for hours of a deploy, and its servers hold sessions all along. Leaving instances are not
// in the base either, so the share is taken of the instances that could lapse. An instance
// that comes back is served from the registry at once. Windows are per replica and go by
// each replica's clock and what it saw, so replicas may serve differently during a grace
// period.
//
// apply is deterministic in its arguments and the guard's own state: the clock is a
// parameter (tests pass a fake one); it only logs and calls onHold besides.
type removalGuard struct {
	share  float64
	grace  time.Duration
	window time.Duration
	log    zerolog.Logger
	onHold func(service string, n int)
	// lookback bounds, by their last value's updatedAt, which departures of a first state
	// (deleted before this control plane started) are counted; 0 counts none.
	lookback time.Duration

	last    *registry.State // the last state returned by apply, held instances included
	windows map[string]*removalWindow
	held    kept // served in place of the registry
}

// removalWindow counts one service's removals since its first one.
type removalWindow struct {
	start time.Time
	base  int                          // instances of the service when the window opened
	gone  map[string]registry.Instance // removals in the window, not left on purpose, still gone
	mass  bool                         // the share was crossed: later removals are held at once
}

func newRemovalGuard(share float64, grace, window time.Duration, log zerolog.Logger, onHold func(string, int)) *removalGuard {
	return &removalGuard{share: share, grace: grace, window: window, log: log, onHold: onHold,
		windows: map[string]*removalWindow{}, held: kept{}}
}

// apply returns next with held instances added back, and the time of the next release (zero
// when nothing is held). Calls must come with non-decreasing now.
func (g *removalGuard) apply(next *registry.State, now time.Time) (*registry.State, time.Time) {
	if g.share <= 0 || g.grace <= 0 || mutation.On(mutation.GuardHoldsNothing) {
		g.last = next
		return next, time.Time{}
	}
	for name, w := range g.windows {
		if !now.Before(w.start.Add(g.window)) {
			delete(g.windows, name)
		}
	}
	if g.last != nil {
		// Only a service whose pointer changed (the registry is copy-on-write) can have lost
		// instances, or got back ones its window counts: a push costs what changed.
		var names []string
		for name, prev := range g.last.Services {
			if next.Services[name] != prev {
				names = append(names, name)
			}
		}
		sort.Strings(names)
		for _, name := range names {
			g.count(name, g.last.Services[name], next.Services[name], now)
		}
	} else {
		g.seed(next, now)
	}
	out, release := g.held.serve(next, now, func(name, id string) {
		g.log.Warn().Str("service", name).Str("instance", id).Msg("grace period over: removing the held instance")
	})
	g.last = out
	return out, release
}

// count records the removals from prev to next of one service, and starts holding them when
// its window shows a mass disappearance.
func (g *removalGuard) count(name string, prev, next *registry.Service, now time.Time) {
	h := g.held[name]
	w := g.windows[name]
	if w != nil && next != nil {
		maps.DeleteFunc(w.gone, func(id string, _ registry.Instance) bool {
			_, back := next.Instances[id]
			return back
		})
	}
	var gone []registry.Instance
	for id, in := range prev.Instances {
		if next != nil {
			if _, ok := next.Instances[id]; ok {
				continue
			}
		}
		if h != nil {
			if _, already := h.insts[id]; already {
				continue
			}
		}
		if in.Leaving {
			continue // deregistered on purpose by its agent
		}
		gone = append(gone, in)
	}
	if len(gone) == 0 {
		return
	}
	if w == nil {
		w = &removalWindow{start: now, base: windowBase(prev, h), gone: map[string]registry.Instance{}}
		g.windows[name] = w
	}
	for _, in := range gone {
		w.gone[in.ID] = in
	}
	if !w.mass && float64(len(w.gone)) <= g.share*float64(w.base) {
		return
	}
	hold := gone
	if !w.mass {
		w.mass = true
		hold = slices.Collect(maps.Values(w.gone))
	}
	ids := make([]string, 0, len(hold))
	for _, in := range hold {
		g.held.keep(name, prev, in, now.Add(g.grace))
		ids = append(ids, in.ID)
	}
	sort.Strings(ids)
	g.log.Warn().Str("service", name).Strs("instances", ids).Int("gone", len(w.gone)).Int("of", w.base).
		Dur("window", g.window).Dur("grace", g.grace).
		Msg("mass disappearance from the registry: holding these instances in the configuration for the grace period")
	if g.onHold != nil {
		g.onHold(name, len(hold))
	}
}

// seed counts the departures of a first state (instance keys deleted before this control
// plane started, from etcd's history) as removals seen now, as a guard that had been
// running would have counted them: a control plane started during a lease storm, or
// restarted in one, holds what a running one holds instead of serving what is left. Each
// service's previous state is its listed instances plus its departures, so the share is
// taken of the same base. Deliberate departures (the leaving mark) and those whose last value
// is older than lookback are left out (see recentDeparture).
func (g *removalGuard) seed(next *registry.State, now time.Time) {
	gone := departedBy(next, now, g.lookback)
	for _, name := range slices.Sorted(maps.Keys(gone)) {
		g.count(name, beforeDepartures(name, next.Services[name], gone[name]), next.Services[name], now)
	}
}

// departedBy returns the recent departures of st by service, deliberate ones left out.
func departedBy(st *registry.State, now time.Time, lookback time.Duration) map[string][]registry.Departure {
	out := map[string][]registry.Departure{}
	for _, d := range st.Departures {
		if d.Instance.Leaving || !recentDeparture(d, now, lookback) {
			continue
		}
		out[d.Service] = append(out[d.Service], d)
	}
	return out
}

// recentDeparture says whether a key deleted before the start may have been deleted within
// lookback of now. etcd's revisions carry no time; the only clock on a deleted value is its
// agent's updatedAt, its last write. The delete came after it, by at most the agent's
// heartbeat (its longest time between writes) plus its lease TTL: lookback includes both, so
// a value older than lookback was deleted earlier than any guard would still hold it. An
// agent's clock running ahead keeps a departure counted longer (held, the safe side); one
// running behind by more than the slack drops it.
func recentDeparture(d registry.Departure, now time.Time, lookback time.Duration) bool {
	return lookback > 0 && !d.Instance.UpdatedAt.Before(now.Add(-lookback))
}

// beforeDepartures returns the service as it was before its departures: cur (nil when the
// service left the registry with them) with the departed instances added back.
func beforeDepartures(name string, cur *registry.Service, deps []registry.Departure) *registry.Service {
	var prev registry.Service
	if cur != nil {
		prev = *cur
		prev.Instances = maps.Clone(cur.Instances)
	} else {
		// Gone altogether: no configuration key either (one would keep the service in the
		// registry), so the defaults are its configuration, and its claim is its keys'.
		prev = registry.Service{Name: name, Config: registry.DefaultServiceConfig(name), Instances: map[string]registry.Instance{}}
		for _, d := range deps {
			if prev.Created == 0 || (d.Created != 0 && d.Created < prev.Created) {
				prev.Created = d.Created
			}
		}
	}
	for _, d := range deps {
		prev.Instances[d.Instance.ID] = d.Instance
	}
	return &prev
}

// windowBase is what a window's removals are a share of: the service's instances that could
// lapse, those leaving on purpose and those already held (no longer the service's) left out.
func windowBase(prev *registry.Service, h *keptService) int {
	base := 0
	for id, in := range prev.Instances {
		if in.Leaving {
			continue
		}
		if h != nil {
			if _, held := h.insts[id]; held {
				continue
			}
		}
		base++
	}
	return base
}
