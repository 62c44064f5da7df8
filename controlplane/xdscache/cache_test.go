package xdscache

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tetherlb/tether/internal/eventually"
)

func cluster(name string, timeout time.Duration) *clusterv3.Cluster {
	return &clusterv3.Cluster{Name: name, ConnectTimeout: durationpb.New(timeout)}
}

func update(t *testing.T, c *Cache, res map[string][]types.Resource) map[string]string {
	t.Helper()
	var got map[string]string
	if err := c.Update(res, func(v map[string]string) { got = v }); err != nil {
		t.Fatal(err)
	}
	return got
}

// TestVersionsAreContentHashes: two caches reaching the same resources by different histories
// (another order, another update count, new pointers to equal messages) serve the same
// version of every type, as two replicas or a restarted control plane must.
func TestVersionsAreContentHashes(t *testing.T) {
	a, b := New(Options{}), New(Options{})
	update(t, a, map[string][]types.Resource{resourcev3.ClusterType: {cluster("x", time.Second)}})
	update(t, a, map[string][]types.Resource{resourcev3.ClusterType: {cluster("x", 2*time.Second), cluster("y", time.Second)}})
	va := update(t, a, map[string][]types.Resource{resourcev3.ClusterType: {cluster("x", 2*time.Second), cluster("y", time.Second)}})
	vb := update(t, b, map[string][]types.Resource{resourcev3.ClusterType: {cluster("y", time.Second), cluster("x", 2*time.Second)}})
	for _, url := range Types {
		if va[url] != vb[url] || va[url] == "" {
			t.Errorf("%s: versions %q and %q; want equal", url, va[url], vb[url])
		}
	}
	vc := update(t, b, map[string][]types.Resource{resourcev3.ClusterType: {cluster("y", time.Second), cluster("x", 3*time.Second)}})
	if vc[resourcev3.ClusterType] == vb[resourcev3.ClusterType] {
		t.Error("a changed cluster left the cluster version as it was")
	}
	if vc[resourcev3.ListenerType] != vb[resourcev3.ListenerType] {
		t.Error("a changed cluster moved the listener version")
	}
}

// TestUpdateIsAllOrNothing: a resource failing the check leaves every type as it was.
func TestUpdateIsAllOrNothing(t *testing.T) {
	c := New(Options{Check: func(r types.Resource) error {
		if r.(interface{ GetName() string }).GetName() == "bad" {
			return status.Error(codes.InvalidArgument, "bad")
		}
		return nil
	}})
	before := update(t, c, map[string][]types.Resource{resourcev3.ClusterType: {cluster("x", time.Second)}})
	err := c.Update(map[string][]types.Resource{resourcev3.ClusterType: {cluster("x", 2*time.Second), cluster("bad", time.Second)}}, nil)
	if err == nil {
		t.Fatal("a resource failing the check was accepted")
	}
	if after := c.Versions(); after[resourcev3.ClusterType] != before[resourcev3.ClusterType] {
		t.Errorf("a refused update moved the cluster version %s -> %s", before[resourcev3.ClusterType], after[resourcev3.ClusterType])
	}
}

// TestUnchangedTypeIsKept: a type handed over as the same resources again keeps its state
// (no walk over its entries); one new pointer among them, even to an equal message, is looked
// at and keeps the version.
func TestUnchangedTypeIsKept(t *testing.T) {
	c := New(Options{})
	x, y := cluster("x", time.Second), cluster("y", time.Second)
	before := update(t, c, map[string][]types.Resource{resourcev3.ClusterType: {x, y}})
	ts := c.types[0]
	again := update(t, c, map[string][]types.Resource{resourcev3.ClusterType: {x, y}})
	if c.types[0] != ts || again[resourcev3.ClusterType] != before[resourcev3.ClusterType] {
		t.Error("the same clusters again made a new state or version")
	}
	equal := update(t, c, map[string][]types.Resource{resourcev3.ClusterType: {x, cluster("y", time.Second)}})
	if c.types[0] == ts || equal[resourcev3.ClusterType] != before[resourcev3.ClusterType] {
		t.Error("a new pointer to an equal cluster kept the old state, or moved the version")
	}
	moved := update(t, c, map[string][]types.Resource{resourcev3.ClusterType: {x, cluster("y", 2*time.Second)}})
	if moved[resourcev3.ClusterType] == before[resourcev3.ClusterType] {
		t.Error("a changed cluster kept the version")
	}
}

// serve runs go-control-plane's server on c on a loopback port and returns a connection to it.
func serve(t *testing.T, c *Cache) *grpc.ClientConn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(srv, serverv3.NewServer(ctx, c, c.Callbacks(nil)))
	go func() { _ = srv.Serve(ln) }()
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); cancel(); srv.Stop() })
	return conn
}

// adsStream is a raw ADS stream, state of the world or delta, whose responses arrive on a
// channel.
type adsStream[Req, Resp any] struct {
	s      adsClient[Req, Resp]
	cancel context.CancelFunc
	resp   chan Resp
	err    chan error
}

type adsClient[Req, Resp any] interface {
	Send(Req) error
	Recv() (Resp, error)
	CloseSend() error
}

type sotwStream = adsStream[*discovery.DiscoveryRequest, *discovery.DiscoveryResponse]

