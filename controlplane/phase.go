package controlplane

import (
	"cmp"
	"context"
	"github.com/tetherlb/tether/internal/mutation"
	"maps"
	"math"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/rs/zerolog"

	"github.com/tetherlb/tether/controlplane/admin"
	"github.com/tetherlb/tether/controlplane/translate"
	"github.com/tetherlb/tether/controlplane/xdscache"
	"github.com/tetherlb/tether/registry"
)

// Two-phase publication. A user's requests land on any Envoy of a gateway group, and xDS is
// eventually consistent: a session that Envoy A places on a server B does not know yet is
// moved (non-strict) or refused (strict) at B. So an endpoint that Envoys cannot reach by
// session yet (a new instance, one back from unhealthy, or one at a new address: the session
// cookie holds the address) is first published as DRAINING:
// reachable by its session cookie (override_host_status) and never chosen for a new session.
// It is promoted to what its state says once every connected Envoy has ACKed an endpoint
// assignment that holds it, or after --publish-settle: an Envoy that has not answered by then
// is reported as lagging and holds nothing back until it catches up; an Envoy whose last
// answer is a NACK holds nothing back either.
//
// Knowledge goes by registry revision: the phaser maps each published endpoint type version
// to the revision of the state it was translated from, and an endpoint first reachable at
// revision r is known to an Envoy whose ACKed version maps to r or later, when that ACK was
// whole (xdscache.StreamAck) and the Envoy subscribes to the endpoint's cluster. The phase is
// applied to the state before translation (the instance marked FirstPhase in a copy),
// so translation stays a pure function of its input.
//
// Replicas wait for each other's Envoys (replicas.go): an endpoint is promoted once, besides
// this replica's own Envoys, every other live replica reports that its Envoys hold a state
// at or after the revision where the endpoint's service changed to make it reachable (the
// service's revision: every replica's state holding that change is at or after it, whatever
// its coalescing). A replica without a report (one that cannot write) is not waited for;
// one that has not reported by the settle time is waited for until it must have stepped
// down, as cut off from etcd, and its Envoys have moved (replicaLink.silent, silentFor).
//
// Endpoints of the first publication are not phased when nothing is known of what came
// before (a first start, or no --state-file): holding every endpoint DRAINING until a
// thousand Envoys ACK would refuse every new session. After a restart with its memory
// (memory.go), an endpoint that the memory does not name as known to every Envoy (a server
// that joined while the control plane was down) starts in its first phase, and the Envoys
// that followed the control plane before are waited for as reconnecting ones. Promotion waits
// for the Envoys of every group, since every group is served the same endpoints.
//
// The single-Envoy rule. A new endpoint skips its first phase (served as its state says in
// the first push that holds it) when the Envoys the first phase would wait for are at most
// one connected stream asking for endpoints: counted over every group, with no Envoy
// remembered as reconnecting (phaser.gone, the memory's Envoys) and no other replica (live,
// or gone within its remembered time), whatever its Envoys. It is never weaker than the
// first phase. The risk the phase guards against is a user placed on the endpoint by an
// Envoy while another Envoy does not hold it yet. With one Envoy E, the first phase promotes
// on E's ACK, and in between only E could take a user. Under the rule, before E holds the
// endpoint no Envoy places a user there: E does not hold it, and any other Envoy is one that
// did not ask for endpoints when the rule was decided (a stream that did counts, served or
// not: it may be an Envoy reconnecting, serving what it held; one whose stream closed is
// remembered and counts too), whose first endpoint response is held back (answers.hold,
// xdscache.Options.HoldFirstEndpoints, turned on before the count) until E has ACKed an
// assignment holding the endpoint, or the settle time ends as it would for a promotion. A
// starting Envoy serves no one before every cluster holds its first assignment
// (docs/envoy-rules.md row 37), so a held Envoy places no user anywhere. After E
// holds it, every Envoy holds it: E, and the others from their first response on. An Envoy
// that joins once E holds it is served it in its first response, as under the first phase
// after a promotion. Once the rule applied, E is waited for, not the streams never served
// endpoints (they get the endpoint in their first response). The cost: an Envoy connecting
// while an endpoint served at once is not yet held by E waits for E's ACK (about a round
// trip) for its first endpoints. An endpoint served at once and not yet held by E is not
// written to the memory as known to every Envoy.

// DefaultPublishSettle bounds how long an Envoy that does not answer delays a promotion.
const DefaultPublishSettle = translate.DefaultPublishSettle

