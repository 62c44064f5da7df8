package admin

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tetherlb/tether/controlplane/translate"
	"github.com/tetherlb/tether/controlplane/xdscache"
	"github.com/tetherlb/tether/registry"
)

// defaultGroup is the control plane's default gateway group, which is always listed.
const defaultGroup = "default"

func snapshotOf(sessions int, state registry.InstanceState) *Snapshot {
	in := registry.Instance{ID: "app-1", Address: "10.0.0.1", Port: 5000, State: state,
		Thresholds: registry.Thresholds{MaxSessions: 10}, Load: registry.Load{Sessions: sessions}}
	st := &registry.State{Revision: int64(sessions + 1), Services: map[string]*registry.Service{
		"app": {Name: "app", Config: registry.DefaultServiceConfig("app"), Instances: map[string]registry.Instance{"app-1": in}},
	}, Rejected: map[string]string{"/tether/instances/app/x": "bad"}}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: translate.ClusterName("app"), Endpoints: []*endpointv3.LocalityLbEndpoints{{
		LbEndpoints: []*endpointv3.LbEndpoint{{
			HostIdentifier:      &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Hostname: "app-1"}},
			HealthStatus:        corev3.HealthStatus_DRAINING,
			LoadBalancingWeight: wrapperspb.UInt32(40),
		}},
	}}}
	return &Snapshot{State: st, Resources: &translate.Resources{Endpoints: []*endpointv3.ClusterLoadAssignment{cla},
		Problems: []translate.Problem{{Service: "app", Message: "something"}}},
		Versions: map[string]string{"Cluster": "c1", "ClusterLoadAssignment": "e1"}, At: time.Now().UTC()}
}

func TestBuildMonitorState(t *testing.T) {
	clients := []xdscache.ClientInfo{
		{StreamID: 1, NodeID: "a", Group: "gw", Acked: map[string]string{"Cluster": "c1", "ClusterLoadAssignment": "e1"}},
		{StreamID: 2, NodeID: "b", Group: "gw", Acked: map[string]string{"Cluster": "c1", "ClusterLoadAssignment": "e0"}},
	}
	ms := buildMonitorState(snapshotOf(3, registry.StateFull), []string{defaultGroup}, clients)
	if !ms.Ready || ms.Revision != 4 || ms.Summary.Full != 1 || len(ms.Rejected) != 1 || len(ms.Problems) != 1 {
		t.Fatalf("state = %+v", ms)
	}
	in := ms.Services[0].Instances[0]
	if in.Envoy == nil || in.Envoy.Weight != 40 || in.Envoy.Health != "DRAINING" {
		t.Errorf("envoy endpoint of app-1 = %+v", in.Envoy)
	}
	if len(ms.Groups) != 2 || ms.Groups[0].Name != defaultGroup || len(ms.Groups[0].Envoys) != 0 || ms.Groups[1].Name != "gw" {
		t.Fatalf("groups = %+v", ms.Groups)
	}
	if e := ms.Groups[1].Envoys; len(e) != 2 || !e[0].InSync || e[1].InSync {
		t.Errorf("in sync = %+v", e)
	}

	empty := buildMonitorState(nil, nil, nil)
	b, err := json.Marshal(empty)
	if err != nil {
		t.Fatal(err)
	}
	// Lists are empty arrays, not null, and times before the first publish are left out.
	if got := string(b); !strings.Contains(got, `"services":[]`) || !strings.Contains(got, `"groups":[]`) ||
		strings.Contains(got, "publishedAt") || !strings.Contains(got, `"ready":false`) {
		t.Errorf("empty document = %s", got)
	}
}

func TestStamped(t *testing.T) {
	now := time.Date(2026, 11, 22, 15, 40, 0, 0, time.UTC)
	var ms MonitorState
	if err := json.Unmarshal(stamped([]byte(`{"ready":true}`), now), &ms); err != nil || !ms.GeneratedAt.Equal(now) || !ms.Ready {
		t.Errorf("stamped: %+v, %v", ms, err)
	}
	if got := string(stamped([]byte(`{}`), now)); got != `{"generatedAt":"2026-11-22T15:40:00Z"}` {
		t.Errorf("stamped empty = %s", got)
	}
}

