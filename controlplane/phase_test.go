package controlplane_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/tetherlb/tether/controlplane"
	"github.com/tetherlb/tether/internal/cptest"
	"github.com/tetherlb/tether/internal/eventually"
	"github.com/tetherlb/tether/internal/xdsclient"
)

// health returns the EDS status the client holds for the endpoint on port, or -1.
func health(v xdsclient.View, port uint32) core.HealthStatus {
	if e, ok := endpoints(v)[port]; ok {
		return e.GetHealthStatus()
	}
	return -1
}

// waitHealth waits until each client holds the endpoint on port with status h.
func waitHealth(t *testing.T, what string, port uint32, h core.HealthStatus, clients ...*xdsclient.Client) {
	t.Helper()
	for _, c := range clients {
		waitFor(t, c, what, func(v xdsclient.View) bool { return health(v, port) == h })
	}
}

// seen records what a client is sent of the endpoint on port: the first status, and
// whether it was ever HEALTHY. Set before the client runs.
type seen struct {
	first   atomic.Int32
	healthy atomic.Bool
}

func watchEndpoint(c *xdsclient.Client, port uint32) *seen {
	s := &seen{}
	s.first.Store(-1)
	c.OnUpdate = func(u xdsclient.Update) {
		if u.TypeURL != resourcev3.EndpointType {
			return
		}
		for _, m := range u.Resources {
			v := xdsclient.View{Resources: map[string]map[string]proto.Message{resourcev3.EndpointType: {"x": m}}}
			if h := health(v, port); h >= 0 {
				s.first.CompareAndSwap(-1, int32(h))
				if h == core.HealthStatus_HEALTHY {
					s.healthy.Store(true)
				}
			}
		}
	}
	return s
}

func (s *seen) firstWas(t *testing.T, who string, want core.HealthStatus) {
	t.Helper()
	if got := core.HealthStatus(s.first.Load()); got != want {
		t.Errorf("%s was first sent the new endpoint as %v, want %v", who, got, want)
	}
}

// instancePhase reads /api/state: the served endpoint of instance id of service app.
func instancePhase(t *testing.T, cp *controlplane.ControlPlane, id string) (firstPhase bool, known, envoys int, ok bool) {
	t.Helper()
	for _, svc := range apiState(t, cp).Services {
		for _, in := range svc.Instances {
			if svc.Name == "app" && in.ID == id && in.Envoy != nil {
				return in.Envoy.FirstPhase, in.Envoy.KnownBy, in.Envoy.Envoys, true
			}
		}
	}
	return false, 0, 0, false
}

// TestNewEndpointIsKnownEverywhereFirst: two Envoys (SotW and delta) of one group; a new
// instance reaches both as DRAINING first; while the second holds back its ACK the first
// never sees it HEALTHY; once the second ACKs, both see it HEALTHY.
func TestNewEndpointIsKnownEverywhereFirst(t *testing.T) {
	srv := twoInstances(t)
	cli := srv.Client(t)
	cp := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()}, PublishSettle: time.Minute})
	a := xdsclient.New(xdsclient.SotW, "envoy-a", "edge")
	sa := watchEndpoint(a, 5003)
	run(t, cp, a)
	b := xdsclient.New(xdsclient.Delta, "envoy-b", "edge")
	sb := watchEndpoint(b, 5003)
	run(t, cp, b)
	// Instances of the first publication are not phased.
	waitHealth(t, "a1 HEALTHY", 5001, core.HealthStatus_HEALTHY, a, b)
	b.HoldACKs(resourcev3.EndpointType)
	put(t, cli, "/tether/instances/app/a3", instanceJSON("a3", 5003, "available", 0))
	waitHealth(t, "a3 DRAINING", 5003, core.HealthStatus_DRAINING, a, b)
	// The control plane has seen a's ACK: a knows it, b does not.
	eventually.True(t, "a3 known by 1 of 2 Envoys", 15*time.Second, func() bool {
		first, known, envoys, ok := instancePhase(t, cp, "a3")
		return ok && first && known == 1 && envoys == 2
	})
	// a answered, yet a3 stays DRAINING everywhere while b holds its ACK.
	if sa.healthy.Load() || health(a.View(), 5003) != core.HealthStatus_DRAINING {
		t.Fatal("a3 was sent HEALTHY while an Envoy of the group did not know it")
	}
	sa.firstWas(t, "envoy-a", core.HealthStatus_DRAINING)
	sb.firstWas(t, "envoy-b", core.HealthStatus_DRAINING)
	b.ReleaseACKs()
	waitHealth(t, "a3 HEALTHY", 5003, core.HealthStatus_HEALTHY, a, b)
	eventually.True(t, "a3 out of its first phase, known by both", 15*time.Second, func() bool {
		first, known, envoys, ok := instancePhase(t, cp, "a3")
		return ok && !first && known == 2 && envoys == 2
	})
	if n := metric(t, cp, `tether_promotion_seconds_count{outcome="acked"}`); n != 1 {
		t.Errorf("acked promotions = %v, want 1", n)
	}
	if n := metric(t, cp, `tether_promotion_seconds_count{outcome="settled"}`); n > 0 {
		t.Errorf("settled promotions = %v, want 0", n)
	}
	if l := debugConfig(t, cp).Lagging; len(l) != 0 {
		t.Errorf("lagging Envoys %+v, want none", l)
	}
}