// deltaStream is a raw delta ADS stream.
type deltaStream struct {
	*adsStream[*discovery.DeltaDiscoveryRequest, *discovery.DeltaDiscoveryResponse]
}

// next returns the next response, ACKed.
func (d *deltaStream) next(t *testing.T, what string) (names, removed []string) {
	t.Helper()
	r := d.recv(t, what)
	for _, res := range r.GetResources() {
		names = append(names, res.GetName())
	}
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce()})
	return names, r.GetRemovedResources()
}

func openSotW(t *testing.T, conn *grpc.ClientConn) *sotwStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	return receive[*discovery.DiscoveryRequest, *discovery.DiscoveryResponse](t, s, err, cancel)
}

func openDelta(t *testing.T, conn *grpc.ClientConn) *deltaStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	return &deltaStream{receive[*discovery.DeltaDiscoveryRequest, *discovery.DeltaDiscoveryResponse](t, s, err, cancel)}
}

// receive reads the responses of the stream s, opened with err and ended by cancel, into
// the channels of an adsStream.
func receive[Req, Resp any](t *testing.T, s adsClient[Req, Resp], err error, cancel context.CancelFunc) *adsStream[Req, Resp] {
	t.Helper()
	t.Cleanup(cancel)
	if err != nil {
		t.Fatal(err)
	}
	st := &adsStream[Req, Resp]{s: s, cancel: cancel, resp: make(chan Resp, 16), err: make(chan error, 1)}
	go func() {
		for {
			r, err := s.Recv()
			if err != nil {
				st.err <- err
				return
			}
			st.resp <- r
		}
	}()
	return st
}

func (s *adsStream[Req, Resp]) send(t *testing.T, req Req) {
	t.Helper()
	if err := s.s.Send(req); err != nil {
		t.Fatal(err)
	}
}

// recv returns the next response, not ACKed.
func (s *adsStream[Req, Resp]) recv(t *testing.T, what string) Resp {
	t.Helper()
	select {
	case r := <-s.resp:
		return r
	case err := <-s.err:
		t.Fatalf("%s: stream ended: %v", what, err)
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no response within 10 s", what)
	}
	return *new(Resp)
}

// TestUnknownTypeEndsStream: a type other than the four served ends the stream (each would
// add a watch) before it is counted anywhere.
func TestUnknownTypeEndsStream(t *testing.T) {
	c := New(Options{})
	conn := serve(t, c)
	s := openSotW(t, conn)
	s.send(t, &discovery.DiscoveryRequest{TypeUrl: "type.googleapis.com/made.Up", Node: &corev3.Node{Id: "n", Cluster: "edge"}})
	select {
	case err := <-s.err:
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("stream ended with %v; want InvalidArgument", err)
		}
	case r := <-s.resp:
		t.Fatalf("got a response for an unknown type: %v", r)
	case <-time.After(10 * time.Second):
		t.Fatal("the stream asking for an unknown type is still open after 10 s")
	}

	// The error names the type, cut past MaxFieldBytes.
	at := "type.googleapis.com/" + strings.Repeat("x", MaxFieldBytes-len("type.googleapis.com/"))
	for typeURL, want := range map[string]string{at: strconv.Quote(at), at + "y": strconv.Quote(at + "...")} {
		s := openSotW(t, conn)
		s.send(t, &discovery.DiscoveryRequest{TypeUrl: typeURL, Node: &corev3.Node{Id: "n"}})
		select {
		case err := <-s.err:
			if !strings.Contains(status.Convert(err).Message(), want+" is not served") {
				t.Errorf("a type of %d bytes: error %q; want it to name %s", len(typeURL), status.Convert(err).Message(), want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("a type of %d bytes: stream still open after 10 s", len(typeURL))
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: "type.googleapis.com/made.Up", Node: &corev3.Node{Id: "n"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Errorf("delta stream ended with %v; want InvalidArgument", err)
	}
	eventually.True(t, "no group left", 10*time.Second, func() bool { return len(c.Groups()) == 0 })
}

// TestGroupForgotten: a gateway group exists while one of its Envoys is connected.
func TestGroupForgotten(t *testing.T) {
	c := New(Options{})
	update(t, c, map[string][]types.Resource{resourcev3.ClusterType: {cluster("x", time.Second)}})
	conn := serve(t, c)
	s := openSotW(t, conn)
	s.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, Node: &corev3.Node{Id: "n", Cluster: "edge"}})
	if r := s.recv(t, "clusters"); len(r.GetResources()) != 1 || r.GetVersionInfo() != c.Versions()[resourcev3.ClusterType] {
		t.Fatalf("response %v", r)
	}
	if g := c.Groups(); !slices.Equal(g, []string{"edge"}) {
		t.Fatalf("groups %v; want [edge]", g)
	}
	s.cancel()
	eventually.True(t, "group edge forgotten after its last stream", 10*time.Second, func() bool { return len(c.Groups()) == 0 })
}

// TestInitialSyncsBounded: with two slots, a third Envoy's first response waits until one of
// the first two ACKs; an ACK that changes nothing is not answered, and a change reaches all.
func TestInitialSyncsBounded(t *testing.T) {
	c := New(Options{MaxInitialSyncs: 2})
	update(t, c, map[string][]types.Resource{resourcev3.ClusterType: {cluster("x", time.Second)}})
	conn := serve(t, c)
	var streams []*sotwStream
	for i := range 3 {
		s := openSotW(t, conn)
		s.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, Node: &corev3.Node{Id: string(rune('a' + i))}})
		streams = append(streams, s)
	}
	queued := func() int {
		c.mu.Lock()
		defer c.mu.Unlock()
		n := 0
		for _, w := range c.queue {
			if w.queued {
				n++
			}
		}
		return n
	}
	eventually.True(t, "two syncs in flight and one queued", 10*time.Second, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.inflight == 2
	})
	eventually.True(t, "one queued", 10*time.Second, func() bool { return queued() == 1 })
	// Two responses are on their way; the third stream's is not.
	got := map[*sotwStream]*discovery.DiscoveryResponse{}
	eventually.True(t, "two responses", 10*time.Second, func() bool {
		for _, s := range streams {
			select {
			case r := <-s.resp:
				got[s] = r
			default:
			}
		}
		return len(got) >= 2
	})
	var first []*sotwStream
	var waiting *sotwStream
	for _, s := range streams {
		if got[s] != nil {
			first = append(first, s)
		} else {
			waiting = s
		}
	}
	if len(first) != 2 || waiting == nil {
		t.Fatalf("%d streams answered before any ACK; want 2", len(first))
	}
	if queued() != 1 {
		t.Fatal("the third stream is no longer queued, yet no slot was freed")
	}
	r := got[first[0]]
	first[0].send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()})
	if got := waiting.recv(t, "the queued Envoy's first response after an ACK freed a slot"); len(got.GetResources()) != 1 {
		t.Errorf("queued Envoy got %d clusters; want 1", len(got.GetResources()))
	}
	update(t, c, map[string][]types.Resource{resourcev3.ClusterType: {cluster("x", 2*time.Second)}})
	if got := first[0].recv(t, "the change"); got.GetVersionInfo() != c.Versions()[resourcev3.ClusterType] {
		t.Errorf("change delivered with version %s; want %s", got.GetVersionInfo(), c.Versions()[resourcev3.ClusterType])
	}
}

