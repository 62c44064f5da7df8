package xdscache

import (
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tetherlb/tether/internal/eventually"
)

// refusals counts the cache's refusals by reason.
type refusals struct {
	mu sync.Mutex
	n  map[string]int
}

func (r *refusals) add(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n[reason]++
}

func (r *refusals) get(reason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[reason]
}

func unknownNames(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%06d", prefix, i)
	}
	return out
}

// heapMB is the live heap after a collection.
func heapMB() float64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return float64(m.HeapAlloc) / (1 << 20)
}

// TestSubscribedNamesBounded: a delta stream subscribing batch after batch of names that are
// not served (8 x 40,000 once took the control plane's heap from 6.7 to 66.7 MB) is ended
// with InvalidArgument once it subscribes more than the served names plus the margin, and
// counted; the names it sent are not kept. Subscribing to what is served stays possible.
func TestSubscribedNamesBounded(t *testing.T) {
	r := &refusals{n: map[string]int{}}
	c := New(Options{OnRefuse: r.add})
	update(t, c, map[string][]types.Resource{resourcev3.EndpointType: {cla("a", 1), cla("b", 2)}})
	conn := serve(t, c)

	before := heapMB()
	d := openDelta(t, conn)
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: &corev3.Node{Id: "n", Cluster: "edge"},
		ResourceNamesSubscribe: []string{"a", "b"}})
	if names, _ := d.next(t, "served endpoints"); len(names) != 2 {
		t.Fatalf("got %v; want a and b", names)
	}
	var err error
	for i := range 8 {
		if e := d.s.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType,
			ResourceNamesSubscribe: unknownNames(fmt.Sprint("x", i), 40000)}); e != nil {
			break // the server ended the stream
		}
	}
	select {
	case err = <-d.err:
	case <-time.After(10 * time.Second):
		t.Fatal("a stream subscribing 320,000 unknown names is still open after 10 s")
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("stream ended with %v; want InvalidArgument", err)
	}
	if got := r.get(RefuseNames); got != 1 {
		t.Errorf("%d refusals counted for names; want 1", got)
	}
	eventually.True(t, "the refused stream forgotten", 10*time.Second, func() bool { return len(c.Groups()) == 0 })
	after := heapMB()
	t.Logf("heap %.1f MB before, %.1f MB after the refused stream", before, after)
	if after-before > 5 {
		t.Errorf("heap grew by %.1f MB after a refused stream; want it released", after-before)
	}

	// SotW: one request naming more than the margin is refused the same way.
	s := openSotW(t, conn)
	s.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: &corev3.Node{Id: "n"},
		ResourceNames: unknownNames("y", DefaultNameMargin+3)})
	select {
	case err := <-s.err:
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("SotW stream ended with %v; want InvalidArgument", err)
		}
	case <-s.resp:
		t.Fatal("a SotW request naming more than the margin was answered")
	case <-time.After(10 * time.Second):
		t.Fatal("a SotW stream naming too many names is still open after 10 s")
	}
	if got := r.get(RefuseNames); got != 2 {
		t.Errorf("%d refusals counted for names; want 2", got)
	}

	// Exactly at the bound (served + margin) is accepted.
	ok := openSotW(t, conn)
	ok.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: &corev3.Node{Id: "n"},
		ResourceNames: append(unknownNames("z", DefaultNameMargin), "a", "b")})
	if resp := ok.recv(t, "at the bound"); len(resp.GetResources()) != 2 {
		t.Errorf("got %d resources; want 2", len(resp.GetResources()))
	}
}

