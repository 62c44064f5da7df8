package controlplane

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/rs/zerolog"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tetherlb/tether/controlplane/translate"
	"github.com/tetherlb/tether/controlplane/xdscache"
	"github.com/tetherlb/tether/internal/eventually"
	"github.com/tetherlb/tether/registry"
)

// phaseRig drives a phaser by hand, handed the time, over a real xDS cache served on loopback
// to raw state-of-the-world ADS streams: each test decides exactly what each Envoy subscribes
// to, ACKs, NACKs or leaves unanswered, and when the phaser evaluates.
type phaseRig struct {
	t     *testing.T
	ph    *phaser
	cache *xdscache.Cache
	conn  *grpc.ClientConn
	start time.Time
}

func newPhaseRig(t *testing.T, settle time.Duration) *phaseRig {
	t.Helper()
	in := newAnswers()
	cache := xdscache.New(xdscache.Options{Logger: zerolog.Nop(), OnClose: in.closed, HoldFirstEndpoints: in.hold.Load})
	ph := newPhaser(zerolog.Nop(), newMetrics(), settle, cache, in, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(srv, serverv3.NewServer(ctx, cache, cache.Callbacks(nil)))
	go func() { _ = srv.Serve(ln) }()
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); cancel(); srv.Stop() })
	return &phaseRig{t: t, ph: ph, cache: cache, conn: conn, start: time.Now()}
}

// at is the rig's time d after its start.
func (r *phaseRig) at(d time.Duration) time.Time { return r.start.Add(d) }

// publish phases st, translates it and hands its assignments to the cache, as the publish
// loop does, and returns the endpoint type version.
func (r *phaseRig) publish(st *registry.State, now time.Time) string {
	r.t.Helper()
	res := translate.Translate(r.ph.apply(st, now), translate.Options{ListenPort: 10000})
	eps := make([]types.Resource, len(res.Endpoints))
	for i, e := range res.Endpoints {
		eps[i] = e
	}
	var version string
	if err := r.cache.Update(map[string][]types.Resource{resourcev3.EndpointType: eps}, func(v map[string]string) {
		version = v[resourcev3.EndpointType]
		r.ph.published(st.Revision, version)
	}); err != nil {
		r.t.Fatal(err)
	}
	return version
}

// phaseService is a service of instances (ID -> port) all available on 10.0.0.1.
func phaseService(name string, ports map[string]int) *registry.Service {
	svc := &registry.Service{Name: name, Config: registry.DefaultServiceConfig(name), Instances: map[string]registry.Instance{}}
	for id, p := range ports {
		svc.Instances[id] = registry.Instance{ID: id, Address: "10.0.0.1", Port: p, State: registry.StateAvailable}
	}
	return svc
}

func phaseStateOf(rev int64, svcs ...*registry.Service) *registry.State {
	st := &registry.State{Revision: rev, Services: map[string]*registry.Service{}}
	for _, s := range svcs {
		s.Revision = rev
		st.Services[s.Name] = s
	}
	return st
}

// rawEnvoy is one SotW ADS stream asking for endpoints only.
type rawEnvoy struct {
	t      *testing.T
	node   string
	s      discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	cancel context.CancelFunc
	resp   chan *discovery.DiscoveryResponse
	names  []string
	last   *discovery.DiscoveryResponse // the last response received
	acked  string                       // the version last ACKed
}

func (r *phaseRig) envoy(node string) *rawEnvoy {
	r.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r.t.Cleanup(cancel)
	s, err := discovery.NewAggregatedDiscoveryServiceClient(r.conn).StreamAggregatedResources(ctx)
	if err != nil {
		r.t.Fatal(err)
	}
	e := &rawEnvoy{t: r.t, node: node, s: s, cancel: cancel, resp: make(chan *discovery.DiscoveryResponse, 16)}
	go func() {
		for {
			m, err := s.Recv()
			if err != nil {
				close(e.resp)
				return
			}
			e.resp <- m
		}
	}()
	return e
}

func (e *rawEnvoy) send(req *discovery.DiscoveryRequest) {
	e.t.Helper()
	req.TypeUrl = resourcev3.EndpointType
	req.Node = &corev3.Node{Id: e.node, Cluster: "edge"}
	if err := e.s.Send(req); err != nil {
		e.t.Fatal(err)
	}
}

