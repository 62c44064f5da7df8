package controlplane

import (
	"maps"
	"slices"
	"time"

	"github.com/tetherlb/tether/registry"
)

// kept is what a stage keeps in the configuration after it left the registry, by service: the
// removal guard's held instances and the vanish grace's. Both serve them alike (serve).
type kept map[string]*keptService

// keptService is a service's kept instances.
type keptService struct {
	svc   *registry.Service // the service as last seen, for when it left the registry too
	insts map[string]keptInstance
}

// keptInstance is an instance kept until a time, served as inst meanwhile.
type keptInstance struct {
	inst  registry.Instance
	until time.Time
}

// keep keeps in, an instance of svc (the service as last seen), until the given time.
func (k kept) keep(name string, svc *registry.Service, in registry.Instance, until time.Time) {
	h := k[name]
	if h == nil {
		h = &keptService{insts: map[string]keptInstance{}}
		k[name] = h
	}
	h.svc = svc
	h.insts[in.ID] = keptInstance{inst: in, until: until}
}

// serve returns next with the kept instances that are still gone and before their time added
// back, and the earliest of those times (zero: none). An instance back in next is served fresh
// from the registry and let go; one whose time has come is let go and told to expired.
func (k kept) serve(next *registry.State, now time.Time, expired func(service, id string)) (*registry.State, time.Time) {
	out := next
	var release time.Time
	for _, name := range slices.Sorted(maps.Keys(k)) {
		h, svc := k[name], next.Services[name]
		var add []registry.Instance
		for id, ki := range h.insts {
			if svc != nil {
				if _, back := svc.Instances[id]; back {
					delete(h.insts, id)
					continue
				}
			}
			if !now.Before(ki.until) {
				delete(h.insts, id)
				expired(name, id)
				continue
			}
			add = append(add, ki.inst)
			release = earliest(release, ki.until)
		}
		if len(h.insts) == 0 {
			delete(k, name)
		}
		if len(add) == 0 {
			continue
		}
		out = serveKept(out, next, name, svc, h.svc, add)
	}
	return out, release
}

// serveKept returns out (a copy of next the first time, sharing next's services) with the
// service name served with the kept instances added: to the registry's service svc, or, when
// the service left the registry altogether, to its configuration as last served (last),
// never the defaults, which would change its cookie. An unconfigured service keeps the claim
// to its domains it had with the kept instances (its oldest instance's): one that joined
// after they left (nothing to inherit a claim from) must not let a younger service claiming
// the same domain take the route from their users.
func serveKept(out, next *registry.State, name string, svc, last *registry.Service, add []registry.Instance) *registry.State {
	if out == next {
		c := *next // every field (drains included), with services of its own
		c.Services = maps.Clone(next.Services)
		out = &c
	}
	var cp registry.Service
	if svc != nil {
		cp = *svc
		cp.Instances = maps.Clone(svc.Instances)
		if !cp.Configured && !last.Configured && last.Created > 0 && last.Created < cp.Created {
			cp.Created = last.Created
		}
	} else {
		cp = *last
		cp.Instances = make(map[string]registry.Instance, len(add))
	}
	for _, in := range add {
		cp.Instances[in.ID] = in
	}
	out.Services[name] = &cp
	return out
}

// count returns how many instances are kept now.
func (k kept) count() int {
	n := 0
	for _, h := range k {
		n += len(h.insts)
	}
	return n
}