// evalEvery bounds the pause between two evaluations of promotions, and evalPerStream sets
// it: after an evaluation that read n streams the next waits min(n x evalPerStream,
// evalEvery) (see run).
const (
	evalEvery     = 5 * time.Millisecond
	evalPerStream = 5 * time.Microsecond
)

// maxVersions bounds the endpoint type versions remembered: an Envoy still on an older one
// is far behind and knows nothing new.
const maxVersions = 256

// firstPhaseReason is the reason an instance in its first phase is translated with.
const firstPhaseReason = "first phase: published as DRAINING until every Envoy knows it"

// epKey names an endpoint as Envoy knows it: the session cookie holds the address.
type epKey struct {
	cluster, id, addr string
}

// epPhase is a reachable endpoint (HEALTHY, DRAINING or DEGRADED at Envoy) of the last state.
type epPhase struct {
	rev      int64     // registry revision where it became reachable
	start    time.Time // when it became reachable
	first    bool      // in its first phase
	promoted bool      // promoted; published as its state says from the next publication
	// svcRev is its service's revision when it became reachable: what other replicas'
	// Envoys must hold (replicaLink). A replica's own state revision may be a later write
	// that others never see as a registry change.
	svcRev int64
	// peerSettled: promoted at its settle time without another replica's report.
	peerSettled bool
	// peerWait: another replica had not reported holding it by its settle time, and it
	// waits for that replica up to phaser.peerSettle (see deadline).
	peerWait bool
	// fast: served as its state says at once (the single-Envoy rule), and not yet held by
	// every Envoy that was served endpoints: new Envoys' first endpoints wait (answers.hold).
	fast bool
}

// lagInfo is an Envoy that held a promotion past --publish-settle.
type lagInfo struct {
	group    string
	since    time.Time
	endpoint string // the endpoint it held back
}

type phaser struct {
	log    zerolog.Logger
	m      *metrics
	xds    *xdscache.Cache
	in     *answers
	link   *replicaLink // the other replicas' reports; nil: none (tests of the phaser alone)
	settle time.Duration
	// peerSettle is the longest an endpoint waits for another replica that has not reported
	// (replicaLink.silent): at least settle.
	peerSettle time.Duration
	// promoted tells the publisher that endpoints were promoted: it publishes the same
	// registry state again, at once (see Promoted).
	promoted chan struct{}

	mu    sync.Mutex
	reach map[epKey]*epPhase
	// first holds the entries of reach in their first phase: an evaluation (one per ACK
	// burst) visits only them, not every endpoint.
	first map[epKey]*epPhase
	// fast holds the entries of reach served at once and not yet held by every Envoy served
	// endpoints (epPhase.fast).
	fast      map[epKey]*epPhase
	started   bool             // the first publication is done
	revs      map[string]int64 // endpoint type version -> revision of its state
	revOrder  []string
	latestRev int64
	lagging   map[xdscache.StreamKey]*lagInfo
	memo      map[string]phaseMemo // service -> its phased copy
	svcs      map[string]*svcReach // service -> its reachable endpoints at the last apply
	// gone remembers Envoys whose stream closed, by node: they keep serving what they hold
	// and reconnect after a backoff, so a new endpoint waits for them as for a connected one
	// (see rememberFor).
	gone map[goneKey]goneEnvoy
	// recalled are the endpoints the memory of the last run names known to every Envoy, until
	// the first publication (nil: no memory, the first publication is not phased).
	recalled map[epKey]bool
}

// envoyBackoffMax is the longest pause of Envoy's xDS reconnection backoff: an Envoy whose
// stream broke is back within it, unless it is gone for good.
const envoyBackoffMax = 30 * time.Second

// goneKey names an Envoy by node, whatever its stream.
type goneKey struct{ node, group string }

// goneEnvoy is an Envoy whose stream closed: what it held, and until when it is remembered.
type goneEnvoy struct {
	rev   int64 // revision of its last whole ACK of endpoints; -1 when none is known
	until time.Time
}

type goneClose struct {
	a  xdscache.StreamAck
	at time.Time
}

// rememberFor is how long an Envoy is waited for after its stream closed: the settle time,
// at least the Envoy's reconnection backoff (an endpoint still waits at most its own settle
// time for it).
func rememberFor(settle time.Duration) time.Duration {
	return max(settleOrDefault(settle), envoyBackoffMax)
}

func settleOrDefault(settle time.Duration) time.Duration {
	if settle <= 0 {
		return DefaultPublishSettle
	}
	return settle
}

