package xdscache

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"sort"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// stream is one Envoy's stream, from its open to its close: what it subscribes to and
// acknowledged (its watchers), and what the admin API shows of it (info, streams.go).
type stream struct {
	key      StreamKey
	typeURL  string // a single-type stream's type; "" for ADS
	group    *group // set by the first request, which names the node
	info     ClientInfo
	sent     map[string]string // nonce -> type version sent and not answered yet
	watchers [4]*watcher
	// The request seen by the callbacks and not yet watched (at most one: the server calls
	// CreateWatch right after the callback, or drops a stale-nonce request).
	sotwReq  *discovery.DiscoveryRequest
	deltaReq *discovery.DeltaDiscoveryRequest
}

// group is a gateway group: the streams of one node cluster, indexed by what they subscribe.
type group struct {
	name    string
	streams int
	subs    [4]map[string]watcherSet // type -> name -> watchers subscribed by name
	wild    [4]map[*watcher]struct{} // type -> wildcard watchers
}

// watcherSet is a set of watchers sorted by id. A thousand Envoys subscribed by name to a
// thousand assignments make a million entries: a sorted slice holds each in 8 bytes (12 with
// append's spare capacity), a map in about 18 at that size. Adding or removing one costs a
// binary search and a copy of the slice's tail, once per subscription change, never per push.
type watcherSet []*watcher

func (s watcherSet) find(w *watcher) (int, bool) {
	return slices.BinarySearchFunc(s, w.id, func(x *watcher, id uint64) int { return cmp.Compare(x.id, id) })
}

func (s watcherSet) has(w *watcher) bool {
	_, ok := s.find(w)
	return ok
}

// add returns s with w in it.
func (s watcherSet) add(w *watcher) watcherSet {
	if i, ok := s.find(w); !ok {
		s = slices.Insert(s, i, w)
	}
	return s
}

// remove returns s without w.
func (s watcherSet) remove(w *watcher) watcherSet {
	if i, ok := s.find(w); ok {
		s = slices.Delete(s, i, i+1)
	}
	return s
}

// watcher is one stream's subscription to one type; it outlives the go-control-plane watches
// that arm it, one per request.
type watcher struct {
	id       uint64 // orders watcherSets
	st       *stream
	t        int
	delta    bool
	wildcard bool
	// names are the names subscribed: the server's own map, never written here. The SotW
	// server makes a new one per request; the delta server edits its map in place, between
	// cancelling a watch and creating the next.
	names map[string]struct{}
	// lastNames are the resource_names of the last SotW request: an ACK repeating them
	// changes nothing.
	lastNames []string
	// held is what a delta Envoy holds, name -> version sent. A SotW watcher keeps none: it
	// sends what changed (an A -> B -> A change while it is unarmed sends A again, which Envoy
	// takes as no change).
	held heldSet
	// marks is the map a delta response hands the server as NextVersionMap, which it keeps as
	// the subscription's ReturnedResources. The server edits that map when the Envoy
	// unsubscribes: it marks a name unsubscribed from a wildcard watch with "" (the next
	// response must say whether it still exists) and drops others. held is the cache's own, so
	// the map carries only those marks, read into held and cleared by the next CreateDeltaWatch.
	marks       map[string]string
	sent        string              // SotW full-state types: the type version last sent
	pending     map[string]struct{} // names changed since the last response, all subscribed
	pendingAll  bool                // every subscribed name (and held one) is pending: a first sync
	answered    bool                // a first response was sent
	removed     bool                // its stream closed
	queued      bool                // waits for an initial-sync slot
	heldBack    bool                // its first response is held back (Options.HoldFirstEndpoints)
	slot        *time.Timer         // set while holding an initial-sync slot
	waiting     bool                // waits for room in the byte budget (budget.go)
	charged     int64               // bytes of its responses sent and not yet answered
	chargedAt   time.Time           // when the oldest of them was sent
	chargeTimer *time.Timer         // releases the charge after InflightTimeout
	epoch       uint64              // last notify that found it

	// What the Envoy acknowledged (see Acks). subsGen counts the subscriptions that added
	// names: an ACK of a response built before an addition does not cover the added names.
	subsGen     uint64
	sentGen     uint64                            // subsGen when the last response was built
	outstanding bool                              // the last response is not answered yet
	acked       string                            // type version of the last response ACKed
	ackedGen    uint64                            // sentGen of that response
	nacked      bool                              // the last answer was a NACK
	resync      bool                              // since a NACK: the next response carries every name
	dresp       *discovery.DeltaDiscoveryResponse // last delta response: the server writes its nonce
	first       *discovery.DeltaDiscoveryResponse // first delta response, while it holds a slot

	armed      bool
	gen        uint64 // arming count: a cancel only disarms its own arming
	replyEmpty bool   // answer the armed request even with nothing to send
	sreq       *discovery.DiscoveryRequest
	sch        chan cachev3.Response
	dreq       *discovery.DeltaDiscoveryRequest
	dch        chan cachev3.DeltaResponse
}