// TestSilentEnvoyDelaysPromotionBySettle: an Envoy that never ACKs delays the promotion by
// --publish-settle, and is reported lagging (metric, /debug/config, monitor) until it
// catches up.
func TestSilentEnvoyDelaysPromotionBySettle(t *testing.T) {
	const settle = 400 * time.Millisecond
	srv := twoInstances(t)
	cli := srv.Client(t)
	cp := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()}, PublishSettle: settle})
	a := connect(t, cp, xdsclient.Delta, "envoy-a", "edge")
	b := connect(t, cp, xdsclient.SotW, "envoy-b", "edge")
	waitHealth(t, "a1 HEALTHY", 5001, core.HealthStatus_HEALTHY, a, b)
	b.HoldACKs(resourcev3.EndpointType)
	put(t, cli, "/tether/instances/app/a3", instanceJSON("a3", 5003, "available", 0))
	waitHealth(t, "a3 DRAINING", 5003, core.HealthStatus_DRAINING, a)
	drainingAt := time.Now()
	waitHealth(t, "a3 HEALTHY", 5003, core.HealthStatus_HEALTHY, a)
	if took := time.Since(drainingAt); took < settle/2 {
		t.Errorf("a3 promoted after %s although an Envoy never answered (settle %s)", took, settle)
	}
	if n := metric(t, cp, `tether_promotion_seconds_count{outcome="settled"}`); n != 1 {
		t.Errorf("settled promotions = %v, want 1", n)
	}
	if n := metric(t, cp, "tether_lagging_envoys"); n != 1 {
		t.Errorf("tether_lagging_envoys = %v, want 1", n)
	}
	lag := debugConfig(t, cp).Lagging
	if len(lag) != 1 || lag[0].NodeID != "envoy-b" || lag[0].Endpoint != "tether_app/a3" {
		t.Fatalf("/debug/config lagging = %+v, want envoy-b holding tether_app/a3", lag)
	}
	reported := false
	for _, g := range apiState(t, cp).Groups {
		for _, e := range g.Envoys {
			reported = reported || (e.NodeID == "envoy-b" && e.LaggingSince != nil)
		}
	}
	if !reported {
		t.Error("the monitor does not show envoy-b as lagging")
	}
	// A lagging Envoy holds nothing back: the next new instance waits for a alone.
	put(t, cli, "/tether/instances/app/a4", instanceJSON("a4", 5004, "available", 0))
	waitHealth(t, "a4 HEALTHY", 5004, core.HealthStatus_HEALTHY, a)
	if n := metric(t, cp, `tether_promotion_seconds_count{outcome="acked"}`); n != 1 {
		t.Errorf("acked promotions = %v, want 1 (a4, not held by the lagging Envoy)", n)
	}
	b.ReleaseACKs()
	waitHealth(t, "a4 HEALTHY at b", 5004, core.HealthStatus_HEALTHY, b)
	eventually.True(t, "envoy-b caught up", 15*time.Second, func() bool { return metric(t, cp, "tether_lagging_envoys") == 0 })
}

