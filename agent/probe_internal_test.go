package agent

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
)

// TestProbeStatusAndCountBounds: every bound of a probe's answer, on both sides. A health
// check passes on any 2xx and only on them; a session count is a number from 0 to 1e9,
// rounded, from JSON or from a gauge, counter or untyped metric summed.
func TestProbeStatusAndCountBounds(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s := r.URL.Query().Get("status"); s != "" {
			code, _ := strconv.Atoi(s)
			w.WriteHeader(code)
			_, _ = w.Write([]byte(`{"sessions": 1}`))
			return
		}
		if r.URL.Path == "/short" {
			w.Header().Set("Content-Length", "100")
			_, _ = w.Write([]byte(`{"sessions"`)) // the body ends early
			return
		}
		_, _ = w.Write([]byte(r.URL.Query().Get("body")))
	}))
	defer srv.Close()
	p := prober{client: srv.Client()}
	ctx := context.Background()
	for _, c := range []struct {
		status int
		ok     bool
	}{{200, true}, {202, true}, {299, true}, {300, false}, {404, false}, {503, false}} {
		u := fmt.Sprintf("%s/h?status=%d", srv.URL, c.status)
		if err := p.check(ctx, u); (err == nil) != c.ok {
			t.Errorf("check of status %d: %v, want ok %v", c.status, err, c.ok)
		}
		if n, err := p.sessions(ctx, u, ""); (err == nil) != c.ok || c.ok && n != 1 {
			t.Errorf("sessions of status %d: %d, %v, want ok %v", c.status, n, err, c.ok)
		} else if !c.ok && !strings.Contains(err.Error(), fmt.Sprintf("status %d", c.status)) {
			t.Errorf("sessions of status %d: %v, want it named", c.status, err)
		}
	}
	body := func(b string) string { return srv.URL + "/s?body=" + url.QueryEscape(b) }
	for _, c := range []struct {
		body, metric string
		want         int
		err          string
	}{
		{`{"sessions": 0}`, "", 0, ""},
		{`{"sessions": 1e9}`, "", 1e9, ""},
		{`{"sessions": 2.5}`, "", 3, ""},
		{`{"sessions": 2.4}`, "", 2, ""},
		{`{"sessions": 1000000000.5}`, "", 0, "session count 1.0000000005e+09 is not a count"},
		{`{"sessions": -0.5}`, "", 0, "not a count"},
		{`{"sessions": "3"}`, "", 0, "want JSON"},
		{"# TYPE s counter\ns 3\n# TYPE u untyped\nu 4\n", "s", 3, ""},
		{"# TYPE s counter\ns 3\n# TYPE u untyped\nu 4\n", "u", 4, ""},
		{"# TYPE g gauge\ng{a=\"1\"} 1\ng{a=\"2\"} 2\n", "g", 3, ""},
		{"g NaN\n", "g", 0, "not a count"},
		{"# TYPE h summary\nh_sum 1\nh_count 1\n", "h", 0, "is a SUMMARY"},
		{"not prometheus {\n", "g", 0, "parse Prometheus text"},
	} {
		n, err := p.sessions(ctx, body(c.body), c.metric)
		switch {
		case c.err == "" && (err != nil || n != c.want):
			t.Errorf("%q %q: %d, %v; want %d", c.body, c.metric, n, err, c.want)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%q %q: %d, %v; want an error saying %q", c.body, c.metric, n, err, c.err)
		}
	}
	for _, c := range []struct{ url, err string }{
		{srv.URL + "/short?token=secret", "read " + srv.URL + "/short: "},
		{"http://127.0.0.1:5000/\x7f?token=secret", "bad URL"},
	} {
		if err := p.check(ctx, c.url); err == nil || !strings.Contains(err.Error(), c.err) || strings.Contains(err.Error(), "secret") {
			t.Errorf("check %q: %v, want %q without the token", c.url, err, c.err)
		}
	}
	// A connection failure names the URL without its token.
	srv.Close()
	if err := p.check(ctx, srv.URL+"/h?token=secret"); err == nil || strings.Contains(err.Error(), "secret") || !strings.Contains(err.Error(), srv.URL+"/h") {
		t.Errorf("check of a closed server: %v, want its URL without the token", err)
	}
}