// answers is what the xDS cache tells the phaser (and the replica link tells it): an Envoy
// answered, a stream closed, another replica reported. The cache tells it under its own
// lock, which must not wait for the phaser's (an evaluation holds that while it reads the
// cache): it only queues and wakes the evaluation.
type answers struct {
	wake chan struct{}
	// hold holds back every stream's first endpoint response (xdscache's HoldFirstEndpoints)
	// while an endpoint served at once is not held by the Envoy it was served to.
	hold   atomic.Bool
	mu     sync.Mutex
	closes []goneClose // not yet read into phaser.gone
}

func newAnswers() *answers { return &answers{wake: make(chan struct{}, 1)} }

// signal wakes the evaluation; it never blocks.
func (in *answers) signal() { wake(in.wake) }

// closed records that a stream closed with what it acknowledged of typeURL
// (xdscache.Options.OnClose).
func (in *answers) closed(typeURL string, a xdscache.StreamAck) {
	if typeURL != resourcev3.EndpointType || a.Node == "" {
		return
	}
	in.mu.Lock()
	in.closes = append(in.closes, goneClose{a: a, at: time.Now()})
	in.mu.Unlock()
	in.signal()
}

// take returns the closes queued since the last take.
func (in *answers) take() []goneClose {
	in.mu.Lock()
	defer in.mu.Unlock()
	q := in.closes
	in.closes = nil
	return q
}

// readClosedLocked moves the queued closes into gone. An Envoy that held nothing back when
// its stream closed (its last answer a NACK, lagging, not asking for endpoints) is not
// remembered.
func (ph *phaser) readClosedLocked() {
	for _, c := range ph.in.take() {
		if !ph.holdsNothingLocked(c.a) {
			ph.gone[goneKey{c.a.Node, c.a.Group}] = goneEnvoy{rev: ph.ackedRevLocked(c.a), until: c.at.Add(rememberFor(ph.settle))}
		}
	}
}

// holdsNothingLocked reports whether an Envoy holds no endpoint back: it is lagging, its last
// answer is a NACK, or it does not ask for endpoints (see streamView.exempt).
func (ph *phaser) holdsNothingLocked(a xdscache.StreamAck) bool {
	_, lag := ph.lagging[a.StreamKey]
	return lag || (a.NACKed && !a.Waiting) || !a.Watching
}

// ackedRevLocked is the revision of the state of a's whole ACK; -1 when none is known.
func (ph *phaser) ackedRevLocked(a xdscache.StreamAck) int64 {
	if r, ok := ph.revs[a.Version]; ok && a.Whole {
		return r
	}
	return -1
}

type phaseMemo struct {
	in  *registry.Service
	ids string
	out *registry.Service
}

// newPhaser returns a phaser that reads what Envoys acknowledged in xds, is woken by in (which
// xds and link tell; nil: a new one), and waits for the other replicas' Envoys through link
// (nil: none).
func newPhaser(log zerolog.Logger, m *metrics, settle time.Duration, xds *xdscache.Cache, in *answers, link *replicaLink) *phaser {
	if in == nil {
		in = newAnswers()
	}
	settle = settleOrDefault(settle)
	peerSettle := settle
	if link != nil {
		peerSettle = max(settle, link.silent)
	}
	return &phaser{log: log, m: m, settle: settle, peerSettle: peerSettle, xds: xds, in: in, link: link, promoted: make(chan struct{}, 1),
		reach: map[epKey]*epPhase{}, first: map[epKey]*epPhase{}, fast: map[epKey]*epPhase{}, revs: map[string]int64{}, lagging: map[xdscache.StreamKey]*lagInfo{},
		gone: map[goneKey]goneEnvoy{}}
}

// deadline is when e's first phase ends whatever the Envoys answered: its settle time, or,
// once it waits for a replica that did not report (epPhase.peerWait), peerSettle after it
// started, for this replica's Envoys as well.
func (ph *phaser) deadline(e *epPhase) time.Time {
	if e.peerWait {
		return e.start.Add(ph.peerSettle)
	}
	return e.start.Add(ph.settle)
}

// Promoted receives a value after an evaluation that promoted endpoints: what is served
// changes, not the registry, and the publisher publishes it at once (see coalescer).
func (ph *phaser) Promoted() <-chan struct{} { return ph.promoted }

func reachable(in registry.Instance) bool { return in.State != registry.StateUnhealthy }

