package xdscache

import (
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"

	"github.com/tetherlb/tether/internal/eventually"
)

// ackOf returns what the cache says the only stream acknowledged of endpoints, and whether
// it subscribes to a and b.
func ackOf(c *Cache) (a StreamAck, subA, subB bool) {
	c.Acks(resourcev3.EndpointType, func(s StreamAck, sub func(string) bool) {
		a, subA, subB = s, sub("a"), sub("b")
	})
	return
}

// sotwWatch binds req to the SotW stream 1 of c and creates its watch with sub, as the
// server does for each request of a stream.
func sotwWatch(t *testing.T, c *Cache, req *discovery.DiscoveryRequest, sub cachev3.Subscription) (chan cachev3.Response, func()) {
	t.Helper()
	if err := c.bindSotw(1, req); err != nil {
		t.Fatal(err)
	}
	ch := make(chan cachev3.Response, 1)
	cancel, err := c.CreateWatch(req, sub, ch)
	if err != nil {
		t.Fatal(err)
	}
	return ch, cancel
}

// TestAcksAreExact: the cache records what an Envoy acknowledged: a SotW ACK repeating the
// version sent, a delta ACK carrying the last response's nonce; an ACK is whole only if it
// covers every name subscribed (a name added after the response is not covered); a NACK keeps
// the version ACKed before.
func TestAcksAreExact(t *testing.T) {
	answers := make(chan struct{}, 64)
	closed := make(chan StreamAck, 8)
	c := New(Options{OnAnswer: func() {
		select {
		case answers <- struct{}{}:
		default:
		}
	}, OnClose: func(typeURL string, a StreamAck) {
		if typeURL == resourcev3.EndpointType {
			closed <- a
		}
	}})
	res := func(port uint32) map[string][]types.Resource {
		return map[string][]types.Resource{resourcev3.EndpointType: {cla("a", port), cla("b", port)}}
	}
	update(t, c, res(5001))
	conn := serve(t, c)
	s := openSotW(t, conn)
	node := &corev3.Node{Id: "n", Cluster: "g"}
	s.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: node, ResourceNames: []string{"a"}})
	r1 := s.recv(t, "endpoints")
	eventually.True(t, "response outstanding", 10*time.Second, func() bool { a, _, _ := ackOf(c); return a.Waiting })
	if a, subA, subB := ackOf(c); a.Version != "" || a.Group != "g" || !subA || subB {
		t.Fatalf("before any ACK: %+v (a %v, b %v)", a, subA, subB)
	}
	// Every served type visits the stream (clusters, the first of Types, too: not watched);
	// a type not served visits none.
	for url, want := range map[string]int{resourcev3.ClusterType: 1, "type.googleapis.com/made.Up": 0} {
		var got []StreamAck
		c.Acks(url, func(a StreamAck, _ func(string) bool) {
			if a.Node == "n" && !a.Watching {
				got = append(got, a)
			}
		})
		if len(got) != want {
			t.Fatalf("Acks of %s: %+v; want %d stream, not watching", url, got, want)
		}
	}
	// The ACK of r1, adding b: r1 covers a only.
	s.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, VersionInfo: r1.GetVersionInfo(), ResponseNonce: r1.GetNonce(), ResourceNames: []string{"a", "b"}})
	r2 := s.recv(t, "b's assignment")
	if len(r2.GetResources()) != 1 {
		t.Fatalf("response to b's subscription has %d assignments, want 1", len(r2.GetResources()))
	}
	if a, _, subB := ackOf(c); a.Version != r1.GetVersionInfo() || a.Whole || !a.Waiting || !subB {
		t.Fatalf("after the ACK of r1 that adds b: %+v, want r1's version, not whole (r1 lacks b), r2 waiting", a)
	}
	s.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, VersionInfo: r2.GetVersionInfo(), ResponseNonce: r2.GetNonce(), ResourceNames: []string{"a", "b"}})
	eventually.True(t, "ACK of r2", 10*time.Second, func() bool { a, _, _ := ackOf(c); return !a.Waiting })
	if a, _, _ := ackOf(c); !a.Whole || a.Version != r2.GetVersionInfo() || a.NACKed {
		t.Fatalf("after the ACK of the response holding b: %+v, want whole", a)
	}
	// A NACK keeps the version acknowledged before.
	update(t, c, res(5002))
	r3 := s.recv(t, "the change")
	s.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, VersionInfo: r2.GetVersionInfo(), ResponseNonce: r3.GetNonce(),
		ResourceNames: []string{"a", "b"}, ErrorDetail: &rpcstatus.Status{Code: 3, Message: "no"}})
	eventually.True(t, "NACK", 10*time.Second, func() bool { a, _, _ := ackOf(c); return a.NACKed })
	if a, _, _ := ackOf(c); a.Version != r2.GetVersionInfo() || a.Waiting {
		t.Fatalf("after a NACK: %+v, want version %s kept", a, r2.GetVersionInfo())
	}
	// A name added after the NACK (c, served nowhere) leaves the stream not whole.
	s.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, VersionInfo: r2.GetVersionInfo(), ResponseNonce: r3.GetNonce(),
		ResourceNames: []string{"a", "b", "c"}})
	eventually.True(t, "c subscribed", 10*time.Second, func() bool {
		sub := false
		c.Acks(resourcev3.EndpointType, func(_ StreamAck, s func(string) bool) { sub = s("c") })
		return sub
	})
	if a, _, _ := ackOf(c); a.Whole {
		t.Fatalf("c added after a NACK: %+v, want not whole", a)
	}
	if len(answers) == 0 {
		t.Error("OnAnswer was never called")
	}
	s.cancel()
	select {
	case a := <-closed:
		if a.Version != r2.GetVersionInfo() || !a.NACKed || a.Node != "n" {
			t.Errorf("OnClose told %+v; want what the stream had acknowledged (%s, then a NACK)", a, r2.GetVersionInfo())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("OnClose was not called for the closed stream")
	}
	eventually.True(t, "stream closed", 10*time.Second, func() bool {
		n := 0
		c.Acks(resourcev3.EndpointType, func(StreamAck, func(string) bool) { n++ })
		return n == 0
	})

	// Delta: the ACK is matched by nonce.
	d := openDelta(t, conn)
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: node, ResourceNamesSubscribe: []string{"a", "b"}})
	var resp *discovery.DeltaDiscoveryResponse
	select {
	case resp = <-d.resp:
	case <-time.After(10 * time.Second):
		t.Fatal("no delta response")
	}
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: resp.GetNonce()})
	eventually.True(t, "delta ACK", 10*time.Second, func() bool { a, _, _ := ackOf(c); return a.Version == resp.GetSystemVersionInfo() })
	if a, subA, subB := ackOf(c); !a.Delta || !a.Whole || !subA || !subB {
		t.Fatalf("delta ACK: %+v (a %v, b %v)", a, subA, subB)
	}
}

