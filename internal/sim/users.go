package sim

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"time"
)

// user is a simulated browser: a cookie jar, the server that holds its session (as the app
// said), and a session lifetime after which it logs out and closes the browser (its cookies
// go). Each request goes through an Envoy of its group picked at random, as behind DNS
// round-robin or an L4 balancer.
type user struct {
	name    string
	service string
	host    string
	ip      string
	rng     *rand.Rand

	jar    map[string]jarCookie
	server string // the server holding the session; "" before one is made
	since  time.Time
	via    int // the replica whose Envoy placed the session (-1: the real Envoy)
	until  time.Time
	signIn bool // the next request is the sign-in's cross-site form POST
}

type jarCookie struct {
	value    string
	sameSite string // as set: "Strict", "Lax", "None" or "" (no attribute)
}

func (s *Sim) newUser(i int, rng *rand.Rand) *user {
	u := &user{name: fmt.Sprintf("user-%d", i), service: svcApp, host: "app.test", rng: rng, jar: map[string]jarCookie{}}
	if i%5 == 4 {
		u.service, u.host = svcShop, shopDom
	}
	// Offices behind one NAT: users share source addresses (a label the hash reads; nothing
	// is sent to it).
	u.ip = fmt.Sprintf("127.0.1.%d", i%4)
	return u
}

// userTimings: requests are spaced a little (a page and its calls), sessions last seconds.
const (
	minThink    = 20 * time.Millisecond
	maxThink    = 100 * time.Millisecond
	minLifetime = time.Second
	maxLifetime = 4 * time.Second
	// signInShare of new sessions sign in: the first page redirects to an identity provider,
	// whose answer comes back as a cross-site form POST (OpenID Connect's form_post, SAML's
	// POST binding), once per session.
	signInShare = 3
)

// live runs the user until ctx ends.
func (s *Sim) live(ctx context.Context, u *user) {
	for ctx.Err() == nil {
		think := minThink + time.Duration(u.rng.Int64N(int64(maxThink-minThink)))
		select {
		case <-ctx.Done():
			return
		case <-time.After(think):
		}
		if u.server != "" && time.Now().After(u.until) {
			s.request(ctx, u, http.MethodGet, "/logout", false)
			u.jar, u.server = map[string]jarCookie{}, "" // the browser closes
			continue
		}
		if u.signIn && u.server != "" {
			u.signIn = false
			s.request(ctx, u, http.MethodPost, "/signin-oidc", true)
			continue
		}
		s.request(ctx, u, http.MethodGet, "/page", false)
	}
}

