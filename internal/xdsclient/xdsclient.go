// Package xdsclient is a simulated Envoy: an ADS client, state-of-the-world or delta, that
// subscribes to listeners and clusters, follows them to routes and endpoints, and ACKs every
// response the way Envoy does. Tests and the load harness use it to see what the control
// plane serves.
package xdsclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	_ "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3" // ClusterLoadAssignment
	_ "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"    // RouteConfiguration
)

// Variant of the ADS protocol.
type Variant string

// ADS variants.
const (
	SotW  Variant = "sotw"
	Delta Variant = "delta"
)

// Types in the order Envoy asks for them.
var Types = []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType}

// Update is one response received.
type Update struct {
	TypeURL string
	Version string
	Names   []string // resources added or changed (all of them for state-of-the-world)
	Removed []string
	Bytes   int
	At      time.Time
	// Resources are the resources of this response by name; they are shared with the
	// client: read them only. A Light client hands them over undecoded, as *anypb.Any.
	Resources map[string]proto.Message
}

// Client is one simulated Envoy.
type Client struct {
	Variant Variant
	Node    *core.Node
	// NACK, when set, is asked about every response; returning a non-empty message rejects it.
	NACK func(typeURL string, resources map[string]proto.Message) string
	// OnUpdate, when set, is called for every response after it is applied to the view and
	// before WaitFor's conditions are checked again.
	OnUpdate func(Update)
	// Light, when set before Run, keeps no resources, only their names and versions, and
	// decodes only clusters and listeners (to follow them to endpoints and routes): Update
	// carries resources as *anypb.Any and View holds nil values. A load harness running a
	// thousand clients needs this; a test that looks at resources does not.
	Light bool

	mu        sync.Mutex
	resources map[string]map[string]proto.Message
	follows   map[string]map[string][]string // cluster or listener type -> name -> the names it points to
	rversions map[string]map[string]string
	versions  map[string]string
	subs      map[string][]string
	bytes     int64
	responses int64
	nacks     int64
	changed   chan struct{}
	running   int           // runs under way
	runErr    error         // what ended the last run, when it failed on its own (not by its ctx)
	held      string        // type whose ACKs are held back (see HoldACKs)
	release   chan struct{} // closed by ReleaseACKs
}

// HoldACKs makes the client hold back its ACKs of typeURL until ReleaseACKs, like an Envoy
// slow to apply a configuration: it still applies what it receives (and NACKs what NACK
// rejects), and sends nothing on its stream while an ACK waits.
func (c *Client) HoldACKs(typeURL string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.release == nil {
		c.release = make(chan struct{})
	}
	c.held = typeURL
}

// ReleaseACKs sends the ACK held back, if any, and stops holding.
func (c *Client) ReleaseACKs() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.release != nil {
		close(c.release)
		c.release = nil
	}
	c.held = ""
}