// TestStreamWithoutEndpointsHoldsNothingBack: a stream that never asks for endpoints (an
// Envoy asks for clusters first, and a tool may ask for nothing else) holds and routes to no
// endpoint: a new instance is promoted on the other Envoys' ACKs, well before the settle
// time, and that stream is never reported lagging.
func TestStreamWithoutEndpointsHoldsNothingBack(t *testing.T) {
	const settle = 5 * time.Second
	srv := twoInstances(t)
	cli := srv.Client(t)
	cp := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()}, PublishSettle: settle})
	a := connect(t, cp, xdsclient.Delta, "envoy-a", "edge")
	waitHealth(t, "a1 HEALTHY", 5001, core.HealthStatus_HEALTHY, a)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := discovery.NewAggregatedDiscoveryServiceClient(rawConn(t, cp)).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&discovery.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, Node: &core.Node{Id: "cds-only", Cluster: "edge"}}); err != nil {
		t.Fatal(err)
	}
	r, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&discovery.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()}); err != nil {
		t.Fatal(err)
	}

	put(t, cli, "/tether/instances/app/a3", instanceJSON("a3", 5003, "available", 0))
	start := time.Now()
	waitHealth(t, "a3 HEALTHY", 5003, core.HealthStatus_HEALTHY, a)
	if took := time.Since(start); took >= settle {
		t.Errorf("a3 promoted after %s: the stream without endpoints held it for the settle time", took)
	}
	if n := metric(t, cp, `tether_promotion_seconds_count{outcome="settled"}`); n > 0 {
		t.Errorf("settled promotions = %v, want 0", n)
	}
	if n := metric(t, cp, "tether_lagging_envoys"); n != 0 {
		t.Errorf("tether_lagging_envoys = %v, want 0", n)
	}
}

// An Envoy whose stream broke keeps serving what it holds and reconnects after a backoff: a
// new endpoint waits for it (remembered by node for the settle time) instead of being
// promoted because nobody is connected. When it comes back holding the endpoint already (it
// applied the first-phase assignment and lost the stream before its ACK arrived), the
// versions it declares are its ACK: the endpoint is promoted at once, not after the settle
// time with the Envoy reported lagging.
func TestDisconnectedEnvoyIsWaitedForAndItsHeldVersionsAreItsACK(t *testing.T) {
	const settle = 6 * time.Second
	srv := twoInstances(t)
	cli := srv.Client(t)
	cp := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()}, PublishSettle: settle})
	// A second Envoy, which answers: with b alone a3 would be served at once (no first phase).
	connect(t, cp, xdsclient.Delta, "envoy-c", "edge")
	b := xdsclient.New(xdsclient.Delta, "envoy-b", "edge")
	s := runClient(t, b, cp.XDSAddr(), nil)
	waitHealth(t, "a1 HEALTHY", 5001, core.HealthStatus_HEALTHY, b)
	// Its ACK of that must have arrived before ACKs are held, or the push of a3 waits for it.
	eventually.True(t, "a1 known by both Envoys", 15*time.Second, func() bool { _, known, _, _ := instancePhase(t, cp, "a1"); return known == 2 })
	b.HoldACKs(resourcev3.EndpointType)
	put(t, cli, "/tether/instances/app/a3", instanceJSON("a3", 5003, "available", 0))
	waitHealth(t, "a3 DRAINING", 5003, core.HealthStatus_DRAINING, b)
	s.stop(t)
	b.ReleaseACKs()
	time.Sleep(300 * time.Millisecond) // a promotion for want of Envoys would come within evalEvery
	if first, _, _, ok := instancePhase(t, cp, "a3"); !ok || !first {
		t.Fatalf("a3 promoted while the Envoy that does not know it yet was reconnecting (first phase %v, found %v)", first, ok)
	}
	back := time.Now()
	runClient(t, b, cp.XDSAddr(), nil)
	waitHealth(t, "a3 HEALTHY", 5003, core.HealthStatus_HEALTHY, b)
	if took := time.Since(back); took > settle/2 {
		t.Errorf("a3 promoted %s after the Envoy came back holding it; want at once, not at the settle time (%s)", took, settle)
	}
	if n := metric(t, cp, `tether_promotion_seconds_count{outcome="acked"}`); n != 1 {
		t.Errorf("acked promotions = %v, want 1", n)
	}
}

