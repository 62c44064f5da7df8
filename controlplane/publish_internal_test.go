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
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tetherlb/tether/controlplane/translate"
	"github.com/tetherlb/tether/controlplane/xdscache"
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
	runPublisher(t, p)
	return p, m
}

// runPublisher runs p's loop until the test's bubble ends.
func runPublisher(t *testing.T, p *publisher) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
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
		runPublisher(t, p)

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

// servedStates returns the instances of the snapshot published last, "service/id" to state.
func servedStates(p *publisher) map[string]registry.InstanceState {
	out := map[string]registry.InstanceState{}
	if cur := p.snapshotNow(); cur != nil {
		for name, svc := range cur.State.Services {
			for id, in := range svc.Instances {
				out[name+"/"+id] = in.State
			}
		}
	}
	return out
}

// stateWith returns a registry state at rev with services of available instances, each ID on
// its own port.
func stateWith(rev int64, services map[string][]string) *registry.State {
	st := &registry.State{Revision: rev, Services: map[string]*registry.Service{}}
	port := 5000
	for name, ids := range services {
		svc := &registry.Service{Name: name, Config: registry.DefaultServiceConfig(name), Instances: map[string]registry.Instance{}}
		for _, id := range ids {
			port++
			svc.Instances[id] = registry.Instance{ID: id, Address: "10.0.0.1", Port: port, State: registry.StateAvailable}
		}
		st.Services[name] = svc
	}
	return st
}

// TestHeldInstancesAreReleasedOnTime: the publisher wakes by itself when the guard or the
// vanish grace releases an instance, at the earlier of the two, and publishes the same
// registry state without it: not before, not later.
func TestHeldInstancesAreReleasedOnTime(t *testing.T) {
	const guardGrace = 10 * time.Second
	for _, vanishGrace := range []time.Duration{3 * time.Second, 30 * time.Second} {
		t.Run(fmt.Sprintf("vanish grace %v", vanishGrace), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p, m := startPublisher(t, time.Millisecond, 10*time.Millisecond)
				p.guard = newRemovalGuard(0.5, guardGrace, time.Minute, zerolog.Nop(), nil)
				p.vanish = newVanishGrace(vanishGrace)
				type at struct {
					d              time.Duration // since the removals
					want           map[string]registry.InstanceState
					held, vanished float64
				}
				const av, dr = registry.StateAvailable, registry.StateDraining
				all := map[string]registry.InstanceState{"app/a": av, "app/b": av, "app/c": av, "app/d": av, "other/x": av, "other/y": av, "other/z": av}
				with := func(changes map[string]registry.InstanceState) map[string]registry.InstanceState {
					out := maps.Clone(all)
					for k, v := range changes {
						if v == "" {
							delete(out, k)
						} else {
							out[k] = v
						}
					}
					return out
				}
				p.offer(stateWith(1, map[string][]string{"app": {"a", "b", "c", "d"}, "other": {"x", "y", "z"}}))
				synctest.Wait()
				if got := servedStates(p); !maps.Equal(got, all) {
					t.Fatalf("first state served as %v", got)
				}
				time.Sleep(time.Second)
				// Three of app's four instances go (held by the guard), one of other's three
				// (not a mass removal: kept DRAINING by the vanish grace).
				p.offer(stateWith(2, map[string][]string{"app": {"a"}, "other": {"y", "z"}}))
				start := time.Now()
				var steps []at
				if vanishGrace < guardGrace {
					steps = []at{
						{0, with(map[string]registry.InstanceState{"other/x": dr}), 3, 1},
						{vanishGrace - 1, with(map[string]registry.InstanceState{"other/x": dr}), 3, 1},
						{vanishGrace, with(map[string]registry.InstanceState{"other/x": ""}), 3, 0},
						{guardGrace - 1, with(map[string]registry.InstanceState{"other/x": ""}), 3, 0},
						{guardGrace, with(map[string]registry.InstanceState{"other/x": "", "app/b": dr, "app/c": dr, "app/d": dr}), 0, 3},
						{guardGrace + vanishGrace - 1, with(map[string]registry.InstanceState{"other/x": "", "app/b": dr, "app/c": dr, "app/d": dr}), 0, 3},
						{guardGrace + vanishGrace, with(map[string]registry.InstanceState{"other/x": "", "app/b": "", "app/c": "", "app/d": ""}), 0, 0},
					}
				} else {
					steps = []at{
						{guardGrace - 1, with(map[string]registry.InstanceState{"other/x": dr}), 3, 1},
						{guardGrace, with(map[string]registry.InstanceState{"other/x": dr, "app/b": dr, "app/c": dr, "app/d": dr}), 0, 4},
						{vanishGrace - 1, with(map[string]registry.InstanceState{"other/x": dr, "app/b": dr, "app/c": dr, "app/d": dr}), 0, 4},
						{vanishGrace, with(map[string]registry.InstanceState{"other/x": "", "app/b": dr, "app/c": dr, "app/d": dr}), 0, 3},
						{guardGrace + vanishGrace, with(map[string]registry.InstanceState{"other/x": "", "app/b": "", "app/c": "", "app/d": ""}), 0, 0},
					}
				}
				for _, s := range steps {
					time.Sleep(time.Until(start.Add(s.d)))
					synctest.Wait()
					if got := servedStates(p); !maps.Equal(got, s.want) {
						t.Fatalf("%v after the removals: served %v, want %v", s.d, got, s.want)
					}
					if h, v := testutil.ToFloat64(m.held), testutil.ToFloat64(m.vanished); h != s.held || v != s.vanished {
						t.Fatalf("%v after the removals: %v held, %v vanished; want %v, %v", s.d, h, v, s.held, s.vanished)
					}
				}
				if got := publishedRevision(p); got != 2 {
					t.Fatalf("revision %d published, want 2", got)
				}
				pushes := testutil.ToFloat64(m.snapshots)
				time.Sleep(time.Hour)
				synctest.Wait()
				if n := testutil.ToFloat64(m.snapshots); n != pushes {
					t.Fatalf("%v pushes in an hour with nothing held or changed", n-pushes)
				}
			})
		})
	}
}

