package e2e_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/tetherlb/tether/controlplane/translate"
	"github.com/tetherlb/tether/internal/eventually"
	"github.com/tetherlb/tether/internal/xdsclient"
	"github.com/tetherlb/tether/registry"
)

// The tests below hold Tether to the Envoy rules of docs/envoy-rules.md against a real Envoy
// (ENVOY_BIN); the *WithoutEnvoy ones check the same setups through the simulated Envoy.

// otherService is a second service added and removed while the first one's users are on.
const otherService = "other"

// addOther writes otherService's configuration (its own domain and overload reply) and one
// instance at addr (no lease: the test removes it).
func (e *env) addOther(t testing.TB, cli *clientv3.Client, addr string, port int, overload registry.Overload) {
	t.Helper()
	cfg := registry.DefaultServiceConfig(otherService)
	cfg.Domains = []string{"other.example.com"}
	cfg.Overload = overload
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := registry.PutServiceConfig(ctx, cli, registry.DefaultPrefix, otherService, cfg); err != nil {
		t.Fatalf("configure %s: %v", otherService, err)
	}
	putOtherInstance(t, cli, addr, port, registry.StateAvailable)
}

// putOtherInstance writes otherService's instance o1 in state.
func putOtherInstance(t testing.TB, cli *clientv3.Client, addr string, port int, state registry.InstanceState) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	in := registry.Instance{ID: "o1", Address: addr, Port: port, State: state,
		UpdatedAt: time.Now().UTC().Truncate(time.Millisecond)}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, registry.InstanceKey(registry.DefaultPrefix, otherService, in.ID), string(b)); err != nil {
		t.Fatalf("register %s/o1: %v", otherService, err)
	}
}

// removeOther deletes otherService's configuration and instance in one transaction, as an
// operator removing the service would after its agent drained it and deregistered: the
// instance's last value is marked leaving first, as a stopping agent writes it, and the
// deletion waits the agent's --drain-settle, so that the control plane sees the mark (it holds
// back the sudden disappearance of an instance without it).
func removeOther(t testing.TB, cli *clientv3.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	in := registry.Instance{ID: "o1", Address: "127.0.0.1", Port: 9, State: registry.StateDraining, Leaving: true,
		UpdatedAt: time.Now().UTC().Truncate(time.Millisecond)}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, registry.InstanceKey(registry.DefaultPrefix, otherService, in.ID), string(b)); err != nil {
		t.Fatalf("mark %s/o1 leaving: %v", otherService, err)
	}
	time.Sleep(300 * time.Millisecond)
	if _, err := cli.Txn(ctx).Then(
		clientv3.OpDelete(registry.ServiceKey(registry.DefaultPrefix, otherService)),
		clientv3.OpDelete(registry.InstanceKey(registry.DefaultPrefix, otherService, "o1")),
	).Commit(); err != nil {
		t.Fatalf("delete %s: %v", otherService, err)
	}
}