// TestSotWResendsADroppedResponse: go-control-plane's SotW ADS loop discards a queued
// response of a type when a request of that type arrives first (processAllExcept). The
// request then still names the version before: the cache sends again what the lost response
// carried instead of taking it as delivered (an endpoint change would be lost until the next).
func TestSotWResendsADroppedResponse(t *testing.T) {
	c := New(Options{})
	res := func(port uint32) map[string][]types.Resource {
		return map[string][]types.Resource{resourcev3.EndpointType: {cla("a", 5000), cla("b", port)}}
	}
	update(t, c, res(5001))
	c.open(StreamKey{false, 1}, "")
	names := []string{"a", "b"}
	sub := streamv3.NewSotwSubscription(names, false)
	watch := func(req *discovery.DiscoveryRequest) (chan cachev3.Response, func()) {
		return sotwWatch(t, c, req, sub)
	}
	ch, cancel := watch(&discovery.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: &corev3.Node{Id: "n"}, ResourceNames: names})
	r1, err := (<-ch).GetDiscoveryResponse()
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	ch, cancel = watch(&discovery.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, VersionInfo: r1.GetVersionInfo(), ResponseNonce: "1", ResourceNames: names})
	update(t, c, res(5002)) // b changes: a response is queued, and the server drops it
	<-ch
	cancel()
	ch, _ = watch(&discovery.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, VersionInfo: r1.GetVersionInfo(), ResponseNonce: "1", ResourceNames: names})
	select {
	case r := <-ch:
		dr, _ := r.GetDiscoveryResponse()
		got := false
		for _, a := range dr.GetResources() {
			var x endpointv3.ClusterLoadAssignment
			if a.UnmarshalTo(&x) == nil && x.GetClusterName() == "b" {
				got = x.GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetPortValue() == 5002
			}
		}
		if !got {
			t.Errorf("resent response lacks b's new assignment: %v", dr.GetResources())
		}
	default:
		t.Fatal("the change the lost response carried was never sent again")
	}
}

