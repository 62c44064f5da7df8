package controlplane

import (
	"bytes"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/rs/zerolog"

	"github.com/tetherlb/tether/controlplane/translate"
	"github.com/tetherlb/tether/controlplane/xdscache"
	"github.com/tetherlb/tether/registry"
)

// TestEnvoyKnowsOnlyTheClustersItSubscribes: an Envoy whose ACK is of the endpoint's revision
// or later knows the endpoint only if it subscribes to the endpoint's cluster, and only once
// it has ACKed a response covering every cluster it subscribes to. Both Envoys are past the
// new endpoint's revision, so the revision alone lets the endpoint through and the check
// stream by stream decides: an Envoy that does not ask for the cluster holds it back until
// the settle time; one that has just asked for it and not ACKed the response holds it back
// (its older ACK does not count); once it ACKs, the endpoint is promoted.
func TestEnvoyKnowsOnlyTheClustersItSubscribes(t *testing.T) {
	const settle = time.Minute
	r := newPhaseRig(t, settle)
	app, other := translate.ClusterName("app"), translate.ClusterName("other")
	r.publish(phaseStateOf(1, phaseService("app", map[string]int{"old": 5001}), phaseService("other", map[string]int{"o1": 6001})), r.at(0))
	a, b := r.envoy("a"), r.envoy("b")
	a.subscribe(app)
	a.ack()
	b.subscribe(other)
	b.ack()
	// The new endpoints of both services come with one revision: each Envoy is sent, and ACKs,
	// the version of that revision.
	v2 := r.publish(phaseStateOf(2, phaseService("app", map[string]int{"old": 5001, "new": 5003}),
		phaseService("other", map[string]int{"o1": 6001, "o2": 6002})), r.at(time.Second))
	for _, e := range []*rawEnvoy{a, b} {
		if got := e.next(e.node + ": the new revision"); got.GetVersionInfo() != v2 {
			t.Fatalf("%s was sent version %s, want %s", e.node, got.GetVersionInfo(), v2)
		}
		e.ack()
		r.acked(e.node, v2)
	}
	if next, _ := r.ph.evaluate(r.at(2 * time.Second)); r.promoted("app", "new") || !next.Equal(r.at(time.Second+settle)) {
		t.Fatalf("app/new promoted = %v (next evaluation %v): b, which does not subscribe to app, was counted as knowing it",
			r.promoted("app", "new"), next.Sub(r.start))
	}
	// b asks for app too: sent the assignment, it has not ACKed it yet.
	if got := b.subscribe(other, app); !hasName(got, app) {
		t.Fatal("b was not sent app's assignment when it asked for it")
	}
	r.waitAck("b", func(a xdscache.StreamAck) bool { return a.Waiting && !a.Whole })
	if r.ph.evaluate(r.at(2 * time.Second)); r.promoted("app", "new") {
		t.Fatal("app/new promoted while b had not ACKed the response to its new subscription: its older ACK was counted")
	}
	b.ack()
	r.waitAck("b", func(a xdscache.StreamAck) bool { return a.Whole && !a.Waiting })
	if r.ph.evaluate(r.at(2 * time.Second)); !r.promoted("app", "new") {
		t.Fatal("app/new not promoted though both Envoys subscribe to app and ACKed it")
	}
	if r.promoted("other", "o2") {
		t.Fatal("other/o2 promoted though a does not subscribe to other")
	}
}

// newEndpointAckedByA publishes app with one endpoint to Envoys a and b, then a new one at
// 1 s, which a ACKs; b is sent it and has not answered. It returns b.
func newEndpointAckedByA(r *phaseRig) *rawEnvoy {
	app := translate.ClusterName("app")
	r.publish(phaseStateOf(1, phaseService("app", map[string]int{"old": 5001})), r.at(0))
	a, b := r.envoy("a"), r.envoy("b")
	for _, e := range []*rawEnvoy{a, b} {
		e.subscribe(app)
		e.ack()
	}
	v2 := r.publish(phaseStateOf(2, phaseService("app", map[string]int{"old": 5001, "new": 5003})), r.at(time.Second))
	r.ackNext(v2, "the new endpoint", a)
	b.next("b: the new endpoint")
	return b
}

