package xdscache

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/types/known/anypb"
)

// Types are the type URLs served, in the order a push answers them: clusters before their
// endpoints, listeners before their routes.
var Types = []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType}

// endpointIndex is the index of endpoints in Types.
var endpointIndex = typeIndex(resourcev3.EndpointType)

// typeIndex returns the index of typeURL in Types, or -1 for a type not served.
func typeIndex(typeURL string) int { return slices.Index(Types, typeURL) }

// Defaults of Options.
const (
	DefaultMaxInitialSyncs = 8
	DefaultSlotTimeout     = 10 * time.Second
)

// Options configure a Cache.
type Options struct {
	// Check validates a new or changed resource before it is served; nil checks nothing.
	Check func(types.Resource) error
	// NameMargin is how many names a stream may subscribe per type beyond those served
	// (see DefaultNameMargin); 0 takes the default.
	NameMargin int
	// NamesBeforeUpdate is how many names a stream may subscribe per type before the first
	// Update, while what will be served is unknown (Envoys reconnecting to a restarted
	// control plane ask for what they held); 0 takes 16 x NameMargin.
	NamesBeforeUpdate int
	// MaxInitialSyncs bounds the first responses in flight (sent and not yet ACKed).
	MaxInitialSyncs int
	// SlotTimeout frees an initial-sync slot whose Envoy has not answered.
	SlotTimeout time.Duration
	// MaxInflightBytes bounds the bytes of responses sent and not yet answered, all streams
	// together (see budget.go); 0 takes DefaultMaxInflightBytes, a negative value sets no bound.
	MaxInflightBytes int64
	// InflightTimeout gives back the bytes of a response whose Envoy has not answered.
	InflightTimeout time.Duration
	// GroupOf names a node's gateway group (nil: every Envoy is in group "").
	GroupOf func(cluster string) string
	// OnAnswer, if set, is called when an Envoy ACKs or NACKs a response or a stream closes,
	// under the cache's lock: it must not block or call the cache (see Acks).
	OnAnswer func()
	// OnClose, if set, is called when a stream that named its node closes, once per type it
	// watched, with what it acknowledged of that type, under the cache's lock (before
	// OnAnswer): it must not block or call the cache.
	OnClose func(typeURL string, a StreamAck)
	// OnRefuse, if set, is called with a Refuse* reason when a stream is ended for a request
	// over a bound (see bounds.go); it must not block or call the cache.
	OnRefuse func(reason string)
	// HoldFirstEndpoints, if set, is asked under the cache's lock before a stream is sent its
	// first endpoint response: true holds that response back until ReleaseHeld. Two-phase
	// publication holds a new Envoy's endpoints while an endpoint served at once is not yet
	// held by the Envoy it was served to (controlplane/phase.go). It must not block or call
	// the cache.
	HoldFirstEndpoints func() bool
	// Observer, if set, is told what the streams do (see Observer).
	Observer Observer
	Logger   zerolog.Logger
}

// entry is one resource as served: marshalled once, shared by every response.
type entry struct {
	res     types.Resource // as given: an unchanged pointer is not marshalled again
	version string         // content hash of the deterministic encoding
	sum     [32]byte       // hash of name and version: what the type's version hashes
	size    int64          // about what it adds to an encoded response (budget.go)
	any     *anypb.Any
	dres    *discovery.Resource
}

// typeState is one type's resources; replaced, never modified, by Update.
type typeState struct {
	url     string
	full    bool // SotW responses carry every resource (listeners, clusters)
	entries map[string]*entry
	names   []string // sorted
	version string
	all     []*anypb.Any // every resource in name order: the SotW full-state body
	allSize int64        // the sizes of all's entries
	// items are the resources as Update was given them: the same resources again (the
	// publisher hands over unchanged ones as the same pointers, and a load change leaves
	// every type but endpoints as it was) keep this state without a walk over its entries.
	items []types.Resource
}

// Cache serves Types to go-control-plane's server. Use it with the Callbacks it returns.
type Cache struct {
	opts Options
	upd  sync.Mutex // serializes Update

	mu        sync.Mutex
	types     [4]*typeState
	groups    map[string]*group
	streams   map[StreamKey]*stream
	sotwReqs  map[*discovery.DiscoveryRequest]*stream
	deltaReqs map[*discovery.DeltaDiscoveryRequest]*stream
	epochNow  uint64     // notify count, to list each watcher once
	watchers  uint64     // watchers numbered so far (watcher.id)
	inflight  int        // initial-sync slots taken
	queue     []*watcher // first responses waiting for a slot
	held      []*watcher // first endpoint responses held back (Options.HoldFirstEndpoints)
	budget    budget     // response bytes in flight (budget.go)
	// loaded: Update has been called. Before, the cache holds no configuration, only the
	// empty set standing in for it, and answers no one (see respond).
	loaded bool
	// peak is each type's largest resource count within NamePeakHold, since peakAt (see
	// nameLimit).
	peak   [4]int
	peakAt [4]time.Time
}

