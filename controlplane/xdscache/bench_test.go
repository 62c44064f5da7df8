package xdscache

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// benchCLA is a service's assignment of ten endpoints, the first weighted w.
func benchCLA(name string, w uint32) *endpointv3.ClusterLoadAssignment {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{}}}
	for i := range 10 {
		weight := uint32(50)
		if i == 0 {
			weight = w
		}
		cla.Endpoints[0].LbEndpoints = append(cla.Endpoints[0].LbEndpoints, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{
				Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address: "10.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(5000 + i)}}}}}},
			HealthStatus:        corev3.HealthStatus_HEALTHY,
			LoadBalancingWeight: wrapperspb.UInt32(weight),
		})
	}
	return cla
}

// deltaEnvoy is what go-control-plane's delta server keeps of one Envoy's endpoint
// subscription, and the requests it makes: the first subscribes to every name, each ACK
// re-arms the watch.
type deltaEnvoy struct {
	id     int64
	node   *corev3.Node
	sub    streamv3.Subscription
	ch     chan cachev3.DeltaResponse
	cancel func()
	nonce  int64
}

// benchServer is what the delta server calls: the cache, with the callbacks it runs first.
type benchServer struct {
	w interface {
		CreateDeltaWatch(*cachev3.DeltaRequest, cachev3.Subscription, chan cachev3.DeltaResponse) (func(), error)
	}
	cb serverv3.Callbacks
}

func (e *deltaEnvoy) request(b *testing.B, w benchServer, req *discovery.DeltaDiscoveryRequest) {
	if e.cancel != nil {
		e.cancel()
	}
	if err := w.cb.OnStreamDeltaRequest(e.id, req); err != nil {
		b.Fatal(err)
	}
	cancel, err := w.w.CreateDeltaWatch(req, &e.sub, e.ch)
	if err != nil {
		b.Fatal(err)
	}
	e.cancel = cancel
}

// receive takes the next response as the delta server sends it (writing its nonce into it)
// and returns the ACK the Envoy answers with.
func (e *deltaEnvoy) receive(b *testing.B) *discovery.DeltaDiscoveryRequest {
	select {
	case resp := <-e.ch:
		r, err := resp.GetDeltaDiscoveryResponse()
		if err != nil {
			b.Fatal(err)
		}
		e.nonce++
		r.Nonce = strconv.FormatInt(e.nonce, 10)
		e.sub.SetReturnedResources(resp.GetNextVersionMap())
		return &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: r.Nonce}
	default:
		b.Fatal("no endpoint response")
	}
	return nil
}

// benchPush subscribes envoys delta Envoys to every assignment of names, then times pushes:
// change(i) updates one assignment, and every Envoy receives it and re-arms its watch as its
// ACK would.
func benchPush(b *testing.B, w benchServer, envoys int, names []string, change func(i int)) {
	all := make([]*deltaEnvoy, envoys)
	for i := range all {
		e := &deltaEnvoy{
			id:   int64(i + 1),
			node: &corev3.Node{Id: fmt.Sprintf("envoy-%d", i), Cluster: "default"},
			sub:  streamv3.NewDeltaSubscription(names, nil, nil, false),
			ch:   make(chan cachev3.DeltaResponse, 8),
		}
		all[i] = e
		if err := w.cb.OnDeltaStreamOpen(context.Background(), e.id, resourcev3.AnyType); err != nil {
			b.Fatal(err)
		}
		e.request(b, w, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: e.node, ResourceNamesSubscribe: names})
		e.request(b, w, e.receive(b)) // the initial full set, ACKed
	}
	b.ResetTimer()
	for i := range b.N {
		change(i)
		for _, e := range all {
			e.request(b, w, e.receive(b))
		}
	}
}

// pushScales are the (Envoys, services) points of the push benchmarks.
var pushScales = []struct{ envoys, services int }{{100, 100}, {1000, 100}, {100, 1000}, {1000, 1000}}

func serviceNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("tether_svc%04d", i)
	}
	return names
}

// BenchmarkEndpointPush measures the cost of one push through this cache: one service's
// assignment changes (the publisher hands over every assignment, the unchanged ones as the
// same pointers), every delta Envoy (subscribed, as Envoy is, to every service's assignment by
// name) gets its response, and its ACK re-arms its watch. It should not grow with services.
func BenchmarkEndpointPush(b *testing.B) {
	for _, sc := range pushScales {
		b.Run(fmt.Sprintf("envoys=%d/services=%d", sc.envoys, sc.services), func(b *testing.B) {
			benchEndpointPush(b, sc.envoys, sc.services)
		})
	}
}

func benchEndpointPush(b *testing.B, envoys, services int) {
	c := New(Options{MaxInitialSyncs: envoys})
	names := serviceNames(services)
	all := make([]types.Resource, len(names))
	for i, n := range names {
		all[i] = benchCLA(n, 50)
	}
	update := func() {
		// A new slice each time, as the publisher hands over: the cache keeps the last.
		if err := c.Update(map[string][]types.Resource{resourcev3.EndpointType: slices.Clone(all)}, nil); err != nil {
			b.Fatal(err)
		}
	}
	update()
	benchPush(b, benchServer{c, c.Callbacks(nil)}, envoys, names, func(i int) {
		all[i%len(all)] = benchCLA(names[i%len(names)], uint32(100+i))
		update()
	})
}

// TestEndpointPushBenchmarkRuns keeps `make bench` working: the push benchmark, at a small
// scale, completes (a cache change that stops a push fails it).
func TestEndpointPushBenchmarkRuns(t *testing.T) {
	if r := testing.Benchmark(func(b *testing.B) { benchEndpointPush(b, 5, 5) }); r.N == 0 {
		t.Fatal("BenchmarkEndpointPush failed; run it with go test -bench EndpointPush to see why")
	}
}

// BenchmarkEndpointPushLinearCache is BenchmarkEndpointPush on go-control-plane's LinearCache,
// which served Tether's endpoints before this cache.
func BenchmarkEndpointPushLinearCache(b *testing.B) {
	for _, sc := range pushScales {
		b.Run(fmt.Sprintf("envoys=%d/services=%d", sc.envoys, sc.services), func(b *testing.B) {
			eds := cachev3.NewLinearCache(resourcev3.EndpointType)
			names := serviceNames(sc.services)
			all := make(map[string]types.Resource, len(names))
			for _, n := range names {
				all[n] = benchCLA(n, 50)
			}
			eds.SetResources(all)
			benchPush(b, benchServer{eds, serverv3.CallbackFuncs{}}, sc.envoys, names, func(i int) {
				name := names[i%len(names)]
				if err := eds.UpdateResources(map[string]types.Resource{name: benchCLA(name, uint32(100+i))}, nil); err != nil {
					b.Fatal(err)
				}
			})
		})
	}
}
