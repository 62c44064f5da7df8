package controlplane_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tetherlb/tether/controlplane"
	"github.com/tetherlb/tether/internal/cptest"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/eventually"
	"github.com/tetherlb/tether/internal/xdsclient"
)

// catchAllRoutes returns the services of the routes of virtual host "*".
func catchAllRoutes(v xdsclient.View) []string {
	var out []string
	for _, m := range v.Resources[resourcev3.RouteType] {
		for _, vh := range m.(*routev3.RouteConfiguration).GetVirtualHosts() {
			if vh.GetName() != "*" {
				continue
			}
			for _, r := range vh.GetRoutes() {
				svc, _, _ := strings.Cut(r.GetName(), "/")
				out = append(out, svc)
			}
		}
	}
	return out
}

// An agent started with --service ap (a typo, or an attacker with an agent's credentials)
// beside the configured app, both on "*" and "/": app keeps its routes though "ap" sorts
// first and registered first.
func TestTypoServiceDoesNotTakeRoutes(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	put(t, cli, "/tether/instances/ap/x1", instanceJSON("x1", 5009, "available", 0))
	put(t, cli, "/tether/services/app", serviceJSON)
	put(t, cli, "/tether/instances/app/a1", instanceJSON("a1", 5001, "available", 1))
	cp := startCP(t, srv.Endpoints())
	c := connect(t, cp, xdsclient.Delta, "envoy-1", "default")
	waitFor(t, c, "both clusters and the routes", func(v xdsclient.View) bool {
		return v.Resources[resourcev3.ClusterType]["tether_ap"] != nil && v.Resources[resourcev3.ClusterType]["tether_app"] != nil &&
			len(catchAllRoutes(v)) > 0
	})
	for _, svc := range catchAllRoutes(c.View()) {
		if svc != "app" {
			t.Errorf("a route of * / goes to %s; want every one to app", svc)
		}
	}
	if got := metric(t, cp, "tether_translate_problems"); got != 1 {
		t.Errorf("tether_translate_problems = %v, want 1 (ap's lost route)", got)
	}
}

// A bad edit of a service's configuration, then a second control plane: both serve the last
// valid configuration (same route version), and a service whose configuration was never
// valid is left out by both, not served with the defaults.
func TestRejectedConfigSameOnEveryReplica(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	good := strings.Replace(strings.Replace(serviceJSON, `"domains": ["*"]`, `"domains": ["app.example.com"]`, 1), `"cookieName": "tether-app"`, `"cookieName": "shop-session"`, 1)
	put(t, cli, "/tether/services/app", good)
	put(t, cli, "/tether/instances/app/a1", instanceJSON("a1", 5001, "available", 1))
	put(t, cli, "/tether/services/web", `{"affinity": {"mode": "sticky"}}`)
	put(t, cli, "/tether/instances/web/w1", instanceJSON("w1", 6001, "available", 1))

	cp1 := startCP(t, srv.Endpoints())
	c1 := connect(t, cp1, xdsclient.SotW, "envoy-1", "default")
	waitFor(t, c1, "app from the first replica", complete(1))
	before := c1.View().Versions[resourcev3.RouteType]

	bad := strings.Replace(good, `"mode": "cookie"`, `"mode": "sticky"`, 1)
	rev := put(t, cli, "/tether/services/app", bad)
	eventually.True(t, "the bad edit read by the first replica", 10*time.Second, func() bool { return metric(t, cp1, "tether_registry_revision") >= float64(rev) })

	cp2 := startCP(t, srv.Endpoints())
	c2 := connect(t, cp2, xdsclient.SotW, "envoy-2", "default")
	waitFor(t, c2, "app from the second replica", complete(1))
	for name, c := range map[string]*xdsclient.Client{"first replica": c1, "second replica": c2} {
		v := c.View()
		if got := v.Versions[resourcev3.RouteType]; got != before {
			t.Errorf("%s: route version %q, want %q as before the bad edit", name, got, before)
		}
		if _, ok := v.Resources[resourcev3.ClusterType]["tether_web"]; ok {
			t.Errorf("%s serves web, whose configuration was never valid", name)
		}
	}
	for name, cp := range map[string]*controlplane.ControlPlane{"first": cp1, "second": cp2} {
		if _, ok := debugConfig(t, cp).Rejected["/tether/services/app"]; !ok {
			t.Errorf("the %s replica does not report app's rejected configuration", name)
		}
	}
}

// Six leases lapsing one after another, as in an etcd outage or a partition: each agent's
// lease lapses at its own last keep-alive plus the TTL, and etcd revokes them in batches, so
// no single update removes more than half. Together they are a mass disappearance, and all
// six are held.
func TestLeaseStormIsHeld(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	cp := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()},
		HoldGrace: time.Minute, HoldWindow: time.Minute})
	c := connect(t, cp, xdsclient.Delta, "envoy-1", "default")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const ttl = 5 // seconds: the six leases are granted within 2.4 s, before the first lapses
	for i := 1; i <= 6; i++ {
		l, err := cli.Grant(ctx, ttl)
		if err != nil {
			t.Fatal(err)
		}
		put(t, cli, fmt.Sprintf("/tether/instances/app/m%d", i), instanceJSON(fmt.Sprintf("m%d", i), 5000+i, "available", 1), clientv3.WithLease(l.ID))
		if i < 6 {
			time.Sleep(400 * time.Millisecond) // the storm's pace: the leases lapse 400 ms apart
		}
	}
	// Leases are never kept alive: they lapse one after another.
	var fewest = 6
	eventually.Saying(t, "all six instances held", 20*time.Second, func() (bool, string) {
		fewest = min(fewest, len(endpoints(c.View())))
		got := metric(t, cp, "tether_held_instances")
		return got == 6, fmt.Sprintf("tether_held_instances = %v", got)
	})
	waitFor(t, c, "all six served again", func(v xdsclient.View) bool { return len(endpoints(v)) == 6 })
	t.Logf("fewest endpoints served during the storm: %d of 6", fewest)
}

