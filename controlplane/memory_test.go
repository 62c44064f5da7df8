package controlplane_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/tetherlb/tether/controlplane"
	"github.com/tetherlb/tether/internal/cptest"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/eventually"
	"github.com/tetherlb/tether/internal/xdsclient"
)

// stateFile is what the tests read of a state file.
type stateFile struct {
	Envoys []struct {
		Node string `json:"node"`
	} `json:"envoys"`
	Replicas []string `json:"replicas"` // the other replicas
}

// readStateFile reads the state file at path; an absent one reads as empty.
func readStateFile(t *testing.T, path string) stateFile {
	t.Helper()
	var m stateFile
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return m
	}
	if err != nil {
		t.Fatalf("state file: %v", err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("state file %s: %v", path, err)
	}
	return m
}

// TestRestartWaitsForAReplicaStillDown: both replicas were down when a server joined, and
// the first back must not promote it on its own Envoy's ACK: the other's Envoy still serves
// without it (the simulation found it with joins during restarts). The state file names the
// other replica, which is waited for as one that does not report: until it must have
// stepped down, and a settle time more.
func TestRestartWaitsForAReplicaStillDown(t *testing.T) {
	const settle = time.Second
	srv := twoInstances(t)
	cli := srv.Client(t)
	dir := t.TempDir()
	cfg := func(name string) controlplane.Config {
		return controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()}, PublishSettle: settle, StaleAfter: 2 * time.Second,
			StateFile: filepath.Join(dir, name+".json")}
	}
	cpA, cpB := cptest.Start(t, cfg("a")), cptest.Start(t, cfg("b"))
	a := xdsclient.New(xdsclient.Delta, "envoy-a", "edge")
	sa := runClient(t, a, cpA.XDSAddr(), nil)
	b := connect(t, cpB, xdsclient.SotW, "envoy-b", "edge")
	waitHealth(t, "a1 HEALTHY", 5001, core.HealthStatus_HEALTHY, a, b)
	eventually.True(t, "A's state file names B", 15*time.Second, func() bool { return len(readStateFile(t, cfg("a").StateFile).Replicas) == 1 })
	for _, cp := range []*controlplane.ControlPlane{cpA, cpB} {
		if err := cp.Stop(); err != nil {
			t.Fatal(err)
		}
	}
	_ = sa.wait(t, 10*time.Second)

	put(t, cli, "/tether/instances/app/a3", instanceJSON("a3", 5003, "available", 0))
	cpA = cptest.Start(t, cfg("a"))
	runClient(t, a, cpA.XDSAddr(), nil)
	waitFor(t, a, "a3 served", func(v xdsclient.View) bool { return health(v, 5003) >= 0 })
	time.Sleep(settle + settle*3/4) // A would have promoted on its Envoy's ACK, or at its settle time
	if h := health(a.View(), 5003); h != core.HealthStatus_DRAINING {
		t.Fatalf("a3, which joined while both replicas were down, is %v at A's Envoy while B's Envoy serves without it; want DRAINING", h)
	}
	waitHealth(t, "a3 HEALTHY once B would have stepped down", 5003, core.HealthStatus_HEALTHY, a)
	if n := metric(t, cpA, `tether_promotion_seconds_count{outcome="settled"}`); n != 1 {
		t.Errorf("settled promotions = %v, want 1 (a3, without B's report)", n)
	}
}

// everDraining records whether a client was ever sent one of ports as DRAINING (from when
// it is set, before the client runs).
func everDraining(c *xdsclient.Client, ports ...uint32) *atomic.Bool {
	var b atomic.Bool
	c.OnUpdate = func(u xdsclient.Update) {
		if u.TypeURL != resourcev3.EndpointType {
			return
		}
		for _, m := range u.Resources {
			v := xdsclient.View{Resources: map[string]map[string]proto.Message{resourcev3.EndpointType: {"x": m}}}
			for _, p := range ports {
				if health(v, p) == core.HealthStatus_DRAINING {
					b.Store(true)
				}
			}
		}
	}
	return &b
}

