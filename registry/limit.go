package registry

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
)

// Over counts what Limit left out.
type Over struct {
	Services  int // services left out
	Instances int // instances left out: of the services left out and past a service's bound
}

// firstSeen is when the service first appeared in the registry: the oldest create revision
// of its keys. A key written later never moves it, so a newer service can never take an
// older one's place (a configuration written for an old service keeps it where it was).
func (s *Service) firstSeen() int64 {
	first := int64(0)
	if s.Configured {
		first = s.configCreated
	}
	for _, c := range s.instCreated {
		if first == 0 || (c != 0 && c < first) {
			first = c
		}
	}
	return first
}

// Limit returns st with at most maxServices services and maxInstances instances per service
// (0 or less: no bound), and what it left out. The services and instances kept are the
// oldest by etcd create revision (then by name), which every replica reads alike, so that
// replicas serve the same; a new key past a bound never displaces one already served. Each
// key left out is added to Rejected with the reason. Under the bounds st itself is returned.
// memo maps a service past maxInstances to its bounded copy from the previous call (it is
// reused while the service is the same pointer); the returned memo replaces it.
func Limit(prefix string, st *State, maxServices, maxInstances int, memo map[*Service]*Service) (*State, Over, map[*Service]*Service) {
	var over Over
	next := map[*Service]*Service{}
	dropSvc := map[string]bool{}
	if maxServices > 0 && len(st.Services) > maxServices {
		all := slices.Collect(maps.Values(st.Services))
		slices.SortFunc(all, func(a, b *Service) int {
			return cmp.Or(cmp.Compare(a.firstSeen(), b.firstSeen()), cmp.Compare(a.Name, b.Name))
		})
		for _, s := range all[maxServices:] {
			dropSvc[s.Name] = true
		}
	}
	var bounded []*Service
	if maxInstances > 0 {
		for name, s := range st.Services {
			if !dropSvc[name] && len(s.Instances) > maxInstances {
				bounded = append(bounded, s)
			}
		}
	}
	if len(dropSvc) == 0 && len(bounded) == 0 {
		return st, over, next
	}
	out := *st
	out.Services = maps.Clone(st.Services)
	out.Rejected = maps.Clone(st.Rejected)
	if out.Rejected == nil {
		out.Rejected = map[string]string{}
	}
	for name := range dropSvc {
		s := st.Services[name]
		why := fmt.Sprintf("over --max-services (%d): the %d services registered first (etcd create revision) are served; this one is left out until one of them goes", maxServices, maxServices)
		if s.Configured {
			out.Rejected[ServiceKey(prefix, name)] = why
		}
		for id := range s.Instances {
			out.Rejected[InstanceKey(prefix, name, id)] = why
		}
		over.Services++
		over.Instances += len(s.Instances)
		delete(out.Services, name)
	}
	why := fmt.Sprintf("over --max-instances-per-service (%d): the %d instances of this service registered first (etcd create revision) are served; this one is left out until one of them goes", maxInstances, maxInstances)
	for _, s := range bounded {
		b := memo[s]
		if b == nil {
			b = s.firstInstances(maxInstances)
		}
		next[s] = b
		out.Services[s.Name] = b
		for id := range s.Instances {
			if _, kept := b.Instances[id]; !kept {
				out.Rejected[InstanceKey(prefix, s.Name, id)] = why
				over.Instances++
			}
		}
	}
	return &out, over, next
}

// firstInstances returns a copy of s with its n oldest instances (by create revision, then ID).
func (s *Service) firstInstances(n int) *Service {
	ids := slices.Collect(maps.Keys(s.Instances))
	slices.SortFunc(ids, func(a, b string) int {
		return cmp.Or(cmp.Compare(s.instCreated[a], s.instCreated[b]), cmp.Compare(a, b))
	})
	c := *s
	c.Instances = make(map[string]Instance, n)
	c.instCreated = make(map[string]int64, n)
	for _, id := range ids[:n] {
		c.Instances[id] = s.Instances[id]
		c.instCreated[id] = s.instCreated[id]
	}
	return &c
}
