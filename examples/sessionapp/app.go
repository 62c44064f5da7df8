package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
)

// maxSynthetic bounds POST /load so that a typo cannot ask for an absurd number.
const maxSynthetic = 1_000_000

// Config is the behaviour of one sessionapp instance.
type Config struct {
	// Name is the instance name shown to users and pushed over the WebSocket.
	Name string
	// Cookie is the name of the app's own session cookie.
	Cookie string
	// SessionTTL is how long a session lives without activity.
	SessionTTL time.Duration
	// RetryAfter is sent as Retry-After (in seconds) with the 503 of refuse mode.
	RetryAfter time.Duration
	// PushInterval is the period of WebSocket pushes (default 1s).
	PushInterval time.Duration
	// Refuse starts the app in refuse mode (503 for requests without a session).
	Refuse bool
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Log receives the app's log lines; the zero value discards them.
	Log zerolog.Logger
}

type session struct {
	id       string
	counter  int64
	lastSeen time.Time
}

// App is the stateful demo application: in-memory sessions, a WebSocket,
// health, load and metrics endpoints.
type App struct {
	cfg Config
	mux *http.ServeMux
	reg *prometheus.Registry

	ctx    context.Context // canceled by Close: ends WebSockets and the janitor
	cancel context.CancelFunc

	mu         sync.Mutex
	sessions   map[string]*session
	synthetic  int
	refusing   bool
	websockets int
	closing    bool
	wsWG       sync.WaitGroup // open WebSocket handlers, waited for by Close

	created  prometheus.Counter
	expired  prometheus.Counter
	refused  prometheus.Counter
	janitorW sync.WaitGroup
}

// New builds an App from cfg, filling defaults.
func New(cfg Config) *App {
	cfg.Cookie = cmp.Or(cfg.Cookie, "sessionapp_id")
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = 20 * time.Minute
	}
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = 10 * time.Minute
	}
	if cfg.PushInterval <= 0 {
		cfg.PushInterval = time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &App{
		cfg:      cfg,
		mux:      http.NewServeMux(),
		reg:      prometheus.NewRegistry(),
		ctx:      ctx,
		cancel:   cancel,
		sessions: make(map[string]*session),
		refusing: cfg.Refuse,
	}
	a.registerMetrics()
	a.routes()
	return a
}

func (a *App) registerMetrics() {
	a.created = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "sessionapp_sessions_created_total", Help: "Real sessions created.",
	})
	a.expired = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "sessionapp_sessions_expired_total", Help: "Real sessions expired after the session TTL.",
	})
	a.refused = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "sessionapp_refused_requests_total", Help: "Requests without a session answered 503 in refuse mode.",
	})
	a.reg.MustRegister(
		a.created, a.expired, a.refused,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sessionapp_sessions", Help: "Live sessions, real plus synthetic (as reported by /sessions).",
		}, func() float64 { return float64(a.SessionCount()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sessionapp_synthetic_sessions", Help: "Synthetic sessions held through POST /load.",
		}, func() float64 { a.mu.Lock(); defer a.mu.Unlock(); return float64(a.synthetic) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sessionapp_websockets", Help: "Open WebSocket connections.",
		}, func() float64 { a.mu.Lock(); defer a.mu.Unlock(); return float64(a.websockets) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sessionapp_refusing", Help: "1 when the app refuses new sessions with 503.",
		}, func() float64 {
			if a.isRefusing() {
				return 1
			}
			return 0
		}),
	)
}

func (a *App) routes() {
	a.mux.HandleFunc("GET /{$}", a.handleIndex)
	// A form posted to the page (a sign-in's answer coming back by a cross-site POST, as
	// OpenID Connect's form_post does) shows the page too.
	a.mux.HandleFunc("POST /{$}", a.handleIndex)
	a.mux.HandleFunc("GET /ws", a.handleWS)
	a.mux.HandleFunc("GET /healthcheck", a.handleHealth)
	a.mux.HandleFunc("GET /healthcheck.wx", a.handleHealth)
	a.mux.HandleFunc("GET /ready", a.handleReady)
	a.mux.HandleFunc("GET /poll", a.handlePoll)
	a.mux.HandleFunc("GET /sessions", a.handleSessions)
	a.mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
	a.mux.HandleFunc("GET /load", a.handleGetLoad)
	a.mux.HandleFunc("POST /load", a.handleSetLoad)
	a.mux.HandleFunc("GET /admin/refuse", a.handleGetRefuse)
	a.mux.HandleFunc("POST /admin/refuse", a.handleSetRefuse)
}

