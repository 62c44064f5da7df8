package controlplane_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tetherlb/tether/controlplane"
	"github.com/tetherlb/tether/internal/cptest"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/xdsclient"
)

// freshInstance is instanceJSON written now (updatedAt is the agent's clock at its write).
func freshInstance(id string, port int, state string, at time.Time) string {
	return strings.Replace(instanceJSON(id, port, state, 1), `"updatedAt": "2026-11-22T15:40:00Z"`,
		fmt.Sprintf(`"updatedAt": %q`, at.UTC().Format(time.RFC3339Nano)), 1)
}

// A control plane started during a lease storm (the only replica restarted in it, or a new
// one) reads from etcd's history which instances left before it started, and holds them as
// a running one would: three of app's four leases lapsed, so the three are held as they were
// for the grace; one of web's three lapsed, below the share, so it is kept DRAINING for the
// vanish grace; an instance deregistered on purpose (leaving) and one whose last value is
// far older than any hold are not brought back.
func TestStartDuringStormHoldsWhatEtcdDeleted(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	now := time.Now()
	storm, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	put(t, cli, "/tether/services/app", serviceJSON)
	for i := 1; i <= 3; i++ {
		put(t, cli, fmt.Sprintf("/tether/instances/app/m%d", i), freshInstance(fmt.Sprintf("m%d", i), 5000+i, "available", now), clientv3.WithLease(storm.ID))
	}
	put(t, cli, "/tether/instances/app/m4", freshInstance("m4", 5004, "available", now))
	put(t, cli, "/tether/instances/app/m5", strings.Replace(freshInstance("m5", 5005, "draining", now), `"reason": ""`, `"reason": "", "leaving": true`, 1))
	put(t, cli, "/tether/instances/app/m6", freshInstance("m6", 5006, "available", now.Add(-time.Hour)))
	for i := 1; i <= 3; i++ {
		lease := clientv3.NoLease
		if i == 1 {
			lease = storm.ID
		}
		put(t, cli, fmt.Sprintf("/tether/instances/web/w%d", i), freshInstance(fmt.Sprintf("w%d", i), 6000+i, "available", now), clientv3.WithLease(lease))
	}
	if _, err := cli.Revoke(ctx, storm.ID); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"m5", "m6"} {
		if _, err := cli.Delete(ctx, "/tether/instances/app/"+id); err != nil {
			t.Fatal(err)
		}
	}

	grace := 3 * time.Second
	cp := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()}, HoldGrace: grace})
	started := time.Now()
	c := connect(t, cp, xdsclient.Delta, "envoy-1", "default")
	waitFor(t, c, "both services' endpoints", func(v xdsclient.View) bool {
		return len(v.Resources[resourcev3.EndpointType]) == 2
	})
	eps := endpoints(c.View())
	want := map[uint32]core.HealthStatus{5001: core.HealthStatus_HEALTHY, 5002: core.HealthStatus_HEALTHY, 5003: core.HealthStatus_HEALTHY,
		5004: core.HealthStatus_HEALTHY, 6001: core.HealthStatus_DRAINING, 6002: core.HealthStatus_HEALTHY, 6003: core.HealthStatus_HEALTHY}
	for port, h := range want {
		e := eps[port]
		if e == nil {
			t.Errorf("the first configuration lacks port %d (%d endpoints: %v)", port, len(eps), slices.Sorted(maps.Keys(eps)))
			continue
		}
		if e.GetHealthStatus() != h {
			t.Errorf("port %d served %s; want %s", port, e.GetHealthStatus(), h)
		}
	}
	if len(eps) != len(want) {
		t.Errorf("the first configuration holds %v; want exactly %d endpoints (not the leaving m5 nor the long-gone m6)", slices.Sorted(maps.Keys(eps)), len(want))
	}
	if got := metric(t, cp, "tether_held_instances"); got != 3 {
		t.Errorf("tether_held_instances = %v; want 3", got)
	}
	waitFor(t, c, "the held instances released after the grace", func(v xdsclient.View) bool {
		e := endpoints(v)
		return e[5001] == nil && e[5002] == nil && e[5003] == nil && e[6001] == nil
	})
	if held := time.Since(started); held < grace-200*time.Millisecond {
		t.Errorf("held instances released %s after the start; want the %s grace", held, grace)
	}
}

// Envoys reconnect as soon as a restarted control plane's port is open, before it has read
// the registry (the first listing, then etcd's history of what left before the start): what
// it serves then is nothing at all, never an empty configuration. A state-of-the-world Envoy
// sent an empty listener or cluster set, or a delta Envoy sent the removal of what it
// declared it holds, would drop its listener, routes and clusters: every connection.
// Both variants reconnect with what they hold at once, the way Envoy does, and must lose
// nothing, then hold the same configuration as before once the new control plane is ready.
func TestRestartReconnectBeforeFirstStateLosesNothing(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	seedRegistry(t, cli)
	cp1 := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()}})

	clients := []*xdsclient.Client{xdsclient.New(xdsclient.Delta, "envoy-delta", "default"), xdsclient.New(xdsclient.SotW, "envoy-sotw", "default")}
	recs := make([]*recorder, len(clients))
	var sessions []*session
	for i, c := range clients {
		recs[i] = &recorder{}
		c.OnUpdate = recs[i].record
		sessions = append(sessions, runClient(t, c, cp1.XDSAddr(), nil))
		waitFor(t, c, c.Node.Id+": full config from the first control plane", complete(3))
	}
	before := []xdsclient.View{clients[0].View(), clients[1].View()}
	if err := cp1.Stop(); err != nil {
		t.Fatalf("stop the first control plane: %v", err)
	}
	for _, s := range sessions {
		_ = s.wait(t, 10*time.Second)
	}

	for _, r := range recs {
		r.start()
	}
	cp2 := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()}})
	for _, c := range clients {
		runClient(t, c, cp2.XDSAddr(), nil) // at once: the new control plane may not be ready yet
	}
	waitReady(t, cp2, 15*time.Second, "the second control plane")
	for i, c := range clients {
		waitFor(t, c, c.Node.Id+": full config from the second control plane", complete(3))
		for _, u := range recs[i].updates() {
			if len(u.Removed) > 0 {
				t.Errorf("%s: %s removed %v on reconnecting to the restarted control plane", c.Node.Id, u.TypeURL, u.Removed)
			}
		}
		after := c.View()
		for _, typ := range xdsclient.Types {
			for name := range before[i].Resources[typ] {
				if after.Resources[typ][name] == nil {
					t.Errorf("%s: %s %s lost after the restart", c.Node.Id, typ, name)
				}
			}
		}
	}
}