// waitACK waits, before an ACK of typeURL, while ACKs of that type are held.
func (c *Client) waitACK(ctx context.Context, typeURL string) error {
	c.mu.Lock()
	ch := c.release
	held := ch != nil && c.held == typeURL
	c.mu.Unlock()
	if !held {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// New returns a client of the given variant for node (id, cluster).
func New(v Variant, nodeID, cluster string) *Client {
	c := &Client{Variant: v, Node: &core.Node{Id: nodeID, Cluster: cluster},
		resources: map[string]map[string]proto.Message{}, rversions: map[string]map[string]string{},
		versions: map[string]string{}, subs: map[string][]string{}, changed: make(chan struct{}),
		follows: map[string]map[string][]string{}}
	for _, t := range Types {
		c.resources[t] = map[string]proto.Message{}
		c.rversions[t] = map[string]string{}
		c.follows[t] = map[string][]string{}
	}
	return c
}

// Run opens the ADS stream on conn and keeps it until ctx ends or the stream fails. Run may
// be called again after it returned, on the same or another control plane: like Envoy, the new
// stream starts from what the client holds, with its last version_info per type (state of
// the world) or its initial_resource_versions (delta), so that a server with the same
// configuration re-sends nothing in delta.
func (c *Client) Run(ctx context.Context, conn grpc.ClientConnInterface) error {
	c.begin()
	return c.run(ctx, conn)
}

// Start runs the client in a goroutine, as Run does, and returns a channel that receives
// Run's result. The run counts as under way from the moment Start returns, so a WaitFor
// called right after it never mistakes an earlier failed run for this one.
func (c *Client) Start(ctx context.Context, conn grpc.ClientConnInterface) <-chan error {
	c.begin()
	done := make(chan error, 1)
	go func() { done <- c.run(ctx, conn) }()
	return done
}

// begin marks a run as under way.
func (c *Client) begin() {
	c.mu.Lock()
	c.running++
	c.runErr = nil
	c.notifyLocked()
	c.mu.Unlock()
}

// run runs the stream of the client's variant and records how it ended.
func (c *Client) run(ctx context.Context, conn grpc.ClientConnInterface) error {
	ads := discovery.NewAggregatedDiscoveryServiceClient(conn)
	var err error
	if c.Variant == Delta {
		err = c.runDelta(ctx, ads)
	} else {
		err = c.runSotW(ctx, ads)
	}
	c.mu.Lock()
	c.running--
	if ctx.Err() == nil {
		c.runErr = err
	}
	c.notifyLocked()
	c.mu.Unlock()
	return err
}

// Err returns the error that ended the client's last run when no run is under way and that
// run failed on its own (its stream broke, not its context ended); nil otherwise.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running > 0 {
		return nil
	}
	return c.runErr
}

func (c *Client) runSotW(ctx context.Context, ads discovery.AggregatedDiscoveryServiceClient) error {
	stream, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		return fmt.Errorf("open ADS stream: %w", err)
	}
	first := true
	send := func(typeURL, version, nonce string, names []string, nack string) error {
		req := &discovery.DiscoveryRequest{TypeUrl: typeURL, VersionInfo: version, ResponseNonce: nonce, ResourceNames: names}
		if first {
			req.Node, first = c.Node, false
		}
		if nack != "" {
			req.ErrorDetail = &status.Status{Code: 3, Message: nack}
		}
		if err := stream.Send(req); err != nil {
			return fmt.Errorf("send %s request: %w", typeURL, streamErr(stream, err))
		}
		return nil
	}
	for _, r := range c.resume() {
		if err := send(r.typeURL, r.version, "", r.names, ""); err != nil {
			return err
		}
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("receive: %w", err)
		}
		typeURL := resp.GetTypeUrl()
		got, follows := map[string]proto.Message{}, map[string][]string{}
		for _, a := range resp.GetResources() {
			m, name, follow, err := c.unpack(a, "")
			if err != nil {
				return err
			}
			got[name], follows[name] = m, follow
		}
		if msg := c.nackMessage(typeURL, got); msg != "" {
			c.mu.Lock()
			prev, names := c.versions[typeURL], c.subs[typeURL]
			c.mu.Unlock()
			if err := send(typeURL, prev, resp.GetNonce(), names, msg); err != nil {
				return err
			}
			c.countNACK()
			continue
		}
		upd := Update{TypeURL: typeURL, Version: resp.GetVersionInfo(), Bytes: proto.Size(resp), At: time.Now(), Resources: got}
		c.mu.Lock()
		c.bytes += int64(upd.Bytes)
		c.responses++
		old := c.resources[typeURL]
		if typeURL == resourcev3.EndpointType || typeURL == resourcev3.RouteType {
			// Non-wildcard types: a response may carry a subset of the subscribed names.
			for n, m := range got {
				old[n] = c.keep(m)
			}
		} else {
			for n := range old {
				if _, ok := got[n]; !ok {
					upd.Removed = append(upd.Removed, n)
				}
			}
			held := make(map[string]proto.Message, len(got))
			for n, m := range got {
				held[n] = c.keep(m)
			}
			c.resources[typeURL], c.follows[typeURL] = held, follows
		}
		upd.Names = slices.Collect(maps.Keys(got))
		c.versions[typeURL] = resp.GetVersionInfo()
		follow, followNames := c.followLocked(typeURL)
		names := c.subs[typeURL]
		c.mu.Unlock()
		c.announce(upd)
		if err := c.waitACK(ctx, typeURL); err != nil {
			return err
		}
		if err := send(typeURL, resp.GetVersionInfo(), resp.GetNonce(), names, ""); err != nil {
			return err
		}
		if follow != "" {
			c.mu.Lock()
			v := c.versions[follow]
			c.mu.Unlock()
			if err := send(follow, v, "", followNames, ""); err != nil {
				return err
			}
		}
	}
}