// listenerOf returns the deterministic bytes of the simulated Envoy's listener and its
// resource version.
func listenerOf(t testing.TB, v xdsclient.View) ([]byte, string) {
	t.Helper()
	l, ok := v.Resources[resourcev3.ListenerType][translate.ListenerName].(*listenerv3.Listener)
	if !ok {
		t.Fatalf("the simulated Envoy holds no listener %s", translate.ListenerName)
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	return b, v.ResourceVersions[resourcev3.ListenerType][translate.ListenerName]
}

// TestListenerStableWithoutEnvoy: through the control plane, adding a service with its own
// overload reply, changing that reply and removing the service sends Envoy new routes and
// clusters but never a new listener (ListenerManagerImpl::drainFilterChains would close
// every connection of the old one).
func TestListenerStableWithoutEnvoy(t *testing.T) {
	e := newEnv(t)
	sim := simulatedEnvoy(t, e.cp.XDSAddr())
	e.waitSim(t, sim, "app1..app3 HEALTHY", allHealthy())
	before, beforeVersion := listenerOf(t, sim.View())
	cli := e.etcd.Client(t)
	otherCluster := translate.ClusterName(otherService)

	waitView := func(what string, cond func(xdsclient.View) bool) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := sim.WaitFor(ctx, cond); err != nil {
			t.Fatalf("simulated Envoy, waiting for %s: %v", what, err)
		}
	}
	routesVersion := func(v xdsclient.View) string {
		return v.ResourceVersions[resourcev3.RouteType][translate.RouteConfigName]
	}
	// firstHealth is the health of the other service's first endpoint (UNKNOWN without one).
	firstHealth := func(v xdsclient.View) corev3.HealthStatus {
		cla, _ := v.Resources[resourcev3.EndpointType][otherCluster].(*endpointv3.ClusterLoadAssignment)
		for _, loc := range cla.GetEndpoints() {
			for _, lb := range loc.GetLbEndpoints() {
				return lb.GetHealthStatus()
			}
		}
		return corev3.HealthStatus_UNKNOWN
	}

	e.addOther(t, cli, "127.0.0.1", 9, registry.Overload{Status: 429, RetryAfterSeconds: 30})
	waitView("the other service's cluster", func(v xdsclient.View) bool { return v.Resources[resourcev3.ClusterType][otherCluster] != nil })
	// A new instance is DRAINING until every Envoy knows it (two-phase publication): wait
	// for its promotion, so that DRAINING below is the registry's state.
	waitView("the other service's instance promoted", func(v xdsclient.View) bool { return firstHealth(v) == corev3.HealthStatus_HEALTHY })
	routes := routesVersion(sim.View())
	e.addOther(t, cli, "127.0.0.1", 9, registry.Overload{Status: 503, ReturnURL: "https://status.example.com/busy%20now"})
	waitView("the other service's new overload reply in the routes", func(v xdsclient.View) bool { return routesVersion(v) != routes })
	putOtherInstance(t, cli, "127.0.0.1", 9, registry.StateDraining)
	waitView("the other service's instance draining", func(v xdsclient.View) bool { return firstHealth(v) == corev3.HealthStatus_DRAINING })
	removeOther(t, cli)
	waitView("the other service gone", func(v xdsclient.View) bool { return v.Resources[resourcev3.ClusterType][otherCluster] == nil })

	after, afterVersion := listenerOf(t, sim.View())
	if string(before) != string(after) || beforeVersion != afterVersion {
		t.Errorf("the listener changed (version %q -> %q) when a service was added, reconfigured and removed", beforeVersion, afterVersion)
	}
	if n := sim.View().NACKs; n != 0 {
		t.Errorf("the simulated Envoy NACKed %d responses", n)
	}
}

// wsWatcher reads a WebSocket's pushes in the background, so that a test can change the
// registry while the socket stays in use, and reports what it saw.
type wsWatcher struct {
	c        *websocket.Conn
	instance string
	session  string
	stop     chan struct{}
	done     chan struct{}
	mu       sync.Mutex
	pushes   int
	counter  int
	err      error
}

func watchWS(c *websocket.Conn, instance, session string) *wsWatcher {
	w := &wsWatcher{c: c, instance: instance, session: session, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for i := 0; i < 100_000; i++ { // bounded: about one push a second
			select {
			case <-w.stop:
				return
			default:
			}
			p, err := readPush(c)
			w.mu.Lock()
			switch {
			case err != nil:
				w.err = err
			case p.Instance != w.instance || p.Session != w.session:
				w.err = fmt.Errorf("push from %s session %s, want %s session %s", p.Instance, p.Session, w.instance, w.session)
			default:
				w.pushes++
				w.counter = p.Counter
			}
			failed := w.err != nil
			w.mu.Unlock()
			if failed {
				return
			}
		}
	}()
	return w
}

