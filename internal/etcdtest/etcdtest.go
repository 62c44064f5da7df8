// Package etcdtest runs a real embedded etcd for tests, on free loopback ports with short
// tick and election times.
//
// Ports. Packages' tests run in parallel processes, each taking free ports. A first start
// that finds its ports taken (between FreePort closing its probe and etcd binding) tries
// again on fresh ones. A stopped server keeps its ports bound, without listening (clients
// are refused as by a stopped etcd), so that no other test can take them before StartAgain
// binds them again; a start on kept ports that still finds them taken retries for a while.
package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tetherlb/tether/internal/etcdembed"
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
	e         *etcdembed.Server
	held      []func() // release the ports kept while stopped
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
	s := &Server{Dir: t.TempDir()}
	logger := crashLogger(t, s.Dir)
	s.configure = func(c *embed.Config) {
		c.ZapLoggerBuilder = embed.NewZapLoggerBuilder(logger)
		for _, o := range opts {
			o(c)
		}
	}
	t.Cleanup(s.close)
	for attempt := 1; ; attempt++ {
		s.ClientURL = fmt.Sprintf("http://127.0.0.1:%d", FreePort(t))
		s.PeerURL = fmt.Sprintf("http://127.0.0.1:%d", FreePort(t))
		err := s.start()
		if err == nil {
			return s
		}
		if !addrInUse(err) || attempt == 5 {
			t.Fatalf("start embedded etcd: %v", err)
		}
	}
}

// addrInUse reports whether err is a listen failing on a taken port.
func addrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
}

func (s *Server) start() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := etcdembed.Start(ctx, etcdembed.Config{
		Dir: s.Dir, ClientURL: s.ClientURL, PeerURL: s.PeerURL,
		TickMs: 10, ElectionMs: 50, Configure: s.configure,
	})
	if err != nil {
		return err
	}
	s.e = e
	s.ClientURL = e.Endpoints[0] // an Option may have changed the scheme (WithTLS)
	return nil
}

// startKept starts the server again on its kept ports, retrying for a while if one is taken.
func (s *Server) startKept(t testing.TB) {
	t.Helper()
	s.release()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := s.start()
		if err == nil {
			return
		}
		if !addrInUse(err) || time.Now().After(deadline) {
			t.Fatalf("start embedded etcd again on %s: %v", s.ClientURL, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// keep binds the stopped server's ports without listening on them.
func (s *Server) keep() {
	for _, raw := range []string{s.ClientURL, s.PeerURL} {
		u, err := url.Parse(raw)
		if err != nil {
			continue
		}
		if release, err := hold(u.Host); err == nil {
			s.held = append(s.held, release)
		}
	}
}

func (s *Server) release() {
	for _, r := range s.held {
		r()
	}
	s.held = nil
}

func (s *Server) close() {
	if s.e != nil {
		s.e.Close()
		s.e = nil
	}
	s.release()
}

// Endpoints returns the client endpoints.
func (s *Server) Endpoints() []string { return []string{s.ClientURL} }

// Client returns a new client, closed when the test ends.
func (s *Server) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	return newClient(t, s.Endpoints()...)
}

// newClient returns a client of endpoints, closed when the test ends.
func newClient(t testing.TB, endpoints ...string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("etcd client of %v: %v", endpoints, err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Stop stops the server, keeping its ports for StartAgain; it is safe to call more than once.
func (s *Server) Stop() {
	if s.e != nil {
		s.e.Close()
		s.e = nil
		s.keep()
	}
}

// Restart stops the server and starts it again on the same data and ports.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	s.startKept(t)
}

// StartAgain starts the server again after Stop, on the same data and ports.
func (s *Server) StartAgain(t testing.TB) {
	t.Helper()
	if s.e == nil {
		s.startKept(t)
	}
}