// TestLimitsAndCountsArePublished: --max-services and --max-instances-per-service leave the
// newest keys out, counted in tether_registry_over_limit and logged when what is left out
// changes, not on every push; the instance counts by state are those served.
func TestLimitsAndCountsArePublished(t *testing.T) {
	for _, c := range []struct {
		limits             registryLimits
		services, inApp    int
		overSvc, overInsts float64
	}{
		{registryLimits{}, 2, 4, 0, 0},
		{registryLimits{services: 1}, 1, 4, 1, 1}, // zzz and its instance
		{registryLimits{perService: 3}, 2, 3, 0, 1},
	} {
		t.Run(fmt.Sprintf("%+v", c.limits), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var buf syncbuf.Buffer
				m := newMetrics()
				p := newPublisher(zerolog.New(&buf), m, newXDSCache(zerolog.Nop(), m, nil, 0, 0, 0), nil, translate.Options{ListenPort: 10000}, time.Millisecond, 10*time.Millisecond, nil)
				p.limits = c.limits
				runPublisher(t, p)

				st := stateWith(1, map[string][]string{"app": {"a", "b", "c", "d"}, "zzz": {"z"}})
				app := st.Services["app"]
				for id, s := range map[string]registry.InstanceState{"a": registry.StateAvailable, "b": registry.StateFull, "c": registry.StateDraining, "d": registry.StateUnhealthy} {
					in := app.Instances[id]
					in.State = s
					app.Instances[id] = in
				}
				lines := func() (warn, info int) {
					for _, l := range strings.Split(buf.String(), "\n") {
						if strings.Contains(l, "past --max-services") {
							if strings.Contains(l, `"level":"warn"`) {
								warn++
							} else if strings.Contains(l, `"level":"info"`) {
								info++
							}
						}
					}
					return warn, info
				}
				check := func(when string, services, inApp int, overSvc, overInsts float64, warn, info int) {
					t.Helper()
					got := servedStates(p)
					n := 0
					for k := range got {
						if strings.HasPrefix(k, "app/") {
							n++
						}
					}
					if len(got)-n > 0 && services == 1 || n != inApp {
						t.Errorf("%s: served %v, want %d services, %d of app's instances", when, got, services, inApp)
					}
					if v := testutil.ToFloat64(m.services); v != float64(services) {
						t.Errorf("%s: tether_registry_services %v, want %d", when, v, services)
					}
					if s, i := testutil.ToFloat64(m.overLimit.WithLabelValues("service")), testutil.ToFloat64(m.overLimit.WithLabelValues("instance")); s != overSvc || i != overInsts {
						t.Errorf("%s: over limit %v services, %v instances; want %v, %v", when, s, i, overSvc, overInsts)
					}
					if w, i := lines(); w != warn || i != info {
						t.Errorf("%s: %d warnings, %d infos of the limits, want %d, %d", when, w, i, warn, info)
					}
				}
				warned := 0
				if c.overSvc+c.overInsts > 0 {
					warned = 1
				}
				p.offer(st)
				time.Sleep(time.Second)
				synctest.Wait()
				check("first push", c.services, c.inApp, c.overSvc, c.overInsts, warned, 0)
				// Counts by state: of every instance served, each counted once.
				counts := map[registry.InstanceState]float64{}
				for _, s := range servedStates(p) {
					counts[s]++
				}
				for _, s := range countedStates {
					if v := testutil.ToFloat64(m.instances.WithLabelValues(string(s))); v != counts[s] {
						t.Errorf("tether_registry_instances{state=%q} = %v, want %v", s, v, counts[s])
					}
				}

				// The same services again, zzz changed: the same left out, not logged again.
				next := stateWith(2, map[string][]string{"zzz": {"z"}})
				next.Services["app"] = app
				p.offer(next)
				time.Sleep(time.Second)
				synctest.Wait()
				check("the same again", c.services, c.inApp, c.overSvc, c.overInsts, warned, 0)

				// Within the limits: the change is logged once.
				p.offer(stateWith(3, map[string][]string{"app": {"a"}}))
				time.Sleep(time.Second)
				synctest.Wait()
				check("within the limits", 1, 1, 0, 0, warned, warned)
				if v := testutil.ToFloat64(m.instances.WithLabelValues(string(registry.StateAvailable))); v != 1 {
					t.Errorf("one available instance left: counted %v", v)
				}
			})
		})
	}
	for i, s := range countedStates {
		if got := stateIndex(s); got != i {
			t.Errorf("stateIndex(%q) = %d, want %d", s, got, i)
		}
	}
	if got := stateIndex("unknown"); got != len(countedStates)-1 {
		t.Errorf("an unknown state counts at %d, want %d (unhealthy)", got, len(countedStates)-1)
	}
}

