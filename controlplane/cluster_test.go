package controlplane_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/tetherlb/tether/controlplane"
	"github.com/tetherlb/tether/internal/cptest"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/eventually"
	"github.com/tetherlb/tether/internal/xdsclient"
)

// lossWatch checks every update an xDS client receives: once a port is required, every
// endpoints update of tether_app must still hold it, and nothing may be removed.
type lossWatch struct {
	mu       sync.Mutex
	required map[uint32]bool
	losses   []string
}

func newLossWatch(c *xdsclient.Client) *lossWatch {
	l := &lossWatch{required: map[uint32]bool{}}
	c.OnUpdate = l.check
	return l
}

func (l *lossWatch) require(ports ...uint32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range ports {
		l.required[p] = true
	}
}

func (l *lossWatch) check(u xdsclient.Update) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(u.Removed) > 0 {
		l.losses = append(l.losses, fmt.Sprintf("%s removed %v", u.TypeURL, u.Removed))
	}
	if u.TypeURL != resourcev3.EndpointType {
		return
	}
	cla, ok := u.Resources["tether_app"].(*endpointv3.ClusterLoadAssignment)
	if !ok {
		return
	}
	have := map[uint32]bool{}
	for _, le := range cla.GetEndpoints() {
		for _, e := range le.GetLbEndpoints() {
			have[e.GetEndpoint().GetAddress().GetSocketAddress().GetPortValue()] = true
		}
	}
	for p := range l.required {
		if !have[p] {
			l.losses = append(l.losses, fmt.Sprintf("endpoints update at %s without port %d", u.At.Format(time.StampMilli), p))
		}
	}
}

func (l *lossWatch) verify(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.losses {
		t.Error("lost: " + s)
	}
}

// agent keeps one instance registered under its own lease through its own etcd client, as
// tether-agent does, listing the members starting at first.
type agent struct {
	cli   *clientv3.Client
	lease clientv3.LeaseID
	conns *etcdtest.ConnWatch // where its client's keep-alives go

	mu      sync.Mutex
	renewed chan struct{} // closed, and replaced, at each renewal of the lease
}

// nextRenewal returns a channel closed when etcd next renews a's lease: the lease was live
// then, as etcd renews no lease that has expired (lessor.Renew).
func (a *agent) nextRenewal() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.renewed
}

func startAgent(t *testing.T, c *etcdtest.Cluster, first int, id string, port int, ttl int64) *agent {
	t.Helper()
	eps := c.Endpoints()
	eps = append(eps[first:], eps[:first]...)
	conns := etcdtest.NewConnWatch()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: eps, DialTimeout: 2 * time.Second, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{conns.DialOption()},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); cli.Close() })
	l, err := cli.Grant(ctx, ttl)
	if err != nil {
		t.Fatalf("grant: %v", err)
	}
	ka, err := cli.KeepAlive(ctx, l.ID)
	if err != nil {
		t.Fatalf("keep-alive: %v", err)
	}
	a := &agent{cli: cli, lease: l.ID, conns: conns, renewed: make(chan struct{})}
	go func() {
		for range ka { // the client passes on only answers that renewed the lease
			a.mu.Lock()
			close(a.renewed)
			a.renewed = make(chan struct{})
			a.mu.Unlock()
		}
	}()
	put(t, cli, "/tether/instances/app/"+id, instanceJSON(id, port, "available", 1), clientv3.WithLease(l.ID))
	return a
}

// clusterServiceJSON is app's configuration in the cluster tests: not the defaults, so that
// serving the defaults shows.
var clusterServiceJSON = strings.Replace(serviceJSON, `"cookieName": "tether-app"`, `"cookieName": "app-session"`, 1)

// clusterSetup starts a three-member cluster, the configured service app with three agents,
// and a control plane listing every member with the guard off (so that any lapse shows).
func clusterSetup(t *testing.T, ttl int64) (*etcdtest.Cluster, *clientv3.Client, []*agent, *controlplane.ControlPlane) {
	t.Helper()
	c := etcdtest.StartCluster(t, 3)
	cli := c.Client(t)
	put(t, cli, "/tether/services/app", clusterServiceJSON)
	var agents []*agent
	for i := range 3 {
		agents = append(agents, startAgent(t, c, i, fmt.Sprintf("a%d", i), 5000+i, ttl))
	}
	cp := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: c.Endpoints()}, HoldShare: -1})
	return c, cli, agents, cp
}

