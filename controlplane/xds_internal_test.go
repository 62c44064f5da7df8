package controlplane

import (
	"net"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
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
	tr := newTracker(zerolog.Nop(), m)
	id := streamKey{"sotw", 1}
	tr.open(id)
	node := &core.Node{Id: "envoy", Cluster: "edge"}
	for _, nonce := range []string{"made-up", "1"} {
		tr.request(id, node, resourcev3.ClusterType, nonce, &errorDetail{code: 3, message: "no"})
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
	tr.response(id, resourcev3.ClusterType, "1", "v1")
	tr.request(id, nil, resourcev3.ClusterType, "1", &errorDetail{code: 3, message: "no"})
	if got := testutil.ToFloat64(m.nacks.WithLabelValues("Cluster")); got != 1 {
		t.Errorf("NACKs of Cluster = %v; want 1", got)
	}
	if c := tr.clients(); len(c) != 1 || c[0].NACKs != 1 || c[0].Group != "edge" {
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