// indexed reports whether w subscribes to name, from the cache's own index: safe under the
// cache's lock from any goroutine, unlike a read of w.names, which go-control-plane's delta
// server edits between cancelling a watch and creating the next, outside this cache's lock.
func (c *Cache) indexed(w *watcher, name string) bool {
	if w.wildcard {
		return true
	}
	return w.st.group.subs[w.t][name].has(w)
}

// nextWatcher numbers a new watcher (under c.mu).
func (c *Cache) nextWatcher() uint64 {
	c.watchers++
	return c.watchers
}

// open registers a stream.
func (c *Cache) open(key StreamKey, typeURL string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.streams[key] = &stream{key: key, typeURL: typeURL, sent: map[string]string{},
		info: ClientInfo{StreamID: key.ID, Variant: key.Variant(), ConnectedAt: time.Now().UTC(), Acked: map[string]string{}}}
	if c.opts.Observer != nil {
		c.opts.Observer.Opened(key)
	}
}

// closeStream forgets a stream, its watchers and, with its last stream, its group.
func (c *Cache) closeStream(key StreamKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.streams[key]
	if st == nil {
		return
	}
	delete(c.streams, key)
	if c.opts.Observer != nil {
		c.opts.Observer.Closed(&st.info)
	}
	if c.opts.OnClose != nil && st.group != nil {
		for t, w := range st.watchers {
			if w != nil && !w.removed {
				c.opts.OnClose(Types[t], c.ackOf(st, w))
			}
		}
	}
	delete(c.sotwReqs, st.sotwReq) // a request seen and never watched (nil: none)
	delete(c.deltaReqs, st.deltaReq)
	freed, charged := false, false
	for _, w := range st.watchers {
		if w == nil {
			continue
		}
		w.removed = true
		c.unindex(w)
		c.disarm(w)
		c.dropWaiting(w)
		if w.slot != nil {
			w.slot.Stop()
			w.slot = nil
			c.inflight--
			freed = true
		}
		if w.charged > 0 {
			c.uncharge(w)
			charged = true
		}
	}
	if g := st.group; g != nil {
		if g.streams--; g.streams == 0 {
			delete(c.groups, g.name)
		}
	}
	if freed {
		c.pump()
	}
	if charged {
		c.pumpBudget()
	}
	c.answerHook()
}

// bind records which stream a request came on, for the CreateWatch that follows.
func (c *Cache) bindSotw(id int64, req *discovery.DiscoveryRequest) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.streams[StreamKey{false, id}]
	if st == nil {
		return fmt.Errorf("stream %d is not open", id)
	}
	delete(c.sotwReqs, st.sotwReq) // nil: none
	st.sotwReq = req
	c.sotwReqs[req] = st
	c.join(st, req.GetNode())
	c.answered(st, req.GetTypeUrl(), req.GetResponseNonce(), req.GetErrorDetail())
	if t := typeIndex(req.GetTypeUrl()); t >= 0 {
		if w := st.watchers[t]; w != nil && slices.Equal(w.lastNames, req.ResourceNames) {
			req.ResourceNames = w.lastNames // an ACK repeating them: keep one copy
		} else {
			c.intern(t, req.ResourceNames)
		}
	}
	return nil
}