// ServeHTTP implements http.Handler.
func (a *App) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.mux.ServeHTTP(w, r) }

// Close ends open WebSockets (close code 1001, going away), refuses new ones
// and stops the janitor started by StartJanitor, waiting for all of them.
// It is safe to call more than once.
func (a *App) Close() {
	a.mu.Lock()
	a.closing = true
	a.mu.Unlock()
	a.cancel()
	a.janitorW.Wait()
	a.wsWG.Wait()
}

// StartJanitor starts the goroutine that expires idle sessions; Close stops it.
func (a *App) StartJanitor() {
	interval := min(max(a.cfg.SessionTTL/4, 10*time.Millisecond), 30*time.Second)
	a.janitorW.Add(1)
	go func() {
		defer a.janitorW.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-a.ctx.Done():
				return
			case <-t.C:
				if n := a.Expire(); n > 0 {
					a.cfg.Log.Info().Int("expired", n).Msg("sessions expired")
				}
			}
		}
	}()
}

// Expire removes the sessions idle for longer than the session TTL and
// returns how many it removed.
func (a *App) Expire() int {
	now := a.cfg.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for id, s := range a.sessions {
		if now.Sub(s.lastSeen) > a.cfg.SessionTTL {
			delete(a.sessions, id)
			n++
		}
	}
	a.expired.Add(float64(n))
	return n
}

// SessionCount is the live session count: real sessions plus synthetic ones.
func (a *App) SessionCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.sessions) + a.synthetic
}

// sessionView is a copy of a session's state, safe to use without the lock.
type sessionView struct {
	ID      string
	Counter int64
	New     bool
}

// lookup returns the live session named by the request's cookie, touching it
// and adding bump to its counter.
func (a *App) lookup(r *http.Request, bump int64) (sessionView, bool) {
	c, err := r.Cookie(a.cfg.Cookie)
	if err != nil || c.Value == "" {
		return sessionView{}, false
	}
	now := a.cfg.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.sessions[c.Value]
	if !ok || now.Sub(s.lastSeen) > a.cfg.SessionTTL {
		return sessionView{}, false
	}
	s.lastSeen = now
	s.counter += bump
	return sessionView{ID: s.id, Counter: s.counter}, true
}

// session finds the request's session or, unless the app refuses new
// sessions, creates one and sets its cookie on w. It answers the 503 itself
// and returns false when the request is refused.
func (a *App) session(w http.ResponseWriter, r *http.Request, bump int64) (sessionView, bool) {
	if v, ok := a.lookup(r, bump); ok {
		return v, true
	}
	if a.isRefusing() {
		a.refused.Inc()
		w.Header().Set("Retry-After", strconv.Itoa(int(a.cfg.RetryAfter.Seconds())))
		http.Error(w, fmt.Sprintf("%s is not accepting new sessions", a.cfg.Name), http.StatusServiceUnavailable)
		return sessionView{}, false
	}
	s := &session{id: rand.Text(), counter: bump, lastSeen: a.cfg.Now()}
	a.mu.Lock()
	a.sessions[s.id] = s
	a.mu.Unlock()
	a.created.Inc()
	// Not Secure: the demo app is reached over plain HTTP behind Envoy.
	http.SetCookie(w, &http.Cookie{ //nolint:gosec // G124: see above
		Name: a.cfg.Cookie, Value: s.id, Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode,
	})
	return sessionView{ID: s.id, Counter: s.counter, New: true}, true
}

func prefix(id string) string { return id[:min(len(id), 8)] }