// TestNACKThenACKIsNotWhole: an Envoy refuses a response (it keeps what it held before), then
// ACKs the next one, which carries only what changed after the refused one. That ACK must not
// count as holding everything sent: the stream is not whole until it ACKs a response carrying
// every name it subscribes to, which the cache sends with the next change, and not at once
// (the same resources would be refused again). SotW and delta alike; a delta Envoy is sent again
// the resources it refused even though their versions did not change since.
func TestNACKThenACKIsNotWhole(t *testing.T) {
	nack := &rpcstatus.Status{Code: 3, Message: "refused"}
	for _, delta := range []bool{false, true} {
		name := "sotw"
		if delta {
			name = "delta"
		}
		t.Run(name, func(t *testing.T) {
			c := New(Options{})
			a, b := cla("a", 5001), cla("b", 5001)
			set := func() {
				update(t, c, map[string][]types.Resource{resourcev3.EndpointType: {a, b}})
			}
			set()
			conn := serve(t, c)
			node := &corev3.Node{Id: "n", Cluster: "g"}
			names := []string{"a", "b"}
			var send func(nonce, version string, err *rpcstatus.Status)
			var next func(what string) (nonce, version string, got []string)
			var queued func() int
			if delta {
				d := openDelta(t, conn)
				queued = func() int { return len(d.resp) }
				d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: node, ResourceNamesSubscribe: names})
				send = func(nonce, _ string, err *rpcstatus.Status) {
					d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: nonce, ErrorDetail: err})
				}
				next = func(what string) (string, string, []string) {
					select {
					case r := <-d.resp:
						var got []string
						for _, x := range r.GetResources() {
							got = append(got, x.GetName())
						}
						return r.GetNonce(), r.GetSystemVersionInfo(), got
					case <-time.After(10 * time.Second):
						t.Fatalf("%s: no delta response", what)
					}
					return "", "", nil
				}
			} else {
				s := openSotW(t, conn)
				queued = func() int { return len(s.resp) }
				s.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: node, ResourceNames: names})
				last := ""
				send = func(nonce, version string, err *rpcstatus.Status) {
					if err != nil {
						version = last // a NACK repeats the version accepted before
					} else {
						last = version
					}
					s.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, VersionInfo: version, ResponseNonce: nonce, ResourceNames: names, ErrorDetail: err})
				}
				next = func(what string) (string, string, []string) {
					r := s.recv(t, what)
					var got []string
					for _, x := range r.GetResources() {
						var m endpointv3.ClusterLoadAssignment
						if err := x.UnmarshalTo(&m); err != nil {
							t.Fatal(err)
						}
						got = append(got, m.GetClusterName())
					}
					return r.GetNonce(), r.GetVersionInfo(), got
				}
			}
			n, v, _ := next("first response")
			send(n, v, nil)
			eventually.True(t, "first ACK", 10*time.Second, func() bool { s, _, _ := ackOf(c); return s.Whole && !s.Waiting })

			// a changes; the Envoy refuses it.
			a = cla("a", 5002)
			set()
			n, v, got := next("a's change")
			if !slices.Equal(got, []string{"a"}) {
				t.Fatalf("a's change carried %v", got)
			}
			send(n, v, nack)
			eventually.True(t, "NACK", 10*time.Second, func() bool { s, _, _ := ackOf(c); return s.NACKed })
			time.Sleep(200 * time.Millisecond) // nothing is resent at once: it would be refused again
			if n := queued(); n != 0 {
				t.Fatalf("%d responses sent right after the NACK, want none until the next change", n)
			}
			// b changes; the response carries every name again (a's refused version too).
			b = cla("b", 5002)
			set()
			n, v, got = next("b's change")
			if !slices.Equal(got, []string{"a", "b"}) {
				t.Fatalf("the first response after a NACK carried %v, want every name (a, b)", got)
			}
			if s, _, _ := ackOf(c); s.Whole {
				t.Fatalf("before the ACK of the resync: %+v, want not whole", s)
			}
			send(n, v, nil)
			eventually.True(t, "ACK of the resync", 10*time.Second, func() bool { s, _, _ := ackOf(c); return !s.Waiting })
			if s, _, _ := ackOf(c); !s.Whole || s.Version != v || s.NACKed {
				t.Fatalf("after the ACK of the resync: %+v, want whole at %s", s, v)
			}
		})
	}
}