// TestSingleEnvoyThenASecondJoins: with one Envoy a new instance is HEALTHY in the first push
// that holds it (the single-Envoy rule, phase.go). A second Envoy that connects while the
// first has not ACKed it is served no endpoints until it has, then holds it from its first
// response; a third connecting later holds it from its first response too.
func TestSingleEnvoyThenASecondJoins(t *testing.T) {
	srv := twoInstances(t)
	cli := srv.Client(t)
	cp := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()}, PublishSettle: time.Minute})
	a := xdsclient.New(xdsclient.Delta, "envoy-a", "edge")
	sa := watchEndpoint(a, 5003)
	run(t, cp, a)
	waitHealth(t, "a1 HEALTHY", 5001, core.HealthStatus_HEALTHY, a)
	eventually.True(t, "a1 known by the Envoy", 15*time.Second, func() bool { _, known, _, _ := instancePhase(t, cp, "a1"); return known == 1 })
	a.HoldACKs(resourcev3.EndpointType)
	put(t, cli, "/tether/instances/app/a3", instanceJSON("a3", 5003, "available", 0))
	waitHealth(t, "a3 HEALTHY", 5003, core.HealthStatus_HEALTHY, a)
	sa.firstWas(t, "the only Envoy", core.HealthStatus_HEALTHY)

	b := xdsclient.New(xdsclient.SotW, "envoy-b", "edge")
	sb := watchEndpoint(b, 5003)
	run(t, cp, b)
	waitFor(t, b, "b's clusters", func(v xdsclient.View) bool { return len(v.Resources[resourcev3.ClusterType]) > 0 })
	// envoy-rules rows 29 and 37: an EDS cluster initializes with its first assignment (or its
	// initial fetch timeout, then with no host), and a starting Envoy serves no one before every
	// cluster has. Held back, b serves no user; a cluster with its hosts inline would not wait.
	for name, m := range b.View().Resources[resourcev3.ClusterType] {
		if c := m.(*clusterv3.Cluster); c.GetType() != clusterv3.Cluster_EDS || c.GetLoadAssignment() != nil {
			t.Errorf("cluster %s is %v with hosts inline %v: a held Envoy would route before its first assignment", name, c.GetType(), c.GetLoadAssignment() != nil)
		}
	}
	time.Sleep(300 * time.Millisecond) // endpoints would follow the clusters at once
	if n := b.Count(resourcev3.EndpointType); n != 0 {
		t.Fatalf("b was served %d assignments while a did not hold the endpoint served to it at once", n)
	}
	a.ReleaseACKs()
	waitHealth(t, "a3 HEALTHY", 5003, core.HealthStatus_HEALTHY, b)
	sb.firstWas(t, "the Envoy that joined before a held it", core.HealthStatus_HEALTHY)

	c := xdsclient.New(xdsclient.Delta, "envoy-c", "edge")
	sc := watchEndpoint(c, 5003)
	run(t, cp, c)
	waitHealth(t, "a3 HEALTHY", 5003, core.HealthStatus_HEALTHY, c)
	sc.firstWas(t, "the Envoy that joined later", core.HealthStatus_HEALTHY)
}
