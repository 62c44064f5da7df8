package translate

import (
	"slices"
	"sync"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"

	"github.com/tetherlb/tether/registry"
)

// Cache memoizes TranslateService by service pointer: Translate via a Cache re-translates
// only services whose *registry.Service changed (the watcher shares unchanged pointers
// between States, and never modifies a State it handed out). It is safe for concurrent use.
type Cache struct {
	opts    Options
	mu      sync.Mutex
	entries map[string]cacheEntry
	memo    listenerMemo
	last    *assembled
}

type cacheEntry struct {
	svc *registry.Service
	res *ServiceResources
}

// NewCache returns an empty Cache translating with opts.
func NewCache(opts Options) *Cache {
	return &Cache{opts: opts, entries: map[string]cacheEntry{}}
}

// Translate is Translate(st, opts) reusing the parts of unchanged services from the
// previous call. Services gone from st are forgotten.
func (c *Cache) Translate(st *registry.State) *Resources {
	c.mu.Lock()
	defer c.mu.Unlock()
	next := make(map[string]cacheEntry, len(c.entries))
	var parts []*ServiceResources
	var changed []*ServiceResources // re-translated services that existed before
	added := false
	if st != nil {
		parts = make([]*ServiceResources, 0, len(st.Services))
		for name, svc := range st.Services {
			if svc == nil {
				continue
			}
			e, ok := c.entries[name]
			if !ok || e.svc != svc {
				r := TranslateService(svc, c.opts)
				if ok {
					keepUnchanged(r, e.res)
					changed = append(changed, r)
				} else {
					added = true
				}
				e = cacheEntry{svc: svc, res: r}
			}
			next[name] = e
			parts = append(parts, e.res)
		}
	}
	prev := c.entries
	c.entries = next
	if !added && len(next) == len(prev) && c.last != nil {
		if res, ok := c.last.replaced(changed, prev); ok {
			c.last = res
			return res.res
		}
	}
	res := assemble(parts, c.opts, &c.memo)
	c.last = newAssembled(res)
	return res
}

// assembled is the last assembly and where each service's cluster and endpoints sit in it.
type assembled struct {
	res *Resources
	pos map[string]int // cluster name -> index in res.Clusters and res.Endpoints
}

func newAssembled(res *Resources) *assembled {
	a := &assembled{res: res, pos: make(map[string]int, len(res.Clusters))}
	for i, cl := range res.Clusters {
		a.pos[cl.GetName()] = i
	}
	return a
}

// replaced returns the assembly with the clusters and endpoints of the changed services
// swapped in, when nothing assembly decides from changed: the same services, and for each
// changed one the same routes (pointer, kept by keepUnchanged), domains, path, claim rank and
// problems. A load change then costs a copy of two slices, not a sort and a claim pass over
// every service. ok is false when the assembly must be done again.
func (a *assembled) replaced(changed []*ServiceResources, prev map[string]cacheEntry) (*assembled, bool) {
	at := make([]int, len(changed))
	for k, r := range changed {
		p := prev[r.Name].res
		if p == nil || r.Cluster == nil || p.Cluster == nil || !sameRoutes(r.Routes, p.Routes) ||
			!slices.Equal(r.Domains, p.Domains) || r.PathPrefix != p.PathPrefix || r.Configured != p.Configured ||
			r.Created != p.Created || !slices.Equal(r.Problems, p.Problems) {
			return nil, false
		}
		i, ok := a.pos[r.Cluster.GetName()]
		if !ok {
			return nil, false
		}
		at[k] = i
	}
	res := &Resources{Listeners: slices.Clip(a.res.Listeners), Routes: slices.Clip(a.res.Routes),
		Clusters: slices.Clone(a.res.Clusters), Endpoints: slices.Clone(a.res.Endpoints), Problems: slices.Clip(a.res.Problems)}
	for k, r := range changed {
		res.Clusters[at[k]], res.Endpoints[at[k]] = r.Cluster, r.Endpoints
	}
	return &assembled{res: res, pos: a.pos}, true
}

// sameRoutes reports whether two route slices are the same slice (keepUnchanged keeps the
// previous one when the routes are equal).
func sameRoutes(a, b []*routev3.Route) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// keepUnchanged puts back into r the parts of prev that have the same content, so that
// consumers comparing by pointer (the route configuration memo, the publisher's hashes) see
// them unchanged: a load change re-translates a service but usually changes only its
// endpoints, or nothing at all when the weight stays in its quantization step.
func keepUnchanged(r, prev *ServiceResources) {
	if r.Cluster != nil && proto.Equal(r.Cluster, prev.Cluster) {
		r.Cluster = prev.Cluster
	}
	if r.Endpoints != nil && proto.Equal(r.Endpoints, prev.Endpoints) {
		r.Endpoints = prev.Endpoints
	}
	if slices.EqualFunc(r.Routes, prev.Routes, func(a, b *routev3.Route) bool { return proto.Equal(a, b) }) {
		r.Routes = prev.Routes
	}
	if slices.Equal(r.Domains, prev.Domains) {
		r.Domains = prev.Domains
	}
}