// intern replaces names of type t with the cache's own strings of the same names. The server
// keeps the names of a subscription (and SotW Envoys repeat all of them in every ACK), so that
// a thousand Envoys subscribed to a thousand names hold one copy of each name, not a thousand:
// the decoded ones are garbage at once. Only the callbacks call it, before the server reads
// the request.
func (c *Cache) intern(t int, names []string) {
	entries := c.types[t].entries
	for i, n := range names {
		if e := entries[n]; e != nil {
			names[i] = e.dres.Name
		}
	}
}

func (c *Cache) bindDelta(id int64, req *discovery.DeltaDiscoveryRequest) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.streams[StreamKey{true, id}]
	if st == nil {
		return fmt.Errorf("delta stream %d is not open", id)
	}
	delete(c.deltaReqs, st.deltaReq) // nil: none
	st.deltaReq = req
	c.deltaReqs[req] = st
	c.join(st, req.GetNode())
	c.answered(st, req.GetTypeUrl(), req.GetResponseNonce(), req.GetErrorDetail())
	if t := typeIndex(req.GetTypeUrl()); t >= 0 {
		c.intern(t, req.ResourceNamesSubscribe)
		if len(req.InitialResourceVersions) > 0 {
			// Kept by the server as what the Envoy holds: the cache's strings, as for names.
			entries := c.types[t].entries
			iv := make(map[string]string, len(req.InitialResourceVersions))
			for n, v := range req.InitialResourceVersions {
				if e := entries[n]; e != nil {
					n = e.dres.Name
					if v == e.version {
						v = e.version
					}
				}
				iv[n] = v
			}
			req.InitialResourceVersions = iv
		}
	}
	return nil
}

// join puts a stream in its node's group, once: its first request names the node.
func (c *Cache) join(st *stream, node *core.Node) {
	if st.group != nil {
		return
	}
	name := node.GetCluster()
	if c.opts.GroupOf != nil {
		name = c.opts.GroupOf(name)
	}
	g := c.groups[name]
	if g == nil {
		g = &group{name: name}
		c.groups[name] = g
	}
	g.streams++
	st.group = g
	st.info.NodeID, st.info.Group = node.GetId(), name
	if c.opts.Observer != nil {
		c.opts.Observer.Named(&st.info, node)
	}
}

// CreateWatch arms a SotW watch. An ACK that changes nothing costs O(1) beyond comparing its
// resource names with the last request's (which the server has already decoded and copied).
func (c *Cache) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	t := typeIndex(req.GetTypeUrl())
	if t < 0 {
		return nil, fmt.Errorf("type %q is not served", req.GetTypeUrl())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.sotwReqs[req]
	if st == nil {
		return nil, fmt.Errorf("request for %s was not seen by the cache's callbacks", req.GetTypeUrl())
	}
	delete(c.sotwReqs, req)
	st.sotwReq = nil
	w := st.watchers[t]
	if w == nil {
		w = &watcher{id: c.nextWatcher(), st: st, t: t, pending: map[string]struct{}{}}
		st.watchers[t] = w
		c.resubscribe(w, sub.IsWildcard(), sub.SubscribedResources())
	} else {
		if w.outstanding && req.GetErrorDetail() == nil && req.GetVersionInfo() != w.sent {
			// The Envoy never got the last response: go-control-plane's ADS loop discards a
			// queued response of the type it re-watches when a request of that type crosses it
			// (processAllExcept), and this request carries the nonce before it. Everything it
			// carried is sent again.
			w.outstanding, w.pendingAll, w.sent = false, true, ""
			c.release(w)
		}
		// The server drops a request whose nonce is stale: this one answers the last response,
		// and a SotW ACK repeats the version it accepts.
		c.recordAnswer(w, req.GetErrorDetail() == nil && req.GetVersionInfo() == w.sent && req.GetResponseNonce() != "",
			req.GetErrorDetail() != nil)
		if w.wildcard != sub.IsWildcard() || !slices.Equal(w.lastNames, req.GetResourceNames()) {
			c.resubscribe(w, sub.IsWildcard(), sub.SubscribedResources())
		} else {
			// The same names: the server made a new map of them, and the old one is let go.
			w.names = sub.SubscribedResources()
		}
	}
	w.lastNames = req.GetResourceNames()
	w.armed, w.sreq, w.sch = true, req, ch
	w.gen++
	w.replyEmpty = !w.answered && req.GetVersionInfo() == ""
	// Full-state types go by version (a change while unarmed leaves no pending names).
	if ts := c.types[t]; !w.answered || w.hasPending() || (ts.full && w.sent != ts.version) {
		c.respond(w)
	}
	return c.canceller(w), nil
}