func cla(name string, port uint32) *endpointv3.ClusterLoadAssignment {
	return &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
		LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: "10.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}}}}}}}}
}

// TestSotWPushes holds the two Envoy rules a SotW push relies on (envoy-rules rows 25-26).
// Clusters (and listeners) are sent whole: Envoy's GrpcMuxImpl::processDiscoveryResources hands
// the wildcard watch every resource, and CdsApiImpl::onConfigUpdate removes a cluster missing
// from them. Endpoints (and routes) are sent as they change: processDiscoveryResources calls
// only the watches whose named resource is in the response, so an assignment left out is
// not touched.
func TestSotWPushes(t *testing.T) {
	c := New(Options{})
	res := func(port uint32) map[string][]types.Resource {
		return map[string][]types.Resource{
			resourcev3.ClusterType:  {cluster("a", time.Second), cluster("b", time.Duration(port)*time.Millisecond)},
			resourcev3.EndpointType: {cla("a", 5000), cla("b", port)},
		}
	}
	update(t, c, res(5001))
	conn := serve(t, c)
	s := openSotW(t, conn)
	node := &corev3.Node{Id: "n"}
	s.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, Node: node})
	cds := s.recv(t, "clusters")
	s.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: cds.GetVersionInfo(), ResponseNonce: cds.GetNonce()})
	s.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: []string{"a", "b"}})
	eds := s.recv(t, "endpoints")
	if len(eds.GetResources()) != 2 {
		t.Fatalf("first endpoints response has %d assignments; want 2", len(eds.GetResources()))
	}
	s.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, VersionInfo: eds.GetVersionInfo(), ResponseNonce: eds.GetNonce(), ResourceNames: []string{"a", "b"}})

	v := update(t, c, res(5002)) // b's cluster and assignment change
	got := map[string]*discovery.DiscoveryResponse{}
	for len(got) < 2 {
		r := s.recv(t, "the change")
		got[r.GetTypeUrl()] = r
	}
	if r := got[resourcev3.ClusterType]; len(r.GetResources()) != 2 || r.GetVersionInfo() != v[resourcev3.ClusterType] {
		t.Errorf("cluster push: %d clusters, version %s; want both clusters, version %s", len(r.GetResources()), r.GetVersionInfo(), v[resourcev3.ClusterType])
	}
	r := got[resourcev3.EndpointType]
	if len(r.GetResources()) != 1 || r.GetVersionInfo() != v[resourcev3.EndpointType] {
		t.Fatalf("endpoint push: %d assignments, version %s; want only b's, version %s", len(r.GetResources()), r.GetVersionInfo(), v[resourcev3.EndpointType])
	}
	var b endpointv3.ClusterLoadAssignment
	if err := r.GetResources()[0].UnmarshalTo(&b); err != nil || b.GetClusterName() != "b" {
		t.Errorf("endpoint push carries %q (%v); want b", b.GetClusterName(), err)
	}

	// Clusters change again before the Envoy ACKs the push: its ACK is answered with them.
	cds = got[resourcev3.ClusterType]
	v = update(t, c, res(5003))
	s.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: cds.GetVersionInfo(), ResponseNonce: cds.GetNonce()})
	for {
		r := s.recv(t, "the clusters changed while the Envoy held the push")
		if r.GetTypeUrl() == resourcev3.ClusterType {
			if len(r.GetResources()) != 2 || r.GetVersionInfo() != v[resourcev3.ClusterType] {
				t.Errorf("cluster push: %d clusters, version %s; want both clusters, version %s", len(r.GetResources()), r.GetVersionInfo(), v[resourcev3.ClusterType])
			}
			break
		}
	}
}