// TestNACKingEnvoyHoldsNothingBack: an Envoy whose last answer is a NACK keeps what it held and
// does not hold a promotion back; the endpoint is promoted before its settle time.
func TestNACKingEnvoyHoldsNothingBack(t *testing.T) {
	r := newPhaseRig(t, time.Minute)
	b := newEndpointAckedByA(r)
	b.nack()
	r.waitAck("b", func(s xdscache.StreamAck) bool { return s.NACKed && !s.Waiting })
	if r.ph.evaluate(r.at(2 * time.Second)); !r.promoted("app", "new") {
		t.Fatal("app/new not promoted before its settle time: b, whose last answer is a NACK, held it back")
	}
}

// TestRefusedStateIsNotWaitedFor: an endpoint of a state that was never published (its
// snapshot refused) is not waited for: no Envoy could know it, none is reported lagging for
// it at its settle time, and no evaluation is scheduled for it.
func TestRefusedStateIsNotWaitedFor(t *testing.T) {
	const settle = time.Minute
	r := newPhaseRig(t, settle)
	r.publish(phaseStateOf(1, phaseService("app", map[string]int{"old": 5001})), r.at(0))
	// Two Envoys: with one, a new endpoint is served at once (singleEnvoyLocked).
	r.join("a", translate.ClusterName("app"))
	r.join("b", translate.ClusterName("app"))
	r.ph.apply(phaseStateOf(2, phaseService("app", map[string]int{"old": 5001, "new": 5003})), r.at(time.Second))
	if next, _ := r.ph.evaluate(r.at(2 * time.Second)); !next.IsZero() {
		t.Errorf("an evaluation is scheduled at %v for an endpoint no Envoy was sent", next.Sub(r.start))
	}
	r.ph.evaluate(r.at(2 * settle))
	if r.promoted("app", "new") {
		t.Error("an endpoint of an unpublished state was settled")
	}
	if l := r.ph.laggingEnvoys(); len(l) != 0 {
		t.Errorf("reported lagging for an endpoint it was never sent: %+v", l)
	}
}

// TestRecurringVersionMapsToItsLatestRevision: an endpoint type version recurs when the
// content does (an endpoint in its first phase, gone, then back in a new first phase): an ACK
// of it is of the latest revision that served it, so the endpoint back is promoted at once.
func TestRecurringVersionMapsToItsLatestRevision(t *testing.T) {
	r := newPhaseRig(t, time.Minute)
	a := r.envoy("a")
	one := map[string]int{"old": 5001}
	two := map[string]int{"old": 5001, "new": 5003}
	var versions []string
	for rev, ports := range []map[string]int{one, two, one, two} {
		v := r.publish(phaseStateOf(int64(rev+1), phaseService("app", ports)), r.at(time.Duration(rev)*time.Second))
		versions = append(versions, v)
		if rev == 0 {
			a.subscribe(translate.ClusterName("app"))
		} else {
			a.next(fmt.Sprintf("revision %d", rev+1))
		}
		a.ack()
		r.acked("a", v)
	}
	if versions[1] != versions[3] {
		t.Fatalf("versions %v: the test needs revision 4 to serve revision 2's content", versions)
	}
	if r.ph.evaluate(r.at(4 * time.Second)); !r.promoted("app", "new") {
		t.Fatal("a ACKed the version of revision 4, yet app/new (reachable at revision 4) was not promoted: the version was mapped to revision 2")
	}
}

// TestClosedLaggingStreamIsNoLongerReported: an Envoy reported as lagging whose stream closes
// is no longer reported.
func TestClosedLaggingStreamIsNoLongerReported(t *testing.T) {
	const settle = time.Minute
	r := newPhaseRig(t, settle)
	b := newEndpointAckedByA(r) // b never answers
	r.ph.evaluate(r.at(2 * settle))
	if !r.promoted("app", "new") || len(r.ph.laggingEnvoys()) != 1 {
		t.Fatalf("after the settle time: promoted %v, lagging %+v; want promoted and b lagging", r.promoted("app", "new"), r.ph.laggingEnvoys())
	}
	b.cancel()
	r.closed("b")
	if r.ph.evaluate(r.at(2*settle + time.Second)); len(r.ph.laggingEnvoys()) != 0 {
		t.Fatalf("b's stream closed, yet it is still reported lagging: %+v", r.ph.laggingEnvoys())
	}
}