// apply records the endpoints reachable in st and returns st with those in their first
// phase set to draining (st itself when there are none). Only the publish loop calls it.
//
// It costs what changed: a service whose pointer is the one of the last call (the registry
// is copy-on-write) and that has no endpoint in its first phase is passed over without a
// look at its instances.
func (ph *phaser) apply(st *registry.State, now time.Time) *registry.State {
	ph.mu.Lock()
	defer ph.mu.Unlock()
	svcs := make(map[string]*svcReach, len(st.Services))
	phased := map[string][]string{} // service -> instance IDs in their first phase
	// Whether the single-Envoy rule applies, read at the first new endpoint to phase.
	single := sync.OnceValue(func() bool { return ph.singleEnvoyLocked(now) })
	for name, svc := range st.Services {
		old := ph.svcs[name]
		if old != nil && old.svc == svc && old.first == 0 {
			svcs[name] = old
			continue
		}
		r := &svcReach{svc: svc}
		if old != nil && old.svc == svc {
			r.keys, r.ids = old.keys, old.ids
		} else {
			r.keys, r.ids = reachableKeys(name, svc)
		}
		for i, k := range r.keys {
			e := ph.reach[k]
			if e == nil {
				phased := ph.started || (ph.recalled != nil && !ph.recalled[k])
				e = &epPhase{rev: st.Revision, svcRev: svc.Revision, start: now, first: phased && !mutation.On(mutation.PromoteAtOnce)}
				if e.first && single() {
					e.first, e.fast = false, true
					ph.fast[k] = e
				}
				ph.reach[k] = e
				if e.first {
					ph.first[k] = e
				}
			}
			if e.first && e.promoted {
				e.first, e.promoted = false, false
				delete(ph.first, k)
			}
			if e.first {
				r.first++
				phased[name] = append(phased[name], r.ids[i])
			}
		}
		if old != nil && old.svc != svc {
			ph.forget(old.keys, r.keys)
		}
		svcs[name] = r
	}
	for name, old := range ph.svcs {
		if _, ok := svcs[name]; !ok {
			ph.forget(old.keys, nil)
		}
	}
	ph.svcs = svcs
	ph.started, ph.recalled = true, nil
	ph.releaseLocked()
	ph.m.firstPhase.Set(float64(len(ph.first)))
	return ph.phaseState(st, phased)
}

// svcReach is one service's reachable endpoints as apply last saw them.
type svcReach struct {
	svc   *registry.Service
	keys  []epKey
	ids   []string // instance IDs, by keys' index
	first int      // keys in their first phase
}

// reachableKeys lists a service's reachable endpoints.
func reachableKeys(name string, svc *registry.Service) ([]epKey, []string) {
	cl := translate.ClusterName(name)
	keys := make([]epKey, 0, len(svc.Instances))
	ids := make([]string, 0, len(svc.Instances))
	for _, in := range svc.Instances {
		if reachable(in) {
			keys = append(keys, epKey{cl, in.ID, hostPort(in)})
			ids = append(ids, in.ID)
		}
	}
	return keys, ids
}

// forget drops the endpoints of old that are not in keep: no longer reachable.
func (ph *phaser) forget(old, keep []epKey) {
	kept := func(k epKey) bool { return slices.Contains(keep, k) }
	if len(keep) > 16 {
		set := make(map[epKey]bool, len(keep))
		for _, k := range keep {
			set[k] = true
		}
		kept = func(k epKey) bool { return set[k] }
	}
	for _, k := range old {
		if !kept(k) {
			delete(ph.reach, k)
			delete(ph.first, k)
			delete(ph.fast, k)
		}
	}
}

// singleEnvoyLocked reports whether a new endpoint may skip its first phase: the Envoys the
// first phase would wait for are at most one connected stream asking for endpoints (see the
// package comment). It turns answers.hold on before it counts, so that a stream asking for
// endpoints after the count is served none until the endpoint is held (releaseLocked).
func (ph *phaser) singleEnvoyLocked(now time.Time) bool {
	if ph.xds == nil {
		return false
	}
	if _, _, peers := ph.link.peersHeld(now); peers {
		return false
	}
	ph.in.hold.Store(true)
	// A stream asking for endpoints counts whether or not it was served any: a new stream may
	// be an Envoy reconnecting, serving what it held meanwhile.
	watching := 0
	for _, v := range ph.viewsLocked(clusterIndex{}, now, true) {
		switch {
		case v.remembered:
			return false
		case v.watching:
			watching++
		}
	}
	return watching <= 1
}

// releaseLocked ends answers.hold once no endpoint served at once waits to be held, and
// serves the first endpoints held back meanwhile.
func (ph *phaser) releaseLocked() {
	if len(ph.fast) == 0 && ph.in.hold.Load() {
		ph.in.hold.Store(false)
		ph.xds.ReleaseHeld()
	}
}

func hostPort(in registry.Instance) string {
	return net.JoinHostPort(in.Address, strconv.Itoa(in.Port))
}