// TestDeltaSubscriptions follows one delta Envoy's endpoint subscription through the changes
// Envoy makes to it and the changes the registry makes to the resources: it is sent exactly
// what it subscribes to and lacks, and told of removals. The wildcard cluster subscription
// resumes from initial_resource_versions: a cluster it holds at the current version is not
// sent, one that no longer exists is removed.
func TestDeltaSubscriptions(t *testing.T) {
	c := New(Options{})
	res := func(clas ...*endpointv3.ClusterLoadAssignment) map[string][]types.Resource {
		m := map[string][]types.Resource{resourcev3.ClusterType: {cluster("a", time.Second)}}
		for _, x := range clas {
			m[resourcev3.EndpointType] = append(m[resourcev3.EndpointType], x)
		}
		return m
	}
	update(t, c, res(cla("a", 1), cla("b", 1)))
	conn := serve(t, c)
	d := openDelta(t, conn)
	node := &corev3.Node{Id: "n"}

	// Clusters: "a" held at its current version, "gone" held but gone.
	var aVersion string
	c.mu.Lock()
	aVersion = c.types[typeIndex(resourcev3.ClusterType)].entries["a"].version
	c.mu.Unlock()
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, Node: node,
		InitialResourceVersions: map[string]string{"a": aVersion, "gone": "v0"}})
	if names, removed := d.next(t, "clusters"); len(names) != 0 || !slices.Equal(removed, []string{"gone"}) {
		t.Errorf("cluster resume: sent %v, removed %v; want nothing sent, gone removed", names, removed)
	}

	expect := func(what string, wantNames, wantRemoved []string) {
		t.Helper()
		names, removed := d.next(t, what)
		slices.Sort(names)
		if !slices.Equal(names, wantNames) || !slices.Equal(removed, wantRemoved) {
			t.Errorf("%s: sent %v, removed %v; want %v, %v", what, names, removed, wantNames, wantRemoved)
		}
	}
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{"a", "b", "c"}})
	expect("first endpoints", []string{"a", "b"}, nil)

	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesUnsubscribe: []string{"b"}})
	// Nothing answers an unsubscription: wait for the server to re-arm the watch without b.
	eventually.True(t, "b unsubscribed", 10*time.Second, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, st := range c.streams {
			// Armed: the server edits names only after cancelling, which takes c.mu.
			if w := st.watchers[typeIndex(resourcev3.EndpointType)]; w != nil && w.armed {
				_, ok := w.names["b"]
				return !ok
			}
		}
		return false
	})
	update(t, c, res(cla("a", 1), cla("b", 2))) // b changes, but is no longer subscribed
	update(t, c, res(cla("a", 2), cla("b", 2)))
	expect("a changed", []string{"a"}, nil)

	update(t, c, res(cla("a", 2), cla("b", 2), cla("c", 1)))
	expect("c appears", []string{"c"}, nil)

	update(t, c, res(cla("b", 2), cla("c", 1)))
	expect("a removed", nil, []string{"a"})

	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{"b"}})
	expect("b subscribed again", []string{"b"}, nil)

	select {
	case r := <-d.resp:
		t.Errorf("unexpected response %v", r)
	default:
	}
}

// TestACKIsConstantWork: an ACK re-arms a delta watch with the same allocations whether the
// Envoy subscribes to 10 assignments or 2,000 (LinearCache's re-arm walked all of them).
func TestACKIsConstantWork(t *testing.T) {
	allocs := func(n int) float64 {
		c := New(Options{})
		names := make([]string, n)
		all := make([]types.Resource, n)
		for i := range names {
			names[i] = "svc" + strconv.Itoa(i)
			all[i] = cla(names[i], 5000)
		}
		update(t, c, map[string][]types.Resource{resourcev3.EndpointType: all})
		cb := c.Callbacks(nil)
		if err := cb.OnDeltaStreamOpen(context.Background(), 1, resourcev3.AnyType); err != nil {
			t.Fatal(err)
		}
		sub := streamv3.NewDeltaSubscription(names, nil, nil, false)
		ch := make(chan cachev3.DeltaResponse, 1)
		arm := func(req *discovery.DeltaDiscoveryRequest) func() {
			if err := cb.OnStreamDeltaRequest(1, req); err != nil {
				t.Fatal(err)
			}
			cancel, err := c.CreateDeltaWatch(req, &sub, ch)
			if err != nil {
				t.Fatal(err)
			}
			return cancel
		}
		cancel := arm(&discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: &corev3.Node{Id: "n"}, ResourceNamesSubscribe: names})
		resp := <-ch
		if r, _ := resp.GetDeltaDiscoveryResponse(); len(r.GetResources()) != n {
			t.Fatalf("first response has %d assignments; want %d", len(r.GetResources()), n)
		}
		sub.SetReturnedResources(resp.GetReturnedResources())
		ack := &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: "1"}
		a := testing.AllocsPerRun(200, func() {
			cancel()
			cancel = arm(ack)
		})
		select {
		case r := <-ch:
			t.Fatalf("an ACK was answered: %v", r)
		default:
		}
		return a
	}
	small, large := allocs(10), allocs(2000)
	if large > small {
		t.Errorf("an ACK allocates %v times with 2,000 names, %v with 10; want no more", large, small)
	}
	t.Logf("allocations per ACK: %v (10 names), %v (2,000 names)", small, large)
}

