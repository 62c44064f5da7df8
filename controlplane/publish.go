package controlplane

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/rs/zerolog"

	"github.com/tetherlb/tether/controlplane/admin"
	"github.com/tetherlb/tether/controlplane/translate"
	"github.com/tetherlb/tether/controlplane/xdscache"
	"github.com/tetherlb/tether/registry"
)

// published is one configuration handed to the xDS cache, with what produced it.
type published struct {
	admin.Snapshot
	// kept is the state after the guard and the vanish grace, before the drains: what the
	// memory file keeps of the instances served.
	kept *registry.State
}

// publisher translates registry states, when its coalescer says, and hands the resources to
// the xDS cache, which serves them to every gateway group.
type publisher struct {
	log zerolog.Logger
	m   *metrics
	// xds owns the served resources, their versions and the gateway groups; it marshals each
	// changed resource once and pushes it to the Envoys subscribed to it.
	xds *xdscache.Cache
	tr  *translate.Cache
	// translateState is tr.Translate; a test swaps it to make a translation Envoy would reject.
	translateState func(*registry.State) *translate.Resources
	notify         chan struct{}

	// Once run has started, only its goroutine touches the fields down to mu.
	co       coalescer
	problems problemLog
	// consistent is the last translation that passed the consistency check.
	consistent consistencyMemo
	// counted are the instance counts by state of each service last observed (by pointer: the
	// registry is copy-on-write), so that a push counts only the services that changed.
	counted map[*registry.Service]stateCounts
	// limits bound the services and instances served, before the guard (which then never
	// sees a key left out as a removal).
	limits    registryLimits
	limitMemo map[*registry.Service]*registry.Service
	over      registry.Over
	guard     *removalGuard
	// vanish keeps an instance that left the registry unmarked by its agent for a short grace
	// (after the guard; nil: off).
	vanish *vanishGrace
	// releaseAt is when the guard or the vanish grace releases its next held instance (zero:
	// none held), and lastRaw the registry state last published (before the guard).
	releaseAt time.Time
	lastRaw   *registry.State
	// drains applies the operators' drains after the guard (which sees the registry as the
	// agents wrote it) and before translation.
	drains drainApplier
	// phase publishes new endpoints as DRAINING until every Envoy knows them (nil: off);
	// repub asks for a publication of the same registry state (a promotion).
	phase *phaser
	repub bool
	// recall is the memory of the last run, whose instances missing from the first state
	// are departures (see memory.go).
	recall *memory

	mu      sync.Mutex
	latest  *registry.State
	since   time.Time // when the oldest unpublished state arrived
	current *published
	readyCh chan struct{} // closed once the first snapshot is published
	isReady bool
}

// newPublisher returns a publisher that hands its translations to xds, phased by phase (nil:
// no two-phase publication), whose promotions it publishes.
func newPublisher(log zerolog.Logger, m *metrics, xds *xdscache.Cache, phase *phaser, opts translate.Options, quiet, max time.Duration, guard *removalGuard) *publisher {
	p := &publisher{
		log: log, m: m, xds: xds, phase: phase, tr: translate.NewCache(opts), co: coalescer{quiet: quiet, max: max}, guard: guard,
		notify: make(chan struct{}, 1), readyCh: make(chan struct{}),
	}
	p.translateState = p.tr.Translate
	p.problems.log = log
	p.drains.log = log.With().Str("component", "drains").Logger()
	p.drains.onCount = func(n int) { m.drained.Set(float64(n)) }
	return p
}

// offer records the newest registry state; the publish loop picks it up.
func (p *publisher) offer(st *registry.State) {
	p.mu.Lock()
	if p.since.IsZero() {
		p.since = time.Now()
	}
	p.latest = st
	p.mu.Unlock()
	wake(p.notify)
}

// wake sends on a channel of capacity one without blocking: a wake-up already pending covers
// this one.
func wake(ch chan<- struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// run publishes registry states until ctx ends, when the coalescer says (see coalescer),
// when the removal guard or the vanish grace releases a held instance, and when the phaser
// promotes endpoints: the same registry state, pushed at once.
func (p *publisher) run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var promoted <-chan struct{} // nil without a phaser: never ready
	if p.phase != nil {
		promoted = p.phase.Promoted()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.notify:
			p.co.change(time.Now())
		case <-promoted:
			p.repub = true
			p.co.promote(time.Now())
		case <-timer.C:
		}
		now := time.Now()
		due, pending := p.co.due()
		if (pending && !due.After(now)) || (!p.releaseAt.IsZero() && !p.releaseAt.After(now)) {
			if p.publishLatest() {
				p.co.pushed(time.Now())
			} else {
				p.co.discard() // a wake-up for a state already pushed
			}
			due, pending = p.co.due()
		}
		// The next wake-up: the coalescer's push or the guard's release, whichever is first.
		next := p.releaseAt
		if pending {
			next = earliest(next, due)
		}
		timer.Stop()
		if !next.IsZero() {
			timer.Reset(time.Until(next))
		}
	}
}