// Instances on loopback are refused unless the control plane allows them: Envoy would
// connect to itself or to whatever listens on the gateway host.
func TestLoopbackBackendRefused(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	put(t, cli, "/tether/instances/app/local", instanceJSON("local", 5001, "available", 1))
	put(t, cli, "/tether/instances/app/remote", strings.Replace(instanceJSON("remote", 5002, "available", 1), "127.0.0.1", "10.0.0.7", 1))
	ctx, cancel := context.WithCancel(context.Background())
	cp, err := controlplane.Start(ctx, controlplane.Config{
		Etcd:    clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 2 * time.Second},
		XDSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", Logger: testLogger(t),
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	defer func() { cancel(); _ = cp.Wait() }()
	c := connect(t, cp, xdsclient.Delta, "envoy-1", "default")
	waitFor(t, c, "the remote instance", func(v xdsclient.View) bool { return endpoints(v)[5002] != nil })
	if endpoints(c.View())[5001] != nil {
		t.Error("the loopback instance is served without --allow-loopback-backends")
	}
	if why := debugConfig(t, cp).Rejected["/tether/instances/app/local"]; !strings.Contains(why, "loopback") {
		t.Errorf("rejected for %q, want loopback", why)
	}
}

// vhostRoutes returns the routes of virtual host name: each route's name and where it goes
// (its cluster, or "direct <status>").
func vhostRoutes(v xdsclient.View, name string) map[string]string {
	out := map[string]string{}
	for _, m := range v.Resources[resourcev3.RouteType] {
		for _, vh := range m.(*routev3.RouteConfiguration).GetVirtualHosts() {
			if vh.GetName() != name {
				continue
			}
			for _, r := range vh.GetRoutes() {
				if dr := r.GetDirectResponse(); dr != nil {
					out[r.GetName()] = fmt.Sprintf("direct %d", dr.GetStatus())
				} else {
					out[r.GetName()] = r.GetRoute().GetCluster()
				}
			}
		}
	}
	return out
}

// Issue 24 #3: a bad edit kept while etcd compacts, then a control plane starts. A bad
// optional field (lbPolicy) keeps shop served on shop.test with its own cookie; a bad
// identity (web's affinity mode) leaves web out but keeps web.test answered 503, never by
// the unconfigured app on "*".
func TestBadConfigKeptThroughCompaction(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	put(t, cli, "/tether/services/shop", `{"domains":["shop.test"],"affinity":{"mode":"cookie","cookieName":"shop-s","strict":true}}`)
	put(t, cli, "/tether/instances/shop/s1", instanceJSON("s1", 5101, "available", 1))
	put(t, cli, "/tether/services/web", `{"domains":["web.test"]}`)
	put(t, cli, "/tether/instances/web/w1", instanceJSON("w1", 5201, "available", 1))
	put(t, cli, "/tether/instances/app/a1", instanceJSON("a1", 5001, "available", 1))
	put(t, cli, "/tether/services/shop", `{"domains":["shop.test"],"affinity":{"mode":"cookie","cookieName":"shop-s","strict":true},"lbPolicy":"fastest"}`)
	rev := put(t, cli, "/tether/services/web", `{"domains":["web.test"],"affinity":{"mode":"sticky"}}`)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}

	cp := startCP(t, srv.Endpoints())
	c := connect(t, cp, xdsclient.Delta, "envoy-1", "default")
	waitFor(t, c, "the routes", func(v xdsclient.View) bool { return len(catchAllRoutes(v)) > 0 })
	v := c.View()
	shop := vhostRoutes(v, "shop.test")
	if len(shop) == 0 {
		t.Errorf("no route for shop.test: its users reach app on *")
	}
	for name, to := range shop {
		if to != "tether_shop" {
			t.Errorf("shop.test route %s goes to %s, want tether_shop", name, to)
		}
	}
	if v.Resources[resourcev3.ClusterType]["tether_shop"] == nil {
		t.Errorf("shop's cluster is not served")
	}
	if web := vhostRoutes(v, "web.test"); len(web) != 1 || web["web/misconfigured"] != "direct 503" {
		t.Errorf("web.test routes %v, want only web/misconfigured answering 503", web)
	}
	dc := debugConfig(t, cp)
	problems := fmt.Sprint(dc.Problems)
	for _, want := range []string{"fastest", "sticky"} {
		if !strings.Contains(problems, want) {
			t.Errorf("/debug/config problems %s do not report %s", problems, want)
		}
	}
}