// TestClientSizedFieldsBounded: a node ID or cluster, a subscribed name or an initial version
// over MaxFieldBytes, and a node over MaxNodeBytes, end the stream with InvalidArgument before
// anything keeps or logs them.
func TestClientSizedFieldsBounded(t *testing.T) {
	r := &refusals{n: map[string]int{}}
	c := New(Options{OnRefuse: r.add})
	update(t, c, map[string][]types.Resource{resourcev3.EndpointType: {cla("a", 1)}})
	conn := serve(t, c)
	long := strings.Repeat("n", MaxFieldBytes+1)
	huge := strings.Repeat("m", 1<<20)
	cases := []struct {
		name   string
		reason string
		req    *discovery.DeltaDiscoveryRequest
	}{
		{"node ID", RefuseField, &discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: long}}},
		{"node cluster", RefuseField, &discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "n", Cluster: long}}},
		{"node metadata", RefuseField, &discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "n", UserAgentName: huge}}},
		{"subscribed name", RefuseField, &discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "n"}, ResourceNamesSubscribe: []string{long}}},
		{"nonce", RefuseField, &discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "n"}, ResponseNonce: long}},
		{"unsubscribed name", RefuseField, &discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "n"}, ResourceNamesUnsubscribe: []string{long}}},
		{"initial version", RefuseField, &discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "n"}, InitialResourceVersions: map[string]string{"a": long}}},
	}
	for i, tc := range cases {
		tc.req.TypeUrl = resourcev3.EndpointType
		d := openDelta(t, conn)
		d.send(t, tc.req)
		select {
		case err := <-d.err:
			if status.Code(err) != codes.InvalidArgument {
				t.Errorf("%s: stream ended with %v; want InvalidArgument", tc.name, err)
			}
			if len(err.Error()) > 512 {
				t.Errorf("%s: the error carries %d bytes; want the client's value left out", tc.name, len(err.Error()))
			}
		case <-d.resp:
			t.Errorf("%s over the bound was answered", tc.name)
		case <-time.After(10 * time.Second):
			t.Fatalf("%s over the bound: stream still open after 10 s", tc.name)
		}
		if got := r.get(tc.reason); got != i+1 {
			t.Errorf("%s: %d refusals counted; want %d", tc.name, got, i+1)
		}
	}

	// Every field exactly at its bound is accepted: a node of MaxNodeBytes whose ID and
	// cluster are MaxFieldBytes, and names, versions and nonces of MaxFieldBytes.
	refused := r.get(RefuseField)
	at := func(c byte) string { return strings.Repeat(string(c), MaxFieldBytes) }
	node := &corev3.Node{Id: at('i'), Cluster: at('c')}
	// A user agent name filling the node; its length's own size settles in a step or two.
	n := MaxNodeBytes - proto.Size(node) - 4
	for range 4 {
		node.UserAgentName = strings.Repeat("u", n)
		n += MaxNodeBytes - proto.Size(node)
	}
	if n := proto.Size(node); n != MaxNodeBytes {
		t.Fatalf("node of %d bytes; want %d", n, MaxNodeBytes)
	}
	d := openDelta(t, conn)
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: node, ResponseNonce: at('o'),
		ResourceNamesSubscribe: []string{"a", at('s')}, ResourceNamesUnsubscribe: []string{at('x')},
		InitialResourceVersions: map[string]string{at('s'): at('v')}})
	if names, _ := d.next(t, "delta: every field at its bound"); !slices.Equal(names, []string{"a"}) {
		t.Errorf("delta at the bounds: sent %v; want [a]", names)
	}
	s := openSotW(t, conn)
	s.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: node, VersionInfo: at('v'), ResourceNames: []string{"a", at('s')}})
	r1 := s.recv(t, "sotw: every field at its bound")
	// A nonce this server never sent: it drops the request, and must not end the stream.
	s.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, VersionInfo: r1.GetVersionInfo(), ResponseNonce: at('o'), ResourceNames: []string{"a", at('s')}})
	s.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, VersionInfo: r1.GetVersionInfo(), ResponseNonce: r1.GetNonce(), ResourceNames: []string{"a", at('s')}})
	update(t, c, map[string][]types.Resource{resourcev3.EndpointType: {cla("a", 2)}})
	if r2 := s.recv(t, "sotw: the change after a nonce at its bound"); len(r2.GetResources()) != 1 {
		t.Errorf("sotw change: %d assignments; want 1", len(r2.GetResources()))
	}
	if got := r.get(RefuseField); got != refused {
		t.Errorf("%d refusals of fields at their bound", got-refused)
	}
}