// state returns the pushes so far and the first error.
func (w *wsWatcher) state() (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pushes, w.err
}

// finish stops the reader after its current read.
func (w *wsWatcher) finish(t testing.TB) (int, error) {
	t.Helper()
	close(w.stop)
	select {
	case <-w.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the WebSocket reader did not stop")
	}
	return w.state()
}

// envoyStat reads one counter or gauge from Envoy's admin /stats.
func envoyStat(t testing.TB, ev *envoy, name string) int {
	t.Helper()
	status, body, err := plainGet(ev.admin + "/stats?filter=" + url.QueryEscape("^"+strings.ReplaceAll(name, ".", `\.`)+"$"))
	if err != nil || status != http.StatusOK {
		t.Fatalf("GET /stats %s: %d %v", name, status, err)
	}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+": "); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatalf("stat %s = %q", name, v)
			}
			return n
		}
	}
	return 0 // Envoy leaves out counters that were never used
}

// envoyHasCluster reports whether Envoy holds the named cluster.
func envoyHasCluster(t testing.TB, ev *envoy, name string) (bool, string) {
	t.Helper()
	status, body, err := plainGet(ev.admin + "/clusters?format=json")
	if err != nil || status != http.StatusOK {
		return false, fmt.Sprintf("GET /clusters: %d %v", status, err)
	}
	var cs adminClusters
	if err := json.Unmarshal([]byte(body), &cs); err != nil {
		return false, err.Error()
	}
	var names []string
	for _, c := range cs.ClusterStatuses {
		if c.Name == name {
			return true, ""
		}
		names = append(names, c.Name)
	}
	return false, fmt.Sprint(names)
}

// envoyClusterHosts returns the EDS health status of each host of a cluster in Envoy.
func envoyClusterHosts(t testing.TB, ev *envoy, name string) []string {
	t.Helper()
	status, body, err := plainGet(ev.admin + "/clusters?format=json")
	if err != nil || status != http.StatusOK {
		return nil
	}
	var cs adminClusters
	if json.Unmarshal([]byte(body), &cs) != nil {
		return nil
	}
	var out []string
	for _, c := range cs.ClusterStatuses {
		if c.Name != name {
			continue
		}
		for _, h := range c.HostStatuses {
			s := h.HealthStatus.EDSHealthStatus
			if s == "" {
				s = "HEALTHY"
			}
			out = append(out, s)
		}
	}
	return out
}

// TestEnvoyWebSocketSurvivesServiceChanges: a WebSocket stays up, both ways, while another
// service is added with its own overload reply, reconfigured and removed, each change held
// for longer than Envoy's drain time; Envoy never modifies its listener.
func TestEnvoyWebSocketSurvivesServiceChanges(t *testing.T) {
	e, ev := envoyEnv(t, envConfig{})
	cli := e.etcd.Client(t)
	modified := envoyStat(t, ev, "listener_manager.listener_modified")

	b := newBrowser(t, ev.base)
	p := b.mustPage(t)
	c := b.dialWS(t)
	w := watchWS(c, p.Instance, p.Session)
	hold := time.Duration(envoyDrainSeconds+2) * time.Second
	otherCluster := translate.ClusterName(otherService)
	routeUpdates := func() int { return envoyStat(t, ev, "http.tether_http.rds.tether_routes.update_success") }

	e.addOther(t, cli, "127.0.0.1", 9, registry.Overload{Status: 429, RetryAfterSeconds: 30})
	eventually.Saying(t, "Envoy has the other service's cluster", 30*time.Second, func() (bool, string) {
		return envoyHasCluster(t, ev, otherCluster)
	})
	time.Sleep(hold) // longer than the drain time: a drained listener would have closed the socket
	updates := routeUpdates()
	e.addOther(t, cli, "127.0.0.1", 9, registry.Overload{Status: 503, RetryAfterSeconds: 900})
	eventually.Saying(t, "Envoy has the new routes", 30*time.Second, func() (bool, string) {
		n := routeUpdates()
		return n > updates, fmt.Sprintf("%d route updates", n)
	})
	time.Sleep(hold)
	putOtherInstance(t, cli, "127.0.0.1", 9, registry.StateDraining)
	eventually.Saying(t, "Envoy sees the other service's instance draining", 30*time.Second, func() (bool, string) {
		st := envoyClusterHosts(t, ev, otherCluster)
		return len(st) == 1 && st[0] == "DRAINING", fmt.Sprint(st)
	})
	removeOther(t, cli)
	eventually.Saying(t, "Envoy no longer has the other service's cluster", 30*time.Second, func() (bool, string) {
		has, names := envoyHasCluster(t, ev, otherCluster)
		return !has, names
	})
	time.Sleep(hold)

	pushes, err := w.finish(t)
	if err != nil {
		t.Fatalf("the WebSocket failed during the registry changes after %d pushes: %v", pushes, err)
	}
	if pushes < 3*int(hold/time.Second)-3 {
		t.Errorf("%d pushes in about %s, want about one a second", pushes, 3*hold)
	}
	holdWS(t, c, time.Second, p.Instance, p.Session) // still works both ways
	if got := envoyStat(t, ev, "listener_manager.listener_modified"); got != modified {
		t.Errorf("Envoy modified its listener %d times during the registry changes", got-modified)
	}
}

