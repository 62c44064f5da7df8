package controlplane

import (
	"net"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/rs/zerolog"

	"github.com/tetherlb/tether/controlplane/translate"
	"github.com/tetherlb/tether/controlplane/xdscache"
	"github.com/tetherlb/tether/registry"
)

// The single-Envoy rule (phase.go): a new endpoint is served as its state says at once when
// the only Envoy the first phase would wait for is one connected stream already served
// endpoints, and an Envoy that joins before that one holds it is served no endpoint until then.

// statusIn returns the status r gives the endpoint on port, or -1 when r does not hold it.
func statusIn(t *testing.T, r *discovery.DiscoveryResponse, port uint32) corev3.HealthStatus {
	t.Helper()
	for _, a := range r.GetResources() {
		var cla endpointv3.ClusterLoadAssignment
		if err := a.UnmarshalTo(&cla); err != nil {
			t.Fatal(err)
		}
		for _, l := range cla.GetEndpoints() {
			for _, e := range l.GetLbEndpoints() {
				if e.GetEndpoint().GetAddress().GetSocketAddress().GetPortValue() == port {
					return e.GetHealthStatus()
				}
			}
		}
	}
	return -1
}

// singleRig is a rig whose Envoys named in nodes subscribe to app and ACK its first state
// ("old" on 5001); the second state adds "new" on 5003.
func singleRig(t *testing.T, nodes ...string) (*phaseRig, []*rawEnvoy) {
	r := newPhaseRig(t, time.Minute)
	r.publish(phaseStateOf(1, phaseService("app", map[string]int{"old": 5001})), r.at(0))
	var es []*rawEnvoy
	for _, n := range nodes {
		es = append(es, r.join(n, translate.ClusterName("app")))
	}
	return r, es
}

func addNew(r *phaseRig) string {
	return r.publish(phaseStateOf(2, phaseService("app", map[string]int{"old": 5001, "new": 5003})), r.at(time.Second))
}

// TestSingleEnvoyIsServedANewEndpointAtOnce: with one Envoy, a new endpoint is HEALTHY in the
// first push that holds it: no first phase, no second push.
func TestSingleEnvoyIsServedANewEndpointAtOnce(t *testing.T) {
	r, es := singleRig(t, "a")
	addNew(r)
	if got := statusIn(t, es[0].next("a: the new endpoint"), 5003); got != corev3.HealthStatus_HEALTHY {
		t.Fatalf("the only Envoy was first sent the new endpoint as %v, want HEALTHY", got)
	}
}

// TestFirstPhaseHoldsWithTwoEnvoysAPeerOrARememberedEnvoy: the rule does not apply when the
// first phase would wait for more than one Envoy: two connected, one connected and another
// replica, one connected and one remembered from the state file as reconnecting.
func TestFirstPhaseHoldsWithTwoEnvoysAPeerOrARememberedEnvoy(t *testing.T) {
	t.Run("two Envoys", func(t *testing.T) {
		r, es := singleRig(t, "a", "b")
		addNew(r)
		for _, e := range es {
			if got := statusIn(t, e.next(e.node+": the new endpoint"), 5003); got != corev3.HealthStatus_DRAINING {
				t.Errorf("%s was first sent the new endpoint as %v, want DRAINING", e.node, got)
			}
		}
	})
	t.Run("another replica", func(t *testing.T) {
		r, es := singleRig(t, "a")
		link := newReplicaLink(nil, "/tether", &net.TCPAddr{Port: 1}, time.Minute, 0, zerolog.Nop(), func() {})
		link.peers["other-2"] = registry.Replica{Held: 1}
		r.ph.link = link
		addNew(r)
		if got := statusIn(t, es[0].next("a: the new endpoint"), 5003); got != corev3.HealthStatus_DRAINING {
			t.Errorf("a was first sent the new endpoint as %v with another replica live, want DRAINING", got)
		}
	})
	t.Run("a remembered Envoy", func(t *testing.T) {
		r := newPhaseRig(t, time.Minute)
		r.ph.recall(&memory{Promoted: []memoryEndpoint{{Cluster: translate.ClusterName("app"), ID: "old", Address: "10.0.0.1:5001"}},
			Envoys: []memoryEnvoy{{Node: "a", Group: "edge"}, {Node: "b", Group: "edge"}}}, r.at(0))
		r.publish(phaseStateOf(1, phaseService("app", map[string]int{"old": 5001})), r.at(0))
		a := r.join("a", translate.ClusterName("app")) // back; b is still reconnecting
		addNew(r)
		if got := statusIn(t, a.next("a: the new endpoint"), 5003); got != corev3.HealthStatus_DRAINING {
			t.Errorf("a was first sent the new endpoint as %v while b is remembered, want DRAINING", got)
		}
	})
}

