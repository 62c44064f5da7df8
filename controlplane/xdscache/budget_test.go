package xdscache

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tetherlb/tether/internal/eventually"
	"github.com/tetherlb/tether/internal/xdsclient"
)

// budgetConfig is n EDS clusters, each with an assignment of 40 endpoints (about 1.5 KB
// encoded) whose weights are w: a first configuration is about n x 1.5 KB per Envoy.
func budgetConfig(n int, w uint32) map[string][]types.Resource {
	res := map[string][]types.Resource{}
	for i := range n {
		name := fmt.Sprintf("svc-%03d", i)
		res[resourcev3.ClusterType] = append(res[resourcev3.ClusterType], &clusterv3.Cluster{Name: name,
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{}}}})
		cla := &endpointv3.ClusterLoadAssignment{ClusterName: name}
		loc := &endpointv3.LocalityLbEndpoints{}
		for j := range 40 {
			loc.LbEndpoints = append(loc.LbEndpoints, &endpointv3.LbEndpoint{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{
					Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
						Address: fmt.Sprintf("10.0.%d.%d", i, j), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 8080}}}}}},
				LoadBalancingWeight: wrapperspb.UInt32(w + uint32(j)),
			})
		}
		cla.Endpoints = []*endpointv3.LocalityLbEndpoints{loc}
		res[resourcev3.EndpointType] = append(res[resourcev3.EndpointType], cla)
	}
	return res
}

// holdsAll reports whether a client holds exactly the clusters and assignments of res.
func holdsAll(res map[string][]types.Resource) func(xdsclient.View) bool {
	return func(v xdsclient.View) bool {
		for _, url := range []string{resourcev3.ClusterType, resourcev3.EndpointType} {
			if len(v.Resources[url]) != len(res[url]) {
				return false
			}
			for _, r := range res[url] {
				got, ok := v.Resources[url][cachev3.GetResourceName(r)]
				if !ok || !proto.Equal(got, r) {
					return false
				}
			}
		}
		return true
	}
}

// startClients runs n real xDS clients (alternately delta and SotW) on conn until the test ends.
func startClients(t *testing.T, conn *grpc.ClientConn, prefix string, n int) []*xdsclient.Client {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var out []*xdsclient.Client
	for i := range n {
		v := xdsclient.Delta
		if i%2 == 1 {
			v = xdsclient.SotW
		}
		cl := xdsclient.New(v, fmt.Sprintf("%s-%d", prefix, i), "g")
		cl.Start(ctx, conn)
		out = append(out, cl)
	}
	return out
}

// converge waits until every client holds res.
func converge(t *testing.T, what string, clients []*xdsclient.Client, res map[string][]types.Resource) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i, cl := range clients {
		if err := cl.WaitFor(ctx, holdsAll(res)); err != nil {
			t.Fatalf("%s: client %d (%s) does not hold the configuration: %v", what, i, cl.Variant, err)
		}
	}
}

// TestInflightBytesBounded: 20 real xDS clients connect to 50 services at once, then every
// assignment changes at once (a burst). Each endpoint response is about 75 KB, which gRPC
// encodes into a 1 MiB buffer (grpcBuffer): 20 MiB together. With a budget of 4 MiB the
// bytes sent and not yet answered never pass it, responses wait their turn, and every client
// comes to hold the newest configuration; the budget is empty at the end.
func TestInflightBytesBounded(t *testing.T) {
	const budgetBytes = 4 << 20
	c := New(Options{MaxInflightBytes: budgetBytes, MaxInitialSyncs: 100})
	cfg := budgetConfig(50, 1)
	update(t, c, cfg)
	clients := startClients(t, serve(t, c), "envoy", 20)
	converge(t, "connect", clients, cfg)
	connected := c.Budget()
	t.Logf("connect: peak %d bytes in flight, %d responses waited", connected.Peak, connected.Waited)
	if connected.Waited == 0 {
		t.Error("no response waited while 20 clients connected: the budget was not reached")
	}

	burst := budgetConfig(50, 100)
	update(t, c, burst)
	converge(t, "burst", clients, burst)
	after := c.Budget()
	t.Logf("burst: peak %d bytes in flight, %d responses waited", after.Peak, after.Waited-connected.Waited)
	if after.Peak > budgetBytes {
		t.Errorf("peak in flight %d bytes; want at most the budget, %d", after.Peak, budgetBytes)
	}
	if after.Waited == connected.Waited {
		t.Error("no response waited during the burst")
	}
	if after.TimedOut != 0 {
		t.Errorf("%d charges released by the timeout; every client answers", after.TimedOut)
	}
	eventually.True(t, "the budget empty once every client answered", 10*time.Second, func() bool { b := c.Budget(); return b.InFlight == 0 && b.Waiting == 0 })
}