// TestEventToPushCountsFromTheOldestChange: the time from event to push is that of the
// oldest change a push carries, not the newest.
func TestEventToPushCountsFromTheOldestChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const quiet = 10 * time.Millisecond
		p, m := startPublisher(t, quiet, time.Second)
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(m.eventToPush)
		sum := func() float64 {
			mfs, err := reg.Gather()
			if err != nil || len(mfs) != 1 {
				t.Fatalf("gather: %v", err)
			}
			return mfs[0].GetMetric()[0].GetHistogram().GetSampleSum()
		}
		p.offer(oneInstance(1, 1))
		synctest.Wait()
		if s := sum(); s != 0 {
			t.Fatalf("a lone change pushed at once took %v s", s)
		}
		time.Sleep(time.Millisecond)
		p.offer(oneInstance(2, 2))
		time.Sleep(5 * time.Millisecond)
		p.offer(oneInstance(3, 3))
		time.Sleep(time.Second)
		synctest.Wait()
		if got := publishedRevision(p); got != 3 {
			t.Fatalf("revision %d published, want 3", got)
		}
		if s, want := sum(), (5*time.Millisecond + quiet).Seconds(); s != want {
			t.Errorf("event to push %v s, want %v s (from the first change of the push)", s, want)
		}
	})
}