// TestInPlaceUpdateMatchesAFreshCache: over a random history of updates (resources replaced in
// place, as a load change does, with equal or changed content; added, with another replaced;
// removed; reordered; renamed), every type's version and served encoding equal those of a new
// cache handed the same resources at once, and a refused in-place update changes nothing.
func TestInPlaceUpdateMatchesAFreshCache(t *testing.T) {
	bad := func(r types.Resource) error {
		if r.(*endpointv3.ClusterLoadAssignment).GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetPortValue() == 1 {
			return status.Error(codes.InvalidArgument, "port 1")
		}
		return nil
	}
	c := New(Options{Check: bad})
	rng := rand.New(rand.NewPCG(5, 6))
	var items []types.Resource
	for i := range 20 {
		items = append(items, cla(fmt.Sprintf("c%02d", i), uint32(1000+i)))
	}
	for step := range 300 {
		next := slices.Clone(items)
		switch k := rng.IntN(10); {
		case k < 6: // in place, as a load change
			for range 1 + rng.IntN(3) {
				i := rng.IntN(len(next))
				next[i] = cla(cachev3.GetResourceName(next[i]), uint32(1000+rng.IntN(30)))
			}
		case k < 7: // in place, refused
			i := rng.IntN(len(next))
			next[i] = cla(cachev3.GetResourceName(next[i]), 1)
		case k < 8: // added, and one replaced as well: the general walk
			i := rng.IntN(len(next))
			next[i] = cla(cachev3.GetResourceName(next[i]), uint32(1000+rng.IntN(30)))
			next = append(next, cla(fmt.Sprintf("n%03d", step), 2000))
		case k < 9 && len(next) > 1:
			next = slices.Delete(next, 0, 1)
		default:
			rng.Shuffle(len(next), func(i, j int) { next[i], next[j] = next[j], next[i] })
		}
		before := c.Versions()
		err := c.Update(map[string][]types.Resource{resourcev3.EndpointType: next}, nil)
		if err != nil {
			if after := c.Versions(); after[resourcev3.EndpointType] != before[resourcev3.EndpointType] {
				t.Fatalf("step %d: a refused update moved the version", step)
			}
			continue
		}
		items = next
		fresh := New(Options{})
		want := update(t, fresh, map[string][]types.Resource{resourcev3.EndpointType: slices.Clone(items)})
		if got := c.Versions(); got[resourcev3.EndpointType] != want[resourcev3.EndpointType] {
			t.Fatalf("step %d: version %s, a fresh cache %s", step, got[resourcev3.EndpointType], want[resourcev3.EndpointType])
		}
		ts, fs := c.types[1], fresh.types[1]
		if !slices.Equal(ts.names, fs.names) || len(ts.entries) != len(fs.entries) {
			t.Fatalf("step %d: names %v, a fresh cache %v", step, ts.names, fs.names)
		}
		for n, e := range fs.entries {
			if g := ts.entries[n]; g == nil || g.version != e.version || !bytes.Equal(g.any.GetValue(), e.any.GetValue()) || g.dres.GetVersion() != e.version {
				t.Fatalf("step %d: %s served differently from a fresh cache", step, n)
			}
		}
	}
}

// TestSubscribedNamesAreInterned: the names a SotW Envoy subscribes to, decoded anew from each
// of its requests, are held as the cache's own strings, before and after an ACK repeating them;
// and the subscription held after the ACK is the server's current one (the first request's is
// let go).
func TestSubscribedNamesAreInterned(t *testing.T) {
	c := New(Options{})
	update(t, c, map[string][]types.Resource{resourcev3.EndpointType: {cla("a", 5000), cla("b", 5001)}})
	canon := func(n string) *byte { return unsafe.StringData(c.types[1].entries[n].dres.Name) }
	s := openSotW(t, serve(t, c))
	node := &corev3.Node{Id: "n"}
	s.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: node, ResourceNames: []string{"a", "b"}})
	eds := s.recv(t, "endpoints")
	watcher := func() *watcher {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, st := range c.streams {
			return st.watchers[1]
		}
		return nil
	}
	check := func(when string) map[string]struct{} {
		t.Helper()
		w := watcher()
		c.mu.Lock()
		defer c.mu.Unlock()
		for n := range w.names {
			if unsafe.StringData(n) != canon(n) {
				t.Errorf("%s: subscribed name %q is a decoded copy, not the cache's string", when, n)
			}
		}
		return w.names
	}
	first := check("first request")
	s.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, VersionInfo: eds.GetVersionInfo(), ResponseNonce: eds.GetNonce(), ResourceNames: []string{"a", "b"}})
	eventually.True(t, "the ACK", 10*time.Second, func() bool {
		w := watcher()
		c.mu.Lock()
		defer c.mu.Unlock()
		return !w.outstanding
	})
	if after := check("after the ACK"); reflect.ValueOf(after).UnsafePointer() == reflect.ValueOf(first).UnsafePointer() {
		t.Error("after an ACK the watcher still holds the first request's map, which the server has replaced")
	}
}

