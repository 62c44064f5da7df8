package controlplane_test

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"

	tetheragent "github.com/tetherlb/tether/agent"
	"github.com/tetherlb/tether/internal/agenttest"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/xdsclient"
	"github.com/tetherlb/tether/registry"
)

// A real agent whose lease is lost (revoked under it: what etcd does when the agent was cut
// off longer than its TTL) registers again under a new lease a moment later. In between its
// key is gone; the control plane must not send Envoy the cluster without that server (one of
// three, below the mass-disappearance share, so the guard does not hold it).
func TestLostLeaseKeepsTheServer(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	put(t, cli, "/tether/services/app", serviceJSON)
	put(t, cli, "/tether/instances/app/a1", instanceJSON("a1", 5001, "available", 1))
	put(t, cli, "/tether/instances/app/a2", instanceJSON("a2", 5002, "available", 1))
	b := agenttest.NewBackend(t)
	cfg := tetheragent.Config{
		Etcd:   clientv3.Config{Endpoints: etcd.Endpoints(), DialTimeout: 2 * time.Second},
		Prefix: "/tether", Service: "app", ID: "ag", Address: "127.0.0.1", Port: b.Port,
		HealthURL: b.URL + "/healthcheck", SessionsURL: b.URL + "/sessions",
		LoadSource: tetheragent.LoadHost, TTL: 2 * time.Second, Interval: 100 * time.Millisecond,
		Heartbeat: time.Second, DrainTimeout: time.Second, DrainSettle: 100 * time.Millisecond,
		ProbeTimeout: time.Second,
	}
	actx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- tetheragent.Run(actx, cfg, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel), nil)
	}()
	t.Cleanup(func() {
		stop()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("agent stopped with %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("agent did not stop")
		}
	})
	etcdtest.WaitInstance(t, cli, "ag", 10*time.Second, "registered", func(in *registry.Instance, _ int64) bool {
		return in != nil && in.State == registry.StateAvailable
	})

	cp := startCP(t, etcd.Endpoints())
	x := xdsclient.New(xdsclient.Delta, "envoy-0", "default")
	loss := newLossWatch(x)
	run(t, cp, x)
	waitFor(t, x, "the three servers", complete(3))
	loss.require(5001, 5002, uint32(b.Port))

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, registry.InstanceKey("/tether", "app", "ag"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get: %v", err)
	}
	old := resp.Kvs[0].Lease
	w := etcdtest.WatchInstance(t, cli, "ag")
	if _, err := cli.Revoke(ctx, clientv3.LeaseID(old)); err != nil {
		t.Fatal(err)
	}
	w.Next(t, 5*time.Second, "the key gone with its lease", func(in *registry.Instance, _ int64) bool { return in == nil }, nil)
	w.Next(t, 10*time.Second, "registered again under a new lease", func(in *registry.Instance, lease int64) bool {
		return in != nil && lease != old
	}, nil)
	waitFor(t, x, "the server back as available", func(v xdsclient.View) bool {
		e := endpoints(v)[uint32(b.Port)]
		return e != nil && e.GetHealthStatus().String() == "HEALTHY"
	})
	loss.verify(t)
}
