package controlplane

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tetherlb/tether/internal/eventually"
	"github.com/tetherlb/tether/internal/syncbuf"
)

// The peer limiter driven over real loopback connections: a peer gets exactly max
// connections, the next are closed as accepted and each counted, the refusal logged once
// while the peer stays at its bound; another address has its own count; a closed connection
// (closed twice: one release) gives its slot back, and a peer with none open is forgotten.
func TestPeerLimiterCountsEachPeer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var logs syncbuf.Buffer
	var refused atomic.Int64
	l := newPeerLimiter(ln, 2, zerolog.New(&logs), func() { refused.Add(1) })
	accepted := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	t.Cleanup(func() { ln.Close() })

	dial := func(from string) net.Conn {
		t.Helper()
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatalf("dial from %s: %v", from, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	accept := func(what string) net.Conn {
		t.Helper()
		select {
		case c := <-accepted:
			return c
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: not accepted within 10 s", what)
			return nil
		}
	}
	// refusedNow dials from, and waits for the listener to close it unaccepted.
	refusedNow := func(from string, n int64) {
		t.Helper()
		c := dial(from)
		if err := c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("a connection over the bound from %s: read %v, want it closed by the listener", from, err)
		}
		// Counted just after the close: wait for it.
		eventually.Saying(t, "the refusal counted", 10*time.Second, func() (bool, string) {
			got := refused.Load()
			return got == n, fmt.Sprintf("%d refusals counted, want %d", got, n)
		})
		select {
		case c := <-accepted:
			t.Fatalf("a connection over the bound from %s was accepted (%v)", from, c.RemoteAddr())
		default:
		}
	}

	a1 := accept("the first from 127.0.0.1" + dial("127.0.0.1").LocalAddr().String())
	accept("the second from 127.0.0.1" + dial("127.0.0.1").LocalAddr().String())
	refusedNow("127.0.0.1", 1)
	refusedNow("127.0.0.1", 2)
	// Another address: its own two. (Its first accepted, the refusals before are logged.)
	b1 := accept("the first from 127.0.0.2" + dial("127.0.0.2").LocalAddr().String())
	if n := strings.Count(logs.String(), "xDS connection refused"); n != 1 {
		t.Errorf("%d refusals logged while the peer stayed at its bound, want 1", n)
	}
	b2 := accept("the second from 127.0.0.2" + dial("127.0.0.2").LocalAddr().String())
	refusedNow("127.0.0.2", 3)

	// A slot given back once, however often its connection is closed.
	a1.Close()
	a1.Close()
	accept("a connection once one closed" + dial("127.0.0.1").LocalAddr().String())
	refusedNow("127.0.0.1", 4)
	b1.Close()
	b3 := accept("a connection from 127.0.0.2 once one closed" + dial("127.0.0.2").LocalAddr().String())
	if n := strings.Count(logs.String(), "xDS connection refused"); n != 3 {
		t.Errorf("%d refusals logged, want 3: one per peer at its bound, again once it left it", n)
	}

	b2.Close()
	b3.Close()
	l.mu.Lock()
	open, ok := l.open[netip.MustParseAddr("127.0.0.2")]
	l.mu.Unlock()
	if ok {
		t.Errorf("127.0.0.2 still counted (%d open) once all its connections closed", open)
	}
}

// A connection that is not TCP (net.Pipe, as in-process tests dial) has no peer address: all
// such connections count as one peer.
func TestPeerOfAConnectionWithoutAnAddress(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if got := peerOf(a); got.IsValid() {
		t.Errorf("peer of a pipe: %v, want the zero address", got)
	}
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	c, err := net.Dial("tcp", tcp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := peerOf(c); got != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("peer of a loopback connection: %v, want 127.0.0.1", got)
	}
}
