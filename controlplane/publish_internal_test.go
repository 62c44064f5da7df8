package controlplane

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tetherlb/tether/controlplane/translate"
	"github.com/tetherlb/tether/internal/syncbuf"
	"github.com/tetherlb/tether/registry"
)

// The tests below run the publisher's loop in a synctest bubble: its timers and clock are
// the bubble's fake time, which moves only when every goroutine of the bubble is blocked. A
// time.Sleep in them takes no real time; the synctest.Wait after it lets the loop finish
// whatever fell due at that instant, so what it did by then is exact.

// startPublisher runs a publisher with the given coalescing window until the test's bubble
// ends; call it inside synctest.Test.
func startPublisher(t *testing.T, quiet, maxDelay time.Duration) (*publisher, *metrics) {
	m := newMetrics()
	p := newPublisher(zerolog.Nop(), m, newXDSCache(zerolog.Nop(), m, nil, 0, 0, 0), nil, translate.Options{ListenPort: 10000}, quiet, maxDelay, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return p, m
}

// oneInstance returns a registry state at revision rev whose only instance carries sessions.
func oneInstance(rev int64, sessions int) *registry.State {
	in := registry.Instance{ID: "app-1", Address: "10.0.0.1", Port: 5000, State: registry.StateAvailable,
		Thresholds: registry.Thresholds{MaxSessions: 100000}, Load: registry.Load{Sessions: sessions}}
	return &registry.State{Revision: rev, Services: map[string]*registry.Service{
		"app": {Name: "app", Config: registry.DefaultServiceConfig("app"), Instances: map[string]registry.Instance{"app-1": in}},
	}}
}

func publishedRevision(p *publisher) int64 {
	if cur := p.snapshotNow(); cur != nil {
		return cur.State.Revision
	}
	return 0
}

// TestLoneChangeIsPushedAtOnce: a change after a quiet period costs no waiting; a second one
// right behind it waits for the quiet window, and is then pushed.
func TestLoneChangeIsPushedAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const quiet, maxDelay = 10 * time.Millisecond, 100 * time.Millisecond
		p, m := startPublisher(t, quiet, maxDelay)
		start := time.Now()
		p.offer(oneInstance(1, 1))
		synctest.Wait()
		if got := publishedRevision(p); got != 1 || time.Since(start) != 0 {
			t.Fatalf("after a quiet period: revision %d published after %v, want 1 at once", got, time.Since(start))
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		p.offer(oneInstance(2, 2))
		synctest.Wait()
		if got := publishedRevision(p); got != 1 {
			t.Fatalf("a change 1 ms after a push was pushed at once (revision %d), want it held for the quiet window", got)
		}
		time.Sleep(quiet)
		synctest.Wait()
		if got := publishedRevision(p); got != 2 {
			t.Fatalf("the held change is not pushed once the window is quiet: revision %d, want 2", got)
		}
		time.Sleep(time.Hour)
		synctest.Wait()
		p.offer(oneInstance(3, 3))
		synctest.Wait()
		if got := publishedRevision(p); got != 3 {
			t.Fatalf("a lone change an hour later is not pushed at once: revision %d, want 3", got)
		}
		if n := testutil.ToFloat64(m.snapshots); n != 3 {
			t.Errorf("%v pushes, want 3", n)
		}
	})
}

// TestBurstIsCoalesced offers 2,000 registry states 1 ms apart, as a burst of etcd events
// would: the burst never goes quiet, so the publisher pushes at the maximum delay, no more
// often (a burst stays cheap) and no less (no change waits longer than the maximum delay),
// and it ends on the newest state.
func TestBurstIsCoalesced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const quiet, maxDelay, changes, gap = 10 * time.Millisecond, 100 * time.Millisecond, 2000, time.Millisecond
		p, m := startPublisher(t, quiet, maxDelay)
		start := time.Now()
		offered := make([]time.Time, changes+1) // by revision
		var longest time.Duration
		covered := int64(0) // every revision up to covered is published
		check := func(now time.Time) {
			for rev := publishedRevision(p); covered < rev; {
				covered++
				longest = max(longest, now.Sub(offered[covered]))
			}
		}
		for i := 1; i <= changes; i++ {
			offered[i] = time.Now()
			p.offer(oneInstance(int64(i), i))
			synctest.Wait()
			check(time.Now())
			time.Sleep(gap)
			synctest.Wait()
			check(time.Now())
		}
		elapsed := time.Since(start)
		for range quiet / gap {
			time.Sleep(gap)
			synctest.Wait()
			check(time.Now())
		}
		if covered != changes {
			t.Fatalf("a quiet window after the burst, revision %d is published, want the newest, %d", covered, changes)
		}
		pushes := int(testutil.ToFloat64(m.snapshots))
		if lo, hi := int(elapsed/maxDelay), int(elapsed/maxDelay)+2; pushes < lo || pushes > hi {
			t.Errorf("%d changes over %v gave %d pushes, want between %d and %d (one per maximum delay)", changes, elapsed, pushes, lo, hi)
		}
		if longest > maxDelay {
			t.Errorf("a change waited %v to be pushed, longer than the maximum delay %v", longest, maxDelay)
		}
	})
}