// TestLargeServiceKeepsItsEndpointsPhases: in a service of more than 16 endpoints (forget
// looks them up in a set) a change forgets only the endpoints gone: the others keep their
// phase, none starts a first phase again.
func TestLargeServiceKeepsItsEndpointsPhases(t *testing.T) {
	ph := newPhaser(zerolog.Nop(), newMetrics(), time.Minute, nil, nil, nil)
	now := time.Now()
	ports := map[string]int{}
	for i := range 20 {
		ports[fmt.Sprintf("i%02d", i)] = 5000 + i
	}
	ph.apply(phaseStateOf(1, phaseService("app", ports)), now) // not phased: the first publication
	for rev := int64(2); rev <= 3; rev++ {
		ports[fmt.Sprintf("n%d", rev)] = 6000 + int(rev)
		delete(ports, fmt.Sprintf("i%02d", rev)) // one gone, one new
		served := ph.apply(phaseStateOf(rev, phaseService("app", ports)), now)
		for id := range ports {
			if id[0] == 'i' && served.Services["app"].Instances[id].FirstPhase {
				t.Fatalf("revision %d: %s, served since revision 1, was put in a first phase again", rev, id)
			}
		}
		ph.mu.Lock()
		n := len(ph.reach)
		ph.mu.Unlock()
		if n != len(ports) {
			t.Fatalf("revision %d: %d endpoints tracked, want %d", rev, n, len(ports))
		}
	}
}

// TestSettleAndCloseInputs: a settle time of 0 or less is the default, any other is kept; and
// the phaser queues the closes of endpoint streams of a named node only.
func TestSettleAndCloseInputs(t *testing.T) {
	for settle, want := range map[time.Duration]time.Duration{0: DefaultPublishSettle, -time.Second: DefaultPublishSettle, time.Nanosecond: time.Nanosecond} {
		if got := settleOrDefault(settle); got != want {
			t.Errorf("settleOrDefault(%v) = %v; want %v", settle, got, want)
		}
	}
	in := newAnswers()
	in.closed(resourcev3.ClusterType, xdscache.StreamAck{Node: "c"})
	in.closed(resourcev3.EndpointType, xdscache.StreamAck{})
	in.closed(resourcev3.EndpointType, xdscache.StreamAck{Node: "n"})
	if got := in.take(); len(got) != 1 || got[0].a.Node != "n" {
		t.Errorf("closes queued: %+v; want the endpoint stream of node n alone", got)
	}
}

// TestRememberedVersionsAreBounded: the phaser maps the last maxVersions endpoint type versions
// to their revisions, forgetting the oldest; a version served again maps to its latest
// revision, never back to an older one.
func TestRememberedVersionsAreBounded(t *testing.T) {
	r := newPhaseRig(t, time.Minute)
	for i := 1; i <= maxVersions+1; i++ {
		r.ph.published(int64(i), fmt.Sprint("v", i))
	}
	r.ph.published(1000, "v2")
	r.ph.published(3, "v2") // an older revision, reported late: kept at 1000
	r.ph.mu.Lock()
	defer r.ph.mu.Unlock()
	if _, ok := r.ph.revs["v1"]; ok || len(r.ph.revs) != maxVersions || r.ph.revs["v2"] != 1000 || r.ph.revs[fmt.Sprint("v", maxVersions+1)] != maxVersions+1 {
		t.Errorf("%d versions remembered (v1 %v, v2 at %d); want the last %d, v2 at 1000", len(r.ph.revs), r.ph.revs["v1"] != 0, r.ph.revs["v2"], maxVersions)
	}
}