// TestAcksWhileSubscriptionsChange: Acks (the two-phase publication asks it on every ACK
// burst) may run while go-control-plane's delta server edits a stream's subscription map, which
// it does between cancelling a watch and creating the next, outside this cache's lock. Acks
// must answer "subscribed" from the cache's own index, never from the server's map: under
// -race a read of the server's map shows as a data race (and could be a fatal concurrent map
// access in production).
func TestAcksWhileSubscriptionsChange(t *testing.T) {
	c := New(Options{})
	update(t, c, map[string][]types.Resource{resourcev3.EndpointType: {cla("a", 5000), cla("b", 5001)}})
	d := openDelta(t, serve(t, c))
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: &corev3.Node{Id: "n"}, ResourceNamesSubscribe: []string{"a"}})
	d.next(t, "first response")
	stop := make(chan struct{})
	done := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				done <- n
				return
			default:
			}
			c.Acks(resourcev3.EndpointType, func(_ StreamAck, subscribed func(string) bool) {
				if subscribed("b") {
					n++
				}
			})
		}
	}()
	for i := range 200 {
		req := &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{"b"}}
		if i%2 == 1 {
			req = &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesUnsubscribe: []string{"b"}}
		}
		d.send(t, req)
	}
	// The last request unsubscribed b: once the cache has seen it, Acks says so.
	eventually.True(t, "the last unsubscription", 10*time.Second, func() bool {
		sub := true
		c.Acks(resourcev3.EndpointType, func(_ StreamAck, subscribed func(string) bool) { sub = subscribed("b") })
		return !sub
	})
	close(stop)
	if n := <-done; n == 0 {
		t.Log("Acks never saw b subscribed while the subscriptions changed")
	}
}