var _ cachev3.Cache = (*Cache)(nil)

// New returns an empty cache: every type has no resources and the version of the empty set.
// It answers no request until the first Update: an Envoy that connects before (a control
// plane restarted under it, still reading the registry) keeps what it holds meanwhile.
func New(opts Options) *Cache {
	if opts.MaxInitialSyncs <= 0 {
		opts.MaxInitialSyncs = DefaultMaxInitialSyncs
	}
	if opts.NameMargin <= 0 {
		opts.NameMargin = DefaultNameMargin
	}
	if opts.NamesBeforeUpdate <= 0 {
		opts.NamesBeforeUpdate = 16 * opts.NameMargin
	}
	if opts.SlotTimeout <= 0 {
		opts.SlotTimeout = DefaultSlotTimeout
	}
	if opts.MaxInflightBytes == 0 {
		opts.MaxInflightBytes = DefaultMaxInflightBytes
	}
	if opts.InflightTimeout <= 0 {
		opts.InflightTimeout = DefaultInflightTimeout
	}
	c := &Cache{opts: opts, groups: map[string]*group{}, streams: map[StreamKey]*stream{},
		sotwReqs: map[*discovery.DiscoveryRequest]*stream{}, deltaReqs: map[*discovery.DeltaDiscoveryRequest]*stream{}}
	c.budget.Max = opts.MaxInflightBytes
	for i, url := range Types {
		c.types[i] = &typeState{url: url, full: cachev3.ResourceRequiresFullStateInSotw(url), entries: map[string]*entry{}, version: typeVersion(nil, nil)}
	}
	return c
}