// TestPromotionTellsThePublisher: an evaluation that promotes tells the publisher (Promoted)
// and logs how many Envoys knew the endpoint; one that promotes nothing tells it nothing. It
// returns the streams it read, which pace the next evaluation: each once when nothing is
// past its revision.
func TestPromotionTellsThePublisher(t *testing.T) {
	r := newPhaseRig(t, time.Minute)
	var logged bytes.Buffer
	r.ph.log = zerolog.New(&logged).Level(zerolog.DebugLevel)
	b := newEndpointAckedByA(r) // b has not answered: it holds app/new back
	if _, read := r.ph.evaluate(r.at(2 * time.Second)); read != 2 {
		t.Errorf("an evaluation with nothing past its revision read %d streams, want 2", read)
	}
	select {
	case <-r.ph.Promoted():
		t.Fatal("an evaluation that promoted nothing told the publisher to publish again")
	default:
	}
	b.ack()
	r.acked("b", b.acked)
	if r.ph.evaluate(r.at(2 * time.Second)); !r.promoted("app", "new") {
		t.Fatal("app/new not promoted once both Envoys ACKed it")
	}
	select {
	case <-r.ph.Promoted():
	default:
		t.Fatal("an evaluation that promoted app/new did not tell the publisher")
	}
	if !strings.Contains(logged.String(), `"known":2`) {
		t.Errorf("the promotion's log does not say that both Envoys knew the endpoint: %s", logged.String())
	}
}

// TestLaggingEnvoyIsReportedUntilItCatchesUp: an Envoy reported as lagging stays reported,
// across evaluations, while it is open and behind, and no longer once it ACKs the latest
// revision.
func TestLaggingEnvoyIsReportedUntilItCatchesUp(t *testing.T) {
	const settle = time.Minute
	r := newPhaseRig(t, settle)
	b := newEndpointAckedByA(r)
	r.ph.evaluate(r.at(2 * settle))
	if len(r.ph.laggingEnvoys()) != 1 {
		t.Fatalf("after the settle time lagging %+v; want b", r.ph.laggingEnvoys())
	}
	if r.ph.evaluate(r.at(2*settle + time.Second)); len(r.ph.laggingEnvoys()) != 1 {
		t.Fatalf("b, open and still behind, is no longer reported lagging at the next evaluation: %+v", r.ph.laggingEnvoys())
	}
	b.ack()
	r.acked("b", b.acked)
	if r.ph.evaluate(r.at(2*settle + 2*time.Second)); len(r.ph.laggingEnvoys()) != 0 {
		t.Fatalf("b ACKed the latest revision, yet it is still reported lagging: %+v", r.ph.laggingEnvoys())
	}
}

// TestReconnectedEnvoyCountsByItsStream: an Envoy whose stream closed is remembered at what it
// held until it reconnects (same node) and asks for endpoints; from then on it counts by its
// new stream, and its ACK of a new endpoint promotes it before the settle time.
func TestReconnectedEnvoyCountsByItsStream(t *testing.T) {
	r, es := singleRig(t, "a", "b")
	es[1].cancel()
	r.closed("b")
	b := r.join("b", translate.ClusterName("app"))
	r.ackNext(addNew(r), "the new endpoint", es[0], b)
	if r.ph.evaluate(r.at(2 * time.Second)); !r.promoted("app", "new") {
		t.Fatal("app/new not promoted though a and the reconnected b ACKed it: b was still waited for as remembered")
	}
}