func (c *Client) runDelta(ctx context.Context, ads discovery.AggregatedDiscoveryServiceClient) error {
	stream, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		return fmt.Errorf("open delta ADS stream: %w", err)
	}
	first := true
	send := func(req *discovery.DeltaDiscoveryRequest) error {
		if first {
			req.Node, first = c.Node, false
		}
		if err := stream.Send(req); err != nil {
			return fmt.Errorf("send delta %s request: %w", req.GetTypeUrl(), streamErr(stream, err))
		}
		return nil
	}
	for _, r := range c.resume() {
		req := &discovery.DeltaDiscoveryRequest{TypeUrl: r.typeURL, ResourceNamesSubscribe: r.names, InitialResourceVersions: r.versions}
		if err := send(req); err != nil {
			return err
		}
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("receive: %w", err)
		}
		typeURL := resp.GetTypeUrl()
		got, follows := map[string]proto.Message{}, map[string][]string{}
		gotVersions := map[string]string{}
		for _, r := range resp.GetResources() {
			m, name, follow, err := c.unpack(r.GetResource(), r.GetName())
			if err != nil {
				return err
			}
			got[name], follows[name] = m, follow
			gotVersions[name] = r.GetVersion()
		}
		if msg := c.nackMessage(typeURL, got); msg != "" {
			if err := send(&discovery.DeltaDiscoveryRequest{TypeUrl: typeURL, ResponseNonce: resp.GetNonce(),
				ErrorDetail: &status.Status{Code: 3, Message: msg}}); err != nil {
				return err
			}
			c.countNACK()
			continue
		}
		upd := Update{TypeURL: typeURL, Version: resp.GetSystemVersionInfo(), Removed: resp.GetRemovedResources(), Bytes: proto.Size(resp), At: time.Now(), Resources: got}
		c.mu.Lock()
		c.bytes += int64(upd.Bytes)
		c.responses++
		for n, m := range got {
			c.resources[typeURL][n] = c.keep(m)
			c.rversions[typeURL][n] = gotVersions[n]
			c.follows[typeURL][n] = follows[n]
			upd.Names = append(upd.Names, n)
		}
		for _, n := range resp.GetRemovedResources() {
			delete(c.resources[typeURL], n)
			delete(c.rversions[typeURL], n)
			delete(c.follows[typeURL], n)
		}
		c.versions[typeURL] = resp.GetSystemVersionInfo()
		prevNames := c.subs[followType(typeURL)]
		follow, followNames := c.followLocked(typeURL)
		c.mu.Unlock()
		c.announce(upd)
		if err := c.waitACK(ctx, typeURL); err != nil {
			return err
		}
		if err := send(&discovery.DeltaDiscoveryRequest{TypeUrl: typeURL, ResponseNonce: resp.GetNonce()}); err != nil {
			return err
		}
		if follow != "" {
			sub, unsub := diff(prevNames, followNames)
			if len(sub) > 0 || len(unsub) > 0 {
				if err := send(&discovery.DeltaDiscoveryRequest{TypeUrl: follow, ResourceNamesSubscribe: sub, ResourceNamesUnsubscribe: unsub}); err != nil {
					return err
				}
			}
		}
	}
}

// streamErr returns why a stream failed: a failed Send says only io.EOF, and the stream's
// status comes from Recv.
func streamErr(stream interface{ RecvMsg(any) error }, err error) error {
	if !errors.Is(err, io.EOF) {
		return err
	}
	var m discovery.DiscoveryResponse
	if rerr := stream.RecvMsg(&m); rerr != nil && !errors.Is(rerr, io.EOF) {
		return rerr
	}
	return err
}