// phaseState returns st with the given instances set to draining, keeping the phased copy
// of a service while neither it nor its phased instances change (the translation cache
// re-translates a service only when its pointer changes).
func (ph *phaser) phaseState(st *registry.State, phased map[string][]string) *registry.State {
	next := make(map[string]phaseMemo, len(phased))
	if len(phased) == 0 {
		ph.memo = next
		return st
	}
	c := *st
	c.Services = maps.Clone(st.Services)
	for name, ids := range phased {
		sort.Strings(ids)
		svc := st.Services[name]
		joined := strings.Join(ids, "\x00")
		m, ok := ph.memo[name]
		if !ok || m.in != svc || m.ids != joined {
			m = phaseMemo{in: svc, ids: joined, out: firstPhaseService(svc, ids)}
		}
		next[name] = m
		c.Services[name] = m.out
	}
	ph.memo = next
	return &c
}

// firstPhaseService returns a copy of svc with the instances ids (sorted) in their first
// phase. Their state is kept: translation serves them DRAINING and needs the state to know
// whether they will take new sessions once promoted (a full one does in source-ip mode, and
// the reply to new users while every such server is in its first phase depends on it).
func firstPhaseService(svc *registry.Service, ids []string) *registry.Service {
	out := *svc
	out.Instances = maps.Clone(svc.Instances)
	for key, in := range out.Instances {
		if _, ok := slices.BinarySearch(ids, in.ID); ok && (in.State == registry.StateAvailable || in.State == registry.StateFull) {
			in.FirstPhase, in.Reason = true, firstPhaseReason
			out.Instances[key] = in
		}
	}
	return &out
}

// published records that the state of revision rev was served with endpoint type version
// eds, and wakes the evaluation.
func (ph *phaser) published(rev int64, eds string) {
	ph.mu.Lock()
	if old, ok := ph.revs[eds]; !ok {
		ph.revOrder = append(ph.revOrder, eds)
		if len(ph.revOrder) > maxVersions {
			delete(ph.revs, ph.revOrder[0])
			ph.revOrder = ph.revOrder[1:]
		}
		ph.revs[eds] = rev
	} else if rev > old {
		ph.revs[eds] = rev
	}
	ph.latestRev = rev
	ph.mu.Unlock()
	ph.in.signal()
}

// run evaluates promotions when an Envoy answers, a stream closes, a state is published, or
// a settle time ends, until ctx ends.
//
// An evaluation reads every stream under the cache's lock, and answers come in bursts (a
// thousand Envoys ACK each push; at 1,000 Envoys evaluating on every ACK took half the control
// plane's CPU). So the next evaluation waits in proportion to the streams the last one read,
// evalPerStream each (about 20 times what reading one costs), at most evalEvery: 5 ms from
// 1,000 streams, while with a few Envoys the ACK that completes a new endpoint's knowledge is
// evaluated as it arrives. The pause goes by count, not by the evaluation's measured time:
// that includes waiting for the cache's lock, which the push that triggered the evaluation
// holds while it sends.
func (ph *phaser) run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	pause := time.NewTimer(0)
	defer pause.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ph.in.wake:
		case <-timer.C:
		}
		select {
		case <-ctx.Done():
			return
		case <-pause.C:
		}
		next, streams := ph.evaluate(time.Now())
		pause.Reset(min(time.Duration(streams)*evalPerStream, evalEvery))
		timer.Stop()
		if !next.IsZero() {
			timer.Reset(max(time.Until(next), time.Millisecond))
		}
	}
}

// streamView is one stream's knowledge of endpoints at an evaluation.
type streamView struct {
	key    xdscache.StreamKey
	group  string
	rev    int64 // revision of its whole ACK; -1 when none is known
	exempt bool  // answered with a NACK, lagging, or not asking for endpoints: holds nothing back
	// watching: asks for endpoints; unserved: and was never sent any (it holds none, and its
	// first response is held back while an endpoint served at once waits: see answers.hold).
	watching, unserved bool
	subs               []bool // by index of the clusters asked about: whether it subscribes to each
	// remembered: an Envoy whose stream closed (see phaser.gone), taken to subscribe to
	// every cluster; it is never reported lagging (it has no stream to report).
	remembered bool
}

