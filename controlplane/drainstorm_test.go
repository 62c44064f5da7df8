package controlplane_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	clientv3 "go.etcd.io/etcd/client/v3"

	tagent "github.com/tetherlb/tether/agent"
	"github.com/tetherlb/tether/controlplane"
	"github.com/tetherlb/tether/internal/agenttest"
	"github.com/tetherlb/tether/internal/cptest"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/eventually"
	"github.com/tetherlb/tether/internal/xdsclient"
	"github.com/tetherlb/tether/registry"
)

// runAgent runs a real agent of service app for a backend holding sessions, reaching etcd
// at endpoint; it is stopped (without waiting for its drain) when the test ends.
func runAgent(t *testing.T, endpoint, id string, labels map[string]string, sessions int64) {
	t.Helper()
	b := agenttest.NewBackend(t)
	b.Sessions.Store(sessions)
	agenttest.Run(t, tagent.Config{
		Etcd:   clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: time.Second},
		Prefix: "/tether", Service: "app", ID: id, Address: "127.0.0.1", Port: b.Port, Labels: labels,
		HealthURL: b.URL + "/healthcheck", SessionsURL: b.URL + "/sessions",
		LoadSource: tagent.LoadHost, TTL: 2 * time.Second, Interval: 50 * time.Millisecond,
		Heartbeat: time.Second, DrainTimeout: 20 * time.Second, DrainSettle: 200 * time.Millisecond,
		ProbeTimeout: time.Second,
	})
}

// edsHealth returns the EDS health of app's endpoints by instance ID.
func edsHealth(v xdsclient.View) map[string]string {
	out := map[string]string{}
	m, ok := v.Resources[resourcev3.EndpointType]["tether_app"]
	if !ok {
		return out
	}
	for _, l := range m.(*endpointv3.ClusterLoadAssignment).GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			out[e.GetEndpoint().GetHostname()] = e.GetHealthStatus().String()
		}
	}
	return out
}

// TestLeaseStormKeepsDrainedServers: four servers drained by an operator for a deploy (50
// sessions each; their agents report draining) and two available ones. Every agent is cut
// off from etcd, so that every lease lapses on etcd's own schedule, as in a partition. The
// drained servers hold sessions as much as the others: all six are held, the drained ones
// still DRAINING, and the share is taken against all six.
func TestLeaseStormKeepsDrainedServers(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	cp := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()},
		HoldGrace: time.Minute, HoldWindow: 10 * time.Second})
	c := connect(t, cp, xdsclient.Delta, "envoy-1", "default")
	proxy := etcdtest.NewProxy(t, srv.ClientURL)
	old, next := map[string]string{"version": "1"}, map[string]string{"version": "2"}
	for _, id := range []string{"d1", "d2", "d3", "d4"} {
		runAgent(t, proxy.Endpoint, id, old, 50)
	}
	for _, id := range []string{"a1", "a2"} {
		runAgent(t, proxy.Endpoint, id, next, 0)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, err := registry.PutDrain(ctx, cli, "/tether", "app", "version=1", registry.Drain{Labels: old}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"d1", "d2", "d3", "d4"} {
		etcdtest.WaitInstance(t, cli, id, 10*time.Second, id+" reports the drain", func(in *registry.Instance, _ int64) bool {
			return in != nil && in.State == registry.StateDraining && in.Load.Sessions == 50
		})
	}
	want := map[string]string{"d1": "DRAINING", "d2": "DRAINING", "d3": "DRAINING", "d4": "DRAINING", "a1": "HEALTHY", "a2": "HEALTHY"}
	waitFor(t, c, "four drained and two available endpoints", func(v xdsclient.View) bool { return maps.Equal(edsHealth(v), want) })

	proxy.Cut() // every agent loses etcd: the six leases lapse within about a TTL (2 s)
	eventually.Saying(t, "all six instances held", 20*time.Second, func() (bool, string) {
		got := metric(t, cp, "tether_held_instances")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := cli.Get(ctx, registry.InstancesPrefix("/tether"), clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		return got == 6, fmt.Sprintf("tether_held_instances = %v with %d instances left in etcd (Envoy holds %v)", got, resp.Count, edsHealth(c.View()))
	})
	waitFor(t, c, "all six served again, the drained ones still DRAINING", func(v xdsclient.View) bool { return maps.Equal(edsHealth(v), want) })
	if ids := slices.Sorted(maps.Keys(edsHealth(c.View()))); len(ids) != 6 {
		t.Errorf("Envoy holds %v", ids)
	}
}