// TestResponseLargerThanTheBudgetGoes: with a budget smaller than any response, each goes
// alone when nothing else is in flight: no deadlock, every client converges, and never more
// than one response is in flight.
func TestResponseLargerThanTheBudgetGoes(t *testing.T) {
	c := New(Options{MaxInflightBytes: 1024, MaxInitialSyncs: 100})
	cfg := budgetConfig(20, 1)
	update(t, c, cfg)
	clients := startClients(t, serve(t, c), "envoy", 6)
	converge(t, "connect", clients, cfg)
	burst := budgetConfig(20, 7)
	update(t, c, burst)
	converge(t, "burst", clients, burst)
	var all int64 = responseOverhead
	c.mu.Lock()
	for _, e := range c.types[typeIndex(resourcev3.EndpointType)].entries {
		all += e.size
	}
	c.mu.Unlock()
	largest := grpcBuffer(all)
	if b := c.Budget(); b.Peak > largest {
		t.Errorf("peak in flight %d bytes; want one response at a time, at most %d", b.Peak, largest)
	}
}

// TestSilentEnvoyGivesTheBudgetBack: a client that never answers its endpoints holds the
// whole budget (its response is larger than it); InflightTimeout gives the bytes back, and
// every other client converges, on connecting and after a burst.
func TestSilentEnvoyGivesTheBudgetBack(t *testing.T) {
	c := New(Options{MaxInflightBytes: 1024, InflightTimeout: 300 * time.Millisecond, MaxInitialSyncs: 100})
	cfg := budgetConfig(20, 1)
	update(t, c, cfg)
	conn := serve(t, c)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	silent := xdsclient.New(xdsclient.Delta, "silent", "g")
	silent.HoldACKs(resourcev3.EndpointType) // never released: it reads one response and stops
	silent.Start(ctx, conn)
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := silent.WaitFor(wctx, func(v xdsclient.View) bool { return len(v.Resources[resourcev3.EndpointType]) > 0 }); err != nil {
		t.Fatalf("the silent client got no endpoints: %v", err)
	}
	clients := startClients(t, conn, "envoy", 6)
	converge(t, "connect", clients, cfg)
	burst := budgetConfig(20, 7)
	update(t, c, burst)
	converge(t, "burst", clients, burst)
	if b := c.Budget(); b.TimedOut == 0 {
		t.Error("no charge was released by the timeout, yet the silent client never answered")
	}
}

// TestGRPCBufferTiers: the budget counts what gRPC's default buffer pool holds for a message.
func TestGRPCBufferTiers(t *testing.T) {
	for _, tc := range []struct{ n, want int64 }{{0, 256}, {251, 256}, {252, 4 << 10}, {40 << 10, 1 << 20}, {1<<20 - 5, 1 << 20}, {1 << 20, 1<<20 + 5}} {
		if got := grpcBuffer(tc.n); got != tc.want {
			t.Errorf("grpcBuffer(%d) = %d; want %d", tc.n, got, tc.want)
		}
	}
}

// TestBudgetIsExact: responses that fill the budget exactly go together; the next ones wait
// in order, each counted once (the first by admit, the one behind it before its response is
// built, by behind; not again when its turn comes and it still does not fit), until answers
// give bytes back.
func TestBudgetIsExact(t *testing.T) {
	res := map[string][]types.Resource{resourcev3.EndpointType: {cla("a", 5000)}}
	scratch := New(Options{})
	update(t, scratch, res)
	one := grpcBuffer(responseOverhead + scratch.types[typeIndex(resourcev3.EndpointType)].entries["a"].size)

	c := New(Options{MaxInflightBytes: 2 * one, InflightTimeout: time.Hour, MaxInitialSyncs: 100})
	update(t, c, res)
	conn := serve(t, c)
	var streams []*deltaStream
	var sent []*discovery.DeltaDiscoveryResponse
	for i := range 4 {
		d := openDelta(t, conn)
		d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: &corev3.Node{Id: fmt.Sprint("n", i)},
			ResourceNamesSubscribe: []string{"a"}})
		streams = append(streams, d)
		if i < 2 {
			sent = append(sent, d.recv(t, fmt.Sprintf("response %d of the 2 that fill the budget exactly", i+1)))
			continue
		}
		eventually.True(t, fmt.Sprintf("%d waiting", i-1), 10*time.Second, func() bool { return c.Budget().Waiting == i-1 })
	}
	if b := c.Budget(); b.Waited != 2 || b.InFlight != 2*one {
		t.Fatalf("budget %+v; want two responses waited, %d bytes in flight", b, 2*one)
	}
	for i, d := range streams[2:] {
		streams[i].send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: sent[i].GetNonce()})
		d.recv(t, fmt.Sprintf("response %d, once response %d is answered", i+3, i+1))
	}
	if b := c.Budget(); b.Waited != 2 || b.Waiting != 0 || b.InFlight != 2*one || b.Peak != 2*one {
		t.Fatalf("budget %+v; want two waited, none waiting, %d bytes in flight at most", b, 2*one)
	}
	// The streams whose responses are unanswered end: their bytes are given back.
	for _, d := range streams[2:] {
		d.s.CloseSend() //nolint:errcheck // the server sees the stream end either way
	}
	eventually.True(t, "no bytes in flight once the streams ended", 10*time.Second, func() bool { return c.Budget().InFlight == 0 })
	if b := c.Budget(); b.TimedOut != 0 {
		t.Fatalf("budget %+v; want no timeout", b)
	}
}