var indexTmpl = template.Must(template.New("index").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>sessionapp {{.Instance}}</title>
<style>body{font-family:sans-serif;margin:2em}code{background:#eee;padding:0 .3em}#log{font-family:monospace;white-space:pre;height:12em;overflow:auto;border:1px solid #ccc;padding:.5em}</style>
</head><body>
<h1>Served by <code id="instance">{{.Instance}}</code></h1>
<p>Session <code id="session">{{.Session}}</code>{{if .New}} <strong>(new session)</strong>{{end}},
counter <code id="counter">{{.Counter}}</code>.
Reload: the counter goes up while your session lives on this instance; it starts again at 1 when the session is lost.</p>
<p>WebSocket: <span id="ws">connecting</span> <button id="ping">send message</button></p>
<div id="log"></div>
<script>
(function () {
  var log = document.getElementById("log"), state = document.getElementById("ws");
  var url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + location.pathname.replace(/\/?$/, "/") + "ws";
  var ws = new WebSocket(url);
  ws.onopen = function () { state.textContent = "open"; };
  ws.onclose = function (e) { state.textContent = "closed (" + e.code + ")"; };
  ws.onmessage = function (e) {
    var m = JSON.parse(e.data);
    document.getElementById("counter").textContent = m.counter;
    log.textContent = new Date().toLocaleTimeString() + " " + e.data + "\n" + log.textContent.slice(0, 4000);
  };
  document.getElementById("ping").onclick = function () { ws.send("ping"); };
})();
</script>
</body></html>
`))

func (a *App) handleIndex(w http.ResponseWriter, r *http.Request) {
	v, ok := a.session(w, r, 1)
	if !ok {
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	err := indexTmpl.Execute(w, struct {
		Instance, Session string
		Counter           int64
		New               bool
	}{a.cfg.Name, prefix(v.ID), v.Counter, v.New})
	if err != nil {
		a.cfg.Log.Warn().Err(err).Msg("render index")
	}
}

// Push is the JSON message the WebSocket sends every PushInterval and after
// each message it receives.
type Push struct {
	Instance string `json:"instance"`
	Counter  int64  `json:"counter"`
	Session  string `json:"session"`
}

func (a *App) handleWS(w http.ResponseWriter, r *http.Request) {
	v, ok := a.session(w, r, 0)
	if !ok {
		return
	}
	a.mu.Lock()
	if a.closing {
		a.mu.Unlock()
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	a.wsWG.Add(1)
	a.websockets++
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		a.websockets--
		a.mu.Unlock()
		a.wsWG.Done()
	}()
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		a.cfg.Log.Debug().Err(err).Msg("websocket accept")
		return
	}
	defer func() { _ = c.CloseNow() }()
	c.SetReadLimit(4096)

	// The reader counts the client's messages. It ends when the connection
	// closes: client gone, close handshake done, or CloseNow below.
	bumps := make(chan struct{}, 1)
	readerDone := make(chan struct{})
	// G118: the reader runs until the connection closes, which CloseNow below makes sure of.
	go func() { //nolint:gosec // see above
		defer close(readerDone)
		for {
			if _, _, err := c.Read(context.Background()); err != nil {
				return
			}
			a.bump(v.ID, 1)
			select {
			case bumps <- struct{}{}:
			default: // a push is already pending
			}
		}
	}()
	defer func() {
		_ = c.CloseNow()
		<-readerDone
	}()

	t := time.NewTicker(a.cfg.PushInterval)
	defer t.Stop()
	for {
		counter, alive := a.bump(v.ID, 0) // an open WebSocket keeps its session alive
		if !alive {
			_ = c.Close(websocket.StatusPolicyViolation, "session expired")
			return
		}
		msg := Push{Instance: a.cfg.Name, Counter: counter, Session: prefix(v.ID)}
		// Not a.ctx: a write canceled by shutdown would kill the connection
		// before the 1001 close frame.
		wctx, wcancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := wsjson.Write(wctx, c, msg)
		wcancel()
		if err != nil {
			return
		}
		select {
		case <-a.ctx.Done():
			_ = c.Close(websocket.StatusGoingAway, "server shutting down")
			return
		case <-readerDone:
			return
		case <-t.C:
		case <-bumps:
		}
	}
}

// bump touches session id, adds n to its counter and returns the counter;
// false when the session no longer exists.
func (a *App) bump(id string, n int64) (int64, bool) {
	now := a.cfg.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.sessions[id]
	if !ok {
		return 0, false
	}
	s.lastSeen = now
	s.counter += n
	return s.counter, true
}

func (a *App) handleHealth(w http.ResponseWriter, _ *http.Request) {
	// Wisej's healthcheck.wx answers 202 Accepted; a full (refusing) app stays
	// healthy: fullness is load, not liveness.
	w.WriteHeader(http.StatusAccepted)
}

// handleReady is the kind of health endpoint many ASP.NET apps have: 503 while the app
// refuses new sessions (full), 200 otherwise. It is a readiness signal for the agent's
// --available-url, never a liveness check: an Envoy health check on it would move the
// sessions of a full server.
func (a *App) handleReady(w http.ResponseWriter, _ *http.Request) {
	if a.isRefusing() {
		http.Error(w, a.cfg.Name+" is full", http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// maxPoll bounds GET /poll.
const maxPoll = 10 * time.Minute

// handlePoll is a long poll, as SignalR's fallback transports make: it holds the request
// for ?seconds=N (at most maxPoll) before answering the session's counter as a Push. It
// answers early only when the client goes away or the app closes.
func (a *App) handlePoll(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.Atoi(r.URL.Query().Get("seconds"))
	if err != nil || n < 0 || time.Duration(n)*time.Second > maxPoll {
		http.Error(w, fmt.Sprintf("seconds must be an integer in [0, %d]", int(maxPoll.Seconds())), http.StatusBadRequest)
		return
	}
	v, ok := a.session(w, r, 1)
	if !ok {
		return
	}
	timer := time.NewTimer(time.Duration(n) * time.Second)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-r.Context().Done():
		return
	case <-a.ctx.Done():
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	writeJSON(w, Push{Instance: a.cfg.Name, Counter: v.Counter, Session: prefix(v.ID)})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(v)
}

func (a *App) handleSessions(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, map[string]int{"sessions": a.SessionCount()})
}

// LoadStatus is the body of GET and POST /load.
type LoadStatus struct {
	Sessions  int `json:"sessions"`
	Real      int `json:"real"`
	Synthetic int `json:"synthetic"`
}

func (a *App) loadStatus() LoadStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	return LoadStatus{Sessions: len(a.sessions) + a.synthetic, Real: len(a.sessions), Synthetic: a.synthetic}
}

func (a *App) handleGetLoad(w http.ResponseWriter, _ *http.Request) { writeJSON(w, a.loadStatus()) }

func (a *App) handleSetLoad(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.Atoi(r.URL.Query().Get("sessions"))
	if err != nil || n < 0 || n > maxSynthetic {
		http.Error(w, fmt.Sprintf("sessions must be an integer in [0, %d]", maxSynthetic), http.StatusBadRequest)
		return
	}
	a.mu.Lock()
	a.synthetic = n
	a.mu.Unlock()
	a.cfg.Log.Info().Int("synthetic", n).Msg("synthetic load set")
	writeJSON(w, a.loadStatus())
}

func (a *App) isRefusing() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.refusing
}

func (a *App) refuseStatus() map[string]bool { return map[string]bool{"refusing": a.isRefusing()} }

func (a *App) handleGetRefuse(w http.ResponseWriter, _ *http.Request) { writeJSON(w, a.refuseStatus()) }

func (a *App) handleSetRefuse(w http.ResponseWriter, r *http.Request) {
	on, err := strconv.ParseBool(r.URL.Query().Get("on"))
	if err != nil {
		http.Error(w, "on must be true or false", http.StatusBadRequest)
		return
	}
	a.mu.Lock()
	a.refusing = on
	a.mu.Unlock()
	a.cfg.Log.Info().Bool("refusing", on).Msg("refuse mode set")
	writeJSON(w, a.refuseStatus())
}