// evaluate promotes the first-phase endpoints every Envoy knows (or whose settle time is over)
// and returns when the next settle time ends (zero: none) and how many streams it read.
func (ph *phaser) evaluate(now time.Time) (time.Time, int) {
	ph.mu.Lock()
	defer ph.mu.Unlock()
	var waiting []epKey
	for k, e := range ph.first {
		// An endpoint of a state not published (its snapshot was refused) is not waited for:
		// no Envoy could know it, and none is to be reported lagging for it.
		if !e.promoted && e.rev <= ph.latestRev {
			waiting = append(waiting, k)
		}
	}
	var fast []epKey
	for k, e := range ph.fast {
		if e.rev <= ph.latestRev {
			fast = append(fast, k)
		}
	}
	peerWants := ph.link.wanted()
	if len(waiting) == 0 && len(fast) == 0 && len(ph.lagging) == 0 && !peerWants {
		// Nothing to promote and nobody to clear: an ordinary push's ACKs cost nothing here.
		ph.m.lagging.Set(0)
		ph.link.report(-1, 0)
		return time.Time{}, 0
	}
	var next time.Time // the earliest deadline waited for
	// First by revision alone, which costs one look per stream: an endpoint that a stream
	// holding it back has not reached yet (its whole ACK is of an older revision) waits,
	// without a look at anyone's subscriptions. Only the rest (every stream that holds back
	// is past its revision, or its settle time is over) are checked stream by stream.
	behind := int64(math.MaxInt64) // the lowest revision of a stream that holds back
	all := ph.viewsLocked(clusterIndex{}, now, true)
	read := len(all)
	for _, v := range all {
		if !v.exempt {
			behind = min(behind, v.rev)
		}
	}
	peersHeld, peer, peers := ph.link.peersHeld(now)
	var phase []epKey
	clusters := clusterIndex{}
	for _, k := range waiting {
		e := ph.reach[k]
		if until := ph.deadline(e); behind < e.rev && now.Before(until) {
			next = earliest(next, until)
			continue
		}
		if peers && peersHeld < e.svcRev {
			if now.Before(e.start.Add(ph.settle)) {
				next = earliest(next, e.start.Add(ph.settle))
				continue
			}
			if !e.peerWait && ph.peerSettle > ph.settle {
				e.peerWait = true
				ph.log.Warn().Str("replica", peer).Str("endpoint", k.cluster+"/"+k.id).Dur("settle", ph.settle).Dur("waitUpTo", ph.peerSettle).
					Msg("another control-plane replica has not reported that its Envoys hold a new endpoint within --publish-settle: it may be cut off from etcd, and its Envoys would not hold the endpoint; waiting for it until it has stepped down (--stale-after) and its Envoys have had --publish-settle to move")
			}
			if until := ph.deadline(e); now.Before(until) {
				next = earliest(next, until)
				continue
			}
			ph.log.Warn().Str("replica", peer).Str("endpoint", k.cluster+"/"+k.id).Dur("waited", now.Sub(e.start)).
				Msg("another control-plane replica has not reported that its Envoys hold a new endpoint; promoting it without that replica's Envoys")
			e.peerSettled = true
		}
		phase = append(phase, k)
		clusters.add(k.cluster)
	}
	for _, k := range fast {
		phase = append(phase, k)
		clusters.add(k.cluster)
	}
	var views []streamView
	if len(phase) > 0 {
		views = ph.viewsLocked(clusters, now, true)
		read += len(views)
	}
	promoted := 0
	for _, k := range phase {
		e := ph.reach[k]
		known := 0 // Envoys that know it
		var blockers []*streamView
		ci := clusters.index[k.cluster]
		for i := range views {
			v := &views[i]
			switch {
			case v.rev >= e.rev && v.subs[ci]:
				known++
			case !v.exempt && (!e.fast || !v.unserved):
				// An Envoy never served endpoints is served this one in its first response.
				blockers = append(blockers, v)
			}
		}
		deadline := ph.deadline(e)
		outcome := "acked"
		if e.peerSettled {
			outcome = "settled"
		}
		if len(blockers) > 0 {
			if now.Before(deadline) {
				next = earliest(next, deadline)
				continue
			}
			outcome = "settled"
			for _, v := range blockers {
				v.exempt = true
				if v.remembered {
					continue // no stream to report; it is sent the endpoint when it reconnects
				}
				ph.lagging[v.key] = &lagInfo{group: v.group, since: now, endpoint: k.cluster + "/" + k.id}
				ph.m.laggingTotal.Inc()
				ph.log.Warn().Int64("stream", v.key.ID).Bool("delta", v.key.Delta).Str("group", v.group).
					Str("endpoint", k.cluster+"/"+k.id).Dur("settle", ph.settle).
					Msg("Envoy has not acknowledged a new endpoint within --publish-settle; promoting it without that Envoy, which is reported as lagging")
			}
		}
		if e.fast {
			e.fast = false
			delete(ph.fast, k)
			ph.log.Debug().Str("endpoint", k.cluster+"/"+k.id).Str("outcome", outcome).Dur("after", now.Sub(e.start)).
				Msg("endpoint served at once is held by every Envoy")
			continue
		}
		e.promoted = true
		promoted++
		ph.m.promotions.WithLabelValues(outcome).Observe(now.Sub(e.start).Seconds())
		ph.log.Debug().Str("endpoint", k.cluster+"/"+k.id).Str("outcome", outcome).Dur("after", now.Sub(e.start)).
			Int("known", known).Int("envoys", len(views)).Msg("endpoint promoted")
	}
	ph.releaseLocked()
	ph.m.lagging.Set(float64(len(ph.lagging)))
	var wants int64
	for _, e := range ph.first {
		if !e.promoted && e.rev <= ph.latestRev {
			wants = max(wants, e.svcRev)
		}
	}
	ph.link.report(max(min(behind, ph.latestRev), 0), wants)
	if promoted > 0 {
		wake(ph.promoted)
	}
	return next, read
}

