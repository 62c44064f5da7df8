package admin

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tetherlb/tether/controlplane/xdscache"
	"github.com/tetherlb/tether/registry"
)

// source is a Source whose answers a test sets.
type source struct {
	mu          sync.Mutex
	pub         *Snapshot
	streams     []xdscache.ClientInfo
	phases      map[string]map[string]EndpointPhase
	lagging     []LaggingEnvoy
	ready       chan struct{}
	unconfirmed time.Duration
	stale       bool
	reads       chan struct{} // when set, told of each Snapshot call without blocking
}

func (s *source) Snapshot() *Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case s.reads <- struct{}{}:
	default:
	}
	return s.pub
}
func (s *source) Groups() []string { return []string{defaultGroup} }
func (s *source) Streams() []xdscache.ClientInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams
}
func (s *source) Phases() map[string]map[string]EndpointPhase {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.phases
}
func (s *source) Lagging() []LaggingEnvoy {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lagging
}
func (s *source) Ready() <-chan struct{} { return s.ready }
func (s *source) set(p *Snapshot) {
	s.mu.Lock()
	s.pub = p
	s.mu.Unlock()
}
func (s *source) Unconfirmed(time.Time) (time.Duration, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unconfirmed, s.stale
}

// get serves one request to h with the given Host header and returns its status and body.
func get(t *testing.T, h http.Handler, path, host string) (int, string) {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, path, nil)
	req.Host = host
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	b, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(b)
}

// The Host guard alone (controlplane/TestAdminRefusesForeignHosts checks it on a running control
// plane): loopback names and IPs, the listener's own IP, and the allowed names and IPs, in any
// case, with or without a port, brackets, a trailing dot or the IPv4-in-IPv6 form.
func TestHostGuard(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	own := &net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 18001} // 16 bytes, as the listener's
	h := hostGuard([]string{"tether.example.com", "10.9.9.9", "[fd00::1]", " Admin.Example.org. "}, own, ok)
	for _, host := range []string{"127.0.0.1", "127.0.0.1:18001", "localhost", "LOCALHOST:18001", "localhost.", "[::1]:18001", "::1",
		"127.0.0.2", "[::ffff:127.0.0.1]:80", "tether.example.com", "Tether.Example.com.:443", "admin.example.org",
		"192.0.2.7", "192.0.2.7:18001", "[::ffff:192.0.2.7]:18001", "10.9.9.9", "10.9.9.9:1", "[::ffff:10.9.9.9]", "[fd00::1]:18001", "fd00::1"} {
		if code, _ := get(t, h, "/", host); code != http.StatusOK {
			t.Errorf("Host %q: %d, want 200", host, code)
		}
	}
	for _, host := range []string{"", "rebind.attacker.example", "rebind.attacker.example:18001", "10.1.2.3", "10.1.2.3:18001",
		"tether.example.com.evil", "192.0.2.8", "[::ffff:192.0.2.8]", "0.0.0.0", "[fd00::2]", "example.com"} {
		if code, body := get(t, h, "/", host); code != http.StatusForbidden || !strings.Contains(body, "--admin-hosts") {
			t.Errorf("Host %q: %d %q, want 403 naming --admin-hosts", host, code, body)
		}
	}
	// A listener on every interface has no own IP to allow: 0.0.0.0 and :: are no Host.
	for _, addr := range []net.Addr{&net.TCPAddr{IP: net.IPv4zero, Port: 18001}, &net.TCPAddr{IP: net.IPv6unspecified, Port: 18001}, nil,
		&net.UnixAddr{Name: "/tmp/admin.sock", Net: "unix"}} {
		h := hostGuard(nil, addr, ok)
		for _, host := range []string{"0.0.0.0", "[::]:18001", "192.0.2.7"} {
			if code, _ := get(t, h, "/", host); code != http.StatusForbidden {
				t.Errorf("listener %v, Host %q: %d, want 403", addr, host, code)
			}
		}
		if code, _ := get(t, h, "/", "127.0.0.1"); code != http.StatusOK {
			t.Errorf("listener %v, Host 127.0.0.1: %d, want 200", addr, code)
		}
	}
}