// TestInvalidSnapshotKeepsTheLastGood: a translation that fails Envoy's validation is not
// published; the last good snapshot stays, tether_snapshot_errors_total counts it, and the
// next good state is published as usual.
func TestInvalidSnapshotKeepsTheLastGood(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, m := startPublisher(t, time.Millisecond, 10*time.Millisecond)
		const badRev = 2
		p.translateState = func(st *registry.State) *translate.Resources {
			res := p.tr.Translate(st)
			if st.Revision != badRev {
				return res
			}
			// A listener on a port Envoy's validation rejects, copied so that the translation
			// cache's own listener is left intact.
			bad := *res
			l := proto.Clone(res.Listeners[0]).(*listenerv3.Listener)
			l.Address.GetSocketAddress().PortSpecifier = nil
			bad.Listeners = []*listenerv3.Listener{l}
			return &bad
		}
		p.offer(oneInstance(1, 1))
		time.Sleep(time.Second)
		synctest.Wait()
		good := p.snapshotNow()
		if good == nil || good.State.Revision != 1 {
			t.Fatal("the first state was not published")
		}
		goodVersions := p.xds.Versions()
		p.offer(oneInstance(badRev, 2))
		time.Sleep(time.Second)
		synctest.Wait()
		if cur := p.snapshotNow(); cur != good {
			t.Fatalf("an invalid snapshot replaced the last good one (now revision %d)", cur.State.Revision)
		}
		if v := p.xds.Versions(); !maps.Equal(v, goodVersions) {
			t.Fatalf("the xDS cache's versions moved from %v to %v: it does not serve the last good configuration any more", goodVersions, v)
		}
		if n := testutil.ToFloat64(m.snapshotErrors); n != 1 {
			t.Errorf("tether_snapshot_errors_total = %v, want 1", n)
		}
		if n := testutil.ToFloat64(m.snapshots); n != 1 {
			t.Errorf("tether_snapshots_total = %v, want 1: the invalid one is not a push", n)
		}
		p.offer(oneInstance(3, 3))
		time.Sleep(time.Second)
		synctest.Wait()
		if got := publishedRevision(p); got != 3 {
			t.Errorf("the next good state is not published: revision %d, want 3", got)
		}
	})
}

