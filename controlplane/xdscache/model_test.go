package xdscache

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
)

// envoyModel is what a delta Envoy holds of each type, name -> version, applied from the
// responses as Envoy applies them.
type envoyModel struct {
	held map[string]map[string]string
	subs map[string]struct{} // endpoint names subscribed
	// resent counts endpoint resources sent at the version the Envoy already held.
	resent []string
}

// TestDeltaStreamRandomized drives one delta Envoy through random changes of the resources
// and of its endpoint subscription, with NACKs, reconnecting now and then with its
// initial_resource_versions, against a model of what it holds. After every step the Envoy
// comes to hold exactly what it subscribes to at the cache's versions (wildcard clusters: all
// of them), is told of every removal, and is never sent an endpoint at the version it holds.
func TestDeltaStreamRandomized(t *testing.T) {
	for seed := uint64(1); seed <= 6; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { deltaRandomized(t, seed, 100, Options{}) })
	}
}

// TestDeltaStreamRandomizedTightBudget is the same with a byte budget smaller than any
// response: each response waits until the last one is answered, and what goes is built from
// the state of then, with whatever changed or was subscribed while it waited.
func TestDeltaStreamRandomizedTightBudget(t *testing.T) {
	for seed := uint64(1); seed <= 6; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { deltaRandomized(t, seed, 100, Options{MaxInflightBytes: 1}) })
	}
}

