package controlplane

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"

	"github.com/tetherlb/tether/controlplane/translate"
	"github.com/tetherlb/tether/registry"
)

// published is one snapshot handed to the xDS cache, with what produced it.
type published struct {
	snap      *cachev3.Snapshot
	res       *translate.Resources
	state     *registry.State
	versions  map[string]string // short type -> version
	at        time.Time
	translate time.Duration
}

// hashed memoizes a resource's content hash by the resource's pointer: the translation cache
// hands back the same pointer for an unchanged service, so only changed resources are hashed.
type hashed struct {
	msg  proto.Message
	hash string
}

// publisher translates registry states, when its coalescer says, and publishes snapshots to
// every known gateway group.
type publisher struct {
	log   zerolog.Logger
	m     *metrics
	cache cachev3.SnapshotCache
	// eds serves endpoints to every group: one marshalled copy per ClusterLoadAssignment, and
	// a change sends only the changed assignments, to state-of-the-world Envoys as well.
	eds *cachev3.LinearCache
	tr  *translate.Cache
	// translateState is tr.Translate; a test swaps it to make a translation Envoy would reject.
	translateState func(*registry.State) *translate.Resources
	// co and problems are touched by the run goroutine only.
	co       coalescer
	problems problemLog

	notify chan struct{}
	guard  *removalGuard
	// releaseAt is when the guard releases its next held instance (zero: none held), and
	// lastRaw the registry state last published (before the guard); only the run goroutine
	// touches them.
	releaseAt time.Time
	lastRaw   *registry.State

	mu      sync.Mutex
	latest  *registry.State
	since   time.Time // when the oldest unpublished state arrived
	groups  map[string]bool
	current *published
	hashes  map[string]hashed // type URL + "/" + name -> hash
	edsSets uint64            // updates made to eds: its version, as it reports it to Envoys
	readyCh chan struct{}
	isReady bool
}

func newPublisher(log zerolog.Logger, m *metrics, cache cachev3.SnapshotCache, eds *cachev3.LinearCache, opts translate.Options, quiet, max time.Duration, guard *removalGuard) *publisher {
	p := &publisher{
		log: log, m: m, cache: cache, eds: eds, tr: translate.NewCache(opts), co: coalescer{quiet: quiet, max: max}, guard: guard,
		notify: make(chan struct{}, 1), groups: map[string]bool{}, hashes: map[string]hashed{},
		readyCh: make(chan struct{}),
	}
	p.translateState = p.tr.Translate
	p.problems.log = log
	return p
}

// offer records the newest registry state; the publish loop picks it up.
func (p *publisher) offer(st *registry.State) {
	p.mu.Lock()
	if p.latest == nil || p.since.IsZero() {
		p.since = time.Now()
	}
	p.latest = st
	p.mu.Unlock()
	select {
	case p.notify <- struct{}{}:
	default:
	}
}

// addGroup makes sure a newly seen gateway group has the current snapshot.
func (p *publisher) addGroup(group string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.groups[group] {
		return
	}
	p.groups[group] = true
	if p.current != nil {
		if err := p.cache.SetSnapshot(context.Background(), group, p.current.snap); err != nil {
			p.log.Error().Err(err).Str("group", group).Msg("set snapshot for new group")
		}
	}
}

// run publishes registry states until ctx ends, when the coalescer says (see coalescer),
// and when the removal guard releases a held instance.
func (p *publisher) run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.notify:
			p.co.change(time.Now())
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
		var next time.Time
		if pending {
			next = due
		}
		if !p.releaseAt.IsZero() && (next.IsZero() || p.releaseAt.Before(next)) {
			next = p.releaseAt
		}
		arm(timer, next)
	}
}

