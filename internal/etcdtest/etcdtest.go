// Package etcdtest runs a real embedded etcd for tests, on free loopback ports with short
// tick and election times.
package etcdtest

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/tetherlb/tether/registry"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Server is an embedded etcd owned by one test.
type Server struct {
	Dir       string
	ClientURL string
	PeerURL   string
	configure func(*embed.Config)
	e         *registry.Embedded
}

// Option adjusts the embedded etcd's configuration (TLS, auth).
type Option func(*embed.Config)

// WithTLS serves clients over TLS with info; set info.ClientCertAuth to require client
// certificates. The client URL becomes https://.
func WithTLS(info transport.TLSInfo) Option {
	return func(c *embed.Config) {
		c.ClientTLSInfo = info
		for _, urls := range [][]url.URL{c.ListenClientUrls, c.AdvertiseClientUrls} {
			for i := range urls {
				urls[i].Scheme = "https"
			}
		}
	}
}

// WithFastPasswords makes password hashing cheap (bcrypt's minimum cost), for tests with auth.
func WithFastPasswords() Option {
	return func(c *embed.Config) { c.BcryptCost = 4 } // bcrypt.MinCost
}

// FreePort returns a free TCP port on 127.0.0.1.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Start starts an embedded etcd that is closed when the test ends.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	s := &Server{
		Dir:       t.TempDir(),
		ClientURL: fmt.Sprintf("http://127.0.0.1:%d", FreePort(t)),
		PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", FreePort(t)),
	}
	if len(opts) > 0 {
		s.configure = func(c *embed.Config) {
			for _, o := range opts {
				o(c)
			}
		}
	}
	s.start(t)
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) start(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := registry.StartEmbedded(ctx, registry.EmbedConfig{
		Dir: s.Dir, ClientURL: s.ClientURL, PeerURL: s.PeerURL,
		TickMs: 10, ElectionMs: 50, Configure: s.configure,
	})
	if err != nil {
		t.Fatalf("start embedded etcd: %v", err)
	}
	s.e = e
	s.ClientURL = e.Endpoints[0] // an Option may have changed the scheme (WithTLS)
}

// Endpoints returns the client endpoints.
func (s *Server) Endpoints() []string { return []string{s.ClientURL} }

// Client returns a new client, closed when the test ends.
func (s *Server) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: s.Endpoints(), DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Stop stops the server; it is safe to call more than once.
func (s *Server) Stop() {
	if s.e != nil {
		s.e.Close()
		s.e = nil
	}
}

// Restart stops the server and starts it again on the same data and ports.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	s.start(t)
}

// Start again after Stop, on the same data and ports.
func (s *Server) StartAgain(t testing.TB) {
	t.Helper()
	if s.e == nil {
		s.start(t)
	}
}
