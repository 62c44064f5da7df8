package etcdtest

import (
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tetherlb/tether/internal/netcut"
)

// Proxy is a TCP forwarder on loopback in front of an etcd client URL (internal/netcut). Cut
// severs every connection and refuses new ones, so that the clients behind it are partitioned
// from etcd while others still reach it: their leases lapse on etcd's own schedule, a lease
// storm as an outage or a partition makes one.
type Proxy struct {
	*netcut.Proxy
}

// NewProxy forwards a free loopback port to target (host:port, or an http:// URL); it
// closes with the test.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	p, err := netcut.New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return &Proxy{p}
}

// Cut severs the proxy for good.
func (p *Proxy) Cut() { p.SetCut(true) }

// Client returns a client that reaches etcd through the proxy only; it closes with the test.
func (p *Proxy) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	return newClient(t, p.URL())
}