// publishLatest translates and publishes the newest state; it reports false when there was
// nothing new to publish.
func (p *publisher) publishLatest() bool {
	p.mu.Lock()
	st, since := p.latest, p.since
	p.since = time.Time{}
	p.mu.Unlock()
	start := time.Now()
	force := p.repub
	p.repub = false
	if st == nil || (!force && st == p.lastRaw && (p.releaseAt.IsZero() || start.Before(p.releaseAt))) {
		return false // nothing new: a wake-up queued before the last publish, or an early timer
	}
	p.lastRaw = st
	st = recalledDepartures(st, p.recall)
	p.recall = nil
	st = p.limit(st)
	var release time.Time
	if p.guard != nil {
		st, release = p.guard.apply(st, start)
		p.m.held.Set(float64(p.guard.held.count()))
	}
	if p.vanish != nil {
		var r time.Time
		st, r = p.vanish.apply(st, start)
		release = earliest(release, r)
		p.m.vanished.Set(float64(p.vanish.held.count()))
	}
	p.releaseAt = release
	kept := st
	st = p.drains.apply(st)
	served := st
	if p.phase != nil {
		// After the drains: the phase only ever holds back an available (or full) instance; a
		// drained one is DRAINING already.
		served = p.phase.apply(st, start)
	}
	res := p.translateState(served)
	var versions map[string]string
	var took time.Duration
	err := p.snapshot(res, func(v map[string]string) {
		// Before any Envoy is sent it: /debug/config shows what an Envoy may hold.
		versions, took = v, time.Since(start)
		if p.phase != nil {
			// Before any Envoy is sent it: an ACK of this version must map to its revision.
			p.phase.published(st.Revision, versions[xdscache.ShortType(resourcev3.EndpointType)])
		}
		p.mu.Lock()
		p.current = &published{Snapshot: admin.Snapshot{Resources: res, State: st, Versions: versions, At: time.Now().UTC(), Translate: took}, kept: kept}
		p.mu.Unlock()
	})
	if err != nil {
		p.m.translate.Observe(time.Since(start).Seconds())
		p.m.snapshotErrors.Inc()
		p.log.Error().Err(err).Int64("revision", st.Revision).Msg("translation gave an invalid snapshot; keeping the last good configuration")
		return true
	}
	p.m.translate.Observe(took.Seconds())
	p.mu.Lock()
	if !p.isReady {
		p.isReady = true
		close(p.readyCh)
		p.m.ready.Set(1)
	}
	p.mu.Unlock()

	p.m.snapshots.Inc()
	if !since.IsZero() {
		p.m.eventToPush.Observe(time.Since(since).Seconds())
	}
	p.m.revision.Set(float64(st.Revision))
	p.observeState(st, res)
	p.log.Debug().Int64("revision", st.Revision).Dur("translate", took).Interface("versions", versions).
		Msg("published snapshot")
	return true
}

// registryLimits are --prefix, --max-services and --max-instances-per-service.
type registryLimits struct {
	prefix               string
	services, perService int
}

// limit bounds st by p.limits (see registry.Limit), counts what it left out and logs when
// that changes: once, not on every push.
func (p *publisher) limit(st *registry.State) *registry.State {
	if p.limits.services <= 0 && p.limits.perService <= 0 {
		return st
	}
	st, over, memo := registry.Limit(p.limits.prefix, st, p.limits.services, p.limits.perService, p.limitMemo)
	p.limitMemo = memo
	if over != p.over {
		p.over = over
		p.m.overLimit.WithLabelValues("service").Set(float64(over.Services))
		p.m.overLimit.WithLabelValues("instance").Set(float64(over.Instances))
		ev := p.log.Warn()
		if over == (registry.Over{}) {
			ev = p.log.Info()
		}
		ev.Int("servicesLeftOut", over.Services).Int("instancesLeftOut", over.Instances).
			Int("maxServices", p.limits.services).Int("maxInstancesPerService", p.limits.perService).
			Msg("registry past --max-services or --max-instances-per-service: the newest keys are left out (listed under rejected in /debug/config)")
	}
	return st
}

