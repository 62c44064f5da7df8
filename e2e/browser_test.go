package e2e_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
)

// requestTimeout bounds every request a browser makes.
const requestTimeout = 10 * time.Second

// browser is a browser-like client: a cookie jar and its own keep-alive connections.
type browser struct {
	base   string // http://host:port
	client *http.Client
}

// newBrowser returns a client of base with an empty cookie jar.
func newBrowser(t testing.TB, base string) *browser {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatalf("cookie jar: %v", err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	t.Cleanup(tr.CloseIdleConnections)
	// No client timeout: coder/websocket wants cancellation by context, and every request
	// below has one.
	return &browser{base: base, client: &http.Client{Jar: jar, Transport: tr}}
}

// page is what sessionapp's GET / shows.
type page struct {
	Status   int
	Instance string
	Session  string // id prefix
	Counter  int
	Body     string
}

var (
	instanceRE = regexp.MustCompile(`<code id="instance">([^<]*)</code>`)
	sessionRE  = regexp.MustCompile(`<code id="session">([^<]*)</code>`)
	counterRE  = regexp.MustCompile(`<code id="counter">([0-9]+)</code>`)
)

// get requests path and returns the status and body.
func (b *browser) get(t testing.TB, path string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.base+path, nil)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	resp, err := b.client.Do(req)
	if err != nil {
		t.Fatalf("GET %s%s: %v", b.base, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatalf("GET %s%s: read body: %v", b.base, path, err)
	}
	return resp.StatusCode, string(body)
}

// page loads GET / and parses it; a non-200 answer is returned with only Status and Body.
func (b *browser) page(t testing.TB) page {
	t.Helper()
	status, body := b.get(t, "/")
	p := page{Status: status, Body: body}
	if status != http.StatusOK {
		return p
	}
	ins, ses, cnt := instanceRE.FindStringSubmatch(body), sessionRE.FindStringSubmatch(body), counterRE.FindStringSubmatch(body)
	if ins == nil || ses == nil || cnt == nil {
		t.Fatalf("GET %s/: 200 but not a sessionapp page:\n%s", b.base, body)
	}
	n, err := strconv.Atoi(cnt[1])
	if err != nil {
		t.Fatalf("counter %q: %v", cnt[1], err)
	}
	p.Instance, p.Session, p.Counter = ins[1], ses[1], n
	return p
}

// mustPage is page that requires a 200.
func (b *browser) mustPage(t testing.TB) page {
	t.Helper()
	p := b.page(t)
	if p.Status != http.StatusOK {
		t.Fatalf("GET %s/: status %d, want 200; body: %.300s", b.base, p.Status, p.Body)
	}
	return p
}

// cookie returns the value of the named cookie the jar sends to base, "" when none.
func (b *browser) cookie(t testing.TB, name string) string {
	t.Helper()
	u, err := url.Parse(b.base)
	if err != nil {
		t.Fatalf("parse %s: %v", b.base, err)
	}
	for _, c := range b.client.Jar.Cookies(u) {
		if c.Name == name {
			return c.Value
		}
	}
	return ""
}

// push is one message of sessionapp's WebSocket.
type push struct {
	Instance string `json:"instance"`
	Counter  int    `json:"counter"`
	Session  string `json:"session"`
}

// dialWS opens the browser's WebSocket to /ws with its cookies.
func (b *browser) dialWS(t testing.TB) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	u := "ws" + strings.TrimPrefix(b.base, "http") + "/ws"
	c, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: b.client})
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (HTTP status %d)", u, err, status)
	}
	t.Cleanup(func() { _ = c.CloseNow() })
	return c
}

// readPush reads one push, waiting at most 5 s (sessionapp pushes every second). The
// context only bounds a read that is failing anyway: coder/websocket closes the connection
// when a read's context ends.
func readPush(c *websocket.Conn) (push, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var p push
	if err := wsjson.Read(ctx, c, &p); err != nil {
		return p, fmt.Errorf("read push: %w", err)
	}
	return p, nil
}

// holdWS reads pushes for at least d and checks that every one comes from instance for
// session; then it sends a message and expects the counter to go up by one, which shows the
// connection still works both ways. It returns the pushes received and the last counter.
func holdWS(t testing.TB, c *websocket.Conn, d time.Duration, instance, session string) (int, int) {
	t.Helper()
	start := time.Now()
	pushes, counter := 0, -1
	maxPushes := int(d/time.Second)*2 + 4 // one push a second; bounded in case of a flood
	for i := 0; i < maxPushes && time.Since(start) < d; i++ {
		p, err := readPush(c)
		if err != nil {
			t.Fatalf("after %s and %d pushes: %v", time.Since(start).Round(time.Millisecond), pushes, err)
		}
		if p.Instance != instance || p.Session != session {
			t.Fatalf("push %d from %s session %s, want %s session %s", pushes, p.Instance, p.Session, instance, session)
		}
		pushes++
		counter = p.Counter
	}
	if time.Since(start) < d {
		t.Fatalf("read %d pushes in %s: more than one a second", pushes, time.Since(start))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageText, []byte("bump")); err != nil {
		t.Fatalf("write after %s: %v", d, err)
	}
	// The app answers the message with a push; a timer push may come first.
	for i := 0; i < 3; i++ {
		p, err := readPush(c)
		if err != nil {
			t.Fatalf("read the answer to the message: %v", err)
		}
		if p.Instance != instance || p.Session != session {
			t.Fatalf("answer from %s session %s, want %s session %s", p.Instance, p.Session, instance, session)
		}
		if p.Counter == counter+1 {
			return pushes, p.Counter
		}
		if p.Counter != counter {
			t.Fatalf("counter went from %d to %d after one message", counter, p.Counter)
		}
	}
	t.Fatalf("counter stayed at %d after the message", counter)
	return 0, 0
}

// closeWS closes the WebSocket with a normal closure.
func closeWS(t testing.TB, c *websocket.Conn) {
	t.Helper()
	if err := c.Close(websocket.StatusNormalClosure, "done"); err != nil {
		t.Errorf("close WebSocket: %v", err)
	}
}