// TestPublisherPhasesAndRepublishesPromotions: with a phaser, a new endpoint is served in its
// first phase (DRAINING) while an Envoy remembered from the last run may not hold it, the
// version served maps to its registry revision before any Envoy is sent it, and a promotion
// publishes the same registry state again at once, the endpoint HEALTHY.
func TestPublisherPhasesAndRepublishesPromotions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const settle = time.Minute
		m := newMetrics()
		in := newAnswers()
		cache := newXDSCache(zerolog.Nop(), m, in, 0, 0, 0)
		ph := newPhaser(zerolog.Nop(), m, settle, cache, in, nil)
		p := newPublisher(zerolog.Nop(), m, cache, ph, translate.Options{ListenPort: 10000}, time.Millisecond, 10*time.Millisecond, nil)
		ph.recall(&memory{Promoted: []memoryEndpoint{{Cluster: translate.ClusterName("app"), ID: "old", Address: "10.0.0.1:5001"}},
			Envoys: []memoryEnvoy{{Node: "a", Group: "edge"}}}, time.Now())
		runPublisher(t, p)

		p.offer(phaseStateOf(1, phaseService("app", map[string]int{"old": 5001})))
		synctest.Wait()
		time.Sleep(time.Second)
		p.offer(phaseStateOf(2, phaseService("app", map[string]int{"old": 5001, "new": 5003})))
		synctest.Wait()
		health := func(port uint32) corev3.HealthStatus {
			for _, a := range p.snapshotNow().Resources.Endpoints {
				for _, le := range a.GetEndpoints() {
					for _, e := range le.GetLbEndpoints() {
						if e.GetEndpoint().GetAddress().GetSocketAddress().GetPortValue() == port {
							return e.GetHealthStatus()
						}
					}
				}
			}
			return -1
		}
		if n, o := health(5003), health(5001); n != corev3.HealthStatus_DRAINING || o != corev3.HealthStatus_HEALTHY {
			t.Fatalf("the new endpoint with an Envoy remembered: served %v (the old one %v), want DRAINING", n, o)
		}
		cur := p.snapshotNow()
		eds := cur.Versions[xdscache.ShortType(resourcev3.EndpointType)]
		ph.mu.Lock()
		rev, ok := ph.revs[eds]
		ph.mu.Unlock()
		if !ok || rev != 2 {
			t.Fatalf("the version served (%q) maps to revision %d (%v), want 2", eds, rev, ok)
		}
		pushes := testutil.ToFloat64(m.snapshots)
		time.Sleep(settle)
		ph.evaluate(time.Now())
		synctest.Wait()
		if h := health(5003); h != corev3.HealthStatus_HEALTHY {
			t.Fatalf("promoted at its settle time, the new endpoint is still served as %v", h)
		}
		if n := testutil.ToFloat64(m.snapshots); n != pushes+1 || publishedRevision(p) != 2 {
			t.Fatalf("the promotion gave %v pushes of revision %d, want one of revision 2", n-pushes, publishedRevision(p))
		}
	})
}

// TestSameStateIsNotPushedAgain: a state offered again (the same registry state) wakes the
// publisher but is not pushed a second time, and leaves the next change pushed as usual.
func TestSameStateIsNotPushedAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const quiet = 10 * time.Millisecond
		p, m := startPublisher(t, quiet, 100*time.Millisecond)
		st := oneInstance(1, 1)
		p.offer(st)
		synctest.Wait()
		p.offer(st)
		time.Sleep(time.Second)
		synctest.Wait()
		if n := testutil.ToFloat64(m.snapshots); n != 1 {
			t.Fatalf("one state offered twice gave %v pushes, want 1", n)
		}
		start := time.Now()
		p.offer(oneInstance(2, 2))
		synctest.Wait()
		if got := publishedRevision(p); got != 2 || time.Since(start) != 0 {
			t.Fatalf("a change a second after the last push: revision %d after %v, want 2 at once", got, time.Since(start))
		}
	})
}