func deltaRandomized(t *testing.T, seed uint64, steps int, opts Options) {
	rng := rand.New(rand.NewPCG(seed, 99))
	c := New(opts)
	names := []string{"a", "b", "c", "d", "e"}
	state := map[string]uint32{} // endpoint name -> port; clusters: the same names
	clusterTimeout := map[string]int{}
	publish := func() {
		res := map[string][]types.Resource{}
		for _, n := range slices.Sorted(maps.Keys(state)) {
			res[resourcev3.EndpointType] = append(res[resourcev3.EndpointType], cla(n, state[n]))
		}
		for _, n := range slices.Sorted(maps.Keys(clusterTimeout)) {
			res[resourcev3.ClusterType] = append(res[resourcev3.ClusterType], cluster(n, time.Duration(clusterTimeout[n])*time.Second))
		}
		update(t, c, res)
	}
	change := func() {
		for _, n := range names {
			if rng.IntN(5) == 0 { // absent
				delete(state, n)
				delete(clusterTimeout, n)
				continue
			}
			if _, ok := state[n]; !ok || rng.IntN(2) == 0 {
				state[n] = uint32(1 + rng.IntN(3)) // A -> B -> A happens
			}
			if _, ok := clusterTimeout[n]; !ok || rng.IntN(3) == 0 {
				clusterTimeout[n] = 1 + rng.IntN(2)
			}
		}
		publish()
	}
	// changeEvery changes every resource there is, so that every watcher has something to send.
	changeEvery := func() {
		for n, p := range state {
			state[n] = 1 + p%3
		}
		for n, to := range clusterTimeout {
			clusterTimeout[n] = 3 - to
		}
		publish()
	}
	// changeOne changes one endpoint, one of subs if any is there, and one cluster: the rest
	// keep their versions. An endpoint the Envoy does not subscribe to would send it nothing,
	// and refused endpoints come again only with a change it is sent.
	changeOne := func(subs map[string]struct{}) {
		ns := slices.Sorted(maps.Keys(state))
		if sub := slices.DeleteFunc(slices.Clone(ns), func(n string) bool { _, ok := subs[n]; return !ok }); len(sub) > 0 {
			ns = sub
		}
		if len(ns) > 0 {
			n := ns[rng.IntN(len(ns))]
			state[n] = 1 + state[n]%3
		}
		if ns := slices.Sorted(maps.Keys(clusterTimeout)); len(ns) > 0 {
			n := ns[rng.IntN(len(ns))]
			clusterTimeout[n] = 3 - clusterTimeout[n]
		}
		publish()
	}
	change()
	conn := serve(t, c)
	node := &corev3.Node{Id: "n", Cluster: "g"}
	m := &envoyModel{held: map[string]map[string]string{resourcev3.ClusterType: {}, resourcev3.EndpointType: {}}, subs: map[string]struct{}{}}

	var d *deltaStream
	// edsOpen: this stream asked for endpoints. A first request with no name subscribed is a
	// (legacy) wildcard subscription, which Envoy's EDS never makes.
	edsOpen := false
	connect := func() {
		d = openDelta(t, conn)
		edsOpen = len(m.subs) > 0
		// Resume as Envoy does: clusters wildcard, endpoints by name, with what it holds.
		d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, Node: node,
			InitialResourceVersions: maps.Clone(m.held[resourcev3.ClusterType])})
		if len(m.subs) > 0 {
			d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: node,
				ResourceNamesSubscribe: slices.Sorted(maps.Keys(m.subs)), InitialResourceVersions: maps.Clone(m.held[resourcev3.EndpointType])})
		}
	}
	connect()
	nackNext := false
	apply := func(r *discovery.DeltaDiscoveryResponse) {
		typ := r.GetTypeUrl()
		if nackNext {
			nackNext = false
			d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: typ, ResponseNonce: r.GetNonce(), ErrorDetail: &status.Status{Message: "refused"}})
			return // Envoy keeps what it held
		}
		h := m.held[typ]
		for _, res := range r.GetResources() {
			if typ == resourcev3.EndpointType {
				if _, ok := m.subs[res.GetName()]; !ok {
					continue // an answer to a subscription since withdrawn
				}
				if h[res.GetName()] == res.GetVersion() {
					m.resent = append(m.resent, res.GetName()+"@"+res.GetVersion())
				}
			}
			h[res.GetName()] = res.GetVersion()
		}
		for _, n := range r.GetRemovedResources() {
			delete(h, n)
		}
		d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: typ, ResponseNonce: r.GetNonce()})
	}
	want := func() map[string]map[string]string {
		c.mu.Lock()
		defer c.mu.Unlock()
		w := map[string]map[string]string{resourcev3.ClusterType: {}, resourcev3.EndpointType: {}}
		for n, e := range c.types[typeIndex(resourcev3.ClusterType)].entries {
			w[resourcev3.ClusterType][n] = e.version
		}
		for n := range m.subs {
			if e := c.types[typeIndex(resourcev3.EndpointType)].entries[n]; e != nil {
				w[resourcev3.EndpointType][n] = e.version
			}
		}
		return w
	}
	settle := func(step int, what string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			w := want()
			if maps.EqualFunc(w, m.held, maps.Equal) {
				// Drain what is still on its way, then check again.
				select {
				case r := <-d.resp:
					apply(r)
					continue
				case <-time.After(10 * time.Millisecond):
					return
				}
			}
			select {
			case r := <-d.resp:
				apply(r)
			case err := <-d.err:
				t.Fatalf("step %d (%s): stream ended: %v", step, what, err)
			case <-deadline:
				t.Fatalf("step %d (%s): the Envoy holds\n%v\nwant\n%v", step, what, m.held, w)
			}
		}
	}
	settle(0, "connect")
	for step := 1; step <= steps; step++ {
		var what string
		switch k := rng.IntN(11); {
		case k == 10:
			// A cluster named on the wildcard subscription, or unsubscribed: the Envoy stays
			// wildcard, and an unsubscribed name it named is sent again or removed (the server
			// marks it unknown).
			n := names[rng.IntN(len(names))]
			req := &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, Node: node}
			if rng.IntN(2) == 0 {
				what = "name cluster " + n
				req.ResourceNamesSubscribe = []string{n}
			} else {
				what = "unsubscribe cluster " + n
				req.ResourceNamesUnsubscribe = []string{n}
			}
			d.send(t, req)
		case k < 4:
			what = "change"
			change()
		case k < 6:
			n := names[rng.IntN(len(names))]
			what = "subscribe " + n
			m.subs[n] = struct{}{}
			edsOpen = true
			d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: node, ResourceNamesSubscribe: []string{n}})
		case k < 8:
			if !edsOpen {
				continue
			}
			n := names[rng.IntN(len(names))]
			what = "unsubscribe " + n
			delete(m.subs, n)
			delete(m.held[resourcev3.EndpointType], n) // Envoy forgets it
			d.send(t, &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: node, ResourceNamesUnsubscribe: []string{n}})
		case k < 9:
			// The next response is refused; nothing is sent again until the next change, which
			// brings everything the Envoy lacks: the refused resources that did not change too.
			what = "NACK, then change one"
			if len(state) == 0 {
				continue
			}
			nackNext = true
			changeEvery()
			deadline := time.After(10 * time.Second)
			for nackNext {
				select {
				case r := <-d.resp:
					apply(r)
				case <-deadline:
					t.Fatalf("step %d: no response to refuse", step)
				}
			}
			changeOne(m.subs)
		default:
			what = "reconnect"
			d.s.CloseSend() //nolint:errcheck // the stream is dropped either way
			connect()
		}
		if testing.Verbose() {
			t.Logf("step %d: %s", step, what)
		}
		settle(step, what)
	}
	if len(m.resent) > 0 {
		t.Errorf("endpoints sent at the version the Envoy held: %v", m.resent)
	}
	if opts.MaxInflightBytes > 0 && opts.MaxInflightBytes < 1024 && c.Budget().Waited == 0 {
		t.Error("no response waited for the budget: the tight budget was not exercised")
	}
}