// TestEnvoyFullServerKeepsSessions: app1's own readiness URL answers 503 while it is full
// (its agent reads it as --available-url), as many ASP.NET health endpoints do. Its sessions
// stay on it for longer than several health-check periods, Envoy keeps it DRAINING (never
// failed by a health check), and new users go elsewhere.
func TestEnvoyFullServerKeepsSessions(t *testing.T) {
	e, ev := envoyEnv(t, envConfig{AvailablePath: "/ready"})

	pins := pin(t, ev.base, []string{"app1"}, 2, 60)["app1"]
	e.setRefuse(t, "app1", true)
	if status, _, err := plainGet(e.backends["app1"].url("/ready")); err != nil || status != http.StatusServiceUnavailable {
		t.Fatalf("app1 /ready while full: %d %v, want 503", status, err)
	}
	want := allHealthy()
	want["app1"] = "DRAINING"
	e.waitEnvoy(t, ev, "app1 full (DRAINING) in Envoy", want)

	// 20 s is four periods of the default health-check interval (5 s): a health check on the
	// 503 URL would have failed app1 three times over by then.
	end := time.Now().Add(20 * time.Second)
	for i := 0; i < 100 && time.Now().Before(end); i++ {
		for j, p := range pins {
			p.next(t, fmt.Sprintf("session %d on the full app1, round %d", j, i))
		}
		got, err := e.envoyEndpoints(ev)
		if err != nil {
			t.Fatal(err)
		}
		if got["app1"] != "DRAINING" {
			t.Fatalf("round %d: Envoy sees app1 as %s, want DRAINING", i, got["app1"])
		}
		time.Sleep(500 * time.Millisecond)
	}
	for i := 0; i < 10; i++ {
		if p := newBrowser(t, ev.base).mustPage(t); p.Instance == "app1" || p.Counter != 1 {
			t.Fatalf("new client %d: %s counter %d, want a new session elsewhere", i, p.Instance, p.Counter)
		}
	}
}

