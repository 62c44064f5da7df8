package sim

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// The simulated application's own headers and cookie: what a user reads to know which server
// holds its session, and whether a response was a refusal by the application itself.
const (
	serverHeader  = "X-Sim-Server"
	refusedHeader = "X-Sim-Refused"
	appCookie     = "sid"
)

// server is a simulated app server: a real HTTP backend with an in-memory session table and
// a capacity, as a Wisej or ASP.NET app keeps its users' state. A request with a session it
// holds is served; any other request asks for a new session, which the app refuses with 503
// when it is full (at capacity, or vetoing new sessions on its own, as an app whose memory
// runs short does). Its agent reads /health, /ready and /sessions.
type server struct {
	id       string
	service  string
	version  int
	port     int
	capacity int

	mu       sync.Mutex
	sessions map[string]time.Time // session ID -> last request
	refusing bool                 // the app vetoes new sessions
	next     int
	srv      *http.Server
	ln       net.Listener
	downAt   time.Time // when the process went away; zero while it runs
	stopped  bool      // went away by an operator's stop (not a crash)

	// What the faults did to it, to name the likely cause of a violation (classify).
	started     time.Time // when it joined
	agentKilled time.Time // last kill -9 of its agent
	drained     bool      // an operator's drain selects it now
	undrained   time.Time // when the last drain of it was removed
}

func startServer(id, service string, version, capacity int) (*server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("server %s: %w", id, err)
	}
	s := &server{id: id, service: service, version: version, capacity: capacity,
		port: ln.Addr().(*net.TCPAddr).Port, sessions: map[string]time.Time{}, ln: ln, started: time.Now()}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusAccepted) })
	mux.HandleFunc("GET /ready", s.ready)
	mux.HandleFunc("GET /sessions", s.count)
	mux.HandleFunc("/logout", s.logout)
	mux.HandleFunc("/", s.page)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

func (s *server) addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// fullLocked says whether the app refuses new sessions now.
func (s *server) fullLocked() bool {
	s.expireLocked(time.Now())
	return s.refusing || len(s.sessions) >= s.capacity
}

func (s *server) ready(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	full := s.fullLocked()
	s.mu.Unlock()
	if full {
		http.Error(w, "full", http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (s *server) count(w http.ResponseWriter, _ *http.Request) {
	_ = json.NewEncoder(w).Encode(map[string]int{"sessions": s.sessionCount()})
}

func (s *server) sessionCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(time.Now())
	return len(s.sessions)
}

// sessionIdle is the app's session timeout: a session left behind (its user moved or closed
// the browser without logging out) ends, as in-memory sessions of real apps do, only much
// sooner. Users request far more often than this.
const sessionIdle = 1500 * time.Millisecond

func (s *server) expireLocked(now time.Time) {
	for id, last := range s.sessions {
		if now.Sub(last) > sessionIdle {
			delete(s.sessions, id)
		}
	}
}

func (s *server) page(w http.ResponseWriter, r *http.Request) {
	w.Header().Set(serverHeader, s.id)
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	s.expireLocked(now)
	if c, err := r.Cookie(appCookie); err == nil {
		if _, ok := s.sessions[c.Value]; ok {
			s.sessions[c.Value] = now
			w.WriteHeader(http.StatusOK)
			return
		}
	}
	if s.fullLocked() {
		w.Header().Set(refusedHeader, "1")
		w.Header().Set("Retry-After", "5")
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	s.next++
	sid := s.id + "-" + strconv.Itoa(s.next)
	s.sessions[sid] = now
	// SameSite=None: the app wants its own cookie through cross-site sign-in posts, so that
	// only Envoy's cookie decides whether the user keeps its server there.
	http.SetCookie(w, &http.Cookie{Name: appCookie, Value: sid, Path: "/", Secure: true, HttpOnly: true, SameSite: http.SameSiteNoneMode}) //nolint:gosec // G124: SameSite=None on purpose, see above
	w.WriteHeader(http.StatusOK)
}

func (s *server) logout(w http.ResponseWriter, r *http.Request) {
	w.Header().Set(serverHeader, s.id)
	if c, err := r.Cookie(appCookie); err == nil {
		s.mu.Lock()
		delete(s.sessions, c.Value)
		s.mu.Unlock()
	}
	w.WriteHeader(http.StatusOK)
}

func (s *server) setRefusing(on bool) {
	s.mu.Lock()
	s.refusing = on
	s.mu.Unlock()
}

// stop ends the process: every connection closes and every session is gone. stopped says an
// operator stopped it (a deploy), as opposed to a crash.
func (s *server) stop(stopped bool) {
	s.mu.Lock()
	if !s.downAt.IsZero() {
		s.mu.Unlock()
		return
	}
	s.downAt, s.stopped = time.Now(), stopped
	s.sessions = map[string]time.Time{}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = s.srv.Shutdown(ctx)
	_ = s.srv.Close()
}

// down reports whether the process was gone at t, and whether it had been stopped on purpose.
func (s *server) down(t time.Time) (bool, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.downAt.IsZero() && !s.downAt.After(t), s.stopped
}
