package controlplane

import (
	"net"
	"net/netip"
	"sync"

	"github.com/rs/zerolog"
)

// Bounds on the xDS connections and streams one client can open.
const (
	// DefaultMaxConnsPerPeer bounds the xDS connections open at once from one IP address. An
	// Envoy holds one ADS connection (two for a moment during a hot restart); 64 leaves room
	// for a few dozen gateways behind one NAT address, which is beyond Tether's use (a few
	// gateways per group), while one host can no longer open connections without end (each
	// costs gRPC's transport buffers, ~100 KiB, and a goroutine or two).
	DefaultMaxConnsPerPeer = 64
	// DefaultMaxStreamsPerConn is HTTP/2's MAX_CONCURRENT_STREAMS for xDS connections. An
	// Envoy opens one ADS stream, or one per type (four) without ADS; unbounded, one
	// connection could hold a million streams, each with its own subscriptions and node.
	DefaultMaxStreamsPerConn = 16
)

// RefusePeerConns is tether_xds_refused_total's reason for a connection over MaxConnsPerPeer.
const RefusePeerConns = "connections-per-peer"

// peerLimiter is a listener that closes, as it accepts it, a connection from an IP address
// that already has max connections open. A refusal is logged once per peer while it stays at
// its bound, so that a client retrying in a loop does not flood the logs; every one is counted.
type peerLimiter struct {
	net.Listener
	max    int
	log    zerolog.Logger
	refuse func()

	mu     sync.Mutex
	open   map[netip.Addr]int
	logged map[netip.Addr]bool
}

func newPeerLimiter(ln net.Listener, maxConns int, log zerolog.Logger, refuse func()) *peerLimiter {
	return &peerLimiter{Listener: ln, max: maxConns, log: log, refuse: refuse,
		open: map[netip.Addr]int{}, logged: map[netip.Addr]bool{}}
}

// peerOf is the IP address of a connection's peer; IPv4-mapped addresses count as IPv4.
func peerOf(c net.Conn) netip.Addr {
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{} // not TCP (tests): every such connection counts as one peer
}

func (l *peerLimiter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := peerOf(c)
		l.mu.Lock()
		if l.open[ip] >= l.max {
			first := !l.logged[ip]
			l.logged[ip] = true
			l.mu.Unlock()
			c.Close()
			l.refuse()
			if first {
				l.log.Warn().Str("peer", ip.String()).Int("maxConnsPerPeer", l.max).
					Msg("xDS connection refused: this address has --max-conns-per-peer connections open (logged once while it stays there)")
			}
			continue
		}
		l.open[ip]++
		l.mu.Unlock()
		return &peerConn{Conn: c, release: func() { l.release(ip) }}, nil
	}
}

func (l *peerLimiter) release(ip netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[ip]--; l.open[ip] <= 0 {
		delete(l.open, ip)
	}
	delete(l.logged, ip)
}

// peerConn gives its peer's slot back on its first Close.
type peerConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *peerConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