// TestEnvoyLongPoll: a session's 90 s long poll (SignalR's fallback transports hold requests
// about that long) completes through Envoy: no route timeout cuts it.
func TestEnvoyLongPoll(t *testing.T) {
	_, ev := envoyEnv(t, envConfig{})

	b := newBrowser(t, ev.base)
	p := b.mustPage(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ev.base+"/poll?seconds=90", nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	resp, err := b.client.Do(req)
	if err != nil {
		t.Fatalf("long poll after %s: %v", time.Since(start).Round(time.Second), err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatalf("long poll body: %v", err)
	}
	var got push
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &got) != nil {
		t.Fatalf("long poll after %s: %d %.300s", time.Since(start).Round(time.Second), resp.StatusCode, body)
	}
	if d := time.Since(start); d < 90*time.Second {
		t.Errorf("long poll answered after %s, want 90 s", d)
	}
	if got.Instance != p.Instance || got.Session != p.Session || got.Counter != p.Counter+1 {
		t.Errorf("long poll %+v, want %s session %s counter %d", got, p.Instance, p.Session, p.Counter+1)
	}
}

// longService is a service name of the maximum length; its default cookie name is shortened.
var longService = "a-" + strings.Repeat("long-service-name-", 3) + strings.Repeat("x", 7)

// TestLongServiceNameWithoutEnvoy: a 63-character service registers, and the simulated Envoy
// gets its routes with its own session cookie and NACKs nothing.
func TestLongServiceNameWithoutEnvoy(t *testing.T) {
	if len(longService) != 63 {
		t.Fatalf("longService is %d characters, want 63", len(longService))
	}
	e := newEnvWith(t, envConfig{Service: longService})
	sim := simulatedEnvoy(t, e.cp.XDSAddr())
	e.waitSim(t, sim, "app1..app3 HEALTHY", allHealthy())
	v := sim.View()
	checkSessionCookie(t, v, longService, e.cookieName)
	if len(e.cookieName) > registry.MaxCookieName || e.cookieName == "tether-"+longService {
		t.Errorf("cookie %q for a 63-character service", e.cookieName)
	}
	if v.NACKs != 0 {
		t.Errorf("the simulated Envoy NACKed %d responses", v.NACKs)
	}
}

// TestEnvoyLongServiceName: a 63-character service is served by a real Envoy (which rejects a
// cookie regex over RE2 program size 100 and with it every route) and its users get their
// sticky cookie.
func TestEnvoyLongServiceName(t *testing.T) {
	e, ev := envoyEnv(t, envConfig{Service: longService})

	b := newBrowser(t, ev.base)
	first := b.mustPage(t)
	if b.cookie(t, e.cookieName) == "" {
		t.Fatalf("no %s cookie after the first response", e.cookieName)
	}
	for i := 2; i <= 20; i++ {
		if p := b.mustPage(t); p.Instance != first.Instance || p.Counter != i {
			t.Fatalf("request %d: %s counter %d, want %s counter %d", i, p.Instance, p.Counter, first.Instance, i)
		}
	}
}

// TestFullByReadinessWithoutEnvoy: the setup of TestEnvoyFullServerKeepsSessions through the
// simulated Envoy: app1's readiness URL answering 503 makes it DRAINING (full), never
// UNHEALTHY, and its cluster has neither an active health check nor outlier detection that
// could fail it while full.
func TestFullByReadinessWithoutEnvoy(t *testing.T) {
	e := newEnvWith(t, envConfig{AvailablePath: "/ready"})
	sim := simulatedEnvoy(t, e.cp.XDSAddr())
	e.waitSim(t, sim, "app1..app3 HEALTHY", allHealthy())
	e.setRefuse(t, "app1", true)
	want := allHealthy()
	want["app1"] = "DRAINING"
	e.waitSim(t, sim, "app1 DRAINING (full by its readiness URL)", want)
	c, ok := sim.View().Resources[resourcev3.ClusterType][translate.ClusterName(e.service)].(*clusterv3.Cluster)
	if !ok {
		t.Fatal("no cluster for the service")
	}
	if len(c.GetHealthChecks()) != 0 || c.GetOutlierDetection() != nil {
		t.Errorf("cluster %s: health checks %v, outlier detection %v; either would fail a full server and move its sessions",
			c.GetName(), c.GetHealthChecks(), c.GetOutlierDetection())
	}
}