// subscribe asks for the assignments of the given clusters (the last answer's version and
// nonce, as Envoy does), and returns the response.
func (e *rawEnvoy) subscribe(clusters ...string) *discovery.DiscoveryResponse {
	e.t.Helper()
	e.names = clusters
	req := &discovery.DiscoveryRequest{ResourceNames: clusters, VersionInfo: e.acked}
	if e.last != nil {
		req.ResponseNonce = e.last.GetNonce()
	}
	e.send(req)
	return e.next(fmt.Sprintf("%s: the response to its subscription to %v", e.node, clusters))
}

func (e *rawEnvoy) next(what string) *discovery.DiscoveryResponse {
	e.t.Helper()
	select {
	case m, ok := <-e.resp:
		if !ok {
			e.t.Fatalf("%s: stream ended", what)
		}
		e.last = m
		return m
	case <-time.After(10 * time.Second):
		e.t.Fatalf("%s: no response within 10 s", what)
	}
	return nil
}

// join opens a stream of node that subscribes to clusters and ACKs the response, and waits
// until the cache holds the ACK.
func (r *phaseRig) join(node string, clusters ...string) *rawEnvoy {
	r.t.Helper()
	e := r.envoy(node)
	e.subscribe(clusters...)
	e.ack()
	r.acked(node, e.acked)
	return e
}

// ackNext has each Envoy take its next response (what) and ACK it, and waits until the cache
// holds each one's ACK of version.
func (r *phaseRig) ackNext(version, what string, es ...*rawEnvoy) {
	r.t.Helper()
	for _, e := range es {
		e.next(e.node + ": " + what)
		e.ack()
		r.acked(e.node, version)
	}
}

// ack ACKs the last response.
func (e *rawEnvoy) ack() {
	e.t.Helper()
	e.acked = e.last.GetVersionInfo()
	e.send(&discovery.DiscoveryRequest{ResourceNames: e.names, VersionInfo: e.acked, ResponseNonce: e.last.GetNonce()})
}

// nack rejects the last response.
func (e *rawEnvoy) nack() {
	e.t.Helper()
	e.send(&discovery.DiscoveryRequest{ResourceNames: e.names, VersionInfo: e.acked, ResponseNonce: e.last.GetNonce(),
		ErrorDetail: &status.Status{Code: 3, Message: "refused by the test"}})
}

// waitAck waits until the cache records what the Envoy of node last answered.
func (r *phaseRig) waitAck(node string, cond func(a xdscache.StreamAck) bool) {
	r.t.Helper()
	eventually.True(r.t, node+": the cache to record the answer", 10*time.Second, func() bool {
		found := false
		r.cache.Acks(resourcev3.EndpointType, func(a xdscache.StreamAck, _ func(string) bool) {
			found = found || (a.Node == node && cond(a))
		})
		return found
	})
}

// closed waits until the cache holds no stream of node.
func (r *phaseRig) closed(node string) {
	r.t.Helper()
	eventually.True(r.t, node+": its stream closed", 10*time.Second, func() bool {
		open := false
		r.cache.Acks(resourcev3.EndpointType, func(a xdscache.StreamAck, _ func(string) bool) { open = open || a.Node == node })
		return !open
	})
}

// acked waits until the cache holds node's ACK of version.
func (r *phaseRig) acked(node, version string) {
	r.t.Helper()
	r.waitAck(node, func(a xdscache.StreamAck) bool { return a.Version == version && !a.Waiting })
}

// promoted reports whether the endpoint of instance id of service svc is out of its first
// phase (promoted, or never phased).
func (r *phaseRig) promoted(svc, id string) bool {
	r.t.Helper()
	r.ph.mu.Lock()
	defer r.ph.mu.Unlock()
	for k, e := range r.ph.reach {
		if k.cluster == translate.ClusterName(svc) && k.id == id {
			return !e.first || e.promoted
		}
	}
	r.t.Fatalf("%s/%s is not reachable", svc, id)
	return false
}

func hasName(r *discovery.DiscoveryResponse, cluster string) bool {
	for _, a := range r.GetResources() {
		var name string
		if m, err := a.UnmarshalNew(); err == nil {
			if c, ok := m.(interface{ GetClusterName() string }); ok {
				name = c.GetClusterName()
			}
		}
		if name == cluster {
			return true
		}
	}
	return false
}