// clusterIndex numbers the clusters whose subscriptions an evaluation asks about.
type clusterIndex struct {
	names []string
	index map[string]int
}

func (c *clusterIndex) add(name string) {
	if c.index == nil {
		c.index = map[string]int{}
	}
	if _, ok := c.index[name]; !ok {
		c.index[name] = len(c.names)
		c.names = append(c.names, name)
	}
}

// viewsLocked reads every stream's endpoint ACK, forgets lagging streams that closed or
// caught up (a whole ACK of the latest revision), and records which of clusters each
// subscribes to. It runs on ACK bursts with a thousand streams: one allocation for every
// stream's subscriptions, and the set of open streams only while some are lagging.
//
// With withGone, the remembered Envoys (phaser.gone) whose node has no stream asking for
// endpoints yet are added, each at the revision it last held: one that reconnected counts
// by its stream once that stream asks for endpoints (before, it holds what it held).
func (ph *phaser) viewsLocked(clusters clusterIndex, now time.Time, withGone bool) []streamView {
	ph.readClosedLocked()
	var views []streamView
	var back map[goneKey]bool
	if len(ph.gone) > 0 {
		back = map[goneKey]bool{}
	}
	var open map[xdscache.StreamKey]bool
	if len(ph.lagging) > 0 {
		open = map[xdscache.StreamKey]bool{}
	}
	var subs []bool
	ph.xds.Acks(resourcev3.EndpointType, func(a xdscache.StreamAck, subscribed func(string) bool) {
		key := a.StreamKey
		if open != nil {
			open[key] = true
		}
		if len(subs) < len(clusters.names) {
			subs = make([]bool, 256*len(clusters.names))
		}
		v := streamView{key: key, group: a.Group, rev: ph.ackedRevLocked(a), subs: subs[:len(clusters.names):len(clusters.names)]}
		subs = subs[len(clusters.names):]
		for i, cl := range clusters.names {
			v.subs[i] = subscribed(cl)
		}
		if _, lag := ph.lagging[key]; lag && v.rev >= ph.latestRev && !a.Waiting {
			delete(ph.lagging, key)
			ph.log.Info().Int64("stream", a.ID).Bool("delta", a.Delta).Str("group", a.Group).Msg("lagging Envoy caught up")
		}
		// A stream that has not asked for endpoints holds none and routes to none (Envoy asks
		// for clusters, then their endpoints): it holds nothing back, and is not reported as
		// lagging for it. When it asks, it is sent the endpoints as they are then.
		v.exempt = ph.holdsNothingLocked(a)
		v.watching, v.unserved = a.Watching, a.Watching && !a.Served
		if back != nil && a.Watching && a.Node != "" {
			back[goneKey{a.Node, a.Group}] = true
		}
		views = append(views, v)
	})
	for k, g := range ph.gone {
		if back[k] || !now.Before(g.until) {
			delete(ph.gone, k)
			continue
		}
		if !withGone {
			continue
		}
		v := streamView{group: k.group, rev: g.rev, remembered: true, subs: make([]bool, len(clusters.names))}
		for i := range v.subs {
			v.subs[i] = true
		}
		views = append(views, v)
	}
	for k := range ph.lagging {
		if !open[k] {
			delete(ph.lagging, k)
		}
	}
	return views
}

