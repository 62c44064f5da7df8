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
				}
				e = cacheEntry{svc: svc, res: r}
			}
			next[name] = e
			parts = append(parts, e.res)
		}
	}
	c.entries = next
	return assemble(parts, c.opts, &c.memo)
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
}