func (p *publisher) observeState(st *registry.State, res *translate.Resources) {
	var total stateCounts
	next := make(map[*registry.Service]stateCounts, len(st.Services))
	for _, svc := range st.Services {
		c, ok := p.counted[svc]
		if !ok {
			for _, in := range svc.Instances {
				c[stateIndex(in.State)]++
			}
		}
		next[svc] = c
		for i := range c {
			total[i] += c[i]
		}
	}
	p.counted = next
	for i, s := range countedStates {
		p.m.instances.WithLabelValues(string(s)).Set(float64(total[i]))
	}
	p.m.services.Set(float64(len(st.Services)))
	p.m.rejectedNow.Set(float64(len(st.Rejected)))
	p.m.problems.Set(float64(len(res.Problems)))
	p.problems.update(res.Problems)
}

// countedStates are the instance states counted by observeState, and stateCounts one
// service's count of each (by index in countedStates).
var countedStates = [...]registry.InstanceState{registry.StateAvailable, registry.StateFull, registry.StateDraining, registry.StateUnhealthy}

type stateCounts [len(countedStates)]int

func stateIndex(s registry.InstanceState) int {
	if i := slices.Index(countedStates[:], s); i >= 0 {
		return i
	}
	return len(countedStates) - 1 // validation admits no other state; counted as unhealthy if one came
}

// snapshot checks a translation and hands it to the xDS cache, which validates each changed
// resource with Envoy's proto validation, marshals it once and pushes it to the Envoys
// subscribed to it. Versions derive from content only (see xdscache): two replicas serving the
// same registry, or a restarted control plane, hand Envoy identical versions. Nothing is
// published unless every resource and the whole (its references) are valid.
func (p *publisher) snapshot(res *translate.Resources, ready func(versions map[string]string)) error {
	byType := map[string][]types.Resource{
		resourcev3.ClusterType:  toResources(res.Clusters),
		resourcev3.EndpointType: toResources(res.Endpoints),
		resourcev3.ListenerType: toResources(res.Listeners),
		resourcev3.RouteType:    toResources(res.Routes),
	}
	// Consistency (every EDS cluster has its assignment, every listener its route) is checked
	// on a snapshot that is never marshalled, unless it cannot have changed since the last
	// check: go-control-plane builds maps of every resource for it (~10% of the control
	// plane's CPU at 1,000 services), and most pushes change only endpoints.
	if !p.consistent.holds(res) {
		snap, err := cachev3.NewSnapshot("", byType)
		if err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
		if err := snap.Consistent(); err != nil {
			return fmt.Errorf("inconsistent snapshot: %w", err)
		}
		p.consistent.record(res)
	}
	return p.xds.Update(byType, func(byURL map[string]string) {
		versions := make(map[string]string, len(byURL))
		for url, v := range byURL {
			versions[xdscache.ShortType(url)] = v
		}
		ready(versions)
	})
}

// consistencyMemo is the last translation found consistent, as far as consistency depends
// on it: the clusters, listeners and routes (the translation cache returns unchanged ones as
// the same pointers, and nothing modifies a resource once translated) and the assignments'
// names. A translation that matches it is consistent too.
type consistencyMemo struct {
	clusters  []*clusterv3.Cluster
	listeners []*listenerv3.Listener
	routes    []*routev3.RouteConfiguration
	endpoints []string
}

// holds reports whether res is consistent because the last consistent translation was.
func (m *consistencyMemo) holds(res *translate.Resources) bool {
	return m.endpoints != nil && slices.Equal(res.Clusters, m.clusters) && slices.Equal(res.Listeners, m.listeners) &&
		slices.Equal(res.Routes, m.routes) &&
		slices.EqualFunc(res.Endpoints, m.endpoints, func(a *endpointv3.ClusterLoadAssignment, name string) bool {
			return a.GetClusterName() == name
		})
}

// record remembers res, found consistent.
func (m *consistencyMemo) record(res *translate.Resources) {
	names := make([]string, len(res.Endpoints))
	for i, a := range res.Endpoints {
		names[i] = a.GetClusterName()
	}
	*m = consistencyMemo{clusters: res.Clusters, listeners: res.Listeners, routes: res.Routes, endpoints: names}
}

func toResources[T types.Resource](in []T) []types.Resource {
	out := make([]types.Resource, len(in))
	for i, r := range in {
		out[i] = r
	}
	return out
}

// snapshotNow returns the current published snapshot, or nil before the first.
func (p *publisher) snapshotNow() *published {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.current
}

// groupList returns the gateway groups with a connected Envoy, and the default group, which
// always has the configuration for /debug/config and new Envoys.
func (p *publisher) groupList() []string {
	groups := p.xds.Groups()
	if !slices.Contains(groups, DefaultGroup) {
		groups = append(groups, DefaultGroup)
		sort.Strings(groups)
	}
	return groups
}
