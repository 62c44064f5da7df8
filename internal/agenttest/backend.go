// Package agenttest is a real HTTP backend on loopback for tests that run an agent: the
// health, availability and session-count endpoints of a Wisej application, each settable.
package agenttest

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// Backend answers GET /healthcheck with Health (202 at first, as Wisej's healthcheck.wx),
// GET /available with Avail (200 at first) and GET /sessions with {"sessions": Sessions}.
type Backend struct {
	URL      string // base URL, http://127.0.0.1:<Port>
	Port     int
	Sessions atomic.Int64
	Health   atomic.Int64 // status of /healthcheck
	Avail    atomic.Int64 // status of /available
	asked    atomic.Int64 // requests to /sessions: the agent's samples
}

// NewBackend starts a backend that closes with the test.
func NewBackend(t testing.TB) *Backend {
	t.Helper()
	b := &Backend{}
	b.Health.Store(http.StatusAccepted)
	b.Avail.Store(http.StatusOK)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthcheck", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(int(b.Health.Load())) })
	mux.HandleFunc("GET /available", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(int(b.Avail.Load())) })
	mux.HandleFunc("GET /sessions", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, `{"sessions": %d}`, b.Sessions.Load())
		b.asked.Add(1)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	b.URL, b.Port = srv.URL, srv.Listener.Addr().(*net.TCPAddr).Port
	return b
}

// WaitSamples waits until the agent has sampled the backend's sessions n more times.
func (b *Backend) WaitSamples(t testing.TB, n int64, timeout time.Duration) {
	t.Helper()
	want := b.asked.Load() + n
	for deadline := time.Now().Add(timeout); b.asked.Load() < want; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the agent sampled sessions %d times in %s; want %d", n-(want-b.asked.Load()), timeout, n)
		}
	}
}
