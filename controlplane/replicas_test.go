package controlplane_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tetherlb/tether/controlplane"
	"github.com/tetherlb/tether/internal/cptest"
	"github.com/tetherlb/tether/internal/eventually"
	"github.com/tetherlb/tether/internal/netcut"
	"github.com/tetherlb/tether/internal/xdsclient"
	"github.com/tetherlb/tether/registry"
)

// replicaReports reads the replicas' reports from etcd.
func replicaReports(t *testing.T, cli *clientv3.Client) map[string]registry.Replica {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, registry.ReplicasPrefix("/tether"), clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("get replica reports: %v", err)
	}
	out := map[string]registry.Replica{}
	for _, kv := range resp.Kvs {
		r, err := registry.DecodeReplica(strings.TrimPrefix(string(kv.Key), registry.ReplicasPrefix("/tether")), kv.Value)
		if err != nil {
			t.Fatalf("replica report %s: %v", kv.Key, err)
		}
		out[string(kv.Key)] = r
	}
	return out
}

// TestReplicasWaitForEachOthersEnvoys: two control planes read one registry, an Envoy on
// each. A new server reaches both Envoys DRAINING; while the Envoy on replica B has not
// taken it in, replica A does not promote it, though A's own Envoy knows it (a session A's
// Envoy placed there would move at B's Envoy). Once B's Envoy ACKs, both promote. Then the
// same with B stopped: a replica that leaves is not waited for.
func TestReplicasWaitForEachOthersEnvoys(t *testing.T) {
	srv := twoInstances(t)
	cli := srv.Client(t)
	cpA := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()}, PublishSettle: time.Minute})
	cpB := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()}, PublishSettle: time.Minute})
	a := xdsclient.New(xdsclient.Delta, "envoy-a", "edge")
	sa := watchEndpoint(a, 5003)
	run(t, cpA, a)
	b := connect(t, cpB, xdsclient.SotW, "envoy-b", "edge")
	waitHealth(t, "a1 HEALTHY", 5001, core.HealthStatus_HEALTHY, a, b)
	eventually.True(t, "both replicas' reports", 15*time.Second, func() bool { return len(replicaReports(t, cli)) == 2 })

	b.HoldACKs(resourcev3.EndpointType)
	rev := put(t, cli, "/tether/instances/app/a3", instanceJSON("a3", 5003, "available", 0))
	waitHealth(t, "a3 DRAINING", 5003, core.HealthStatus_DRAINING, a, b)
	// A's own Envoy knows a3, and A says it waits for the other replica: it has evaluated.
	eventually.True(t, "a3 known by A's only Envoy", 15*time.Second, func() bool {
		first, known, envoys, ok := instancePhase(t, cpA, "a3")
		return ok && first && known == 1 && envoys == 1
	})
	eventually.True(t, fmt.Sprintf("replica A waiting for revision %d", rev), 15*time.Second, func() bool {
		n := 0
		for _, r := range replicaReports(t, cli) {
			if r.Wants >= rev {
				n++
			}
		}
		return n == 2 // B waits for A's Envoy too, until it reports
	})
	if sa.healthy.Load() || health(a.View(), 5003) != core.HealthStatus_DRAINING {
		t.Fatal("replica A promoted a3 while the Envoy on replica B did not know it")
	}
	b.ReleaseACKs()
	waitHealth(t, "a3 HEALTHY", 5003, core.HealthStatus_HEALTHY, a, b)
	eventually.True(t, "nothing wanted once promoted", 15*time.Second, func() bool {
		for _, r := range replicaReports(t, cli) {
			if r.Wants != 0 {
				return false
			}
		}
		return true
	})
}

// TestStoppedReplicaIsWaitedForUntilSettle: a replica that stops takes its report with it,
// but its Envoys keep what they hold while they reconnect elsewhere: the other replica waits
// for them at what the stopped one last reported, as for a lease lost in an etcd outage,
// until the endpoint's time for a replica that does not report (a stop and a lapsed lease
// look the same in etcd).
func TestStoppedReplicaIsWaitedForUntilSettle(t *testing.T) {
	const settle = 2 * time.Second
	srv := twoInstances(t)
	cli := srv.Client(t)
	cfg := controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()}, PublishSettle: settle, StaleAfter: 2 * time.Second}
	cpA := cptest.Start(t, cfg)
	cpB := cptest.Start(t, cfg)
	a := connect(t, cpA, xdsclient.Delta, "envoy-a", "edge")
	b := connect(t, cpB, xdsclient.SotW, "envoy-b", "edge")
	waitHealth(t, "a1 HEALTHY", 5001, core.HealthStatus_HEALTHY, a, b)
	eventually.True(t, "both replicas' reports", 15*time.Second, func() bool { return len(replicaReports(t, cli)) == 2 })
	b.HoldACKs(resourcev3.EndpointType)
	put(t, cli, "/tether/instances/app/a4", instanceJSON("a4", 5004, "available", 0))
	waitHealth(t, "a4 DRAINING", 5004, core.HealthStatus_DRAINING, a)
	if err := cpB.Stop(); err != nil {
		t.Fatalf("stop replica B: %v", err)
	}
	eventually.True(t, "B's report gone", 15*time.Second, func() bool { return len(replicaReports(t, cli)) == 1 })
	waitHealth(t, "a4 HEALTHY at its settle time", 5004, core.HealthStatus_HEALTHY, a)
	if n := metric(t, cpA, `tether_promotion_seconds_count{outcome="settled"}`); n != 1 {
		t.Errorf("settled promotions = %v, want 1: a4 was promoted before the stopped replica's settle time", n)
	}
	if n := metric(t, cpA, `tether_promotion_seconds_count{outcome="acked"}`); n != 0 {
		t.Errorf("acked promotions = %v, want 0", n)
	}
}