// TestDeltaNamesAreInterned: a delta Envoy's subscribed names and initial versions (names, and
// a version equal to the one served) are held as the cache's own strings, clusters as well as
// endpoints; and a SotW Envoy's cluster names too.
func TestDeltaNamesAreInterned(t *testing.T) {
	c := New(Options{})
	update(t, c, map[string][]types.Resource{resourcev3.ClusterType: {cluster("x", time.Second)},
		resourcev3.EndpointType: {cla("a", 5000), cla("b", 5001)}})
	conn := serve(t, c)
	node := &corev3.Node{Id: "n"}
	ep := typeIndex(resourcev3.EndpointType)
	decoded := func(s string) string { return string([]byte(s)) } // what the server decodes: new strings
	va := c.types[ep].entries["a"].version
	d := openDelta(t, conn)
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, Node: node, ResourceNamesSubscribe: []string{decoded("x")}})
	d.next(t, "clusters")
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{decoded("a"), decoded("b")},
		InitialResourceVersions: map[string]string{decoded("a"): decoded(va), decoded("b"): "old"}})
	d.next(t, "endpoints")
	s := openSotW(t, conn)
	s.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, Node: node, ResourceNames: []string{decoded("x")}})
	s.recv(t, "sotw clusters")
	c.mu.Lock()
	defer c.mu.Unlock()
	canon := func(t int, n string) bool {
		e := c.types[t].entries[n]
		return e != nil && unsafe.StringData(n) == unsafe.StringData(e.dres.Name)
	}
	for _, st := range c.streams {
		for ti, w := range st.watchers {
			if w == nil {
				continue
			}
			for n := range w.names {
				if !canon(ti, n) {
					t.Errorf("%s %s: subscribed name %q is a decoded copy", st.key.Variant(), ShortType(Types[ti]), n)
				}
			}
			for _, h := range w.held {
				if !canon(ti, h.name) {
					t.Errorf("%s %s: held name %q is a decoded copy", st.key.Variant(), ShortType(Types[ti]), h.name)
				}
			}
		}
	}
	for _, st := range c.streams {
		if w := st.watchers[ep]; w != nil && st.key.Delta {
			// a's initial version was the one served: the response left it out, and the held
			// version is the cache's string.
			if v, ok := w.held.get("a"); !ok || unsafe.StringData(v) != unsafe.StringData(va) {
				t.Errorf("a's initial version is held as %q, not the cache's string", v)
			}
		}
	}
}

// TestSubscriptionChangeKeepsTheSlot: a delta Envoy that changes its subscription before
// answering its first response (the delta server has no nonce check) keeps its initial-sync
// slot: the slot bounds first responses still on their way, and only an answer to that
// response (or the stream's end) frees it.
func TestSubscriptionChangeKeepsTheSlot(t *testing.T) {
	// A SlotTimeout past every wait below: only a's answer can free the slot.
	c := New(Options{MaxInitialSyncs: 1, SlotTimeout: time.Hour})
	update(t, c, map[string][]types.Resource{resourcev3.EndpointType: {cla("a", 5000), cla("b", 5001)}})
	conn := serve(t, c)
	a, b := openDelta(t, conn), openDelta(t, conn)
	a.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: &corev3.Node{Id: "a"}, ResourceNamesSubscribe: []string{"a"}})
	first := a.recv(t, "a's first response")
	b.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: &corev3.Node{Id: "b"}, ResourceNamesSubscribe: []string{"a"}})
	// held: a holds the only slot and b waits for it in the queue.
	held := func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.inflight == 1 && len(c.queue) == 1 && c.queue[0].queued
	}
	eventually.True(t, "b queued behind a's first response", 10*time.Second, held)
	a.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{"b"}}) // no nonce: not an answer
	if r := a.recv(t, "b's assignment for a"); len(r.GetResources()) != 1 || r.GetResources()[0].GetName() != "b" {
		t.Fatalf("a's subscription change brought %v", r.GetResources())
	}
	// The change was read (a was answered for it), and b still waits: the slot was kept.
	if !held() {
		t.Fatal("a's subscription change freed its slot: b was taken from the queue")
	}
	select {
	case r := <-b.resp:
		t.Fatalf("b was answered (%d resources) while a's first response was unanswered and the only slot a's", len(r.GetResources()))
	default:
	}
	// a's ACK of its first response frees the slot: b is answered.
	a.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: first.GetNonce()})
	if r := b.recv(t, "b's first response once a answered"); len(r.GetResources()) != 1 || r.GetResources()[0].GetName() != "a" {
		t.Fatalf("b's first response carried %v", r.GetResources())
	}
	// A third Envoy waits for b's slot, b never answering; b's stream ends, which frees it.
	third := openDelta(t, conn)
	third.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: &corev3.Node{Id: "c"}, ResourceNamesSubscribe: []string{"b"}})
	eventually.True(t, "the third Envoy queued behind b's first response", 10*time.Second, held)
	b.s.CloseSend() //nolint:errcheck // the server sees the stream end either way
	if got, _ := third.next(t, "the third Envoy's first response once b's stream ended"); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("the third Envoy's first response carried %v", got)
	}
}

