package bench

import (
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tetherlb/tether/internal/xdsclient"
)

// sig is what an Envoy sees of one instance in its service's ClusterLoadAssignment.
type sig struct {
	present bool
	health  corev3.HealthStatus
	weight  uint32
}

// sigOf finds the endpoint address:port in cla.
func sigOf(cla *endpointv3.ClusterLoadAssignment, addr string, port uint32) sig {
	for _, loc := range cla.GetEndpoints() {
		for _, lb := range loc.GetLbEndpoints() {
			sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
			if sa.GetAddress() == addr && sa.GetPortValue() == port {
				return lbSig(lb)
			}
		}
	}
	return sig{}
}

func lbSig(lb *endpointv3.LbEndpoint) sig {
	return sig{present: true, health: lb.GetHealthStatus(), weight: lb.GetLoadBalancingWeight().GetValue()}
}

// claOf returns m as a ClusterLoadAssignment, decoding it when a light client handed it
// over in its wire form; nil when it is neither.
func claOf(m proto.Message) *endpointv3.ClusterLoadAssignment {
	switch r := m.(type) {
	case *endpointv3.ClusterLoadAssignment:
		return r
	case *anypb.Any:
		var cla endpointv3.ClusterLoadAssignment
		if r.UnmarshalTo(&cla) == nil {
			return &cla
		}
	}
	return nil
}

// pending is one change waiting to be seen by every Envoy and by the etcd watch.
type pending struct {
	cluster string
	key     string
	addr    string
	port    uint32
	want    sig

	seen      []time.Time // per Envoy, zero until it holds the change
	remaining int
	floor     time.Time     // when the harness's own etcd watch saw the key change
	floorSeen chan struct{} // closed when floor is set
	done      chan struct{}
	// sigs are what the assignments received show of the instance, by their wire form: a
	// thousand Envoys receive the same few encodings, decoded once each rather than once per
	// Envoy (under the observer's lock, which the Envoys share).
	sigs map[string]decoded
}

type decoded struct {
	ok  bool // a ClusterLoadAssignment
	sig sig
}

// observer matches the updates the Envoys receive, and the harness's etcd watch events,
// against the changes in flight.
type observer struct {
	mu        sync.Mutex
	clients   int
	byCluster map[string]*pending
	byKey     map[string]*pending
}

func newObserver() *observer {
	return &observer{byCluster: map[string]*pending{}, byKey: map[string]*pending{}}
}

func (o *observer) setClients(n int) {
	o.mu.Lock()
	o.clients = n
	o.mu.Unlock()
}

// add registers a change before it is written. The caller guarantees one change per
// service (cluster) at a time.
func (o *observer) add(cluster, key, addr string, port uint32, want sig) *pending {
	o.mu.Lock()
	defer o.mu.Unlock()
	p := &pending{cluster: cluster, key: key, addr: addr, port: port, want: want,
		seen: make([]time.Time, o.clients), remaining: o.clients, done: make(chan struct{}), floorSeen: make(chan struct{}),
		sigs: map[string]decoded{}}
	if p.remaining == 0 {
		close(p.done)
	}
	o.byCluster[cluster] = p
	o.byKey[key] = p
	return p
}

// remove forgets p and returns a copy of what was seen of it.
func (o *observer) remove(p *pending) (seen []time.Time, floor time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.byCluster, p.cluster)
	delete(o.byKey, p.key)
	return append([]time.Time(nil), p.seen...), p.floor
}

// onUpdate is called by Envoy idx for every response it applied.
func (o *observer) onUpdate(idx int, u xdsclient.Update) {
	if u.TypeURL != resourcev3.EndpointType {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.byCluster) == 0 || idx >= o.clients {
		return
	}
	check := func(p *pending) {
		if !p.seen[idx].IsZero() {
			return
		}
		if d := p.sigOf(u.Resources[p.cluster]); !d.ok || d.sig != p.want {
			return
		}
		p.seen[idx] = u.At
		p.remaining--
		if p.remaining == 0 {
			close(p.done)
		}
	}
	if len(u.Resources) < len(o.byCluster) {
		for name := range u.Resources {
			if p, ok := o.byCluster[name]; ok {
				check(p)
			}
		}
		return
	}
	for _, p := range o.byCluster {
		check(p)
	}
}

// onWatch records the harness's own etcd watch seeing key change.
func (o *observer) onWatch(key string, at time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if p, ok := o.byKey[key]; ok && p.floor.IsZero() {
		p.floor = at
		close(p.floorSeen)
	}
}

// sigOf is what m, an assignment received, shows of p's instance.
func (p *pending) sigOf(m proto.Message) decoded {
	a, wire := m.(*anypb.Any)
	if wire {
		if d, ok := p.sigs[string(a.GetValue())]; ok {
			return d
		}
	}
	var d decoded
	if cla := claOf(m); cla != nil {
		d = decoded{ok: true, sig: sigOf(cla, p.addr, p.port)}
	}
	if wire && len(p.sigs) < 64 {
		p.sigs[string(a.GetValue())] = d
	}
	return d
}
