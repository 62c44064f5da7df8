package xdscache

import discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

// What each Envoy has acknowledged, for two-phase publication (the control plane promotes a
// new endpoint once every Envoy holds it).
//
// A response of a type carries everything pending for the watcher, built from the type's
// state at that moment: once the Envoy ACKs it, it holds that type version's content for
// every name it subscribed to when the response was built. Names subscribed later are
// pending and come with a later response; until that one is ACKed the stream's ACK is not
// "whole" (StreamAck.Whole). The answer is matched exactly: a SotW ACK repeats the version it
// accepts (and the server drops requests with a stale nonce); a delta ACK carries the nonce
// the server wrote into the last response.

// StreamAck is what one stream has acknowledged of one type.
type StreamAck struct {
	StreamKey
	Group string
	Node  string // the node's ID
	// Version is the type version of the last response the Envoy ACKed ("" before its first).
	Version string
	// Whole: the ACKed response covered every name the stream subscribes to now.
	Whole bool
	// Waiting: a response is sent and not answered yet.
	Waiting bool
	// NACKed: the Envoy's last answer was a NACK.
	NACKed bool
	// Watching: the stream has asked for this type (an Envoy asks for endpoints after clusters).
	Watching bool
	// Served: the stream was sent a response of this type (it may hold some of its resources).
	Served bool
}

// Acks calls visit, under the cache's lock, for every stream that has joined a group, with
// what it acknowledged of typeURL and whether it subscribes to a name. visit must not keep
// subscribed or call the cache.
func (c *Cache) Acks(typeURL string, visit func(a StreamAck, subscribed func(name string) bool)) {
	t := typeIndex(typeURL)
	if t < 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	none := func(string) bool { return false }
	for _, st := range c.streams {
		if st.group == nil {
			continue
		}
		w := st.watchers[t]
		if w == nil || w.removed {
			visit(StreamAck{StreamKey: st.key, Group: st.group.name, Node: st.info.NodeID}, none)
			continue
		}
		visit(c.ackOf(st, w), func(name string) bool { return c.indexed(w, name) })
	}
}

// ackOf is what st's watcher w acknowledged.
func (c *Cache) ackOf(st *stream, w *watcher) StreamAck {
	return StreamAck{StreamKey: st.key, Group: st.group.name, Node: st.info.NodeID,
		Version: w.acked, Whole: w.acked != "" && w.ackedGen == w.subsGen, Waiting: w.outstanding, NACKed: w.nacked,
		Watching: true, Served: w.answered}
}

// recordAnswer records the answer to w's last response: ack, nack, or neither (a request
// that only changes the subscription, or answers a response the server never sent).
func (c *Cache) recordAnswer(w *watcher, ack, nack bool) {
	if !w.outstanding || (!ack && !nack) {
		return
	}
	w.outstanding = false
	c.releaseSlot(w)
	c.release(w)
	if ack {
		w.acked, w.ackedGen, w.nacked = w.sent, w.sentGen, false
	} else {
		c.nacked(w)
	}
	c.answerHook()
}

// nacked records a NACK. The Envoy kept what it held before the refused response, and later
// responses carry only what changes after it: an ACK of one of those must not count as holding
// everything sent (two-phase publication would promote an endpoint this Envoy refused). So the
// stream's ACK is not whole again (subsGen) until the Envoy ACKs a response carrying every name
// it subscribes to (resync); a delta Envoy's held versions of the refused resources are
// forgotten, so that response carries them. Nothing is resent at once: the same resources
// would be refused again, as fast as the Envoy answers; the next change resends them.
func (*Cache) nacked(w *watcher) {
	w.nacked, w.resync = true, true
	w.subsGen++
	if w.delta && w.dresp != nil {
		for _, r := range w.dresp.GetResources() {
			w.held.forget(r.GetName())
		}
	}
	// SotW listeners and clusters go by version and are always sent whole: nothing to do.
}

// recordAnswerDelta matches a delta request's nonce with the last response's. The server
// wrote that nonce when it sent the response, on the goroutine that now calls CreateDeltaWatch.
func (c *Cache) recordAnswerDelta(w *watcher, req *discovery.DeltaDiscoveryRequest) {
	n := req.GetResponseNonce()
	if n != "" && w.first != nil && n == w.first.GetNonce() {
		c.releaseSlot(w) // the first response arrived, though later ones were sent since
	}
	if n == "" || w.dresp == nil || n != w.dresp.GetNonce() {
		return
	}
	c.recordAnswer(w, req.GetErrorDetail() == nil, req.GetErrorDetail() != nil)
}

func (c *Cache) answerHook() {
	if c.opts.OnAnswer != nil {
		c.opts.OnAnswer()
	}
}