// CreateDeltaWatch arms a delta watch. An ACK (no subscription change) costs O(1); a
// subscription change costs O(names it changes).
func (c *Cache) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, ch chan cachev3.DeltaResponse) (func(), error) {
	t := typeIndex(req.GetTypeUrl())
	if t < 0 {
		return nil, fmt.Errorf("type %q is not served", req.GetTypeUrl())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.deltaReqs[req]
	if st == nil {
		return nil, fmt.Errorf("delta request for %s was not seen by the cache's callbacks", req.GetTypeUrl())
	}
	delete(c.deltaReqs, req)
	st.deltaReq = nil
	w := st.watchers[t]
	switch {
	case w == nil:
		// What the Envoy holds from before (initial_resource_versions), as the cache's own.
		w = &watcher{id: c.nextWatcher(), st: st, t: t, delta: true, held: heldFrom(sub.ReturnedResources()),
			marks: map[string]string{}, pending: map[string]struct{}{}}
		clear(sub.ReturnedResources())
		st.watchers[t] = w
		c.setWhole(w, sub.IsWildcard(), sub.SubscribedResources())
	case w.wildcard != sub.IsWildcard():
		c.recordAnswerDelta(w, req)
		// The server has already edited the names: forget this request's unsubscriptions
		// first, then the rest.
		for _, n := range req.GetResourceNamesUnsubscribe() {
			c.unindexName(w, n)
		}
		w.readMarks(req, sub.ReturnedResources())
		c.setWhole(w, sub.IsWildcard(), sub.SubscribedResources())
	default:
		c.recordAnswerDelta(w, req)
		w.readMarks(req, sub.ReturnedResources())
		// The server has already added and removed these names in w.names; indexing is
		// idempotent.
		if len(req.GetResourceNamesSubscribe()) > 0 {
			w.subsGen++
		}
		for _, n := range req.GetResourceNamesSubscribe() {
			if n != "*" {
				c.indexName(w, n)
				w.pending[n] = struct{}{}
			}
		}
		for _, n := range req.GetResourceNamesUnsubscribe() {
			c.unindexName(w, n)
			if w.wildcard {
				w.pending[n] = struct{}{} // resent or removed, as the protocol asks
			} else {
				delete(w.pending, n)
			}
		}
	}
	w.armed, w.dreq, w.dch = true, req, ch
	w.gen++
	w.replyEmpty = w.wildcard && req.GetResponseNonce() == ""
	if !w.answered || w.hasPending() || w.replyEmpty {
		c.respond(w)
	}
	return c.canceller(w), nil
}

// readMarks applies to held the server's edits of ReturnedResources for the names req
// unsubscribes (see watcher.marks), and clears the map: a name marked "" is held at no known
// version (the next response carries it, or its removal), any other is no longer held.
func (w *watcher) readMarks(req *discovery.DeltaDiscoveryRequest, rr map[string]string) {
	for _, n := range req.GetResourceNamesUnsubscribe() {
		if v, ok := rr[n]; ok && v == "" {
			w.held.set(n, "")
		} else if n != "*" {
			w.held.del(n)
		}
	}
	clear(rr)
}

// canceller returns the cancel of w's current arming. It always takes the lock: the server
// edits a delta subscription's map right after cancelling, and the lock orders that edit
// after this cache's last write.
func (c *Cache) canceller(w *watcher) func() {
	gen := w.gen
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if w.gen == gen {
			c.disarm(w)
		}
	}
}