// TestUnansweredResponseTimesOutOnce: the bytes of a response its Envoy never answers are
// given back after InflightTimeout, counted once.
func TestUnansweredResponseTimesOutOnce(t *testing.T) {
	c := New(Options{InflightTimeout: 100 * time.Millisecond})
	update(t, c, map[string][]types.Resource{resourcev3.EndpointType: {cla("a", 5000)}})
	d := openDelta(t, serve(t, c))
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: &corev3.Node{Id: "n"}, ResourceNamesSubscribe: []string{"a"}})
	d.recv(t, "the response never answered")
	eventually.True(t, "the bytes given back", 10*time.Second, func() bool { return c.Budget().InFlight == 0 })
	if b := c.Budget(); b.TimedOut != 1 {
		t.Fatalf("budget %+v; want one timeout", b)
	}
}

// TestEntrySizeIsTheEncodedSize: the size the budget counts for a resource is what it adds to
// an encoded delta response, to within a few bytes over, never under.
func TestEntrySizeIsTheEncodedSize(t *testing.T) {
	c := New(Options{})
	cfg := budgetConfig(3, 1)
	cfg[resourcev3.EndpointType] = append(cfg[resourcev3.EndpointType], cla("a-short-one", 1))
	update(t, c, cfg)
	for _, url := range []string{resourcev3.ClusterType, resourcev3.EndpointType} {
		for name, e := range c.types[typeIndex(url)].entries {
			one := proto.Size(&discovery.DeltaDiscoveryResponse{Resources: []*discovery.Resource{e.dres}})
			if over := e.size - int64(one); over < 0 || over > 16 {
				t.Errorf("%s %s: counted %d bytes, encoded %d", ShortType(url), name, e.size, one)
			}
		}
	}
}

// TestRemovalsAndFullStateCountTheirBytes: the bytes counted for a delta response removing
// names and for a SotW response of every cluster are at least what the Envoy is sent.
func TestRemovalsAndFullStateCountTheirBytes(t *testing.T) {
	c := New(Options{InflightTimeout: time.Hour})
	update(t, c, budgetConfig(30, 1))
	conn := serve(t, c)
	gone := map[string]string{}
	for _, n := range unknownNames(strings.Repeat("g", 33), 100) { // 40 bytes each
		gone[n] = "v"
	}
	d := openDelta(t, conn)
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: &corev3.Node{Id: "d"}, InitialResourceVersions: gone,
		ResourceNamesSubscribe: slices.Collect(maps.Keys(gone))})
	dr := d.recv(t, "the removals")
	if len(dr.GetRemovedResources()) != 100 {
		t.Fatalf("%d names removed; want 100", len(dr.GetRemovedResources()))
	}
	if b, sent := c.Budget(), int64(proto.Size(dr)); b.InFlight < sent {
		t.Errorf("a response removing 100 names: %d bytes counted, %d sent", b.InFlight, sent)
	}
	inflight := c.Budget().InFlight
	s := openSotW(t, conn)
	s.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, Node: &corev3.Node{Id: "s"}})
	sr := s.recv(t, "every cluster")
	if b, sent := c.Budget(), int64(proto.Size(sr)); b.InFlight-inflight < sent {
		t.Errorf("a SotW response of every cluster: %d bytes counted, %d sent", b.InFlight-inflight, sent)
	}
}
