package controlplane_test

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	tetheragent "github.com/tetherlb/tether/agent"
	"github.com/tetherlb/tether/internal/agenttest"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/eventually"
	"github.com/tetherlb/tether/internal/xdsclient"
	"github.com/tetherlb/tether/registry"
)

// runClaimAgent runs a real agent of service svc until stop is called (a stop that skips the
// drain, as after a deploy's drain --wait) or the test ends.
func runClaimAgent(t *testing.T, srv *etcdtest.Server, svc, id string) (stop func()) {
	t.Helper()
	b := agenttest.NewBackend(t)
	cfg := tetheragent.Config{
		Etcd:   clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 2 * time.Second},
		Prefix: "/tether", Service: svc, ID: id, Address: "127.0.0.1", Port: b.Port,
		HealthURL: b.URL + "/healthcheck", LoadSource: tetheragent.LoadHost, TTL: 2 * time.Second,
		Interval: 50 * time.Millisecond, Heartbeat: time.Second, DrainTimeout: time.Second,
		DrainSettle: 50 * time.Millisecond, ProbeTimeout: time.Second,
	}
	a := agenttest.Run(t, cfg)
	stop = func() {
		a.StopNow()
		if !a.Stopped(10 * time.Second) {
			t.Errorf("agent %s did not stop within 10s", id)
		}
	}
	key := registry.InstanceKey("/tether", svc, id)
	eventually.True(t, "agent "+id+" registered", 10*time.Second, func() bool {
		gctx, gcancel := context.WithTimeout(context.Background(), time.Second)
		defer gcancel()
		resp, err := srv.Client(t).Get(gctx, key)
		return err == nil && len(resp.Kvs) == 1
	})
	return stop
}

// Issue 24 #4: the unconfigured app holds "*" "/"; the typo'd ap registers; app is deployed
// anew (new servers, then the old one stops). app's claim passes from the old server to the
// new ones, so ap never takes app's routes, on a running control plane and on one started
// afterwards.
func TestTypoCannotTakeRouteAfterRollingDeploy(t *testing.T) {
	srv := etcdtest.Start(t)
	stopOld := runClaimAgent(t, srv, "app", "app-v1")
	runClaimAgent(t, srv, "ap", "ap-1")
	runClaimAgent(t, srv, "app", "app-v2")
	stopOld()

	running := startCP(t, srv.Endpoints())
	c := connect(t, running, xdsclient.Delta, "envoy-1", "default")
	waitFor(t, c, "ap and app after the deploy", func(v xdsclient.View) bool {
		return len(catchAllRoutes(v)) > 0 && len(vhostRoutes(v, "*")) > 0 && v.Resources["type.googleapis.com/envoy.config.cluster.v3.Cluster"]["tether_ap"] != nil
	})
	runClaimAgent(t, srv, "app", "app-v3") // a second deploy, app-v2 still there, then it stops too
	for _, svc := range catchAllRoutes(c.View()) {
		if svc != "app" {
			t.Errorf("after the deploy a route of * / goes to %s; want every one to app", svc)
		}
	}
	later := startCP(t, srv.Endpoints())
	c2 := connect(t, later, xdsclient.Delta, "envoy-2", "default")
	waitFor(t, c2, "the routes", func(v xdsclient.View) bool { return len(catchAllRoutes(v)) > 0 })
	for _, svc := range catchAllRoutes(c2.View()) {
		if svc != "app" {
			t.Errorf("a control plane started later sends * / to %s; want app", svc)
		}
	}
}
