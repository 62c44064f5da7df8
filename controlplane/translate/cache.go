package translate

import (
	"sync"

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
				e = cacheEntry{svc: svc, res: TranslateService(svc, c.opts)}
			}
			next[name] = e
			parts = append(parts, e.res)
		}
	}
	c.entries = next
	return assemble(parts, c.opts, &c.memo)
}