// TestWatcherSetIsASet: over random additions and removals a watcherSet holds exactly what a
// map would, sorted by id, each watcher once.
func TestWatcherSetIsASet(t *testing.T) {
	ws := make([]*watcher, 50)
	for i := range ws {
		ws[i] = &watcher{id: uint64(i*7%50 + 1)}
	}
	rng := rand.New(rand.NewPCG(7, 8))
	var s watcherSet
	want := map[*watcher]bool{}
	for range 2000 {
		w := ws[rng.IntN(len(ws))]
		if rng.IntN(2) == 0 {
			s, want[w] = s.add(w), true
		} else {
			s = s.remove(w)
			delete(want, w)
		}
		if len(s) != len(want) || !slices.IsSortedFunc(s, func(a, b *watcher) int { return cmp.Compare(a.id, b.id) }) {
			t.Fatalf("set of %d (sorted %v), want %d", len(s), slices.IsSortedFunc(s, func(a, b *watcher) int { return cmp.Compare(a.id, b.id) }), len(want))
		}
		for _, x := range ws {
			if s.has(x) != want[x] {
				t.Fatalf("has(%d) = %v, want %v", x.id, s.has(x), want[x])
			}
		}
	}
}

// TestNothingBeforeTheFirstUpdate: a new cache stands in for a configuration not yet read,
// and answers no one: a state-of-the-world Envoy would take its empty set for "no listeners"
// and a delta Envoy resuming with initial_resource_versions would be told of their removal.
// The first Update answers every stream that waits, even when nothing in it reaches them:
// an empty first configuration is sent as such, and a held name that is gone is removed.
func TestNothingBeforeTheFirstUpdate(t *testing.T) {
	c := New(Options{})
	conn := serve(t, c)
	node := &corev3.Node{Id: "envoy", Cluster: "default"}
	s := openSotW(t, conn)
	s.send(t, &discovery.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ListenerType, VersionInfo: "v-held"})
	d := openDelta(t, conn)
	d.send(t, &discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType,
		InitialResourceVersions: map[string]string{"gone": "v1"}})
	eventually.True(t, "both requests seen", 10*time.Second, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		n := 0
		for _, st := range c.streams {
			for _, w := range st.watchers {
				if w != nil {
					n++
				}
			}
		}
		return n == 2
	})
	// Both requests are read (their watchers exist, and a response is decided on under the
	// same lock): neither was sent anything.
	c.mu.Lock()
	for _, st := range c.streams {
		for _, w := range st.watchers {
			if w != nil && (w.outstanding || w.sent != "" || w.dresp != nil) {
				t.Errorf("a %s stream was sent a response before the first Update", map[bool]string{true: "delta", false: "sotw"}[w.delta])
			}
		}
	}
	c.mu.Unlock()
	select {
	case r := <-s.resp:
		t.Fatalf("state of the world answered before the first Update: %d listeners, version %q", len(r.GetResources()), r.GetVersionInfo())
	case r := <-d.resp:
		t.Fatalf("delta answered before the first Update: removed %v", r.GetRemovedResources())
	default:
	}
	versions := update(t, c, map[string][]types.Resource{})
	if r := s.recv(t, "sotw: the first configuration"); len(r.GetResources()) != 0 || r.GetVersionInfo() != versions[resourcev3.ListenerType] {
		t.Errorf("sotw: %d listeners at version %q; want the empty set at %q", len(r.GetResources()), r.GetVersionInfo(), versions[resourcev3.ListenerType])
	}
	if _, removed := d.next(t, "delta: the first configuration"); !slices.Equal(removed, []string{"gone"}) {
		t.Errorf("delta: removed %v; want [gone]", removed)
	}
}

// TestSilentEnvoysFreeTheirSlots: eight Envoys that never answer their first response hold
// every initial-sync slot; after SlotTimeout their slots are freed and a ninth Envoy, queued
// behind them, is answered, not before the timeout.
func TestSilentEnvoysFreeTheirSlots(t *testing.T) {
	const timeout = 500 * time.Millisecond
	c := New(Options{MaxInitialSyncs: DefaultMaxInitialSyncs, SlotTimeout: timeout})
	update(t, c, map[string][]types.Resource{resourcev3.ClusterType: {cluster("x", time.Second)}})
	conn := serve(t, c)
	start := time.Now() // before any slot is taken: every slot times out after start+timeout
	var silent []*sotwStream
	for i := range DefaultMaxInitialSyncs {
		s := openSotW(t, conn)
		s.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, Node: &corev3.Node{Id: fmt.Sprintf("silent-%d", i)}})
		silent = append(silent, s)
	}
	for _, s := range silent {
		s.recv(t, "a silent Envoy's first response") // never answered
	}
	late := openSotW(t, conn)
	late.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, Node: &corev3.Node{Id: "late"}})
	if r := late.recv(t, "the ninth Envoy's first response, once the silent Envoys' slots time out"); len(r.GetResources()) != 1 {
		t.Fatalf("the ninth Envoy got %d clusters, want 1", len(r.GetResources()))
	}
	if waited := time.Since(start); waited < timeout {
		t.Fatalf("the ninth Envoy was answered after %v, before any slot could time out (%v): the slots were not all taken", waited, timeout)
	}
}