// TestNameBoundFollowsRecentPeak: Envoys may ask for names of a larger registry than the
// one served for a moment (a restarted control plane before its first update; a mass
// removal, whose unsubscriptions cross the push): the bound follows the largest count served
// within NamePeakHold, and before the first update it is NamesBeforeUpdate.
func TestNameBoundFollowsRecentPeak(t *testing.T) {
	r := &refusals{n: map[string]int{}}
	c := New(Options{OnRefuse: r.add, NamesBeforeUpdate: 5000})
	conn := serve(t, c)
	s := openSotW(t, conn)
	s.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: &corev3.Node{Id: "n"}, ResourceNames: unknownNames("a", 4000)})
	many := make([]types.Resource, 3000)
	for i := range many {
		many[i] = cla(fmt.Sprintf("c-%04d", i), 1)
	}
	// The cache answers no one before its first update (it holds no configuration yet); the
	// stream that asked for 4,000 names before it is answered by it, not refused.
	update(t, c, map[string][]types.Resource{resourcev3.EndpointType: many})
	if resp := s.recv(t, "asked before the first update"); len(resp.GetResources()) != 0 {
		t.Fatalf("got %d resources", len(resp.GetResources()))
	}
	update(t, c, map[string][]types.Resource{resourcev3.EndpointType: many[:2]})
	names := make([]string, 0, 3000)
	for i := range 3000 {
		names = append(names, fmt.Sprintf("c-%04d", i))
	}
	s2 := openSotW(t, conn)
	s2.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: &corev3.Node{Id: "n2"}, ResourceNames: names})
	if resp := s2.recv(t, "just after a mass removal"); len(resp.GetResources()) != 2 {
		t.Fatalf("got %d resources; want 2", len(resp.GetResources()))
	}
	if got := r.get(RefuseNames); got != 0 {
		t.Errorf("%d refusals; want none", got)
	}
	// The peak served again restarts its hold: 50 s into the hold, the 3,000 are back.
	ep := typeIndex(resourcev3.EndpointType)
	c.mu.Lock()
	c.peakAt[ep] = time.Now().Add(-50 * time.Second)
	c.mu.Unlock()
	update(t, c, map[string][]types.Resource{resourcev3.EndpointType: many})
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.peak[ep] != 3000 || time.Since(c.peakAt[ep]) > 10*time.Second {
		t.Errorf("the peak served again: peak %d since %v; want 3000, its hold restarted", c.peak[ep], time.Since(c.peakAt[ep]))
	}
}

// TestNameBoundIsExact: a delta stream may subscribe exactly served + margin names, counted
// after the request's subscriptions and unsubscriptions, and unsubscribe or declare initial
// versions of as many in one request; one more is refused. Clusters are bounded as endpoints
// are, in both protocols.
func TestNameBoundIsExact(t *testing.T) {
	r := &refusals{n: map[string]int{}}
	c := New(Options{OnRefuse: r.add, NameMargin: 4}) // served 2: the bound is 2 + 4
	update(t, c, map[string][]types.Resource{resourcev3.EndpointType: {cla("a", 1), cla("b", 2)}})
	conn := serve(t, c)
	node := &corev3.Node{Id: "n"}
	u := unknownNames("u", 6)
	refused := func(what string, err chan error) {
		t.Helper()
		select {
		case e := <-err:
			if status.Code(e) != codes.InvalidArgument {
				t.Fatalf("%s: stream ended with %v; want InvalidArgument", what, e)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: stream still open after 10 s", what)
		}
	}
	expect := func(d *deltaStream, what string, want ...string) {
		t.Helper()
		if names, _ := d.next(t, what); !slices.Equal(names, want) {
			t.Fatalf("%s: sent %v; want %v", what, names, want)
		}
	}
	d := openDelta(t, conn)
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: node, ResourceNamesSubscribe: append([]string{"a"}, u[:5]...)})
	expect(d, "six names subscribed", "a")
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{"b"}, ResourceNamesUnsubscribe: []string{u[4]}})
	expect(d, "one name for another", "b")
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesUnsubscribe: append([]string{"a", "b"}, u[:4]...)})
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{"a"}})
	expect(d, "a again, after six names unsubscribed at once", "a")
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: u})
	refused("seven names", d.err)

	iv := map[string]string{"a": "old", "b": "old"}
	for _, n := range u[:4] {
		iv[n] = "old"
	}
	d = openDelta(t, conn)
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: node,
		ResourceNamesSubscribe: append([]string{"a", "b"}, u[:4]...), InitialResourceVersions: iv})
	expect(d, "six initial versions", "a", "b")

	// No cluster is served: the bound is the margin.
	d = openDelta(t, conn)
	d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, Node: node, ResourceNamesSubscribe: u[:5]})
	refused("delta: five clusters", d.err)
	s := openSotW(t, conn)
	s.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, Node: node, ResourceNames: u[:5]})
	refused("sotw: five clusters", s.err)
	if got := r.get(RefuseNames); got != 3 {
		t.Errorf("%d refusals; want 3", got)
	}
}
