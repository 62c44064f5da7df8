package controlplane

import (
	"maps"
	"sort"
	"time"

	"github.com/rs/zerolog"

	"github.com/tetherlb/tether/registry"
)

// heldInstance is an instance kept in the configuration after it left the registry.
type heldInstance struct {
	inst  registry.Instance
	until time.Time
}

// removalGuard holds back mass disappearances: when more than share of a service's instances
// leave the registry in one update (typically leases that lapsed while etcd was unreachable),
// they stay in the served configuration, as they last were, for grace. An instance that was
// draining when it left is a deliberate deregistration and is never held. An instance that
// comes back is served from the registry again at once.
type removalGuard struct {
	share  float64
	grace  time.Duration
	log    zerolog.Logger
	onHold func(service string, n int)

	last *registry.State // the last guarded state, as published
	held map[string]map[string]heldInstance
}

func newRemovalGuard(share float64, grace time.Duration, log zerolog.Logger, onHold func(string, int)) *removalGuard {
	return &removalGuard{share: share, grace: grace, log: log, onHold: onHold, held: map[string]map[string]heldInstance{}}
}

// apply returns next with held instances added back, and the time of the next release (zero
// when nothing is held).
func (g *removalGuard) apply(next *registry.State, now time.Time) (*registry.State, time.Time) {
	if g.share <= 0 || g.grace <= 0 {
		g.last = next
		return next, time.Time{}
	}
	if g.last != nil {
		for name, prev := range g.last.Services {
			g.check(name, prev, next.Services[name], now)
		}
	}
	out := next
	var release time.Time
	names := make([]string, 0, len(g.held))
	for name := range g.held {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		svc := next.Services[name]
		var add []registry.Instance
		for id, h := range g.held[name] {
			if svc != nil {
				if _, back := svc.Instances[id]; back {
					delete(g.held[name], id)
					continue
				}
			}
			if !now.Before(h.until) {
				delete(g.held[name], id)
				g.log.Warn().Str("service", name).Str("instance", id).Msg("grace period over: removing the held instance")
				continue
			}
			add = append(add, h.inst)
			if release.IsZero() || h.until.Before(release) {
				release = h.until
			}
		}
		if len(g.held[name]) == 0 {
			delete(g.held, name)
		}
		if len(add) == 0 {
			continue
		}
		if out == next {
			c := *next // every field (drains included), with services of its own
			c.Services = maps.Clone(next.Services)
			out = &c
		}
		cp := &registry.Service{Name: name, Config: registry.DefaultServiceConfig(name), Instances: map[string]registry.Instance{}}
		if svc != nil {
			cp.Config, cp.Configured, cp.Revision = svc.Config, svc.Configured, svc.Revision
			cp.Instances = maps.Clone(svc.Instances)
		}
		for _, in := range add {
			cp.Instances[in.ID] = in
		}
		out.Services[name] = cp
	}
	g.last = out
	return out, release
}

// check starts holding the instances of prev missing from next when they are too many.
func (g *removalGuard) check(name string, prev, next *registry.Service, now time.Time) {
	var gone []registry.Instance
	for id, in := range prev.Instances {
		if next != nil {
			if _, ok := next.Instances[id]; ok {
				continue
			}
		}
		if _, already := g.held[name][id]; already || in.State == registry.StateDraining {
			continue
		}
		gone = append(gone, in)
	}
	if len(gone) == 0 || float64(len(gone)) <= g.share*float64(len(prev.Instances)) {
		return
	}
	if g.held[name] == nil {
		g.held[name] = map[string]heldInstance{}
	}
	ids := make([]string, 0, len(gone))
	for _, in := range gone {
		g.held[name][in.ID] = heldInstance{inst: in, until: now.Add(g.grace)}
		ids = append(ids, in.ID)
	}
	sort.Strings(ids)
	g.log.Warn().Str("service", name).Strs("instances", ids).Int("of", len(prev.Instances)).Dur("grace", g.grace).
		Msg("mass disappearance from the registry: holding these instances in the configuration for the grace period")
	if g.onHold != nil {
		g.onHold(name, len(gone))
	}
}

// heldCount returns how many instances are held now.
func (g *removalGuard) heldCount() int {
	n := 0
	for _, m := range g.held {
		n += len(m)
	}
	return n
}