// TestSeventeenClustersInOneEvaluation: an evaluation asks about the subscriptions of more
// than 16 clusters at once (its scratch buffer holds 256 per cluster).
func TestSeventeenClustersInOneEvaluation(t *testing.T) {
	r := newPhaseRig(t, time.Minute)
	const n = 17
	state := func(rev int64) *registry.State {
		var svcs []*registry.Service
		for i := range n {
			ports := map[string]int{"old": 5001}
			if rev > 1 {
				ports["new"] = 5003
			}
			svcs = append(svcs, phaseService(fmt.Sprint("s", i), ports))
		}
		return phaseStateOf(rev, svcs...)
	}
	r.publish(state(1), r.at(0))
	var names []string
	for i := range n {
		names = append(names, translate.ClusterName(fmt.Sprint("s", i)))
	}
	es := []*rawEnvoy{r.envoy("a"), r.envoy("b")}
	for _, e := range es {
		e.subscribe(names...)
		e.ack()
	}
	r.ackNext(r.publish(state(2), r.at(time.Second)), "the new endpoints", es...)
	r.ph.evaluate(r.at(2 * time.Second))
	for i := range n {
		if !r.promoted(fmt.Sprint("s", i), "new") {
			t.Fatalf("s%d/new not promoted though both Envoys ACKed it", i)
		}
	}
}

// TestEnvoyWithoutAnACKKnowsNothing: an Envoy that has ACKed no endpoints knows no endpoint,
// not even one of the first revisions; nor does an Envoy remembered from the state file.
func TestEnvoyWithoutAnACKKnowsNothing(t *testing.T) {
	app := translate.ClusterName("app")
	t.Run("connected", func(t *testing.T) {
		r := newPhaseRig(t, time.Minute)
		r.publish(phaseStateOf(0, phaseService("app", map[string]int{"old": 5001})), r.at(0))
		a, b := r.envoy("a"), r.envoy("b")
		a.subscribe(app)
		a.ack()
		b.subscribe(app) // never ACKed
		r.acked("a", a.acked)
		v1 := r.publish(phaseStateOf(1, phaseService("app", map[string]int{"old": 5001, "new": 5003})), r.at(time.Second))
		r.ackNext(v1, "the new endpoint", a)
		if r.ph.evaluate(r.at(2 * time.Second)); r.promoted("app", "new") {
			t.Fatal("app/new (revision 1) promoted while b had ACKed nothing")
		}
	})
	t.Run("remembered", func(t *testing.T) {
		r := newPhaseRig(t, time.Minute)
		r.ph.recall(&memory{Envoys: []memoryEnvoy{{Node: "x", Group: "edge"}}}, r.at(0))
		r.publish(phaseStateOf(1, phaseService("app", map[string]int{"new": 5003})), r.at(0))
		if r.ph.evaluate(r.at(time.Second)); r.promoted("app", "new") {
			t.Fatal("app/new (revision 1) promoted while x, remembered as reconnecting, is known to hold nothing")
		}
	})
}

// TestReplicaReportsAndWaits: an endpoint waits for another replica whose Envoys hold an older
// revision than its service's, and not for one at that revision; while it waits the replica
// reports wanting that revision; an evaluation with nothing to do leaves the revision
// reported as held where it was.
func TestReplicaReportsAndWaits(t *testing.T) {
	r, es := singleRig(t, "a", "b")
	link := newReplicaLink(nil, "/tether", &net.TCPAddr{Port: 1}, time.Minute, 0, zerolog.Nop(), func() {})
	link.peers["other-2"] = registry.Replica{Held: 1}
	r.ph.link = link
	r.ackNext(addNew(r), "the new endpoint", es...)
	if r.ph.evaluate(r.at(2 * time.Second)); r.promoted("app", "new") {
		t.Fatal("app/new promoted while the other replica's Envoys hold revision 1")
	}
	link.mu.Lock()
	wants, held := link.wants, link.held
	link.peers["other-2"] = registry.Replica{Held: 2}
	link.written = registry.Replica{Held: 2, Wants: 2} // as the writer (not run here) would have
	link.mu.Unlock()
	if wants != 2 || held != 2 {
		t.Fatalf("reported held %d, wants %d; want 2 and 2", held, wants)
	}
	if r.ph.evaluate(r.at(2 * time.Second)); !r.promoted("app", "new") {
		t.Fatal("app/new not promoted though the other replica's Envoys hold its revision")
	}
	r.ph.evaluate(r.at(3 * time.Second)) // nothing to do
	link.mu.Lock()
	held = link.held
	link.mu.Unlock()
	if held != 2 {
		t.Fatalf("an evaluation with nothing to do moved the held revision reported to %d, want 2", held)
	}
}
