package controlplane

import (
	"context"
	"net"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"google.golang.org/genproto/googleapis/rpc/status"
)

// TestLoopback: the start-up warning about plaintext xDS fires for every address but loopback.
func TestLoopback(t *testing.T) {
	for _, c := range []struct {
		ip   net.IP
		want bool
	}{{net.IPv4(127, 0, 0, 1), true}, {net.IPv6loopback, true}, {net.IPv4zero, false}, {net.IPv6unspecified, false}, {net.IPv4(10, 0, 0, 1), false}} {
		if got := loopback(&net.TCPAddr{IP: c.ip, Port: 18000}); got != c.want {
			t.Errorf("loopback(%s) = %v; want %v", c.ip, got, c.want)
		}
	}
}

// TestNACKCountsOnlySentNonces: a client cannot mint NACK series or log lines with nonces it
// was never sent.
func TestNACKCountsOnlySentNonces(t *testing.T) {
	m := newMetrics()
	cache := newXDSCache(zerolog.Nop(), m, nil, 0, 0, 0)
	cb := cache.Callbacks(nil)
	ctx := context.Background()
	if err := cb.OnStreamOpen(ctx, 1, ""); err != nil {
		t.Fatal(err)
	}
	request := func(node *core.Node, nonce string) {
		t.Helper()
		if err := cb.OnStreamRequest(1, &discovery.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType, ResponseNonce: nonce,
			ErrorDetail: &status.Status{Code: 3, Message: "no"}}); err != nil {
			t.Fatal(err)
		}
	}
	node := &core.Node{Id: "envoy", Cluster: "edge"}
	for _, nonce := range []string{"made-up", "1"} {
		request(node, nonce)
	}
	// The known types' series exist from the start, at zero; nothing else may appear.
	if n := testutil.CollectAndCount(m.nacks); n != len(xdsTypes) {
		t.Fatalf("%d NACK series after NACKs of nonces never sent; want the %d known types'", n, len(xdsTypes))
	}
	for _, typ := range xdsTypes {
		if got := testutil.ToFloat64(m.nacks.WithLabelValues(typ)); got != 0 {
			t.Fatalf("NACKs of %s = %v after NACKs of nonces never sent; want 0", typ, got)
		}
	}
	cb.OnStreamResponse(ctx, 1, nil, &discovery.DiscoveryResponse{TypeUrl: resourcev3.ClusterType, Nonce: "1", VersionInfo: "v1"})
	request(nil, "1")
	if got := testutil.ToFloat64(m.nacks.WithLabelValues("Cluster")); got != 1 {
		t.Errorf("NACKs of Cluster = %v; want 1", got)
	}
	if c := cache.Streams(); len(c) != 1 || c[0].NACKs != 1 || c[0].Group != "edge" {
		t.Errorf("clients = %+v", c)
	}
}

// TestDefaultXDSAddrIsLoopback: the default xDS address is loopback, so that a control plane
// started without flags (the quick start, with Envoy on the same host) serves plaintext xDS
// to no other host and gives no warning; serving other hosts takes an explicit --xds-addr.
func TestDefaultXDSAddrIsLoopback(t *testing.T) {
	ln, err := net.Listen("tcp", DefaultConfig().XDSAddr)
	if err != nil {
		t.Skipf("default xDS address busy here: %v", err)
	}
	defer ln.Close()
	if !loopback(ln.Addr()) {
		t.Errorf("the default --xds-addr %s listens on %s, beyond loopback", DefaultConfig().XDSAddr, ln.Addr())
	}
}

// TestCacheWakesThePhaser: the cache the control plane builds tells the phaser of every
// answer and stream close (answers.signal). Without it a promotion waits for the next registry
// change or --publish-settle, which TestNewEndpointIsKnownEverywhereFirst shows only when no
// registry write happens to follow the ACK.
func TestCacheWakesThePhaser(t *testing.T) {
	in := newAnswers()
	cb := newXDSCache(zerolog.Nop(), newMetrics(), in, 0, 0, 0).Callbacks(nil)
	if err := cb.OnStreamOpen(context.Background(), 1, ""); err != nil {
		t.Fatal(err)
	}
	select {
	case <-in.wake:
		t.Fatal("woken by a stream's opening; want only answers and closes")
	default:
	}
	cb.OnStreamClosed(1, &core.Node{Id: "envoy", Cluster: "edge"})
	select {
	case <-in.wake:
	default:
		t.Fatal("a stream closed and the phaser was not woken")
	}
}