func TestMonitorCurrentRebuildsOnlyOnChange(t *testing.T) {
	src := &source{pub: snapshotOf(1, registry.StateAvailable)}
	m := newMonitor(src, "", func(func()) {})
	s1, b1 := m.current()
	s2, _ := m.current()
	if s1 != s2 {
		t.Errorf("unchanged source: sequence moved from %d to %d", s1, s2)
	}
	src.set(snapshotOf(2, registry.StateAvailable))
	s3, b3 := m.current()
	if s3 == s2 || string(b3) == string(b1) {
		t.Errorf("changed source: sequence %d -> %d", s2, s3)
	}
	src.mu.Lock()
	src.streams = []xdscache.ClientInfo{{StreamID: 9, Group: "gw", Acked: map[string]string{}}}
	src.mu.Unlock()
	if s4, _ := m.current(); s4 == s3 {
		t.Error("a new Envoy did not change the document")
	}
}

// serveMonitor serves m's event stream on a real server on 127.0.0.1 whose shutdown ends
// the streams.
func serveMonitor(t *testing.T, m *monitor) (*http.Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second}
	m.onShutdown = srv.RegisterOnShutdown
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/events", m.events)
	srv.Handler = mux
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return srv, "http://" + ln.Addr().String() + "/api/events"
}

// stream opens an event stream and returns its lines.
func stream(t *testing.T, ctx context.Context, url string) (*http.Response, <-chan string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	lines := make(chan string, 1024)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	t.Cleanup(func() { resp.Body.Close() })
	return resp, lines
}

// next returns the next line that starts with prefix, failing after the context's deadline.
func next(t *testing.T, ctx context.Context, lines <-chan string, prefix string) string {
	t.Helper()
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("stream ended while waiting for %q", prefix)
			}
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-ctx.Done():
			t.Fatalf("no %q line: %v", prefix, ctx.Err())
		}
	}
}

func TestEventsStream(t *testing.T) {
	src := &source{pub: snapshotOf(1, registry.StateAvailable)}
	m := newMonitor(src, "", nil)
	m.interval, m.heartbeat = 10*time.Millisecond, 50*time.Millisecond
	m.slots = make(chan struct{}, 1)
	srv, url := serveMonitor(t, m)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()

	resp, lines := stream(t, ctx, url)
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("Content-Type = %q", ct)
	}
	next(t, ctx, lines, "event: state")
	var ms MonitorState
	if err := json.Unmarshal([]byte(strings.TrimPrefix(next(t, ctx, lines, "data: "), "data: ")), &ms); err != nil {
		t.Fatalf("first event: %v", err)
	}
	if ms.Services[0].Instances[0].Load.Sessions != 1 || ms.GeneratedAt.IsZero() {
		t.Errorf("first event = %+v", ms)
	}
	// With nothing changing, the stream sends heartbeat comments only.
	next(t, ctx, lines, ": keepalive")

	src.set(snapshotOf(10, registry.StateFull))
	for i := 0; ; i++ {
		if i == 20 {
			t.Fatal("no event showed the change")
		}
		data := strings.TrimPrefix(next(t, ctx, lines, "data: "), "data: ")
		if err := json.Unmarshal([]byte(data), &ms); err != nil {
			t.Fatalf("event: %v", err)
		}
		if ms.Services[0].Instances[0].State == registry.StateFull {
			break
		}
	}

	// The one stream slot is taken: a second stream is refused.
	r2, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	r2.Body.Close()
	if r2.StatusCode != http.StatusServiceUnavailable || r2.Header.Get("Retry-After") == "" {
		t.Errorf("second stream: %d, Retry-After %q", r2.StatusCode, r2.Header.Get("Retry-After"))
	}

	// Shutdown ends the stream instead of waiting for it to go idle.
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	if err := srv.Shutdown(sctx); err != nil {
		t.Fatalf("shutdown with an open stream: %v", err)
	}
	for range lines {
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatal("stream did not end")
	}
}
