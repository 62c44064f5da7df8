package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"

	"github.com/tetherlb/tether/internal/eventually"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newTestApp(t *testing.T, cfg Config) (*App, *httptest.Server) {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = "test-1"
	}
	app := New(cfg)
	srv := httptest.NewServer(app) // listens on 127.0.0.1
	t.Cleanup(func() {
		app.Close()
		srv.Close()
	})
	return app, srv
}

func jarClient(t *testing.T) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar, Timeout: 5 * time.Second}
}

var (
	counterRe = regexp.MustCompile(`id="counter">(\d+)<`)
	sessionRe = regexp.MustCompile(`id="session">([^<]+)<`)
)

type page struct {
	status  int
	counter int
	session string
	isNew   bool
	header  http.Header
}

func getPage(t *testing.T, c *http.Client, url string) page {
	t.Helper()
	resp, err := c.Get(url + "/")
	if err != nil {
		t.Fatalf("GET /: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	p := page{status: resp.StatusCode, header: resp.Header}
	if resp.StatusCode != http.StatusOK {
		return p
	}
	m := counterRe.FindSubmatch(body)
	s := sessionRe.FindSubmatch(body)
	if m == nil || s == nil {
		t.Fatalf("page lacks counter or session: %s", body)
	}
	p.counter, _ = strconv.Atoi(string(m[1]))
	p.session = string(s[1])
	p.isNew = strings.Contains(string(body), "(new session)")
	if !strings.Contains(string(body), "test-1") {
		t.Errorf("page does not show the instance name")
	}
	return p
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %d", url, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("decode %s: %v", url, err)
	}
}

func post(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Post(url, "", nil)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

func sessionCount(t *testing.T, url string) int {
	t.Helper()
	var v struct {
		Sessions *int `json:"sessions"`
	}
	getJSON(t, url+"/sessions", &v)
	if v.Sessions == nil {
		t.Fatal(`/sessions lacks "sessions"`)
	}
	return *v.Sessions
}

func TestCounterIncrementsWithCookie(t *testing.T) {
	_, srv := newTestApp(t, Config{})
	c := jarClient(t)
	first := getPage(t, c, srv.URL)
	if first.status != http.StatusOK || first.counter != 1 || !first.isNew {
		t.Fatalf("first page: %+v", first)
	}
	for i := 2; i <= 4; i++ {
		p := getPage(t, c, srv.URL)
		if p.counter != i || p.session != first.session || p.isNew {
			t.Fatalf("request %d: got %+v, want counter %d in session %s", i, p, i, first.session)
		}
	}
	if got := sessionCount(t, srv.URL); got != 1 {
		t.Fatalf("sessions = %d, want 1", got)
	}
}

func TestNewSessionWithoutCookie(t *testing.T) {
	_, srv := newTestApp(t, Config{})
	c := &http.Client{Timeout: 5 * time.Second} // no jar: every request is a new user
	seen := map[string]bool{}
	for i := range 3 {
		p := getPage(t, c, srv.URL)
		if p.counter != 1 || !p.isNew {
			t.Fatalf("request %d: %+v, want a new session with counter 1", i, p)
		}
		if seen[p.session] {
			t.Fatalf("session %s reused", p.session)
		}
		seen[p.session] = true
		cookie := p.header.Get("Set-Cookie")
		if !strings.HasPrefix(cookie, "sessionapp_id=") || !strings.Contains(cookie, "HttpOnly") {
			t.Fatalf("Set-Cookie = %q", cookie)
		}
	}
	if got := sessionCount(t, srv.URL); got != 3 {
		t.Fatalf("sessions = %d, want 3", got)
	}
}

func TestUnknownCookieStartsNewSession(t *testing.T) {
	_, srv := newTestApp(t, Config{Cookie: "mine"})
	req, err := http.NewRequest(http.MethodGet, srv.URL+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.AddCookie(&http.Cookie{Name: "mine", Value: "from-another-instance"})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if sc := resp.Header.Get("Set-Cookie"); !strings.HasPrefix(sc, "mine=") || strings.Contains(sc, "from-another-instance") {
		t.Fatalf("Set-Cookie = %q, want a fresh session in cookie mine", sc)
	}
}

func TestSessionExpiry(t *testing.T) {
	clock := &fakeClock{now: time.Date(2026, 11, 22, 15, 0, 0, 0, time.UTC)}
	app, srv := newTestApp(t, Config{SessionTTL: time.Minute, Now: clock.Now})
	old := jarClient(t)
	first := getPage(t, old, srv.URL)
	clock.Advance(40 * time.Second)
	young := jarClient(t)
	getPage(t, young, srv.URL)
	clock.Advance(30 * time.Second) // old idle 70s, young idle 30s

	// Lazily: an expired session is never revived, even before the janitor runs.
	p := getPage(t, old, srv.URL)
	if !p.isNew || p.counter != 1 || p.session == first.session {
		t.Fatalf("after expiry: %+v, want a new session", p)
	}
	clock.Advance(61 * time.Second) // everything idle > ttl
	if n := app.Expire(); n != 3 {
		t.Fatalf("Expire removed %d sessions, want 3", n)
	}
	if got := sessionCount(t, srv.URL); got != 0 {
		t.Fatalf("sessions = %d after expiry, want 0", got)
	}
}

func TestJanitorExpiresSessions(t *testing.T) {
	app, srv := newTestApp(t, Config{SessionTTL: 50 * time.Millisecond})
	app.StartJanitor()
	getPage(t, &http.Client{Timeout: 5 * time.Second}, srv.URL)
	eventually.Saying(t, "the janitor to expire the session", 5*time.Second, func() (bool, string) {
		n := app.SessionCount()
		return n == 0, fmt.Sprintf("%d left", n)
	})
}

func TestSyntheticLoad(t *testing.T) {
	_, srv := newTestApp(t, Config{})
	getPage(t, &http.Client{Timeout: 5 * time.Second}, srv.URL) // one real session
	if code := post(t, srv.URL+"/load?sessions=40"); code != http.StatusOK {
		t.Fatalf("POST /load: %d", code)
	}
	var ls LoadStatus
	getJSON(t, srv.URL+"/load", &ls)
	if ls != (LoadStatus{Sessions: 41, Real: 1, Synthetic: 40}) {
		t.Fatalf("GET /load = %+v", ls)
	}
	if got := sessionCount(t, srv.URL); got != 41 {
		t.Fatalf("sessions = %d, want 41", got)
	}
	post(t, srv.URL+"/load?sessions=7") // replaces, not adds
	if got := sessionCount(t, srv.URL); got != 8 {
		t.Fatalf("sessions = %d, want 8", got)
	}
	metrics := getText(t, srv.URL+"/metrics")
	if !strings.Contains(metrics, "\nsessionapp_sessions 8\n") {
		t.Fatalf("metrics lack sessionapp_sessions 8:\n%s", metrics)
	}
	post(t, srv.URL+"/load?sessions=0")
	if got := sessionCount(t, srv.URL); got != 1 {
		t.Fatalf("sessions = %d after clearing, want 1", got)
	}
	for _, bad := range []string{"-1", "x", "", "1000001"} {
		if code := post(t, srv.URL+"/load?sessions="+bad); code != http.StatusBadRequest {
			t.Errorf("POST /load?sessions=%s: %d, want 400", bad, code)
		}
	}
}

func getText(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestHealthcheck(t *testing.T) {
	_, srv := newTestApp(t, Config{Refuse: true})
	for _, path := range []string{"/healthcheck", "/healthcheck.wx"} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("%s: %d, want 202 even when refusing", path, resp.StatusCode)
		}
	}
}

func TestRefuseMode(t *testing.T) {
	_, srv := newTestApp(t, Config{RetryAfter: 10 * time.Minute})
	user := jarClient(t)
	getPage(t, user, srv.URL)

	if code := post(t, srv.URL+"/admin/refuse?on=true"); code != http.StatusOK {
		t.Fatalf("POST /admin/refuse: %d", code)
	}
	var st map[string]bool
	getJSON(t, srv.URL+"/admin/refuse", &st)
	if !st["refusing"] {
		t.Fatalf("GET /admin/refuse = %v", st)
	}
	p := getPage(t, &http.Client{Timeout: 5 * time.Second}, srv.URL)
	if p.status != http.StatusServiceUnavailable || p.header.Get("Retry-After") != "600" {
		t.Fatalf("new user while refusing: status %d Retry-After %q, want 503 and 600", p.status, p.header.Get("Retry-After"))
	}
	if p.header.Get("Set-Cookie") != "" {
		t.Fatal("a refused request must not get a session cookie")
	}
	if p := getPage(t, user, srv.URL); p.status != http.StatusOK || p.counter != 2 {
		t.Fatalf("existing session while refusing: %+v, want 200 with counter 2", p)
	}
	if got := sessionCount(t, srv.URL); got != 1 {
		t.Fatalf("sessions = %d, want 1", got)
	}
	if metrics := getText(t, srv.URL+"/metrics"); !strings.Contains(metrics, "sessionapp_refused_requests_total 1") {
		t.Fatalf("metrics lack the refused request:\n%s", metrics)
	}

	if code := post(t, srv.URL+"/admin/refuse?on=maybe"); code != http.StatusBadRequest {
		t.Fatalf("POST /admin/refuse?on=maybe: %d, want 400", code)
	}
	post(t, srv.URL+"/admin/refuse?on=false")
	if p := getPage(t, &http.Client{Timeout: 5 * time.Second}, srv.URL); p.status != http.StatusOK || !p.isNew {
		t.Fatalf("new user after refuse off: %+v", p)
	}
}

func dialWS(t *testing.T, ctx context.Context, srv *httptest.Server, c *http.Client) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	return websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", &websocket.DialOptions{HTTPClient: c})
}

func TestWebSocketPushes(t *testing.T) {
	app, srv := newTestApp(t, Config{PushInterval: 20 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	user := jarClient(t)
	p := getPage(t, user, srv.URL) // counter 1

	c, _, err := dialWS(t, ctx, srv, user)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer func() { _ = c.CloseNow() }()

	var m Push
	for range 3 { // periodic pushes
		if err := wsjson.Read(ctx, c, &m); err != nil {
			t.Fatalf("read push: %v", err)
		}
		if m.Instance != "test-1" || m.Session != p.session || m.Counter != 1 {
			t.Fatalf("push = %+v, want instance test-1, session %s, counter 1", m, p.session)
		}
	}
	if err := c.Write(ctx, websocket.MessageText, []byte("ping")); err != nil {
		t.Fatalf("write: %v", err)
	}
	for i := 0; m.Counter != 2; i++ { // the message increments the counter
		if i == 100 {
			t.Fatalf("counter never reached 2: %+v", m)
		}
		if err := wsjson.Read(ctx, c, &m); err != nil {
			t.Fatalf("read push: %v", err)
		}
	}
	if got := getPage(t, user, srv.URL); got.counter != 3 {
		t.Fatalf("page counter after ws message = %d, want 3", got.counter)
	}

	// Shutdown closes the WebSocket with 1001 going away.
	done := make(chan struct{})
	go func() {
		defer close(done)
		app.Close()
	}()
	for i := 0; ; i++ {
		if i == 1000 {
			t.Fatal("no close after app.Close")
		}
		_, _, err := c.Read(ctx)
		if err == nil {
			continue
		}
		if got := websocket.CloseStatus(err); got != websocket.StatusGoingAway {
			t.Fatalf("close status %v (%v), want going away", got, err)
		}
		break
	}
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("app.Close did not return")
	}
}

func TestWebSocketRefusedWithoutSession(t *testing.T) {
	_, srv := newTestApp(t, Config{Refuse: true})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, resp, err := dialWS(t, ctx, srv, &http.Client{Timeout: 5 * time.Second})
	if err == nil {
		t.Fatal("dial succeeded while refusing a new session")
	}
	if resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("dial response %v, want 503", resp)
	}
}

func TestWebSocketCreatesSession(t *testing.T) {
	app, srv := newTestApp(t, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, resp, err := dialWS(t, ctx, srv, &http.Client{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer func() { _ = c.CloseNow() }()
	if !strings.HasPrefix(resp.Header.Get("Set-Cookie"), "sessionapp_id=") {
		t.Fatalf("upgrade response lacks the session cookie: %v", resp.Header)
	}
	var m Push
	if err := wsjson.Read(ctx, c, &m); err != nil {
		t.Fatal(err)
	}
	if m.Counter != 0 || app.SessionCount() != 1 {
		t.Fatalf("push %+v, sessions %d", m, app.SessionCount())
	}
}

func TestParseFlags(t *testing.T) {
	o, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if o.listen != "127.0.0.1:5000" || o.cfg.Cookie != "sessionapp_id" || o.cfg.SessionTTL != 20*time.Minute {
		t.Fatalf("defaults: %+v", o)
	}
	if !strings.HasSuffix(o.cfg.Name, ":5000") {
		t.Fatalf("default name %q, want hostname:5000", o.cfg.Name)
	}
	o, err = parseFlags([]string{"--listen=0.0.0.0:5001", "--name=app1", "--session-ttl=1m", "--cookie=c"})
	if err != nil {
		t.Fatal(err)
	}
	if o.listen != "0.0.0.0:5001" || o.cfg.Name != "app1" || o.cfg.SessionTTL != time.Minute || o.cfg.Cookie != "c" {
		t.Fatalf("parsed: %+v", o)
	}
	if _, err := parseFlags([]string{"--listen=nonsense"}); err == nil {
		t.Fatal("want an error for --listen without a port")
	}
}

func TestServeGracefulShutdown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- serve(ctx, ln, Config{Name: "test-1"}) }()
	resp, err := http.Get("http://" + ln.Addr().String() + "/healthcheck")
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Errorf("healthcheck: %d", resp.StatusCode)
	}
	cancel()
	select {
	case err := <-errc:
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not return after cancel")
	}
}

func statusOf(t *testing.T, c *http.Client, url string) int {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// TestReady: /ready answers 503 while the app refuses new sessions (the readiness endpoint of
// many ASP.NET apps), while /healthcheck stays 202.
func TestReady(t *testing.T) {
	_, srv := newTestApp(t, Config{})
	c := jarClient(t)
	if got := statusOf(t, c, srv.URL+"/ready"); got != http.StatusOK {
		t.Fatalf("/ready %d, want 200", got)
	}
	if got := post(t, srv.URL+"/admin/refuse?on=true"); got != http.StatusOK {
		t.Fatalf("refuse on: %d", got)
	}
	if got := statusOf(t, c, srv.URL+"/ready"); got != http.StatusServiceUnavailable {
		t.Fatalf("/ready while refusing %d, want 503", got)
	}
	if got := statusOf(t, c, srv.URL+"/healthcheck"); got != http.StatusAccepted {
		t.Fatalf("/healthcheck while refusing %d, want 202", got)
	}
}

// TestPoll: /poll holds the request for the given seconds, then answers the session's
// counter; bad durations are refused.
func TestPoll(t *testing.T) {
	_, srv := newTestApp(t, Config{})
	c := jarClient(t)
	first := getPage(t, c, srv.URL)
	start := time.Now()
	resp, err := c.Get(srv.URL + "/poll?seconds=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var p Push
	if err := json.NewDecoder(resp.Body).Decode(&p); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("poll: status %d, %v", resp.StatusCode, err)
	}
	if d := time.Since(start); d < time.Second {
		t.Errorf("poll answered after %v, want at least 1s", d)
	}
	if p.Session != first.session || p.Counter != int64(first.counter+1) {
		t.Errorf("poll %+v, want session %s counter %d", p, first.session, first.counter+1)
	}
	for _, q := range []string{"-1", "x", "601"} {
		if got := statusOf(t, c, srv.URL+"/poll?seconds="+q); got != http.StatusBadRequest {
			t.Errorf("poll?seconds=%s: %d, want 400", q, got)
		}
	}
}