// TestDeltaAcksAreExact: a delta answer counts only with the nonce of the last response sent
// (an Envoy answering an older response holds no newer one), and a new subscription makes
// the stream's ACK not whole until the response carrying the new name is ACKed.
func TestDeltaAcksAreExact(t *testing.T) {
	c := New(Options{})
	res := func(port uint32) map[string][]types.Resource {
		return map[string][]types.Resource{resourcev3.EndpointType: {cla("a", port), cla("b", port)}}
	}
	update(t, c, res(5001))
	conn := serve(t, c)
	d := openDelta(t, conn)
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: &corev3.Node{Id: "n", Cluster: "g"},
		ResourceNamesSubscribe: []string{"a"}})
	r1 := d.recv(t, "a's assignment")
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: r1.GetNonce()})
	eventually.True(t, "the ACK of a's assignment", 10*time.Second, func() bool { a, _, _ := ackOf(c); return !a.Waiting && a.Version != "" })
	if a, _, _ := ackOf(c); !a.Whole {
		t.Fatalf("after the ACK of the only name subscribed: %+v, want whole", a)
	}
	// b is asked for: the ACK of a's assignment does not cover it.
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{"b"}})
	r2 := d.recv(t, "b's assignment")
	if a, _, subB := ackOf(c); !subB || a.Whole || !a.Waiting {
		t.Fatalf("b subscribed, its assignment sent and not ACKed: %+v (b subscribed %v), want not whole", a, subB)
	}
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: r2.GetNonce()})
	eventually.True(t, "the ACK of b's assignment", 10*time.Second, func() bool { a, _, _ := ackOf(c); return !a.Waiting })
	acked := r2.GetSystemVersionInfo()
	if a, _, _ := ackOf(c); !a.Whole || a.Version != acked {
		t.Fatalf("after the ACK of b's assignment: %+v, want whole at %s", a, acked)
	}
	// A change is sent; the Envoy answers with the nonce of an older response, then asks for
	// c (which exists nowhere): once c is subscribed, the stale answer was read before it.
	update(t, c, res(5002))
	r3 := d.recv(t, "the change")
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: r1.GetNonce()})
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{"c"}})
	subscribedC := func() bool {
		sub := false
		c.Acks(resourcev3.EndpointType, func(_ StreamAck, s func(string) bool) { sub = s("c") })
		return sub
	}
	eventually.True(t, "c subscribed", 10*time.Second, subscribedC)
	if a, _, _ := ackOf(c); a.Version != acked || !a.Waiting {
		t.Fatalf("after an answer with a stale nonce: %+v, want still %s, the change (%s) unanswered", a, acked, r3.GetSystemVersionInfo())
	}
	// The change is refused: the Envoy holds what it ACKed before, and the stream is not
	// whole, whatever subscriptions came between (here c's, after the ACK).
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: r3.GetNonce(),
		ErrorDetail: &rpcstatus.Status{Code: 3, Message: "refused"}})
	eventually.True(t, "the NACK of the change", 10*time.Second, func() bool { a, _, _ := ackOf(c); return a.NACKed })
	if a, _, _ := ackOf(c); a.Whole || a.Version != acked || a.Waiting {
		t.Fatalf("after the NACK of the change: %+v, want not whole, still %s", a, acked)
	}
}

// TestSubscriptionSwitchesForgetTheOldNames: a SotW Envoy asking for endpoints by name, then
// for all of them ("*"), then for another name, subscribes to that name only; and
// after a NACK, the switch leaves the stream not whole until the Envoy ACKs its response.
func TestSubscriptionSwitchesForgetTheOldNames(t *testing.T) {
	c := New(Options{})
	res := func(port uint32) map[string][]types.Resource {
		return map[string][]types.Resource{resourcev3.EndpointType: {cla("a", port), cla("b", port)}}
	}
	update(t, c, res(5001))
	s := openSotW(t, serve(t, c))
	ask := func(names []string, r *discovery.DiscoveryResponse, nack bool) {
		t.Helper()
		req := &discovery.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: &corev3.Node{Id: "n"}, ResourceNames: names,
			VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()}
		if nack {
			req.ErrorDetail = &rpcstatus.Status{Code: 3, Message: "refused"}
		}
		s.send(t, req)
	}
	ask([]string{"a"}, nil, false)
	r1 := s.recv(t, "a")
	ask([]string{"a"}, r1, false)
	eventually.True(t, "the ACK of a", 10*time.Second, func() bool { a, _, _ := ackOf(c); return a.Whole && !a.Waiting })
	update(t, c, res(5002))
	r2 := s.recv(t, "a's change")
	ask([]string{"a"}, r2, true)
	eventually.True(t, "the NACK of a's change", 10*time.Second, func() bool { a, _, _ := ackOf(c); return a.NACKed })
	ask([]string{"*"}, r2, false) // every assignment
	r3 := s.recv(t, "every assignment")
	if a, subA, subB := ackOf(c); a.Whole || !a.Waiting || !subA || !subB {
		t.Fatalf("after switching to every assignment, its response unanswered: %+v (a %v, b %v); want not whole, both subscribed", a, subA, subB)
	}
	ask([]string{"*"}, r3, false)
	eventually.True(t, "the ACK of every assignment", 10*time.Second, func() bool { a, _, _ := ackOf(c); return a.Whole && !a.Waiting })
	ask([]string{"b"}, r3, false)
	r4 := s.recv(t, "b alone")
	ask([]string{"b"}, r4, false)
	eventually.True(t, "b alone subscribed", 10*time.Second, func() bool { a, subA, subB := ackOf(c); return subB && !subA && !a.Waiting })
	update(t, c, res(5003))
	if r5 := s.recv(t, "the change of both"); len(r5.GetResources()) != 1 {
		t.Fatalf("subscribed to b alone, the change of a and b sent %d assignments; want b's", len(r5.GetResources()))
	}
}

