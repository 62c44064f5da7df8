package controlplane_test

import (
	"context"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tetherlb/tether/controlplane"
	"github.com/tetherlb/tether/internal/cptest"
	"github.com/tetherlb/tether/internal/eventually"
	"github.com/tetherlb/tether/internal/syncbuf"
)

// rawConn is a gRPC connection of its own (its own TCP connection) to cp's xDS port.
func rawConn(t *testing.T, cp *controlplane.ControlPlane) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(cp.XDSAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// openStream opens a delta ADS stream on conn and sends a first request naming node; it
// returns the stream and a channel of its end.
func openStream(t *testing.T, conn *grpc.ClientConn, node string) (context.CancelFunc, <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() {
		s, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
		if err == nil {
			err = s.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, Node: &corev3.Node{Id: node, Cluster: "default"}})
		}
		for err == nil {
			_, err = s.Recv()
		}
		done <- err
	}()
	return cancel, done
}

// nodes returns the node IDs of cp's streams.
func nodes(cp *controlplane.ControlPlane) map[string]bool {
	out := map[string]bool{}
	for _, c := range cp.Clients() {
		out[c.NodeID] = true
	}
	return out
}

func waitNodes(t *testing.T, cp *controlplane.ControlPlane, what string, want ...string) {
	t.Helper()
	eventually.Saying(t, fmt.Sprintf("%s: streams of %v", what, want), 10*time.Second, func() (bool, string) {
		got := nodes(cp)
		ok := len(got) == len(want)
		for _, w := range want {
			ok = ok && got[w]
		}
		return ok, fmt.Sprint(got)
	})
}

// TestXDSConnectionsBounded: a peer's connections beyond --max-conns-per-peer are closed at
// once and counted, and streams beyond --max-streams-per-conn wait for one to end (HTTP/2's
// stream limit), so that one host cannot open connections and streams without end.
func TestXDSConnectionsBounded(t *testing.T) {
	srv := twoInstances(t)
	cp := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()},
		MaxConnsPerPeer: 2, MaxStreamsPerConn: 2})

	first := rawConn(t, cp)
	openStream(t, first, "a")
	stopB, _ := openStream(t, first, "b")
	waitNodes(t, cp, "two streams on one connection", "a", "b")
	// A third stream on the same connection waits for a stream slot.
	openStream(t, first, "c")
	time.Sleep(300 * time.Millisecond)
	waitNodes(t, cp, "a third stream on a connection allowing two", "a", "b")
	stopB()
	waitNodes(t, cp, "the third stream once the second ended", "a", "c")

	second := rawConn(t, cp)
	openStream(t, second, "d")
	waitNodes(t, cp, "a second connection", "a", "c", "d")
	third := rawConn(t, cp)
	_, thirdDone := openStream(t, third, "e")
	select {
	case err := <-thirdDone:
		if status.Code(err) != codes.Unavailable {
			t.Errorf("a third connection from one peer ended with %v; want Unavailable", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a third connection from one peer allowing two is still served after 10 s")
	}
	if got := metric(t, cp, `tether_xds_refused_total{reason="connections-per-peer"}`); got < 1 {
		t.Errorf("tether_xds_refused_total{reason=connections-per-peer} = %v; want at least 1", got)
	}
	third.Close() // gRPC would retry it, and take the next free slot
	second.Close()
	// The control plane frees the slot when it sees the close: until then a new connection is
	// refused like the third, and its RPC fails at once.
	for deadline := time.Now().Add(10 * time.Second); !nodes(cp)["f"]; {
		if time.Now().After(deadline) {
			t.Fatal("no new connection accepted within 10 s of one closing")
		}
		conn := rawConn(t, cp)
		_, done := openStream(t, conn, "f")
		select {
		case err := <-done:
			t.Logf("a new connection before the close was seen: %v", err)
			_ = conn.Close()
			time.Sleep(20 * time.Millisecond)
		case <-time.After(200 * time.Millisecond):
		}
	}
	waitNodes(t, cp, "a new connection once one closed", "a", "c", "f")
}

// TestOversizedNodeNotKept: a node ID or cluster of 1.5 MB (once kept per stream, logged and
// shown by /debug/config and /api/state) ends the stream with InvalidArgument; it is counted,
// and neither the logs nor the admin pages carry it.
func TestOversizedNodeNotKept(t *testing.T) {
	srv := twoInstances(t)
	var logs syncbuf.Buffer
	cp := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()},
		Logger: zerolog.New(&logs).Level(zerolog.DebugLevel)})
	<-cp.Ready()
	long := strings.Repeat("n", 1_500_000)
	for i, node := range []*corev3.Node{{Id: long}, {Id: "n", Cluster: long}} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := discovery.NewAggregatedDiscoveryServiceClient(rawConn(t, cp)).DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, Node: node}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); status.Code(err) != codes.InvalidArgument {
			t.Errorf("node %d: stream ended with %v; want InvalidArgument", i, err)
		}
		if got := metric(t, cp, `tether_xds_refused_total{reason="field-size"}`); got != float64(i+1) {
			t.Errorf("tether_xds_refused_total{reason=field-size} = %v; want %d", got, i+1)
		}
	}
	cut := strings.Repeat("n", 300)
	for _, page := range []string{"/debug/config", "/api/state"} {
		if body := get(t, "http://"+cp.AdminAddr()+page, http.StatusOK); strings.Contains(body, cut) {
			t.Errorf("%s shows the client's node", page)
		}
	}
	if strings.Contains(logs.String(), cut) {
		t.Error("the logs hold the client's node")
	}
}

// TestHostileSubscriptionsBounded reproduces issue 27's measurement on a real control plane:
// one plaintext, unauthenticated delta stream subscribing 8 x 40,000 unknown names took the
// heap from 6.7 to 66.7 MB. The stream is now ended at the first batch and nothing is kept.
func TestHostileSubscriptionsBounded(t *testing.T) {
	srv := twoInstances(t)
	cp := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()}})
	<-cp.Ready()
	before := heapMB()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := discovery.NewAggregatedDiscoveryServiceClient(rawConn(t, cp)).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 8 {
		names := make([]string, 40000)
		for j := range names {
			names[j] = fmt.Sprintf("hostile-%d-%06d", i, j)
		}
		req := &discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: names}
		if i == 0 {
			req.Node = &corev3.Node{Id: "hostile"}
		}
		if err := s.Send(req); err != nil {
			break // ended by the server
		}
	}
	time.Sleep(time.Second) // for the server to take in whatever it keeps
	during := heapMB()
	_, err = s.Recv()
	for err == nil {
		_, err = s.Recv()
	}
	t.Logf("heap %.1f MB before, %.1f MB after the hostile stream's requests", before, during)
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("hostile stream ended with %v; want InvalidArgument", err)
	}
	if during-before > 20 {
		t.Errorf("heap grew by %.1f MB; want the names not kept", during-before)
	}
	if got := metric(t, cp, `tether_xds_refused_total{reason="names"}`); got != 1 {
		t.Errorf(`tether_xds_refused_total{reason="names"} = %v; want 1`, got)
	}
}

// heapMB is the live heap after a collection.
func heapMB() float64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return float64(m.HeapAlloc) / (1 << 20)
}