// A server that joined while the only control plane was down is unknown to every Envoy
// that followed it, and they reconnect one by one, after their backoff. The restarted
// control plane reads its state file: the servers every Envoy knew are served HEALTHY at
// once (never DRAINING, so they take new sessions throughout), and the new one is served
// DRAINING until the three Envoys of the file are back and know it. Before, the first
// publication after a restart was not phased: the first Envoy back was sent the new server
// HEALTHY and placed new sessions on it that the others would move (issue 24, finding 6).
func TestRestartPhasesServersThatJoinedWhileDown(t *testing.T) {
	const settle = 20 * time.Second // far: the promotion must come from the Envoys, not the settle time
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	put(t, cli, "/tether/services/app", serviceJSON)
	put(t, cli, "/tether/instances/app/a1", instanceJSON("a1", 5001, "available", 0))
	put(t, cli, "/tether/instances/app/a2", instanceJSON("a2", 5002, "available", 0))
	state := filepath.Join(t.TempDir(), "state.json")
	cfg := controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()}, PublishSettle: settle, StateFile: state}
	cp1 := cptest.Start(t, cfg)
	clients := []*xdsclient.Client{xdsclient.New(xdsclient.Delta, "envoy-0", "edge"), xdsclient.New(xdsclient.SotW, "envoy-1", "edge"), xdsclient.New(xdsclient.Delta, "envoy-2", "edge")}
	var sessions []*session
	for _, c := range clients {
		sessions = append(sessions, runClient(t, c, cp1.XDSAddr(), nil))
		waitFor(t, c, "a1 and a2 HEALTHY", func(v xdsclient.View) bool {
			return health(v, 5001) == core.HealthStatus_HEALTHY && health(v, 5002) == core.HealthStatus_HEALTHY
		})
	}
	eventually.True(t, "every Envoy known to the control plane", 15*time.Second, func() bool { _, known, _, _ := instancePhase(t, cp1, "a1"); return known == 3 })
	if err := cp1.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, s := range sessions {
		_ = s.wait(t, 10*time.Second)
	}
	// What the rest rests on: the file written at the stop names the three Envoys.
	if envoys := readStateFile(t, state).Envoys; len(envoys) != 3 {
		t.Fatalf("the state file written at the stop names the Envoys %v; want envoy-0, envoy-1 and envoy-2", envoys)
	}

	put(t, cli, "/tether/instances/app/a3", instanceJSON("a3", 5003, "available", 0))
	drained := make([]*atomic.Bool, len(clients))
	for i, c := range clients {
		drained[i] = everDraining(c, 5001, 5002)
	}
	started := time.Now()
	cp2 := cptest.Start(t, cfg)
	runClient(t, clients[0], cp2.XDSAddr(), nil)
	waitFor(t, clients[0], "a3 served", func(v xdsclient.View) bool { return health(v, 5003) >= 0 })
	if h := health(clients[0].View(), 5003); h != core.HealthStatus_DRAINING {
		t.Fatalf("the first Envoy back was sent a3, which joined while the control plane was down, as %v; want DRAINING", h)
	}
	eventually.True(t, "a3 known by the first Envoy back", 15*time.Second, func() bool { _, known, _, _ := instancePhase(t, cp2, "a3"); return known == 1 })
	time.Sleep(300 * time.Millisecond) // a promotion for want of Envoys would come within evalEvery
	if first, _, _, _ := instancePhase(t, cp2, "a3"); !first {
		t.Fatal("a3 promoted while two Envoys that followed the control plane before were not back")
	}
	for _, c := range clients[1:] {
		runClient(t, c, cp2.XDSAddr(), nil)
	}
	back := time.Now()
	waitHealth(t, "a3 HEALTHY", 5003, core.HealthStatus_HEALTHY, clients...)
	t.Logf("a3 promoted %s after the last Envoys came back (%s after the restart)", time.Since(back).Round(time.Millisecond), time.Since(started).Round(time.Millisecond))
	for i, c := range clients {
		if drained[i].Load() {
			t.Errorf("%s: a server every Envoy knew was sent DRAINING after the restart (no new sessions)", c.Node.Id)
		}
		v := c.View()
		if health(v, 5001) != core.HealthStatus_HEALTHY || health(v, 5002) != core.HealthStatus_HEALTHY {
			t.Errorf("%s: a1 %v, a2 %v; want both HEALTHY", c.Node.Id, health(v, 5001), health(v, 5002))
		}
	}
	if n := metric(t, cp2, `tether_promotion_seconds_count{outcome="settled"}`); n > 0 {
		t.Errorf("settled promotions = %v, want 0", n)
	}
}