// TestCutOffReplicaIsWaitedForUntilItStepsDown: replica B loses etcd (its only way there is
// cut) while a server joins. B's Envoy does not hold the server and B cannot say so. A does
// not promote the server at its settle time: a user A's Envoy placed there would lose it at
// B's Envoy (soak seed 187650932). When etcd comes back in time, B catches up and reports,
// and A promotes on that. When it does not, A waits until B has stepped down (--stale-after:
// B closes its Envoys' streams so that they move to a current replica) and a settle time
// more.
func TestCutOffReplicaIsWaitedForUntilItStepsDown(t *testing.T) {
	const (
		settle     = time.Second
		staleAfter = 6 * time.Second // B confirms every 2 s: it steps down 4 s or more after a cut
	)
	srv := twoInstances(t)
	cli := srv.Client(t)
	way, err := netcut.New(srv.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(way.Close)
	cpA := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()}, PublishSettle: settle, StaleAfter: staleAfter})
	cpB := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: []string{way.URL()}, DialTimeout: time.Second}, PublishSettle: settle, StaleAfter: staleAfter})
	a := connect(t, cpA, xdsclient.Delta, "envoy-a", "edge")
	b := xdsclient.New(xdsclient.SotW, "envoy-b", "edge")
	sb := runClient(t, b, cpB.XDSAddr(), nil)
	waitHealth(t, "a1 HEALTHY", 5001, core.HealthStatus_HEALTHY, a, b)
	eventually.True(t, "both replicas' reports", 15*time.Second, func() bool { return len(replicaReports(t, cli)) == 2 })

	// A cut shorter than the step-down: A waits past its settle time, then promotes on B's report.
	way.SetCut(true)
	put(t, cli, "/tether/instances/app/a3", instanceJSON("a3", 5003, "available", 0))
	waitHealth(t, "a3 DRAINING", 5003, core.HealthStatus_DRAINING, a)
	time.Sleep(settle + settle*3/4) // A would have promoted at its settle time
	if h := health(a.View(), 5003); h != core.HealthStatus_DRAINING {
		t.Fatalf("a3 is %v at A's Envoy past A's settle time, while B, cut off from etcd, could not know it", h)
	}
	if h := health(b.View(), 5003); h != -1 {
		t.Fatalf("B's Envoy holds a3 (%v) while B is cut off: the test did not cut it", h)
	}
	way.SetCut(false)
	waitHealth(t, "a3 HEALTHY once B reports", 5003, core.HealthStatus_HEALTHY, a, b)
	if n := metric(t, cpA, `tether_promotion_seconds_count{outcome="acked"}`); n != 1 {
		t.Errorf("A's acked promotions = %v, want 1 (a3, on B's report)", n)
	}
	sb.running(t, "B's Envoy after a cut shorter than --stale-after")

	// A cut longer than the step-down: A promotes only after B has closed its Envoys' streams.
	way.SetCut(true)
	put(t, cli, "/tether/instances/app/a4", instanceJSON("a4", 5004, "available", 0))
	waitHealth(t, "a4 DRAINING", 5004, core.HealthStatus_DRAINING, a)
	waitHealth(t, "a4 HEALTHY once B has stepped down", 5004, core.HealthStatus_HEALTHY, a)
	select {
	case err := <-sb.done:
		sb.done <- err
		if !strings.Contains(fmt.Sprint(err), "Unavailable") {
			t.Errorf("B's Envoy's stream ended with %v, want Unavailable (B stepped down)", err)
		}
	default:
		t.Fatal("A promoted a4 while B, cut off from etcd, still served its Envoy without it")
	}
	if n := metric(t, cpA, `tether_promotion_seconds_count{outcome="settled"}`); n != 1 {
		t.Errorf("A's settled promotions = %v, want 1 (a4)", n)
	}
}