// TestEnvoyJoiningBeforeTheEndpointIsHeldIsServedItFirst: b connects while a, served the new
// endpoint at once, has not ACKed it: b is served no endpoint until a has, then the endpoint
// in its first response. Had b been served the state before (without it) and placed users
// meanwhile, nothing would be lost; had it been served HEALTHY while a did not hold it, a
// user b sent there could reach a, which would move them.
func TestEnvoyJoiningBeforeTheEndpointIsHeldIsServedItFirst(t *testing.T) {
	r, es := singleRig(t, "a")
	a := es[0]
	v2 := addNew(r)
	a.next("a: the new endpoint")
	b := r.envoy("b")
	b.send(&discovery.DiscoveryRequest{ResourceNames: []string{translate.ClusterName("app")}})
	select {
	case m := <-b.resp:
		t.Fatalf("b was served endpoints (%s) before a held the one served at once", m.GetVersionInfo())
	case <-time.After(300 * time.Millisecond): // an answer would come at once
	}
	a.ack()
	r.acked("a", v2)
	r.ph.evaluate(r.at(2 * time.Second))
	if got := statusIn(t, b.next("b: its first endpoints"), 5003); got != corev3.HealthStatus_HEALTHY {
		t.Fatalf("b's first response holds the new endpoint as %v, want HEALTHY", got)
	}
}

// TestEnvoyJoiningInTheFirstPhaseIsWaitedFor: with two Envoys the endpoint is in its first
// phase; a third joining then is served it DRAINING and the promotion waits for its ACK.
func TestEnvoyJoiningInTheFirstPhaseIsWaitedFor(t *testing.T) {
	r, es := singleRig(t, "a", "b")
	v2 := addNew(r)
	r.ackNext(v2, "the new endpoint", es...)
	c := r.envoy("c")
	if got := statusIn(t, c.subscribe(translate.ClusterName("app")), 5003); got != corev3.HealthStatus_DRAINING {
		t.Fatalf("c joining in the first phase was served the endpoint as %v, want DRAINING", got)
	}
	if r.ph.evaluate(r.at(2 * time.Second)); r.promoted("app", "new") {
		t.Fatal("promoted before c, which joined in the first phase, ACKed it")
	}
	c.ack()
	r.acked("c", v2)
	if r.ph.evaluate(r.at(3 * time.Second)); !r.promoted("app", "new") {
		t.Fatal("not promoted once every Envoy ACKed it")
	}
}

// TestHeldEnvoyCountsForTheNextEndpoint: a stream that asks for endpoints counts whether or
// not it was served any (it may be an Envoy reconnecting, serving what it held): b, held back
// while a has not ACKed the first endpoint served at once, makes the next one wait its first
// phase.
func TestHeldEnvoyCountsForTheNextEndpoint(t *testing.T) {
	r, es := singleRig(t, "a")
	a := es[0]
	addNew(r)
	a.next("a: the new endpoint")
	b := r.envoy("b")
	b.send(&discovery.DiscoveryRequest{ResourceNames: []string{translate.ClusterName("app")}})
	r.waitAck("b", func(s xdscache.StreamAck) bool { return s.Watching && !s.Served })
	a.ack() // not evaluated: b stays held
	r.publish(phaseStateOf(3, phaseService("app", map[string]int{"old": 5001, "new": 5003, "next": 5004})), r.at(2*time.Second))
	if got := statusIn(t, a.next("a: the next endpoint"), 5004); got != corev3.HealthStatus_DRAINING {
		t.Fatalf("a was first sent the next endpoint as %v while b asks for endpoints, want DRAINING", got)
	}
}