// Update replaces the resources served, by type URL (a type left out is emptied), and
// pushes what changed to the Envoys subscribed to it. Either every type is updated or, when
// a resource fails Check or encoding, none is. Once the update is known good and before any
// Envoy is sent it, ready (if not nil) is called with every type's version, by type URL:
// whatever describes the configuration is then in place when an Envoy holds it. The cache
// keeps the slices of res: the caller must not modify them afterwards.
func (c *Cache) Update(res map[string][]types.Resource, ready func(versions map[string]string)) error {
	for url := range res {
		if typeIndex(url) < 0 {
			return fmt.Errorf("type %s is not served", url)
		}
	}
	c.upd.Lock()
	defer c.upd.Unlock()
	// Only Update replaces c.types, and it holds upd: reading them here needs no c.mu.
	var next [4]*typeState
	var changed [4][]string
	for i, url := range Types {
		ts, ch, err := c.build(c.types[i], res[url])
		if err != nil {
			return err
		}
		next[i], changed[i] = ts, ch
	}
	if ready != nil {
		versions := make(map[string]string, len(Types))
		for i, url := range Types {
			versions[url] = next[i].version
		}
		ready(versions)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.types = next
	first := !c.loaded
	c.loaded = true
	now := time.Now()
	for i, ts := range next {
		if n := len(ts.entries); n >= c.peak[i] || now.Sub(c.peakAt[i]) > NamePeakHold {
			c.peak[i], c.peakAt[i] = n, now
		}
	}
	if first {
		// Streams opened before the first Update were answered nothing (see respond): every
		// one still armed is answered now, also those that no changed name reaches (a
		// configuration as empty as the stand-in, a name held that is gone). Not by notify:
		// none has been answered, so each has everything pending already, and notify would
		// queue them for the initial-sync slots in map order.
		c.respondAllLocked()
		return nil
	}
	for i := range Types {
		c.notify(i, changed[i])
	}
	return nil
}

// respondAllLocked answers every armed watcher, streams in key order (the first-sync queue
// then serves them in a stable order).
func (c *Cache) respondAllLocked() {
	keys := slices.SortedFunc(maps.Keys(c.streams), func(a, b StreamKey) int {
		if a.Delta != b.Delta {
			if a.Delta {
				return 1
			}
			return -1
		}
		return cmp.Compare(a.ID, b.ID)
	})
	for _, k := range keys {
		for _, w := range c.streams[k].watchers {
			if w != nil && w.armed && !w.removed {
				c.respond(w)
			}
		}
	}
}

// build makes the next state of a type from its resources, reusing the entries of old that
// did not change, and returns the names changed, added or removed.
func (c *Cache) build(old *typeState, items []types.Resource) (*typeState, []string, error) {
	if len(items) == len(old.items) && slices.Equal(items, old.items) {
		return old, nil, nil
	}
	if ts, changed, ok, err := c.buildInPlace(old, items); ok || err != nil {
		return ts, changed, err
	}
	short := ShortType(old.url)
	entries := make(map[string]*entry, len(items))
	var changed []string
	added := false
	for _, r := range items {
		name := cachev3.GetResourceName(r)
		if name == "" {
			return nil, nil, fmt.Errorf("%s without a name", short)
		}
		if _, dup := entries[name]; dup {
			return nil, nil, fmt.Errorf("%s %q: two resources with this name", short, name)
		}
		o := old.entries[name]
		if o != nil && o.res == r {
			entries[name] = o
			continue
		}
		e, err := c.encode(old.url, name, r, o)
		if err != nil {
			return nil, nil, err
		}
		entries[name] = e
		if o == nil || o.version != e.version {
			added = added || o == nil
			changed = append(changed, name)
		}
	}
	for name := range old.entries {
		if _, ok := entries[name]; !ok {
			changed = append(changed, name)
		}
	}
	names := old.names // the same names: no need to sort them again
	if added || len(entries) != len(old.entries) {
		names = slices.Sorted(maps.Keys(entries))
	}
	ts, changed := old.next(entries, names, items, changed)
	return ts, changed, nil
}

// buildInPlace builds the next state of a type when items are old's items with some replaced
// in place, each by a resource of the same name (a load change: the publisher hands over the
// same slice order with one assignment swapped). It then costs the replaced resources, a
// copy of the entries and the type's hash, not a name lookup and insertion per resource.
// ok is false when items differ otherwise, and build must do the general walk.
func (c *Cache) buildInPlace(old *typeState, items []types.Resource) (*typeState, []string, bool, error) {
	if len(items) != len(old.items) { // both empty: build kept old already
		return nil, nil, false, nil
	}
	var at []int
	for i, r := range items {
		if r != old.items[i] {
			if cachev3.GetResourceName(r) != cachev3.GetResourceName(old.items[i]) {
				return nil, nil, false, nil
			}
			at = append(at, i)
		}
	}
	entries := maps.Clone(old.entries)
	var changed []string
	for _, i := range at {
		name := cachev3.GetResourceName(items[i])
		o := old.entries[name]
		e, err := c.encode(old.url, name, items[i], o)
		if err != nil {
			return nil, nil, false, err
		}
		entries[name] = e
		if o.version != e.version {
			changed = append(changed, name)
		}
	}
	ts, changed := old.next(entries, old.names, items, changed)
	return ts, changed, true, nil
}

// next returns the state that follows old with entries (their sorted names) and items. Only
// when names changed are its version and SotW full-state body made anew.
func (old *typeState) next(entries map[string]*entry, names []string, items []types.Resource, changed []string) (*typeState, []string) {
	ts := &typeState{url: old.url, full: old.full, entries: entries, names: names, version: old.version, all: old.all, allSize: old.allSize, items: items}
	if len(changed) == 0 {
		return ts, nil
	}
	ts.version = typeVersion(names, entries)
	if ts.full {
		ts.all, ts.allSize = make([]*anypb.Any, len(names)), 0
		for i, n := range names {
			ts.all[i] = entries[n].any
			ts.allSize += entries[n].size
		}
	}
	sort.Strings(changed)
	return ts, changed
}

// responseOverhead is about what a response adds to its resources: type URL, version, nonce.
const responseOverhead = 128

// encode checks and marshals a new or changed resource. When its content is old's (same
// encoding, new pointer) the old encoding is kept, with the new pointer remembered.
func (c *Cache) encode(url, name string, r types.Resource, old *entry) (*entry, error) {
	short := ShortType(url)
	if c.opts.Check != nil {
		if err := c.opts.Check(r); err != nil {
			return nil, fmt.Errorf("%s %q: %w", short, name, err)
		}
	}
	b, err := cachev3.MarshalResource(r)
	if err != nil {
		return nil, fmt.Errorf("encode %s %q: %w", short, name, err)
	}
	version := cachev3.HashResource(b)
	if old != nil && old.version == version {
		return &entry{res: r, version: version, sum: old.sum, any: old.any, dres: old.dres, size: old.size}, nil
	}
	a := &anypb.Any{TypeUrl: url, Value: b}
	return &entry{res: r, version: version, sum: sha256.Sum256([]byte(name + "\x00" + version)),
		any: a, dres: &discovery.Resource{Name: name, Version: version, Resource: a},
		// What gRPC encodes of it in a delta resource (a SotW Any is a little smaller).
		size: int64(len(b) + len(url) + len(name) + len(version) + 16)}, nil
}

// typeVersion hashes a type's names and resource versions: the same resources give the same
// version in every replica and after every restart.
func typeVersion(names []string, entries map[string]*entry) string {
	buf := make([]byte, 0, 32*len(names))
	for _, n := range names {
		buf = append(buf, entries[n].sum[:]...)
	}
	sum := sha256.Sum256(buf)
	return hex.EncodeToString(sum[:8])
}

// Versions returns every type's version, by type URL.
func (c *Cache) Versions() map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]string, len(Types))
	for i, url := range Types {
		out[url] = c.types[i].version
	}
	return out
}

// Groups returns the gateway groups with at least one stream, sorted.
func (c *Cache) Groups() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Sorted(maps.Keys(c.groups))
}

// Fetch is not supported: Tether's Envoys use streams (ADS).
func (c *Cache) Fetch(context.Context, *cachev3.Request) (cachev3.Response, error) {
	return nil, errors.New("fetch is not supported: use an xDS stream")
}
