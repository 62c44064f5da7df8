package xdscache

import (
	"fmt"
	"runtime"
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
	if resp := ok.next(t, "at the bound"); len(resp.GetResources()) != 2 {
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
	if resp := s.next(t, "asked before the first update"); len(resp.GetResources()) != 0 {
		t.Fatalf("got %d resources", len(resp.GetResources()))
	}
	update(t, c, map[string][]types.Resource{resourcev3.EndpointType: many[:2]})
	names := make([]string, 0, 3000)
	for i := range 3000 {
		names = append(names, fmt.Sprintf("c-%04d", i))
	}
	s2 := openSotW(t, conn)
	s2.send(t, &discovery.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: &corev3.Node{Id: "n2"}, ResourceNames: names})
	if resp := s2.next(t, "just after a mass removal"); len(resp.GetResources()) != 2 {
		t.Fatalf("got %d resources; want 2", len(resp.GetResources()))
	}
	if got := r.get(RefuseNames); got != 0 {
		t.Errorf("%d refusals; want none", got)
	}
}