// resumeRequest is the first request of one type on a new stream.
type resumeRequest struct {
	typeURL, version string
	names            []string          // nil: wildcard
	versions         map[string]string // per-resource versions held (delta)
}

// resume returns the first requests of a new stream, in Envoy's order: the wildcard types
// (clusters, listeners) always, the others (endpoints, routes) when the client already
// subscribes to some, each with the versions the client holds.
func (c *Client) resume() []resumeRequest {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []resumeRequest
	for _, t := range Types {
		wildcard := t == resourcev3.ClusterType || t == resourcev3.ListenerType
		if !wildcard && len(c.subs[t]) == 0 {
			continue
		}
		out = append(out, resumeRequest{typeURL: t, version: c.versions[t], names: slices.Clone(c.subs[t]),
			versions: maps.Clone(c.rversions[t])})
	}
	return out
}

// followType is the type whose names a response of typeURL determines.
func followType(typeURL string) string {
	switch typeURL {
	case resourcev3.ClusterType:
		return resourcev3.EndpointType
	case resourcev3.ListenerType:
		return resourcev3.RouteType
	}
	return ""
}

// followLocked updates the subscription that follows typeURL (endpoints of EDS clusters,
// routes of listeners) and returns it when it changed.
func (c *Client) followLocked(typeURL string) (string, []string) {
	f := followType(typeURL)
	if f == "" {
		return "", nil
	}
	var names []string
	for _, fs := range c.follows[typeURL] {
		names = append(names, fs...)
	}
	slices.Sort(names)
	names = slices.Compact(names)
	if slices.Equal(names, c.subs[f]) {
		return "", nil
	}
	// Forget resources no longer subscribed.
	for n := range c.resources[f] {
		if _, keep := slices.BinarySearch(names, n); !keep {
			delete(c.resources[f], n)
			delete(c.rversions[f], n)
		}
	}
	c.subs[f] = names
	return f, names
}

func (c *Client) nackMessage(typeURL string, got map[string]proto.Message) string {
	if c.NACK == nil {
		return ""
	}
	return c.NACK(typeURL, got)
}

// countNACK records a NACK that was sent.
func (c *Client) countNACK() {
	c.mu.Lock()
	c.nacks++
	c.notifyLocked()
	c.mu.Unlock()
}

// announce tells OnUpdate, then WaitFor's waiters, of an update applied to the view: a
// condition met by the update is seen only after OnUpdate has it (a test recording updates
// reads them right after its wait).
func (c *Client) announce(upd Update) {
	slices.Sort(upd.Names)
	if c.OnUpdate != nil {
		c.OnUpdate(upd)
	}
	c.mu.Lock()
	c.notifyLocked()
	c.mu.Unlock()
}

func (c *Client) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// keep is what the client holds of a received resource: nothing but its name when Light.
func (c *Client) keep(m proto.Message) proto.Message {
	if c.Light {
		return nil
	}
	return m
}

// unpack returns a received resource (decoded, or as it came when Light), its name (given
// by a delta response, else read from the resource) and the names it points to.
func (c *Client) unpack(a *anypb.Any, name string) (proto.Message, string, []string, error) {
	follows := a.GetTypeUrl() == resourcev3.ClusterType || a.GetTypeUrl() == resourcev3.ListenerType
	if c.Light && !follows {
		if name == "" {
			var err error
			if name, err = wireName(a); err != nil {
				return nil, "", nil, err
			}
		}
		return a, name, nil, nil
	}
	m, err := a.UnmarshalNew()
	if err != nil {
		return nil, "", nil, fmt.Errorf("unpack %s: %w", a.GetTypeUrl(), err)
	}
	var follow []string
	switch r := m.(type) {
	case *clusterv3.Cluster:
		name = r.GetName()
		if r.GetType() == clusterv3.Cluster_EDS {
			n := r.GetName()
			if sn := r.GetEdsClusterConfig().GetServiceName(); sn != "" {
				n = sn
			}
			follow = append(follow, n)
		}
	case *listenerv3.Listener:
		name = r.GetName()
		for _, fc := range r.GetFilterChains() {
			for _, fl := range fc.GetFilters() {
				var h hcm.HttpConnectionManager
				if fl.GetTypedConfig().UnmarshalTo(&h) == nil && h.GetRds() != nil {
					follow = append(follow, h.GetRds().GetRouteConfigName())
				}
			}
		}
	case interface{ GetClusterName() string }: // ClusterLoadAssignment
		name = r.GetClusterName()
	case interface{ GetName() string }:
		name = r.GetName()
	default:
		return nil, "", nil, fmt.Errorf("resource %s has no name", a.GetTypeUrl())
	}
	if c.Light {
		m = a
	}
	return m, name, follow, nil
}