func (c *Cache) disarm(w *watcher) {
	w.armed, w.sreq, w.sch, w.dreq, w.dch = false, nil, nil, nil, nil
}

// resubscribe sets a SotW watcher's subscription from the request's full list of names.
func (c *Cache) resubscribe(w *watcher, wildcard bool, names map[string]struct{}) {
	if w.names == nil || w.wildcard != wildcard {
		c.setWhole(w, wildcard, names)
		return
	}
	changed := false
	for n := range names {
		if _, ok := w.names[n]; !ok {
			c.indexName(w, n)
			w.pending[n] = struct{}{}
			changed = true
		}
	}
	if changed {
		w.subsGen++ // conservative: a removal alone would not need it
	}
	for n := range w.names {
		if _, ok := names[n]; !ok {
			c.unindexName(w, n)
			delete(w.pending, n)
			changed = true
		}
	}
	w.names = names
	if changed && c.types[w.t].full {
		w.sent = "" // the full-state body changes with the names
	}
}

// setWhole replaces a watcher's subscription and marks everything it may hold or want.
func (c *Cache) setWhole(w *watcher, wildcard bool, names map[string]struct{}) {
	if w.names != nil {
		c.unindex(w)
	}
	resetPending(w)
	w.subsGen++
	w.wildcard, w.names = wildcard, names
	if w.names == nil {
		w.names = map[string]struct{}{}
	}
	c.index(w)
	if !w.delta && c.types[w.t].full {
		w.sent = "" // full-state responses go by version: send again
		return
	}
	w.pendingAll = true
	if !wildcard {
		// An initial version of a name not subscribed: forget it.
		w.held.retain(func(n string) bool { return c.indexed(w, n) })
	}
}

func (c *Cache) index(w *watcher) {
	g := w.st.group
	if w.wildcard {
		if g.wild[w.t] == nil {
			g.wild[w.t] = map[*watcher]struct{}{}
		}
		g.wild[w.t][w] = struct{}{}
		return
	}
	for n := range w.names {
		c.indexName(w, n)
	}
}

func (c *Cache) unindex(w *watcher) {
	g := w.st.group
	delete(g.wild[w.t], w)
	for n := range w.names {
		c.unindexName(w, n)
	}
}

func (c *Cache) indexName(w *watcher, n string) {
	if w.wildcard {
		return
	}
	g := w.st.group
	if g.subs[w.t] == nil {
		g.subs[w.t] = map[string]watcherSet{}
	}
	g.subs[w.t][n] = g.subs[w.t][n].add(w)
}

func (c *Cache) unindexName(w *watcher, n string) {
	g := w.st.group
	if ws, ok := g.subs[w.t][n]; ok {
		if ws = ws.remove(w); len(ws) == 0 {
			delete(g.subs[w.t], n)
		} else {
			g.subs[w.t][n] = ws
		}
	}
}

// notify records that names of type t changed and answers the armed watchers among their
// subscribers: O(subscribers of the changed names + wildcard watchers).
func (c *Cache) notify(t int, changed []string) {
	if len(changed) == 0 {
		return
	}
	full := c.types[t].full
	var dirty []*watcher
	mark := func(w *watcher, n string) {
		if w.epoch != c.epochNow {
			w.epoch = c.epochNow
			dirty = append(dirty, w)
		}
		if w.delta || !full {
			w.pending[n] = struct{}{}
		}
	}
	c.epochNow++
	for _, g := range c.groups {
		subs := g.subs[t]
		for _, n := range changed {
			for _, w := range subs[n] {
				mark(w, n)
			}
		}
		for w := range g.wild[t] {
			for _, n := range changed {
				mark(w, n)
			}
		}
	}
	for _, w := range dirty {
		if w.armed {
			c.respond(w)
		}
	}
}