// request sends one request through a random Envoy and checks what came back.
func (s *Sim) request(ctx context.Context, u *user, method, path string, crossSite bool) {
	var envoys []*envoy
	for _, e := range s.envoys {
		if e.serving() {
			envoys = append(envoys, e)
		}
	}
	n := len(envoys)
	if n == 0 && s.real == nil {
		return
	}
	if s.real != nil {
		n++
	}
	pick := u.rng.IntN(n)
	hdr := http.Header{}
	var cookies []string
	for name, c := range u.jar {
		// A browser sends no SameSite=Lax or Strict cookie with a cross-site POST (RFC 6265bis).
		// A cookie without the attribute goes: Firefox and Safari do not default to Lax, and
		// Chrome's Lax default sends a cookie set less than two minutes ago with a top-level
		// cross-site POST ("Lax+POST"), which a sign-in right after the first page is.
		if crossSite && (strings.EqualFold(c.sameSite, "Lax") || strings.EqualFold(c.sameSite, "Strict")) {
			continue
		}
		cookies = append(cookies, name+"="+c.value)
	}
	if len(cookies) > 0 {
		hdr.Set("Cookie", strings.Join(cookies, "; "))
	}
	hdr.Set("X-Sim-User", u.name)
	req := request{method: method, host: u.host, path: path, header: hdr, sourceIP: u.ip}
	var resp response
	var err error
	name, variant, replica := "envoy-real", "real", 0
	if pick == len(envoys) {
		resp, err = s.real.serve(ctx, s.http, req)
	} else {
		e := envoys[pick]
		name, variant, replica = e.name, string(e.cli.Variant), e.replica
		resp, err = e.serve(ctx, s.http, u.rng, req)
	}
	if ctx.Err() != nil {
		return
	}
	s.locked(func() { s.stats.Requests++ })
	if err != nil {
		s.locked(func() { s.stats.Errors++ })
		s.event([]string{u.name}, "%s: %s %s via %s: the Envoy model failed: %v", u.name, method, path, name, err)
		return
	}
	pinned := u.take(resp.header)
	got := resp.header.Get(serverHeader)
	refused := resp.header.Get(refusedHeader) != ""
	desc := fmt.Sprintf("%s %s via %s (%s, route %s, tried %v): %d", method, path, name, variant, resp.route, resp.tried, resp.status)
	if got != "" {
		desc += " from " + got
	} else if resp.flag != "" {
		desc += " Envoy reply " + resp.flag + "/" + resp.header.Get("X-Sim-Reply")
		if resp.err != nil {
			desc += " (" + resp.err.Error() + ")"
		}
	}
	if crossSite {
		desc += " (cross-site)"
	}
	if u.server == "" {
		s.firstRequest(u, resp, got, refused, pinned, desc, replica)
		return
	}
	if got == u.server && !refused {
		if path == "/logout" {
			s.locked(func() { s.stats.Kept++ })
			s.event([]string{u.name, got}, "%s: logs out of %s, session kept to the end", u.name, got)
		}
		return
	}
	// The user did not reach the server holding its session.
	s.lost(u, resp, crossSite, desc, replica)
	u.server = "" // the browser keeps what the response set, as a real one does
	if got != "" && !refused && resp.status == http.StatusOK && path != "/logout" {
		s.startSession(u, got, desc, replica)
	}
}

// firstRequest checks a request without a session: a refusal must never pin the user to the
// server that refused (invariant 2).
func (s *Sim) firstRequest(u *user, resp response, got string, refused bool, pinned string, desc string, replica int) {
	switch {
	case got != "" && !refused && resp.status == http.StatusOK:
		s.startSession(u, got, desc, replica)
	case refused || resp.status >= 500:
		s.locked(func() { s.stats.Refused++ })
		if pinned != "" {
			s.violate(2, "a refused first request sets the session cookie", []string{u.name, got}, time.Now(), "%s: first request refused by %s, and the response pins the user to it (%s)", u.name, got, desc)
			u.jar = map[string]jarCookie{}
		}
	}
}

func (s *Sim) startSession(u *user, server, desc string, replica int) {
	u.server, u.since, u.via = server, time.Now(), replica
	u.signIn = u.rng.IntN(signInShare) == 0
	u.until = time.Now().Add(minLifetime + time.Duration(u.rng.Int64N(int64(maxLifetime-minLifetime))))
	s.locked(func() { s.stats.Sessions++ })
	s.event([]string{u.name, server}, "%s: session on %s (%s)", u.name, server, desc)
}

// lost classifies a request that did not reach the user's server: its server died or was
// stopped by an operator before the request (the user's loss is not ours), or invariant 1
// is broken.
func (s *Sim) lost(u *user, resp response, crossSite bool, desc string, replica int) {
	s.mu.Lock()
	srv := s.servers[u.server]
	s.mu.Unlock()
	// Judged when the answer came: a server that went down while the request was on its way
	// lost the session by its crash or stop, not by Tether.
	down, stopped := srv.down(time.Now())
	switch {
	case down && stopped:
		s.locked(func() { s.stats.LostStopped++ })
		s.event([]string{u.name, u.server}, "%s: loses its session: %s was stopped (%s)", u.name, u.server, desc)
	case down:
		s.locked(func() { s.stats.LostDied++ })
		s.event([]string{u.name, u.server}, "%s: loses its session: %s died (%s)", u.name, u.server, desc)
	default:
		s.violate(1, s.classify(u, srv, resp, crossSite, replica), []string{u.name, u.server}, u.since, "%s: its server %s is alive and was not stopped, yet %s", u.name, u.server, desc)
	}
}

