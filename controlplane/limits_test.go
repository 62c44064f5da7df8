package controlplane_test

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tetherlb/tether/controlplane"
	"github.com/tetherlb/tether/internal/cptest"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/xdsclient"
)

func clusterNames(v xdsclient.View) []string {
	return slices.Sorted(maps.Keys(v.Resources[resourcev3.ClusterType]))
}

func ports(v xdsclient.View) []uint32 { return slices.Sorted(maps.Keys(endpoints(v))) }

// TestRegistryLimits: past --max-services and --max-instances-per-service the newest keys
// (by etcd create revision) are left out and reported (rejected list, metric), never the
// ones already served, and two replicas serve the same; a key left out is served once an
// older one goes.
func TestRegistryLimits(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	// Written in this order: d is the newest service, a3 the newest instance of a.
	put(t, cli, "/tether/instances/b/b1", instanceJSON("b1", 6001, "available", 0))
	put(t, cli, "/tether/instances/a/a1", instanceJSON("a1", 5001, "available", 0))
	put(t, cli, "/tether/instances/c/c1", instanceJSON("c1", 7001, "available", 0))
	put(t, cli, "/tether/instances/a/a2", instanceJSON("a2", 5002, "available", 0))
	put(t, cli, "/tether/services/d", `{"domains": ["d.example.com"]}`)
	put(t, cli, "/tether/instances/d/d1", instanceJSON("d1", 8001, "available", 0))
	put(t, cli, "/tether/instances/a/a3", instanceJSON("a3", 5003, "available", 0))
	// A configuration written later does not move an older service behind d.
	put(t, cli, "/tether/services/c", `{"domains": ["c.example.com"]}`)

	cfg := controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()},
		MaxServices: 3, MaxInstancesPerService: 2}
	cp1 := cptest.Start(t, cfg)
	c1 := connect(t, cp1, xdsclient.Delta, "envoy-1", "default")
	waitFor(t, c1, "a, b and c with two of a's instances", func(v xdsclient.View) bool {
		return slices.Equal(clusterNames(v), []string{"tether_a", "tether_b", "tether_c"}) && slices.Equal(ports(v), []uint32{5001, 5002, 6001, 7001})
	})
	rejected := debugConfig(t, cp1).Rejected
	for _, key := range []string{"/tether/services/d", "/tether/instances/d/d1", "/tether/instances/a/a3"} {
		if !strings.Contains(rejected[key], "--max-") {
			t.Errorf("rejected[%s] = %q; want it reported over a limit", key, rejected[key])
		}
	}
	if got := metric(t, cp1, `tether_registry_over_limit{kind="service"}`); got != 1 {
		t.Errorf(`tether_registry_over_limit{kind="service"} = %v; want 1`, got)
	}
	if got := metric(t, cp1, `tether_registry_over_limit{kind="instance"}`); got != 2 {
		t.Errorf(`tether_registry_over_limit{kind="instance"} = %v; want 2 (d1, a3)`, got)
	}

	// Another replica serves exactly the same.
	cp2 := cptest.Start(t, cfg)
	c2 := connect(t, cp2, xdsclient.SotW, "envoy-2", "default")
	want := c1.View().Versions
	waitFor(t, c2, "the second replica's routes", func(v xdsclient.View) bool {
		return len(ports(v)) == 4 && v.Versions[resourcev3.RouteType] != ""
	})
	for _, typ := range []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.RouteType} {
		if v1, v2 := want[typ], c2.View().Versions[typ]; v1 != v2 {
			t.Errorf("%s: replica versions %s and %s differ", typ, v1, v2)
		}
	}

	// A new instance of a full service never displaces a served one; one going admits it.
	put(t, cli, "/tether/instances/a/a4", instanceJSON("a4", 5004, "available", 0))
	del(t, cli, "/tether/instances/a/a1")
	waitFor(t, c1, "a3 served once a1 left", func(v xdsclient.View) bool {
		return slices.Equal(ports(v), []uint32{5002, 5003, 6001, 7001})
	})
	del(t, cli, "/tether/instances/b/b1")
	// b's only instance going is held by the removal guard for its grace (it is not counted
	// against the bound meanwhile): d is served at once.
	waitFor(t, c1, "d served once b left", func(v xdsclient.View) bool {
		return slices.Contains(clusterNames(v), "tether_d")
	})
	if got := metric(t, cp1, `tether_registry_over_limit{kind="service"}`); got != 0 {
		t.Errorf(`tether_registry_over_limit{kind="service"} = %v; want 0`, got)
	}
}

func del(t *testing.T, cli *clientv3.Client, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Delete(ctx, key); err != nil {
		t.Fatalf("delete %s: %v", key, err)
	}
}