// respond answers an armed watcher with what it lacks, if anything. A first response waits
// for an initial-sync slot.
//
// Before the first Update it answers nothing and leaves w armed with all it asks for
// pending: the cache's empty stand-in is no configuration, and sent as one it would take
// from a reconnecting Envoy everything it holds (an empty listener and cluster set in state
// of the world, the removal of every resource it declared in delta). Update answers w then.
func (c *Cache) respond(w *watcher) {
	if !c.loaded {
		return
	}
	if !w.answered && w.t == endpointIndex && c.opts.HoldFirstEndpoints != nil && c.opts.HoldFirstEndpoints() {
		if !w.heldBack {
			w.heldBack = true
			c.held = append(c.held, w)
		}
		return
	}
	if !w.answered && w.slot == nil && c.inflight >= c.opts.MaxInitialSyncs {
		if !w.queued {
			w.queued = true
			c.queue = append(c.queue, w)
		}
		return
	}
	if c.behind(w) {
		return
	}
	ts := c.types[w.t]
	if w.resync && w.hasPending() {
		w.pendingAll, w.resync = true, false
	}
	var sent bool
	if w.delta {
		sent = c.respondDelta(w, ts)
	} else {
		sent = c.respondSotw(w, ts)
	}
	if sent && !w.answered {
		w.answered = true
		c.takeSlot(w)
	}
}

func (w *watcher) hasPending() bool { return w.pendingAll || len(w.pending) > 0 }

// pendingNames returns w's pending names, sorted; clearPending clears them once they are
// sent. A first sync (pendingAll) lists every name subscribed (every name of the type, for a
// wildcard) and every name held, without keeping a copy of them in the meantime.
func pendingNames(w *watcher, ts *typeState) []string {
	var all []string
	var held heldSet
	if w.pendingAll {
		all, held = ts.names, w.held
		if !w.wildcard {
			all = slices.Collect(maps.Keys(w.names))
		}
	}
	names := make([]string, 0, len(all)+len(held)+len(w.pending))
	names = append(names, all...)
	for _, r := range held {
		names = append(names, r.name)
	}
	names = slices.AppendSeq(names, maps.Keys(w.pending))
	sort.Strings(names)
	return slices.Compact(names)
}

func clearPending(w *watcher) {
	w.pendingAll = false
	resetPending(w)
}

// resetPending empties w's pending names. A map that held many (a first sync) is dropped, not
// cleared: ranging over a cleared map still costs its capacity, every push.
func resetPending(w *watcher) {
	if len(w.pending) > 32 {
		w.pending = map[string]struct{}{}
		return
	}
	clear(w.pending)
}

func (c *Cache) respondSotw(w *watcher, ts *typeState) bool {
	var body []*anypb.Any
	size := int64(responseOverhead)
	if ts.full {
		clearPending(w)
		if w.answered && w.sent == ts.version {
			return false
		}
		if w.wildcard {
			body, size = ts.all, size+ts.allSize
		} else {
			names := make([]string, 0, len(w.names))
			for n := range w.names {
				if ts.entries[n] != nil {
					names = append(names, n)
				}
			}
			sort.Strings(names)
			body = make([]*anypb.Any, len(names))
			for i, n := range names {
				body[i] = ts.entries[n].any
				size += ts.entries[n].size
			}
		}
	} else {
		for _, n := range pendingNames(w, ts) {
			if e := ts.entries[n]; e != nil {
				body = append(body, e.any)
				size += e.size
			}
		}
		if len(body) == 0 && !w.replyEmpty {
			clearPending(w)
			return false
		}
	}
	size = grpcBuffer(size)
	if !c.admit(w, size) {
		return false // its pending names wait; the response is built again when it goes
	}
	clearPending(w)
	resp := &cachev3.PassthroughResponse{Request: w.sreq, DiscoveryResponse: &discovery.DiscoveryResponse{
		VersionInfo: ts.version, Resources: body, TypeUrl: ts.url}}
	select {
	case w.sch <- resp:
	default:
		// Cannot happen: a watch is answered once and its channel holds one response.
		c.opts.Logger.Error().Str("type", ts.url).Msg("xDS watch channel full; response dropped")
		return false
	}
	w.sent, w.sentGen, w.outstanding = ts.version, w.subsGen, true
	c.charge(w, size)
	c.disarm(w)
	return true
}