// status returns, per cluster and instance ID, how many Envoys know each reachable endpoint
// and whether it is in its first phase. Subscriptions are checked for first-phase endpoints
// only (a later endpoint of a known cluster is known from the revision alone): the monitor
// pays O(streams x first-phase clusters + endpoints x log streams), not endpoints x streams.
func (ph *phaser) status() map[string]map[string]admin.EndpointPhase {
	ph.mu.Lock()
	defer ph.mu.Unlock()
	clusters := clusterIndex{}
	for k, e := range ph.reach {
		if e.first && !e.promoted {
			clusters.add(k.cluster)
		}
	}
	views := ph.viewsLocked(clusters, time.Now(), false)
	revs := make([]int64, len(views))
	for i, v := range views {
		revs[i] = v.rev
	}
	slices.Sort(revs)
	out := map[string]map[string]admin.EndpointPhase{}
	for k, e := range ph.reach {
		p := admin.EndpointPhase{FirstPhase: e.first && !e.promoted, Envoys: len(views)}
		if p.FirstPhase {
			for _, v := range views {
				if v.rev >= e.rev && v.subs[clusters.index[k.cluster]] {
					p.KnownBy++
				}
			}
		} else {
			i, _ := slices.BinarySearch(revs, e.rev)
			p.KnownBy = len(revs) - i
		}
		if out[k.cluster] == nil {
			out[k.cluster] = map[string]admin.EndpointPhase{}
		}
		out[k.cluster][k.id] = p
	}
	return out
}

// laggingEnvoys returns the Envoys reported as lagging, by stream.
func (ph *phaser) laggingEnvoys() []admin.LaggingEnvoy {
	ph.mu.Lock()
	defer ph.mu.Unlock()
	out := make([]admin.LaggingEnvoy, 0, len(ph.lagging))
	for k, l := range ph.lagging {
		out = append(out, admin.LaggingEnvoy{StreamID: k.ID, Variant: k.Variant(), Group: l.group, Since: l.since, Endpoint: l.endpoint})
	}
	slices.SortFunc(out, func(a, b admin.LaggingEnvoy) int {
		return cmp.Or(cmp.Compare(a.StreamID, b.StreamID), strings.Compare(a.Variant, b.Variant))
	})
	return out
}

// recall takes in the memory of the last run (before the first publication): the endpoints
// every Envoy knew, and the Envoys that followed it, remembered as reconnecting from now,
// knowing nothing newer.
func (ph *phaser) recall(m *memory, now time.Time) {
	ph.mu.Lock()
	defer ph.mu.Unlock()
	ph.recalled = make(map[epKey]bool, len(m.Promoted))
	for _, e := range m.Promoted {
		ph.recalled[epKey{e.Cluster, e.ID, e.Address}] = true
	}
	for _, e := range m.Envoys {
		ph.gone[goneKey{e.Node, e.Group}] = goneEnvoy{rev: -1, until: now.Add(rememberFor(ph.settle))}
	}
	ph.link.recall(m.Replicas, now)
}

// remembered returns what the memory file keeps of the phase: the endpoints every Envoy knows
// (promoted, or never phased), and the Envoys that hold endpoints back, connected or
// reconnecting.
func (ph *phaser) remembered(now time.Time) ([]memoryEndpoint, []memoryEnvoy) {
	ph.mu.Lock()
	defer ph.mu.Unlock()
	var eps []memoryEndpoint
	for k, e := range ph.reach {
		// One served at once and not yet held by every Envoy is not known to every Envoy.
		if (!e.first || e.promoted) && !e.fast {
			eps = append(eps, memoryEndpoint{Cluster: k.cluster, ID: k.id, Address: k.addr})
		}
	}
	slices.SortFunc(eps, func(a, b memoryEndpoint) int {
		return cmp.Or(strings.Compare(a.Cluster, b.Cluster), strings.Compare(a.ID, b.ID), strings.Compare(a.Address, b.Address))
	})
	envoys := map[memoryEnvoy]bool{}
	ph.xds.Acks(resourcev3.EndpointType, func(a xdscache.StreamAck, _ func(string) bool) {
		// As readClosedLocked: an Envoy that holds nothing back is not remembered.
		if !ph.holdsNothingLocked(a) && a.Node != "" {
			envoys[memoryEnvoy{Node: a.Node, Group: a.Group}] = true
		}
	})
	// The closes are read after the streams: the cache drops a stream and queues its close in
	// one step, so a stream that closes meanwhile (all of them, when the control plane stops
	// and writes its last memory) is in one or the other. Read before, it could be in neither.
	ph.readClosedLocked()
	for k, g := range ph.gone {
		if now.Before(g.until) {
			envoys[memoryEnvoy{Node: k.node, Group: k.group}] = true
		}
	}
	return eps, slices.SortedFunc(maps.Keys(envoys), func(a, b memoryEnvoy) int {
		return cmp.Or(strings.Compare(a.Group, b.Group), strings.Compare(a.Node, b.Node))
	})
}