// Without a state file (a first start, or --state-file ""), nothing is known of what came
// before, and the first publication is served as the registry says: a restart without memory
// costs no new sessions on the servers the Envoys hold (the figure for the row).
func TestRestartWithoutStateFileServesAsBefore(t *testing.T) {
	srv := twoInstances(t)
	cp := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()}})
	c := xdsclient.New(xdsclient.Delta, "envoy-0", "edge")
	d := everDraining(c, 5001)
	run(t, cp, c)
	waitHealth(t, "a1 HEALTHY", 5001, core.HealthStatus_HEALTHY, c)
	if d.Load() {
		t.Error("a1 was sent DRAINING by a control plane without memory")
	}
}

// A lease storm while the only control plane is down, then a compaction of etcd's history
// before it starts again (a manual compaction, or --auto-compaction-mode revision): etcd no
// longer tells what left. The state file does: the instances it served that are gone now
// are departures as if read from the history, and the guard holds them. Before, the restarted
// control plane served what was left, and the sessions of the others moved (the simulation's
// seed 7, issue 24).
func TestRestartAfterStormAndCompactionHoldsWhatItServed(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	storm, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	put(t, cli, "/tether/services/app", serviceJSON)
	for i := 1; i <= 4; i++ {
		lease := storm.ID
		if i == 4 {
			lease = clientv3.NoLease
		}
		put(t, cli, fmt.Sprintf("/tether/instances/app/m%d", i), freshInstance(fmt.Sprintf("m%d", i), 5000+i, "available", time.Now()), clientv3.WithLease(lease))
	}
	state := filepath.Join(t.TempDir(), "state.json")
	cfg := controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()}, StateFile: state, HoldGrace: 5 * time.Second}
	cp1 := cptest.Start(t, cfg)
	c := xdsclient.New(xdsclient.Delta, "envoy-0", "edge")
	s := runClient(t, c, cp1.XDSAddr(), nil)
	waitFor(t, c, "four endpoints", func(v xdsclient.View) bool { return len(endpoints(v)) == 4 })
	if err := cp1.Stop(); err != nil {
		t.Fatal(err)
	}
	_ = s.wait(t, 10*time.Second)

	if _, err := cli.Revoke(ctx, storm.ID); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, "/tether/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}

	var lost atomic.Bool
	c.OnUpdate = func(u xdsclient.Update) {
		if u.TypeURL == resourcev3.EndpointType && len(u.Resources) > 0 && len(endpoints(xdsclient.View{Resources: map[string]map[string]proto.Message{resourcev3.EndpointType: u.Resources}})) < 4 {
			lost.Store(true)
		}
	}
	cp2 := cptest.Start(t, cfg)
	runClient(t, c, cp2.XDSAddr(), nil)
	waitReady(t, cp2, 15*time.Second, "the second control plane")
	eventually.True(t, "the storm's instances held", 15*time.Second, func() bool { return metric(t, cp2, "tether_held_instances") == 3 })
	if lost.Load() || len(endpoints(c.View())) != 4 {
		t.Fatalf("after the restart the Envoy holds %v; want the four servers, three held", ports(c.View()))
	}
}