func (c *Cache) respondDelta(w *watcher, ts *typeState) bool {
	names := pendingNames(w, ts)
	var res []*discovery.Resource
	var removed []string
	size := int64(responseOverhead)
	for _, n := range names {
		v, held := w.held.get(n)
		if e := ts.entries[n]; e != nil {
			if !held || v != e.version {
				res = append(res, e.dres)
				size += e.size
			}
		} else if held {
			removed = append(removed, n)
			size += int64(len(n)) + 4
		}
	}
	if len(res) == 0 && len(removed) == 0 && !w.replyEmpty {
		clearPending(w)
		if !w.answered && !w.outstanding && len(w.held) > 0 {
			// A reconnecting Envoy that declared (initial_resource_versions) the current
			// version of everything it subscribes to is sent nothing, so it will send no ACK:
			// what it holds is acknowledged, or two-phase publication would take it for a
			// laggard until the settle time.
			w.acked, w.ackedGen, w.nacked = ts.version, w.subsGen, false
			c.answerHook()
		}
		return false
	}
	size = grpcBuffer(size)
	if !c.admit(w, size) {
		return false // its pending names wait; the response is built again when it goes
	}
	clearPending(w)
	resp := &cachev3.DeltaPassthroughResponse{DeltaRequest: w.dreq, NextVersionMap: w.marks,
		DeltaDiscoveryResponse: &discovery.DeltaDiscoveryResponse{Resources: res, RemovedResources: removed,
			TypeUrl: ts.url, SystemVersionInfo: ts.version}}
	select {
	case w.dch <- resp:
	default:
		// Cannot happen: the server's channel holds two responses per type, and a watch is
		// answered once.
		c.opts.Logger.Error().Str("type", ts.url).Msg("delta xDS channel full; response dropped")
		for _, n := range names {
			w.pending[n] = struct{}{}
		}
		return false
	}
	for _, r := range res {
		w.held.set(r.GetName(), r.GetVersion())
	}
	for _, n := range removed {
		w.held.del(n)
	}
	w.sent, w.sentGen, w.outstanding = ts.version, w.subsGen, true
	c.charge(w, size)
	w.dresp = resp.DeltaDiscoveryResponse
	if !w.answered {
		w.first = w.dresp
	}
	c.disarm(w)
	return true
}

// takeSlot gives w an initial-sync slot until its ACK, its stream's end or SlotTimeout.
func (c *Cache) takeSlot(w *watcher) {
	c.inflight++
	var tm *time.Timer
	tm = time.AfterFunc(c.opts.SlotTimeout, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if w.slot == tm {
			c.freeSlot(w)
		}
	})
	w.slot = tm
}

// releaseSlot frees w's slot once its first response is answered (ACK or NACK): not on any
// request, since a delta Envoy may change its subscription before the response reaches it
// (the delta server has no nonce check), and the slot bounds the responses still on their
// way, megabytes each at a thousand services.
func (c *Cache) releaseSlot(w *watcher) {
	if w.slot != nil && w.answered {
		c.freeSlot(w)
	}
}

func (c *Cache) freeSlot(w *watcher) {
	w.slot.Stop()
	w.slot, w.first = nil, nil
	c.inflight--
	c.pump()
}

// ReleaseHeld answers the first endpoint responses held back by Options.HoldFirstEndpoints
// (those still held back when it says no more).
func (c *Cache) ReleaseHeld() {
	c.mu.Lock()
	defer c.mu.Unlock()
	held := c.held
	c.held = nil
	for _, w := range held {
		w.heldBack = false
		if w.armed && !w.removed {
			c.respond(w)
		}
	}
}

// pump answers queued first responses while slots are free.
func (c *Cache) pump() {
	for c.inflight < c.opts.MaxInitialSyncs && len(c.queue) > 0 {
		w := c.queue[0]
		c.queue[0] = nil
		c.queue = c.queue[1:]
		w.queued = false
		if w.armed && !w.removed {
			c.respond(w)
		}
	}
}