// TestFirstUpdateAnswersInStreamOrder: Envoys connected before the first Update are answered
// by it in a stable order, SotW streams then delta streams, each by stream ID, through the
// initial-sync slots: with one slot, one at a time as each answers.
func TestFirstUpdateAnswersInStreamOrder(t *testing.T) {
	c := New(Options{MaxInitialSyncs: 1})
	conn := serve(t, c)
	watchers := func() int {
		c.mu.Lock()
		defer c.mu.Unlock()
		n := 0
		for _, st := range c.streams {
			if st.watchers[0] != nil {
				n++
			}
		}
		return n
	}
	// Opened alternately, each seen before the next opens: IDs follow the opening order.
	var sotw []*sotwStream
	var delta []*deltaStream
	for i := range 6 {
		node := &corev3.Node{Id: fmt.Sprint("n", i)}
		if i%2 == 0 {
			s := openSotW(t, conn)
			s.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, Node: node})
			sotw = append(sotw, s)
		} else {
			d := openDelta(t, conn)
			d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, Node: node})
			delta = append(delta, d)
		}
		eventually.True(t, fmt.Sprintf("stream %d seen", i), 10*time.Second, func() bool { return watchers() == i+1 })
	}
	update(t, c, map[string][]types.Resource{resourcev3.ClusterType: {cluster("x", time.Second)}})
	var order []string
	for range 6 {
		answered := ""
		eventually.True(t, fmt.Sprintf("answer %d", len(order)+1), 10*time.Second, func() bool {
			for i, s := range sotw {
				select {
				case r := <-s.resp:
					answered = fmt.Sprint("sotw", i)
					s.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()})
					return true
				default:
				}
			}
			for i, d := range delta {
				select {
				case r := <-d.resp:
					answered = fmt.Sprint("delta", i)
					d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResponseNonce: r.GetNonce()})
					return true
				default:
				}
			}
			return false
		})
		order = append(order, answered)
		c.mu.Lock()
		inflight := c.inflight
		c.mu.Unlock()
		if inflight > 1 {
			t.Fatalf("after answer %d, %d initial-sync slots taken; want at most the one there is", len(order), inflight)
		}
	}
	if want := []string{"sotw0", "sotw1", "sotw2", "delta0", "delta1", "delta2"}; !slices.Equal(order, want) {
		t.Errorf("answered in the order %v; want %v", order, want)
	}
}

// TestFirstEndpointsHeldBack: while HoldFirstEndpoints says so, a stream's first endpoint
// response is held back (its clusters are not), and ReleaseHeld sends it; later endpoint
// responses are never held.
func TestFirstEndpointsHeldBack(t *testing.T) {
	var hold atomic.Bool
	hold.Store(true)
	c := New(Options{HoldFirstEndpoints: hold.Load})
	res := func(port uint32) map[string][]types.Resource {
		return map[string][]types.Resource{resourcev3.ClusterType: {cluster("a", time.Second)}, resourcev3.EndpointType: {cla("a", port)}}
	}
	update(t, c, res(1))
	d := openDelta(t, serve(t, c))
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, Node: &corev3.Node{Id: "n"}})
	if names, _ := d.next(t, "clusters, not held"); !slices.Equal(names, []string{"a"}) {
		t.Fatalf("clusters: sent %v", names)
	}
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{"a"}})
	eventually.True(t, "the first endpoint response held back", 10*time.Second, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.held) == 1 && c.held[0].heldBack
	})
	select {
	case r := <-d.resp:
		t.Fatalf("a held first endpoint response was sent: %v", r.GetResources())
	default:
	}
	hold.Store(false)
	c.ReleaseHeld()
	if names, _ := d.next(t, "the endpoints once released"); !slices.Equal(names, []string{"a"}) {
		t.Fatalf("endpoints once released: sent %v", names)
	}
	hold.Store(true) // a later response is not a first one: not held
	update(t, c, res(2))
	if names, _ := d.next(t, "the change"); !slices.Equal(names, []string{"a"}) {
		t.Fatalf("the change: sent %v", names)
	}
}

// TestWildcardUnsubscriptionOfARemovedName: a delta Envoy subscribed to every cluster and to y
// by name unsubscribes y, removed while its last response was unanswered: it is told of the
// removal (the server marks y's version unknown, and the cache keeps y as held).
func TestWildcardUnsubscriptionOfARemovedName(t *testing.T) {
	c := New(Options{})
	update(t, c, map[string][]types.Resource{resourcev3.ClusterType: {cluster("x", time.Second), cluster("y", time.Second)}})
	d := openDelta(t, serve(t, c))
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, Node: &corev3.Node{Id: "n"}, ResourceNamesSubscribe: []string{"*", "y"}})
	d.recv(t, "every cluster") // not answered
	update(t, c, map[string][]types.Resource{resourcev3.ClusterType: {cluster("x", time.Second)}})
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResourceNamesUnsubscribe: []string{"y"}})
	if r := d.recv(t, "y's removal"); len(r.GetResources()) != 0 || !slices.Equal(r.GetRemovedResources(), []string{"y"}) {
		t.Fatalf("sent %v, removed %v; want y removed", r.GetResources(), r.GetRemovedResources())
	}
}