// take stores the response's cookies in the jar and returns the address Envoy's session
// cookie now pins, if the response set one.
func (u *user) take(h http.Header) string {
	pinned := ""
	for _, line := range h.Values("Set-Cookie") {
		parts := strings.Split(line, ";")
		name, value, ok := strings.Cut(strings.TrimSpace(parts[0]), "=")
		if !ok {
			continue
		}
		c := jarCookie{value: value}
		expired := false
		for _, a := range parts[1:] {
			k, v, _ := strings.Cut(strings.TrimSpace(a), "=")
			switch strings.ToLower(k) {
			case "samesite":
				c.sameSite = v
			case "max-age":
				expired = expired || v == "0" || strings.HasPrefix(v, "-")
			case "expires":
				if t, err := http.ParseTime(v); err == nil && t.Before(time.Now()) {
					expired = true
				}
			}
		}
		if expired {
			delete(u.jar, name)
			continue
		}
		u.jar[name] = c
		if name != appCookie {
			pinned = name
		}
	}
	return pinned
}

// recentCause is how long after a fault a violation is put down to it.
const recentCause = agentTTL + 3*time.Second

// classify names the likely cause of a broken invariant 1 from what the Envoy did with the
// request and what the faults recently did to the server.
func (s *Sim) classify(u *user, srv *server, resp response, crossSite bool, replica int) string {
	now := time.Now()
	recent := func(t time.Time) bool { return !t.IsZero() && now.Sub(t) < recentCause }
	srv.mu.Lock()
	killed, drained, undrained, started := srv.agentKilled, srv.drained, srv.undrained, srv.started
	srv.mu.Unlock()
	s.mu.Lock()
	storm, restart := s.lastStorm, s.lastCPRestart
	s.mu.Unlock()
	switch {
	case srv.service != u.service:
		return "the user's session was on another service's server (" + srv.service + "): a contested route changed hands"
	case resp.cluster != "" && resp.cluster != "tether_"+u.service:
		return "routed to another service's cluster (" + resp.cluster + ")"
	case crossSite && (resp.override == "no session cookie" || resp.override == ""):
		return "a cross-site POST arrives without the session cookie (SameSite) and is re-pinned"
	case resp.route == "" && recent(storm):
		return "the service left the route table in a lease storm (no route: 404)"
	case resp.route == "":
		return "the service left the route table (no route: 404)"
	case resp.cluster == "" && resp.flag == "" && resp.header.Get(serverHeader) == "":
		return fmt.Sprintf("the service's requests are answered by route %s, not forwarded", resp.route)
	case resp.override == "host not in the assignment":
		switch {
		case len(s.cps) > 1 && replica != u.via && now.Sub(started) < cpPublishSettle+recentCause:
			// A replica promoted a new server that an Envoy of another replica did not hold.
			return "a server one replica promoted is unknown to another replica's Envoy"
		case recent(killed):
			return "server missing from the Envoy after its agent's kill -9 and restart"
		case recent(storm) && (drained || recent(undrained)):
			return "a drained server dropped in a lease storm"
		case recent(storm):
			return "a server dropped in a lease storm"
		case recent(restart):
			return "server missing from the Envoy after a control-plane restart"
		}
		return "server missing from the Envoy's assignment"
	case strings.HasPrefix(resp.override, "host "):
		return "server's endpoint " + strings.TrimPrefix(resp.override, "host ")
	case resp.flag != "":
		return "Envoy's own reply (" + resp.flag + "/" + resp.header.Get("X-Sim-Reply") + ") though the server is alive"
	}
	return "other (session cookie: " + resp.override + ")"
}
