package controlplane

import (
	"context"
	"fmt"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
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

// deltaWatcher is the part of a go-control-plane cache the delta server uses.
type deltaWatcher interface {
	CreateDeltaWatch(*cachev3.DeltaRequest, cachev3.Subscription, chan cachev3.DeltaResponse) (func(), error)
}

// deltaEnvoy is what the delta xDS server keeps of one Envoy's endpoint subscription.
type deltaEnvoy struct {
	req *cachev3.DeltaRequest
	sub streamv3.Subscription
	ch  chan cachev3.DeltaResponse
}

func (e *deltaEnvoy) arm(b *testing.B, w deltaWatcher) {
	if _, err := w.CreateDeltaWatch(e.req, &e.sub, e.ch); err != nil {
		b.Fatal(err)
	}
}

func (e *deltaEnvoy) receive(b *testing.B) {
	select {
	case resp := <-e.ch:
		if _, err := resp.GetDeltaDiscoveryResponse(); err != nil {
			b.Fatal(err)
		}
		e.sub.SetReturnedResources(resp.GetNextVersionMap())
	default:
		b.Fatal("no endpoint response")
	}
}

// benchPush subscribes envoys delta Envoys to every assignment of names in w, then times
// pushes: change(i) updates one assignment, and every Envoy receives it and re-arms its watch
// as its ACK would.
func benchPush(b *testing.B, w deltaWatcher, envoys int, names []string, change func(i int)) {
	all := make([]*deltaEnvoy, envoys)
	for i := range all {
		e := &deltaEnvoy{
			req: &cachev3.DeltaRequest{TypeUrl: resourcev3.EndpointType, Node: &corev3.Node{Id: fmt.Sprintf("envoy-%d", i), Cluster: DefaultGroup}, ResourceNamesSubscribe: names},
			sub: streamv3.NewDeltaSubscription(names, nil, nil, false),
			ch:  make(chan cachev3.DeltaResponse, 1),
		}
		all[i] = e
		e.arm(b, w)
		e.receive(b) // the initial full set
		e.arm(b, w)
	}
	b.ResetTimer()
	for i := range b.N {
		change(i)
		for _, e := range all {
			e.receive(b)
			e.arm(b, w)
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

// BenchmarkEndpointPush measures the endpoint cache's cost of one push: one service's
// assignment changes, every delta Envoy (subscribed, as Envoy is, to every service's
// assignment by name) gets its response, and its ACK re-arms its watch. This is the work the
// control plane serializes behind the cache's lock, so it bounds pushes per second at scale.
func BenchmarkEndpointPush(b *testing.B) {
	for _, sc := range pushScales {
		b.Run(fmt.Sprintf("envoys=%d/services=%d", sc.envoys, sc.services), func(b *testing.B) {
			eds := cachev3.NewLinearCache(resourcev3.EndpointType)
			names := serviceNames(sc.services)
			all := make(map[string]types.Resource, len(names))
			for _, n := range names {
				all[n] = benchCLA(n, 50)
			}
			eds.SetResources(all)
			benchPush(b, eds, sc.envoys, names, func(i int) {
				name := names[i%len(names)]
				if err := eds.UpdateResources(map[string]types.Resource{name: benchCLA(name, uint32(1+i%100))}, nil); err != nil {
					b.Fatal(err)
				}
			})
		})
	}
}

type oneGroup struct{}

func (oneGroup) ID(*corev3.Node) string { return DefaultGroup }

// BenchmarkEndpointPushSnapshotCache is BenchmarkEndpointPush served from the snapshot
// cache instead, for comparison.
func BenchmarkEndpointPushSnapshotCache(b *testing.B) {
	for _, sc := range pushScales[2:] {
		b.Run(fmt.Sprintf("envoys=%d/services=%d", sc.envoys, sc.services), func(b *testing.B) {
			snaps := cachev3.NewSnapshotCache(true, oneGroup{}, nil)
			names := serviceNames(sc.services)
			all := make([]types.Resource, len(names))
			for i, n := range names {
				all[i] = benchCLA(n, 50)
			}
			set := func(v int) {
				s, err := cachev3.NewSnapshot(fmt.Sprint(v), map[resourcev3.Type][]types.Resource{resourcev3.EndpointType: all})
				if err != nil {
					b.Fatal(err)
				}
				if err := snaps.SetSnapshot(context.Background(), DefaultGroup, s); err != nil {
					b.Fatal(err)
				}
			}
			set(0)
			benchPush(b, snaps, sc.envoys, names, func(i int) {
				all = append([]types.Resource(nil), all...)
				all[i%len(all)] = benchCLA(names[i%len(names)], uint32(1+i%100))
				set(i + 1)
			})
		})
	}
}