// TestResumeAtTheCurrentVersionsIsAcknowledged: a delta Envoy that reconnects declaring the
// current version of everything it subscribes to is sent nothing and will send no ACK: what
// it holds counts as acknowledged. One that holds nothing and subscribes to a name served
// nowhere is sent nothing either, and has acknowledged nothing.
func TestResumeAtTheCurrentVersionsIsAcknowledged(t *testing.T) {
	c := New(Options{})
	v := update(t, c, map[string][]types.Resource{resourcev3.EndpointType: {cla("a", 5000)}})[resourcev3.EndpointType]
	conn := serve(t, c)
	for _, tc := range []struct {
		node    string
		names   []string
		held    map[string]string
		version string
	}{
		{"resumed", []string{"a"}, map[string]string{"a": c.types[typeIndex(resourcev3.EndpointType)].entries["a"].version}, v},
		{"new", []string{"nowhere"}, nil, ""},
	} {
		d := openDelta(t, conn)
		d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: &corev3.Node{Id: tc.node}, ResourceNamesSubscribe: tc.names,
			InitialResourceVersions: tc.held})
		var got StreamAck
		eventually.True(t, tc.node+": the request read", 10*time.Second, func() bool {
			seen := false
			c.Acks(resourcev3.EndpointType, func(a StreamAck, _ func(string) bool) {
				if a.Node == tc.node && a.Watching {
					got, seen = a, true
				}
			})
			return seen
		})
		if got.Version != tc.version || got.Whole != (tc.version != "") || got.Served || got.Waiting {
			t.Errorf("%s: %+v; want version %q, nothing sent", tc.node, got, tc.version)
		}
		select {
		case r := <-d.resp:
			t.Errorf("%s: sent %v", tc.node, r)
		default:
		}
	}
}

// TestCancelDisarmsOnlyItsOwnWatch: the cancel of a watch the server replaced leaves the newer
// one armed (a change reaches it), and a cancelled watch is not answered.
func TestCancelDisarmsOnlyItsOwnWatch(t *testing.T) {
	c := New(Options{})
	res := func(port uint32) map[string][]types.Resource {
		return map[string][]types.Resource{resourcev3.EndpointType: {cla("a", port)}}
	}
	update(t, c, res(5000))
	c.open(StreamKey{false, 1}, "")
	names := []string{"a"}
	watch := func(req *discovery.DiscoveryRequest) (chan cachev3.Response, func()) {
		return sotwWatch(t, c, req, streamv3.NewSotwSubscription(names, false))
	}
	ch, cancel1 := watch(&discovery.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: &corev3.Node{Id: "n"}, ResourceNames: names})
	r1, err := (<-ch).GetDiscoveryResponse()
	if err != nil {
		t.Fatal(err)
	}
	ch, cancel2 := watch(&discovery.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, VersionInfo: r1.GetVersionInfo(), ResponseNonce: "1", ResourceNames: names})
	cancel1() // late: its watch was replaced
	update(t, c, res(5001))
	var r2 *discovery.DiscoveryResponse
	select {
	case r := <-ch:
		if r2, err = r.GetDiscoveryResponse(); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatal("the cancel of a replaced watch disarmed the newer one: a change was not sent")
	}
	cancel2()
	ch, cancel3 := watch(&discovery.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, VersionInfo: r2.GetVersionInfo(), ResponseNonce: "2", ResourceNames: names})
	cancel3()
	update(t, c, res(5002))
	select {
	case r := <-ch:
		t.Fatalf("a cancelled watch was answered: %v", r)
	default:
	}
}