// wireName reads field 1 of an encoded resource without decoding the rest: the name of a
// RouteConfiguration and the cluster_name of a ClusterLoadAssignment.
func wireName(a *anypb.Any) (string, error) {
	b := a.GetValue()
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeField(b) // n covers the tag and the whole value
		if n < 0 {
			return "", fmt.Errorf("read name of %s: %w", a.GetTypeUrl(), protowire.ParseError(n))
		}
		if num == 1 && typ == protowire.BytesType {
			_, _, tag := protowire.ConsumeTag(b)
			v, _ := protowire.ConsumeBytes(b[tag:])
			return string(v), nil
		}
		b = b[n:]
	}
	return "", fmt.Errorf("resource %s has no name", a.GetTypeUrl())
}

// View is what the client holds at one moment.
type View struct {
	Resources map[string]map[string]proto.Message // type URL -> name -> resource
	Versions  map[string]string                   // type URL -> last version (system version for delta)
	// ResourceVersions are the per-resource versions of the delta variant.
	ResourceVersions map[string]map[string]string
	Bytes            int64
	Responses        int64
	NACKs            int64
}

// View returns a copy of what the client holds (the resources themselves are shared: do not modify them).
func (c *Client) View() View {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := View{Resources: map[string]map[string]proto.Message{}, Versions: maps.Clone(c.versions),
		ResourceVersions: map[string]map[string]string{}, Bytes: c.bytes, Responses: c.responses, NACKs: c.nacks}
	for t, rs := range c.resources {
		v.Resources[t], v.ResourceVersions[t] = maps.Clone(rs), maps.Clone(c.rversions[t])
	}
	return v
}

// Count returns how many resources of typeURL the client holds, without copying them.
func (c *Client) Count(typeURL string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.resources[typeURL])
}

// ErrTimeout is returned by WaitFor when ctx ends before the condition holds.
var ErrTimeout = errors.New("condition not met before the deadline")

// ErrStopped is returned by WaitFor when the client's stream failed: no later change can
// make the condition hold.
var ErrStopped = errors.New("client stopped")

// WaitFor blocks until cond holds on the client's view, ctx ends, or the client's run fails
// (ErrStopped, wrapping the run's error). cond is checked again only when this client's view
// changes, so it must depend on the view it is given alone: a condition that reads another
// client's state may miss the moment it becomes true and wait until ctx ends.
func (c *Client) WaitFor(ctx context.Context, cond func(View) bool) error {
	for {
		c.mu.Lock()
		ch := c.changed
		var failed error
		if c.running == 0 {
			failed = c.runErr
		}
		c.mu.Unlock()
		if cond(c.View()) {
			return nil
		}
		if failed != nil {
			return fmt.Errorf("%w: %w", ErrStopped, failed)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("%w: %v", ErrTimeout, ctx.Err())
		}
	}
}

// diff returns the names of cur not in old and those of old not in cur; both are sorted.
func diff(old, cur []string) (sub, unsub []string) {
	for _, v := range cur {
		if _, ok := slices.BinarySearch(old, v); !ok {
			sub = append(sub, v)
		}
	}
	for _, v := range old {
		if _, ok := slices.BinarySearch(cur, v); !ok {
			unsub = append(unsub, v)
		}
	}
	return sub, unsub
}