func TestHealthAndReadiness(t *testing.T) {
	src := &source{ready: make(chan struct{})}
	h := Handler(src, Options{Metrics: prometheus.NewRegistry(), StaleAfter: 30 * time.Second}, func(func()) {})
	if code, body := get(t, h, "/healthz", "localhost"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body := get(t, h, "/readyz", "localhost"); code != http.StatusServiceUnavailable || !strings.Contains(body, "not been listed") {
		t.Errorf("/readyz before the first publication: %d %q", code, body)
	}
	close(src.ready)
	if code, body := get(t, h, "/readyz", "localhost"); code != http.StatusOK || body != "ready\n" {
		t.Errorf("/readyz once published: %d %q", code, body)
	}
	src.mu.Lock()
	src.unconfirmed, src.stale = 41*time.Second+400*time.Millisecond, true
	src.mu.Unlock()
	if code, body := get(t, h, "/readyz", "localhost"); code != http.StatusServiceUnavailable ||
		!strings.Contains(body, "not confirmed for 41s (bound 30s)") {
		t.Errorf("/readyz past --stale-after: %d %q", code, body)
	}
	if code, _ := get(t, h, "/metrics", "localhost"); code != http.StatusOK {
		t.Errorf("/metrics: %d", code)
	}
	if code, _ := get(t, h, "/readyz", "rebind.attacker.example"); code != http.StatusForbidden {
		t.Errorf("/readyz with a foreign Host: %d", code)
	}
}

func TestDebugConfig(t *testing.T) {
	src := &source{ready: make(chan struct{})}
	h := Handler(src, Options{Metrics: prometheus.NewRegistry()}, func(func()) {})
	if code, body := get(t, h, "/debug/config", "localhost"); code != http.StatusServiceUnavailable || !strings.Contains(body, "no configuration") {
		t.Fatalf("/debug/config before the first publication: %d %q", code, body)
	}
	pub := snapshotOf(2, registry.StateAvailable)
	pub.Resources.Problems = nil
	pub.Translate = 1500 * time.Microsecond
	src.pub = pub
	// A lagging Envoy is named by the stream of its ID and variant, no other.
	src.streams = []xdscache.ClientInfo{
		{StreamID: 1, Variant: "sotw", NodeID: "sotw-1"}, {StreamID: 1, Variant: "delta", NodeID: "delta-1"},
		{StreamID: 2, Variant: "delta", NodeID: "delta-2"},
	}
	src.lagging = []LaggingEnvoy{{StreamID: 1, Variant: "delta", Endpoint: "tether_app/app-1"}, {StreamID: 2, Variant: "sotw"}}
	code, body := get(t, h, "/debug/config", "localhost")
	if code != http.StatusOK {
		t.Fatalf("/debug/config: %d %q", code, body)
	}
	var dc DebugConfig
	if err := json.Unmarshal([]byte(body), &dc); err != nil {
		t.Fatalf("/debug/config: %v\n%s", err, body)
	}
	if dc.Revision != 3 || dc.Translate != "1.5ms" || len(dc.Clients) != 3 || dc.Versions["Cluster"] != "c1" || len(dc.Rejected) != 1 {
		t.Errorf("/debug/config = %+v", dc)
	}
	if len(dc.Lagging) != 2 || dc.Lagging[0].NodeID != "delta-1" || dc.Lagging[1].NodeID != "" {
		t.Errorf("lagging = %+v", dc.Lagging)
	}
	if dc.Problems == nil || !strings.Contains(body, `"problems": []`) {
		t.Errorf("no problems must be an empty list: %s", body)
	}
	var eps []map[string]any
	if err := json.Unmarshal(dc.Resources["endpoints"], &eps); err != nil || len(eps) != 1 || eps[0]["clusterName"] != "tether_app" {
		t.Errorf("endpoints = %s (%v)", dc.Resources["endpoints"], err)
	}
	if string(dc.Resources["listeners"]) != "[]" {
		t.Errorf("listeners = %s", dc.Resources["listeners"])
	}
}

// The monitor's document shows each served endpoint's phase and marks the lagging Envoys, matched
// by stream ID and variant; a change of either is a new document.
func TestMonitorShowsPhasesAndLagging(t *testing.T) {
	since := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	src := &source{ready: make(chan struct{}), pub: snapshotOf(1, registry.StateAvailable),
		streams: []xdscache.ClientInfo{{StreamID: 1, Variant: "sotw", Group: "gw"}, {StreamID: 1, Variant: "delta", Group: "gw"},
			{StreamID: 2, Variant: "sotw", Group: "gw"}},
		phases: map[string]map[string]EndpointPhase{"tether_app": {"app-1": {FirstPhase: true, KnownBy: 1, Envoys: 3},
			"app-9": {KnownBy: 3, Envoys: 3}}},
		lagging: []LaggingEnvoy{{StreamID: 1, Variant: "delta", Since: since, Endpoint: "tether_app/app-1"}}}
	// One served instance and one not served (no endpoint): only the first has a phase.
	src.pub.State.Services["app"].Instances["app-2"] = registry.Instance{ID: "app-2", Address: "10.0.0.2", Port: 5000, State: registry.StateAvailable}
	h := Handler(src, Options{Metrics: prometheus.NewRegistry(), MinEnvoyVersion: "1.35.0"}, func(func()) {})
	read := func() MonitorState {
		t.Helper()
		code, body := get(t, h, "/api/state", "localhost")
		var ms MonitorState
		if err := json.Unmarshal([]byte(body), &ms); code != http.StatusOK || err != nil {
			t.Fatalf("/api/state: %d %v", code, err)
		}
		return ms
	}
	ms := read()
	if ms.MinEnvoyVersion != "1.35.0" {
		t.Errorf("minEnvoyVersion = %q", ms.MinEnvoyVersion)
	}
	ins := ms.Services[0].Instances
	if len(ins) != 2 || ins[0].Envoy == nil || !ins[0].Envoy.FirstPhase || ins[0].Envoy.KnownBy != 1 || ins[0].Envoy.Envoys != 3 || ins[1].Envoy != nil {
		t.Errorf("instances = %+v", ins)
	}
	var gw []EnvoyStatus
	for _, g := range ms.Groups {
		if g.Name == "gw" {
			gw = g.Envoys
		}
	}
	if len(gw) != 3 {
		t.Fatalf("groups = %+v", ms.Groups)
	}
	for _, e := range gw {
		lags := e.StreamID == 1 && e.Variant == "delta"
		if (e.LaggingSince != nil) != lags || (lags && (!e.LaggingSince.Equal(since) || e.LaggingEndpoint != "tether_app/app-1")) {
			t.Errorf("Envoy %d/%s: lagging since %v, endpoint %q", e.StreamID, e.Variant, e.LaggingSince, e.LaggingEndpoint)
		}
	}

	src.mu.Lock()
	src.phases = map[string]map[string]EndpointPhase{"tether_app": {"app-1": {KnownBy: 3, Envoys: 3}}}
	src.mu.Unlock()
	if ms := read(); ms.Services[0].Instances[0].Envoy.FirstPhase {
		t.Error("a promotion did not change the document")
	}
	src.mu.Lock()
	src.lagging = nil
	src.mu.Unlock()
	for _, g := range read().Groups {
		for _, e := range g.Envoys {
			if e.LaggingSince != nil {
				t.Errorf("Envoy %d/%s still lagging once caught up", e.StreamID, e.Variant)
			}
		}
	}
}

// Before the first publication, with no group and no Envoy, the first document is built (not the
// empty one the monitor starts with).
func TestMonitorFirstDocumentOfNothing(t *testing.T) {
	m := newMonitor(noGroups{&source{}}, "", func(func()) {})
	seq, body := m.current()
	if seq == 0 || !strings.Contains(string(body), `"ready":false`) {
		t.Errorf("first document: %d %s", seq, body)
	}
}

// noGroups is a source that lists no gateway group.
type noGroups struct{ *source }

func (noGroups) Groups() []string { return nil }

// An Envoy is in sync only with a published snapshot that has versions, each one ACKed.
func TestInSyncNeedsVersions(t *testing.T) {
	pub := snapshotOf(1, registry.StateAvailable)
	pub.Versions = map[string]string{}
	ms := buildMonitorState(pub, nil, []xdscache.ClientInfo{{StreamID: 1, Group: "gw", Acked: map[string]string{}}})
	if e := ms.Groups[0].Envoys; len(e) != 1 || e[0].InSync {
		t.Errorf("Envoys = %+v", e)
	}
}

// The page and its assets come with their security headers.
func TestMonitorPageHeaders(t *testing.T) {
	h := Handler(&source{ready: make(chan struct{})}, Options{Metrics: prometheus.NewRegistry()}, func(func()) {})
	for _, path := range []string{"/", "/ui/app.js", "/ui/style.css"} {
		req := httptest.NewRequest(http.MethodGet, path, nil)
		req.Host = "localhost"
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK || rec.Header().Get("X-Content-Type-Options") != "nosniff" || rec.Body.Len() == 0 {
			t.Errorf("%s: %d, headers %v", path, rec.Code, rec.Header())
		}
	}
}

// With nothing changed the stream writes nothing until a heartbeat is due: ticks alone send no
// comment.
func TestEventsStreamIsQuietBetweenHeartbeats(t *testing.T) {
	src := &source{pub: snapshotOf(1, registry.StateAvailable), reads: make(chan struct{}, 64)}
	m := newMonitor(src, "", nil)
	m.interval, m.heartbeat = time.Millisecond, time.Hour
	_, url := serveMonitor(t, m)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_, lines := stream(t, ctx, url)
	next(t, ctx, lines, "data: ")
	// Five more ticks read the unchanged source, then a change is sent.
	changeAfterReads(t, ctx, src.reads, 6, func() { src.set(snapshotOf(2, registry.StateAvailable)) }, lines)
}

// The event stream as the control plane serves it (default interval, heartbeat and write
// bound): the first document at once, then nothing while nothing changes, then the change.
func TestEventsStreamWithDefaults(t *testing.T) {
	src := &source{ready: make(chan struct{}), pub: snapshotOf(1, registry.StateAvailable), reads: make(chan struct{}, 64)}
	srv := httptest.NewServer(Handler(src, Options{Metrics: prometheus.NewRegistry()}, func(func()) {}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, lines := stream(t, ctx, srv.URL+"/api/events")
	next(t, ctx, lines, "data: ")
	// Two ticks of the unchanged source (a second), then a change.
	changeAfterReads(t, ctx, src.reads, 3, func() { src.set(snapshotOf(2, registry.StateAvailable)) }, lines)
}

// changeAfterReads waits for n reads of an event stream's source, makes change, and wants
// the next line of the stream to be the changed document, no heartbeat comment before it:
// the stream sent nothing while nothing changed and sent the change at its next tick.
func changeAfterReads(t *testing.T, ctx context.Context, reads <-chan struct{}, n int, change func(), lines <-chan string) {
	t.Helper()
	for range n {
		select {
		case <-reads:
		case <-ctx.Done():
			t.Fatal("the stream stopped reading its source")
		}
	}
	change()
	for {
		l := next(t, ctx, lines, "")
		if strings.HasPrefix(l, ":") {
			t.Fatalf("a comment before the heartbeat is due: %q", l)
		}
		if strings.HasPrefix(l, "data: ") {
			return
		}
	}
}
