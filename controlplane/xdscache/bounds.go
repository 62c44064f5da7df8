package xdscache

import (
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Bounds on what one xDS client can make the control plane keep. go-control-plane's server
// keeps every name a stream subscribes, and its node, for the stream's life; before these
// bounds one unauthenticated delta stream subscribing 8 x 40,000 unknown names took the heap
// from 6.7 to 66.7 MB, and a 1.5 MB node ID was kept, logged and shown by the admin pages.
// A request past a bound ends its stream with InvalidArgument naming the bound, not the
// value: refusing the stream rather than trimming the request keeps go-control-plane's
// subscription state and this cache's name index equal.
const (
	// DefaultNameMargin is how many names a stream may subscribe per type beyond those
	// served: a stream may subscribe served + max(margin, served) names. Envoy subscribes only
	// to names the control plane sent it (clusters, the route configuration its listener
	// names), so a name not served is one in passing: a cluster just removed whose
	// assignment Envoy has not unsubscribed yet. Replacing every service at once leaves at
	// most the served count of such names; the constant covers a small registry, where an
	// Envoy may still ask for names of an earlier, larger one.
	DefaultNameMargin = 1024
	// MaxFieldBytes bounds a node ID, a node cluster, a subscribed name and a version a
	// client hands over: Tether's own names are at most about 80 bytes (a service name is
	// at most 63), node IDs are host or pod names (DNS names are at most 253).
	MaxFieldBytes = 256
	// MaxNodeBytes bounds the encoded node, which the server keeps per stream. A real Envoy's
	// node, with the list of every extension it was built with, is 20-40 KiB.
	MaxNodeBytes = 256 << 10
	// NamePeakHold is how long a larger resource count than served keeps the name bound up:
	// after a mass removal, an Envoy's requests still naming the old resources may cross the
	// push that removes them (a SotW Envoy repeats every name in each ACK), and refusing
	// them would cut its stream. A minute covers any Envoy that answers at all.
	NamePeakHold = time.Minute
)

// Reasons passed to Options.OnRefuse.
const (
	RefuseNames = "names"      // more names subscribed than served plus the margin
	RefuseField = "field-size" // a node, node ID or cluster, name or version over its bound
)

// nameLimit is how many names of type t a stream may subscribe (under c.mu): the served
// names, or the most served within NamePeakHold, plus the margin; NamesBeforeUpdate before
// the first Update.
func (c *Cache) nameLimit(t int) int {
	if !c.loaded {
		return c.opts.NamesBeforeUpdate
	}
	served := len(c.types[t].entries)
	if time.Since(c.peakAt[t]) <= NamePeakHold {
		served = max(served, c.peak[t])
	}
	return served + max(c.opts.NameMargin, served)
}

// refuse counts and logs a refusal and returns the error that ends the stream. what never
// holds the client's value, only what it is and its size.
func (c *Cache) refuse(key StreamKey, reason, what string, size, bound int) error {
	if c.opts.OnRefuse != nil {
		c.opts.OnRefuse(reason)
	}
	c.opts.Logger.Warn().Int64("stream", key.ID).Bool("delta", key.Delta).Str("reason", reason).Str("what", what).
		Int("size", size).Int("bound", bound).Msg("xDS request over a bound; stream ended")
	return status.Errorf(codes.InvalidArgument, "%s: %d over this control plane's bound of %d", what, size, bound)
}

// checkNode refuses a node over its bounds.
func (c *Cache) checkNode(key StreamKey, node *core.Node) error {
	if node == nil {
		return nil
	}
	if n := len(node.GetId()); n > MaxFieldBytes {
		return c.refuse(key, RefuseField, "node.id bytes", n, MaxFieldBytes)
	}
	if n := len(node.GetCluster()); n > MaxFieldBytes {
		return c.refuse(key, RefuseField, "node.cluster bytes", n, MaxFieldBytes)
	}
	if n := proto.Size(node); n > MaxNodeBytes {
		return c.refuse(key, RefuseField, "node bytes", n, MaxNodeBytes)
	}
	return nil
}

// checkNames refuses a name or a version over MaxFieldBytes.
func (c *Cache) checkNames(key StreamKey, names []string, versions map[string]string) error {
	for _, n := range names {
		if len(n) > MaxFieldBytes {
			return c.refuse(key, RefuseField, "resource name bytes", len(n), MaxFieldBytes)
		}
	}
	for n, v := range versions {
		if len(n) > MaxFieldBytes || len(v) > MaxFieldBytes {
			return c.refuse(key, RefuseField, "initial resource version bytes", max(len(n), len(v)), MaxFieldBytes)
		}
	}
	return nil
}

// checkSotw refuses a SotW request over a bound, before the server keeps its names.
func (c *Cache) checkSotw(id int64, req *discovery.DiscoveryRequest) error {
	key := StreamKey{false, id}
	if err := c.checkNode(key, req.GetNode()); err != nil {
		return err
	}
	if err := c.checkNames(key, req.GetResourceNames(), nil); err != nil {
		return err
	}
	if n := len(req.GetVersionInfo()); n > MaxFieldBytes {
		return c.refuse(key, RefuseField, "version_info bytes", n, MaxFieldBytes)
	}
	if n := len(req.GetResponseNonce()); n > MaxFieldBytes {
		return c.refuse(key, RefuseField, "response_nonce bytes", n, MaxFieldBytes)
	}
	t := typeIndex(req.GetTypeUrl())
	if t < 0 {
		return nil // the callbacks refuse it (errType)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if limit := c.nameLimit(t); len(req.GetResourceNames()) > limit {
		return c.refuse(key, RefuseNames, "resource names", len(req.GetResourceNames()), limit)
	}
	return nil
}

// checkDelta refuses a delta request that would leave its stream subscribed to more names
// of its type than the limit, before the server adds them to the subscription. It reads the
// subscription's map, which only this stream's goroutine (the caller's) edits.
func (c *Cache) checkDelta(id int64, req *discovery.DeltaDiscoveryRequest) error {
	key := StreamKey{true, id}
	if err := c.checkNode(key, req.GetNode()); err != nil {
		return err
	}
	if err := c.checkNames(key, req.GetResourceNamesSubscribe(), req.GetInitialResourceVersions()); err != nil {
		return err
	}
	// The cache keeps the last request of each type until it answers it: its unsubscriptions
	// and nonce too. Envoy unsubscribes names it subscribed and echoes this server's nonces.
	if err := c.checkNames(key, req.GetResourceNamesUnsubscribe(), nil); err != nil {
		return err
	}
	if n := len(req.GetResponseNonce()); n > MaxFieldBytes {
		return c.refuse(key, RefuseField, "response_nonce bytes", n, MaxFieldBytes)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.streams[key]
	if st == nil {
		return nil // bindDelta refuses it
	}
	typeURL := req.GetTypeUrl()
	if typeURL == "" {
		typeURL = st.typeURL // a single-type stream's requests may leave it out
	}
	t := typeIndex(typeURL)
	if t < 0 {
		return nil // the server refuses a request without a type on an ADS stream
	}
	var cur map[string]struct{}
	if w := st.watchers[t]; w != nil {
		cur = w.names
	}
	n := len(cur)
	for _, s := range req.GetResourceNamesSubscribe() {
		if _, ok := cur[s]; !ok {
			n++ // a name repeated in one request counts twice: the safe side
		}
	}
	for _, u := range req.GetResourceNamesUnsubscribe() {
		if _, ok := cur[u]; ok {
			n--
		}
	}
	limit := c.nameLimit(t)
	if u := len(req.GetResourceNamesUnsubscribe()); u > limit {
		return c.refuse(key, RefuseNames, "resource names unsubscribed", u, limit)
	}
	if n > limit {
		return c.refuse(key, RefuseNames, "resource names subscribed", n, limit)
	}
	if iv := len(req.GetInitialResourceVersions()); iv > limit {
		return c.refuse(key, RefuseNames, "initial resource versions", iv, limit)
	}
	return nil
}