// arm sets t to fire at when, or stops it when when is zero.
func arm(t *time.Timer, when time.Time) {
	t.Stop()
	if !when.IsZero() {
		t.Reset(time.Until(when))
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
	if st == nil || (st == p.lastRaw && (p.releaseAt.IsZero() || start.Before(p.releaseAt))) {
		return false // nothing new: a wake-up queued before the last publish, or an early timer
	}
	p.lastRaw = st
	if p.guard != nil {
		st, p.releaseAt = p.guard.apply(st, start)
		p.m.held.Set(float64(p.guard.heldCount()))
	}
	res := p.translateState(st)
	b, err := p.snapshot(res)
	took := time.Since(start)
	p.m.translate.Observe(took.Seconds())
	if err != nil {
		p.m.snapshotErrors.Inc()
		p.log.Error().Err(err).Int64("revision", st.Revision).Msg("translation gave an invalid snapshot; keeping the last good configuration")
		return true
	}
	versions := b.versions
	p.mu.Lock()
	// Endpoints first: a new cluster's assignment is there when Envoy asks for it.
	if len(b.edsUpdate) > 0 || len(b.edsDelete) > 0 {
		if err := p.eds.UpdateResources(b.edsUpdate, b.edsDelete); err != nil {
			p.log.Error().Err(err).Msg("update endpoints")
		}
		p.edsSets++
	}
	versions[shortType(resourcev3.EndpointType)] = strconv.FormatUint(p.edsSets, 10)
	snap := b.snap
	pub := &published{snap: snap, res: res, state: st, versions: versions, at: time.Now().UTC(), translate: took}

	p.current = pub
	groups := make([]string, 0, len(p.groups)+1)
	for g := range p.groups {
		groups = append(groups, g)
	}
	if !p.groups[DefaultGroup] {
		// The default group always has a snapshot, so /debug/config and new Envoys see it.
		p.groups[DefaultGroup] = true
		groups = append(groups, DefaultGroup)
	}
	sort.Strings(groups)
	for _, g := range groups {
		if err := p.cache.SetSnapshot(context.Background(), g, snap); err != nil {
			p.log.Error().Err(err).Str("group", g).Msg("set snapshot")
		}
	}
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
		Int("groups", len(groups)).Msg("published snapshot")
	return true
}

func (p *publisher) observeState(st *registry.State, res *translate.Resources) {
	counts := map[string]int{registry.StateAvailable: 0, registry.StateFull: 0, registry.StateDraining: 0, registry.StateUnhealthy: 0}
	for _, svc := range st.Services {
		for _, in := range svc.Instances {
			counts[in.State]++
		}
	}
	for s, n := range counts {
		p.m.instances.WithLabelValues(s).Set(float64(n))
	}
	p.m.services.Set(float64(len(st.Services)))
	p.m.rejectedNow.Set(float64(len(st.Rejected)))
	p.m.problems.Set(float64(len(res.Problems)))
	p.problems.update(res.Problems)
}

// built is a translation ready to publish.
type built struct {
	// snap holds listeners, routes and clusters (endpoints go to the linear cache).
	snap      *cachev3.Snapshot
	versions  map[string]string
	edsUpdate map[string]types.Resource // changed or new assignments
	edsDelete []string                  // assignments gone
}

// snapshot checks a translation (Envoy's validation of every changed resource, snapshot
// consistency) and builds what to publish. Versions derive from content only: every
// resource's version is a hash of its deterministic encoding, and each type's version a hash
// of its resources' names and versions, so two replicas serving the same registry, or a
// restarted control plane, hand Envoy identical versions. Endpoints are served by the linear
// cache, whose delta versions are the same content hashes and whose state-of-the-world
// version is its own update counter.
func (p *publisher) snapshot(res *translate.Resources) (*built, error) {
	groups := []struct {
		typeURL string
		items   []types.Resource
	}{
		{resourcev3.ListenerType, toResources(res.Listeners)},
		{resourcev3.RouteType, toResources(res.Routes)},
		{resourcev3.ClusterType, toResources(res.Clusters)},
		{resourcev3.EndpointType, toResources(res.Endpoints)},
	}
	snap := &cachev3.Snapshot{VersionMap: map[string]map[string]string{}}
	versions := map[string]string{}
	next := make(map[string]hashed, len(p.hashes))
	for _, g := range groups {
		vm := make(map[string]string, len(g.items))
		typeHash := sha256.New()
		for _, item := range g.items {
			name := cachev3.GetResourceName(item)
			key := g.typeURL + "/" + name
			h, ok := p.hashes[key]
			if !ok || h.msg != item {
				if err := validate(item); err != nil {
					return nil, fmt.Errorf("%s %q: %w", shortType(g.typeURL), name, err)
				}
				b, err := proto.MarshalOptions{Deterministic: true}.Marshal(item)
				if err != nil {
					return nil, fmt.Errorf("encode %s %q: %w", shortType(g.typeURL), name, err)
				}
				// The very hash go-control-plane sends Envoy as the delta resource version, so
				// that the initial_resource_versions of a reconnecting Envoy match it.
				h = hashed{msg: item, hash: cachev3.HashResource(b)}
			}
			next[key] = h
			vm[name] = h.hash
			typeHash.Write([]byte(name))
			typeHash.Write([]byte{0})
			typeHash.Write([]byte(h.hash))
			typeHash.Write([]byte{0})
		}
		version := hex.EncodeToString(typeHash.Sum(nil)[:8])
		snap.Resources[cachev3.GetResponseType(g.typeURL)] = cachev3.NewResources(version, g.items)
		snap.VersionMap[g.typeURL] = vm
		versions[shortType(g.typeURL)] = version
	}
	if err := snap.Consistent(); err != nil {
		return nil, fmt.Errorf("inconsistent snapshot: %w", err)
	}
	b := &built{versions: versions, edsUpdate: map[string]types.Resource{}}
	for name, item := range snap.Resources[types.Endpoint].Items {
		key := resourcev3.EndpointType + "/" + name
		if old, ok := p.hashes[key]; !ok || old.hash != next[key].hash {
			b.edsUpdate[name] = item.Resource
		}
	}
	for key := range p.hashes {
		if name, ok := strings.CutPrefix(key, resourcev3.EndpointType+"/"); ok {
			if _, still := next[key]; !still {
				b.edsDelete = append(b.edsDelete, name)
			}
		}
	}
	sort.Strings(b.edsDelete)
	snap.Resources[types.Endpoint] = cachev3.Resources{}
	delete(snap.VersionMap, resourcev3.EndpointType)
	b.snap = snap
	p.hashes = next
	return b, nil
}

// validate runs Envoy's own proto validation on a resource.
func validate(m types.Resource) error {
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		return v.ValidateAll()
	}
	return nil
}

func toResources[T types.Resource](in []T) []types.Resource {
	out := make([]types.Resource, len(in))
	for i, r := range in {
		out[i] = r
	}
	return out
}

// ready is closed once the first snapshot is published.
func (p *publisher) ready() <-chan struct{} { return p.readyCh }

// snapshotNow returns the current published snapshot, or nil before the first.
func (p *publisher) snapshotNow() *published {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.current
}

// groupList returns the gateway groups seen so far.
func (p *publisher) groupList() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 0, len(p.groups))
	for g := range p.groups {
		out = append(out, g)
	}
	sort.Strings(out)
	return out
}