// Each member in turn, the leader first, is stopped while the control plane serves: a change
// made meanwhile reaches Envoy, and no update ever lacks an instance. The control plane talks
// to one of the members, so one of these steps stops it.
func TestClusterMemberStops(t *testing.T) {
	c, cli, _, cp := clusterSetup(t, 10)
	x := xdsclient.New(xdsclient.Delta, "envoy-1", "default")
	loss := newLossWatch(x)
	runClient(t, x, cp.XDSAddr(), nil)
	waitFor(t, x, "the three instances", complete(3))
	loss.require(5000, 5001, 5002)

	leader := c.Leader(t)
	order := []*etcdtest.Member{leader}
	for _, m := range c.Members {
		if m != leader {
			order = append(order, m)
		}
	}
	for i, m := range order {
		what := "member " + m.Name
		if i == 0 {
			what = "the leader " + m.Name
		}
		start := time.Now()
		m.Stop()
		port := uint32(6000 + i)
		put(t, cli, fmt.Sprintf("/tether/instances/app/n%d", i), instanceJSON(fmt.Sprintf("n%d", i), int(port), "available", 1))
		waitFor(t, x, "a change made while "+what+" is down", func(v xdsclient.View) bool { return endpoints(v)[port] != nil })
		loss.require(port)
		seen := time.Since(start)
		m.StartAgain(t)
		c.WaitHealthy(t)
		t.Logf("%s down: change served after %s; back and healthy after %s", what, seen.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	}
	loss.verify(t)
}

// A member is down for longer than a lease's TTL while the agents keep their leases through
// the others: no instance leaves the served configuration at any moment, and every lease
// lives. The member is down that long because a lease granted after it stopped, and never
// kept alive, has expired on the other members before it starts again; it is the member an
// agent's keep-alives went to, so they had to move.
func TestClusterMemberDownLongerThanLeaseTTL(t *testing.T) {
	const ttl = 2
	c, cli, agents, cp := clusterSetup(t, ttl)
	x := xdsclient.New(xdsclient.Delta, "envoy-1", "default")
	loss := newLossWatch(x)
	runClient(t, x, cp.XDSAddr(), nil)
	waitFor(t, x, "the three instances", complete(3))
	loss.require(5000, 5001, 5002)

	// The member stopped is the one agent a0's keep-alives go to: they must move to the others
	// for its lease to live.
	const keepAlive = "/etcdserverpb.Lease/LeaseKeepAlive"
	var down *etcdtest.Member
	eventually.Saying(t, "agent a0's keep-alive stream", 10*time.Second, func() (bool, string) {
		to := agents[0].conns.StreamTo(keepAlive)
		for _, m := range c.Members {
			if strings.TrimPrefix(m.ClientURL, "http://") == to {
				down = m
			}
		}
		return down != nil, to
	})
	var survivors []string
	for _, m := range c.Members {
		if m != down {
			survivors = append(survivors, m.ClientURL)
		}
	}
	others, err := clientv3.New(clientv3.Config{Endpoints: survivors, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer others.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	down.Stop()
	stopped := time.Now()
	// The promise holds across the whole period, so the test spans it: until the witness's
	// key is deleted by its lease's expiry. Its TTL is a second longer than the agents' to
	// outlast the election timeout by which a new leader extends every lease
	// (lessor.Promote): once it has expired, an agent lease not kept alive since the stop
	// has too.
	witness, err := others.Grant(ctx, ttl+1)
	if err != nil {
		t.Fatalf("grant the witness lease: %v", err)
	}
	rev := put(t, others, "/witness", "", clientv3.WithLease(witness.ID))
	expired := false
	for wr := range others.Watch(ctx, "/witness", clientv3.WithRev(rev+1), clientv3.WithFilterPut()) {
		if expired = len(wr.Events) > 0; expired || wr.Err() != nil {
			break
		}
	}
	if !expired {
		t.Fatalf("the witness lease's key still there %s after %s stopped", time.Since(start).Round(time.Millisecond), down.Name)
	}
	if resp, err := others.TimeToLive(ctx, witness.ID); err != nil {
		t.Fatalf("the witness lease after its key went: %v", err)
	} else if resp.TTL != -1 {
		t.Fatalf("the witness lease after its key went: ttl %d; want -1 (expired)", resp.TTL)
	}
	t.Logf("%s stopped in %s, then down for %s: a %ds lease granted then has expired",
		down.Name, stopped.Sub(start).Round(time.Millisecond), time.Since(stopped).Round(time.Millisecond), ttl+1)
	// Each lease is checked once renewed after the witness expired, when most of its TTL is
	// left: the renewal proves it lived through the period, the check that it still lives.
	for i, a := range agents {
		select {
		case <-a.nextRenewal():
		case <-time.After(10 * time.Second):
			t.Fatalf("agent a%d's lease not renewed within 10s after the witness expired", i)
		}
		resp, err := cli.TimeToLive(ctx, a.lease)
		if err != nil {
			t.Errorf("agent a%d's lease with %s down: %v", i, down.Name, err)
		} else if resp.TTL <= 0 {
			t.Errorf("agent a%d's lease after a lease's TTL with %s down: ttl %d", i, down.Name, resp.TTL)
		}
	}
	if to := agents[0].conns.StreamTo(keepAlive); to == strings.TrimPrefix(down.ClientURL, "http://") {
		t.Errorf("agent a0's keep-alives still last went to %s, which is down", down.Name)
	}
	if n := len(endpoints(x.View())); n != 3 {
		t.Errorf("%d endpoints served, want 3", n)
	}
	down.StartAgain(t)
	c.WaitHealthy(t)
	// Still live after the member is back.
	put(t, cli, "/tether/instances/app/late", instanceJSON("late", 6000, "available", 1))
	waitFor(t, x, "a change after the member came back", func(v xdsclient.View) bool { return endpoints(v)[6000] != nil })
	loss.verify(t)
}

// Two control-plane replicas on the cluster: an Envoy moving from one to the other (delta,
// with its resource versions) is sent nothing it already holds, then only what changes. The
// second replica starts after a bad edit of the service's configuration, which the first saw
// happen: both must still serve the same.
func TestClusterReplicasHandOver(t *testing.T) {
	c, cli, _, cp1 := clusterSetup(t, 10)
	x0 := xdsclient.New(xdsclient.Delta, "envoy-0", "default")
	runClient(t, x0, cp1.XDSAddr(), nil)
	waitFor(t, x0, "everything from the first replica", complete(3))
	rev := put(t, cli, "/tether/services/app", strings.Replace(clusterServiceJSON, `"mode": "cookie"`, `"mode": "sticky"`, 1))
	eventually.True(t, "the bad edit read by the first replica", 10*time.Second, func() bool { return metric(t, cp1, "tether_registry_revision") >= float64(rev) })

	eps := c.Endpoints()
	slices.Reverse(eps)
	cp2 := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: eps}, HoldShare: -1})
	waitReady(t, cp2, 15*time.Second, "the second replica")

	x := xdsclient.New(xdsclient.Delta, "envoy-1", "default")
	var rec recorder
	loss := newLossWatch(x)
	check := x.OnUpdate
	x.OnUpdate = func(u xdsclient.Update) { check(u); rec.record(u) }
	s1 := runClient(t, x, cp1.XDSAddr(), nil)
	waitFor(t, x, "everything from the first replica", complete(3))
	loss.require(5000, 5001, 5002)
	before := x.View()
	s1.stop(t)

	rec.start()
	runClient(t, x, cp2.XDSAddr(), nil)
	// Wait until the second replica lists the client, so the next change reaches it there.
	eventually.True(t, "the client connected to the second replica", 10*time.Second, func() bool { return len(cp2.Clients()) > 0 })
	put(t, cli, "/tether/instances/app/new", instanceJSON("new", 6000, "available", 1))
	waitFor(t, x, "the change from the second replica", func(v xdsclient.View) bool { return endpoints(v)[6000] != nil })

	var got []string
	for _, u := range rec.updates() {
		for _, n := range u.Names {
			got = append(got, u.TypeURL+" "+n)
		}
	}
	if want := []string{resourcev3.EndpointType + " tether_app"}; !slices.Equal(got, want) {
		t.Errorf("received from the second replica %v; want only %v", got, want)
	}
	after := x.View()
	for _, typ := range xdsclient.Types {
		for name, rv := range before.ResourceVersions[typ] {
			if typ == resourcev3.EndpointType && name == "tether_app" {
				continue
			}
			if after.ResourceVersions[typ][name] != rv {
				t.Errorf("%s %s: version %q from the second replica, %q from the first", typ, name, after.ResourceVersions[typ][name], rv)
			}
		}
	}
	loss.verify(t)
}