// TestPersistentProblemsAreLoggedOnce: 50 unconfigured services all claim * and /, 49
// conflicts that last across pushes: each is logged when it appears, not on every push, and
// logged again when it clears.
func TestPersistentProblemsAreLoggedOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var buf syncbuf.Buffer
		m := newMetrics()
		p := newPublisher(zerolog.New(&buf), m, newXDSCache(zerolog.Nop(), m, nil, 0, 0, 0), nil, translate.Options{ListenPort: 10000}, time.Millisecond, 10*time.Millisecond, nil)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); p.run(ctx) }()
		defer func() { cancel(); <-done }()

		const services, pushes = 50, 20
		st := &registry.State{Services: map[string]*registry.Service{}}
		for i := range services {
			name := fmt.Sprintf("svc-%02d", i)
			st.Services[name] = &registry.Service{Name: name, Config: registry.DefaultServiceConfig(name),
				Instances: map[string]registry.Instance{"a": {ID: "a", Address: "10.0.0.1", Port: 5000 + i, State: registry.StateAvailable}}}
		}
		for rev := range pushes {
			next := &registry.State{Revision: int64(rev + 1), Services: maps.Clone(st.Services)}
			svc := *next.Services["svc-00"]
			svc.Instances = map[string]registry.Instance{"a": {ID: "a", Address: "10.0.0.1", Port: 5000, State: registry.StateAvailable,
				Thresholds: registry.Thresholds{MaxSessions: 100}, Load: registry.Load{Sessions: rev}}}
			next.Services["svc-00"] = &svc
			p.offer(next)
			time.Sleep(time.Second)
			synctest.Wait()
		}
		if n := testutil.ToFloat64(m.snapshots); n != pushes {
			t.Fatalf("%v pushes, want %d", n, pushes)
		}
		if n := testutil.ToFloat64(m.problems); n != services-1 {
			t.Fatalf("%v problems, want %d", n, services-1)
		}
		if n := strings.Count(buf.String(), `"message":"translation problem"`); n != services-1 {
			t.Errorf("%d pushes with %d lasting problems logged %d problem lines, want %d (each once)", pushes, services-1, n, services-1)
		}
		p.offer(&registry.State{Revision: pushes + 1, Services: map[string]*registry.Service{"svc-00": st.Services["svc-00"]}})
		time.Sleep(time.Second)
		synctest.Wait()
		if n := strings.Count(buf.String(), `"message":"translation problem cleared"`); n != services-1 {
			t.Errorf("the conflicts resolved: %d lines say a problem cleared, want %d", n, services-1)
		}
	})
}

// The consistency check is skipped only for a translation whose clusters, listeners, routes
// and assignment names are those of the last one checked: a changed assignment keeps it, a
// lost assignment or a changed cluster does not.
func TestConsistencyMemo(t *testing.T) {
	st := &registry.State{Services: map[string]*registry.Service{}}
	for i := range 3 {
		name := fmt.Sprintf("svc-%d", i)
		st.Services[name] = &registry.Service{Name: name, Config: registry.DefaultServiceConfig(name),
			Instances: map[string]registry.Instance{"a": {ID: "a", Address: "10.0.0.1", Port: 5000 + i, State: registry.StateAvailable}}}
	}
	res := translate.NewCache(translate.Options{ListenPort: 10000}).Translate(st)
	if len(res.Endpoints) != 3 || len(res.Clusters) != 3 {
		t.Fatalf("translation: %d clusters, %d assignments, want 3 each", len(res.Clusters), len(res.Endpoints))
	}
	var m consistencyMemo
	if m.holds(res) {
		t.Fatal("an empty memo holds a translation")
	}
	m.record(res)
	if !m.holds(res) {
		t.Fatal("the memo does not hold the translation it recorded")
	}
	consistent := func(r *translate.Resources) error {
		snap, err := cachev3.NewSnapshot("", map[string][]types.Resource{
			resourcev3.ClusterType: toResources(r.Clusters), resourcev3.EndpointType: toResources(r.Endpoints),
			resourcev3.ListenerType: toResources(r.Listeners), resourcev3.RouteType: toResources(r.Routes),
		})
		if err != nil {
			return err
		}
		return snap.Consistent()
	}

	loads := *res
	loads.Endpoints = slices.Clone(res.Endpoints)
	changed := proto.Clone(loads.Endpoints[1]).(*endpointv3.ClusterLoadAssignment)
	changed.Endpoints[0].LbEndpoints[0].LoadBalancingWeight = wrapperspb.UInt32(7)
	loads.Endpoints[1] = changed
	if !m.holds(&loads) {
		t.Error("an assignment's new weight needs a new consistency check")
	}
	if err := consistent(&loads); err != nil {
		t.Errorf("the memo holds an inconsistent translation: %v", err)
	}

	lost := *res
	lost.Endpoints = res.Endpoints[:2]
	if m.holds(&lost) {
		t.Error("the memo holds a translation that lost an assignment")
	}
	if consistent(&lost) == nil {
		t.Error("a translation that lost an assignment passes the consistency check")
	}

	cluster := *res
	cluster.Clusters = slices.Clone(res.Clusters)
	cluster.Clusters[0] = proto.Clone(res.Clusters[0]).(*clusterv3.Cluster)
	if m.holds(&cluster) {
		t.Error("the memo holds a translation with a new cluster")
	}
}
