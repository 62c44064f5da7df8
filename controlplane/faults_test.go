package controlplane_test

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tetherlb/tether/controlplane"
	"github.com/tetherlb/tether/internal/cptest"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/eventually"
	"github.com/tetherlb/tether/internal/xdsclient"
	"github.com/tetherlb/tether/registry"
)

// session is one run of an xDS client on one connection.
type session struct {
	cancel context.CancelFunc
	done   chan error
	conn   *grpc.ClientConn
}

// runClient runs c against addr with creds (plaintext when nil) until stop or the stream fails.
func runClient(t testing.TB, c *xdsclient.Client, addr string, creds credentials.TransportCredentials) *session {
	t.Helper()
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatalf("dial xDS %s: %v", addr, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &session{cancel: cancel, done: make(chan error, 1), conn: conn}
	done := c.Start(ctx, conn)
	go func() { s.done <- <-done }()
	t.Cleanup(func() { s.stop(t) })
	return s
}

// wait returns the error that ended the run, failing the test if it does not end in time.
func (s *session) wait(t *testing.T, within time.Duration) error {
	t.Helper()
	select {
	case err := <-s.done:
		s.done <- err // keep it for stop
		return err
	case <-time.After(within):
		t.Fatalf("xDS client still running after %s", within)
		return nil
	}
}

// running fails the test if the run has ended.
func (s *session) running(t *testing.T, who string) {
	t.Helper()
	select {
	case err := <-s.done:
		s.done <- err
		t.Fatalf("%s: the xDS stream ended: %v", who, err)
	default:
	}
}

func (s *session) stop(t testing.TB) {
	s.cancel()
	select {
	case err := <-s.done:
		s.done <- err
	case <-time.After(10 * time.Second):
		t.Errorf("xDS client did not stop")
	}
	s.conn.Close()
}

// recorder keeps the updates a client receives while on.
type recorder struct {
	mu   sync.Mutex
	on   bool
	upds []xdsclient.Update
}

func (r *recorder) record(u xdsclient.Update) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.on {
		r.upds = append(r.upds, u)
	}
}

func (r *recorder) start() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.on, r.upds = true, nil
}

func (r *recorder) updates() []xdsclient.Update {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]xdsclient.Update(nil), r.upds...)
}

// complete reports whether the client holds every type and n endpoints.
func complete(n int) func(xdsclient.View) bool {
	return func(v xdsclient.View) bool {
		for _, typ := range xdsclient.Types {
			if len(v.Resources[typ]) == 0 {
				return false
			}
		}
		return len(endpoints(v)) == n
	}
}

// endpointsResource returns the name of the endpoints resource holding port.
func endpointsResource(v xdsclient.View, port uint32) string {
	for name, m := range v.Resources[resourcev3.EndpointType] {
		for _, l := range m.(*endpointv3.ClusterLoadAssignment).GetEndpoints() {
			for _, e := range l.GetLbEndpoints() {
				if e.GetEndpoint().GetAddress().GetSocketAddress().GetPortValue() == port {
					return name
				}
			}
		}
	}
	return ""
}

// seedRegistry writes two services: app (a1, a2) and web (w1).
func seedRegistry(t *testing.T, cli *clientv3.Client) {
	t.Helper()
	put(t, cli, "/tether/services/app", serviceJSON)
	put(t, cli, "/tether/services/web", `{"domains": ["web.example.com"]}`)
	put(t, cli, "/tether/instances/app/a1", instanceJSON("a1", 5001, "available", 120))
	put(t, cli, "/tether/instances/app/a2", instanceJSON("a2", 5002, "available", 300))
	put(t, cli, "/tether/instances/web/w1", instanceJSON("w1", 6001, "available", 10))
}

// TestControlPlaneRestartResync replaces the control plane under connected Envoys: a delta
// client that reconnects to the new one with its initial_resource_versions is sent no
// resource it already holds, and only the change made afterwards; a state-of-the-world client
// gets the very same version strings back.
func TestControlPlaneRestartResync(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	seedRegistry(t, cli)
	cp1 := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()}})

	delta, sotw := xdsclient.New(xdsclient.Delta, "envoy-delta", "default"), xdsclient.New(xdsclient.SotW, "envoy-sotw", "default")
	var rec recorder
	delta.OnUpdate = rec.record
	s1, s2 := runClient(t, delta, cp1.XDSAddr(), nil), runClient(t, sotw, cp1.XDSAddr(), nil)
	waitFor(t, delta, "delta: full config from the first control plane", complete(3))
	waitFor(t, sotw, "sotw: full config from the first control plane", complete(3))
	beforeDelta, beforeSotW := delta.View(), sotw.View()

	if err := cp1.Stop(); err != nil {
		t.Fatalf("stop the first control plane: %v", err)
	}
	if err := s1.wait(t, 10*time.Second); err == nil {
		t.Error("delta stream ended without error when its control plane stopped")
	}
	if err := s2.wait(t, 10*time.Second); err == nil {
		t.Error("state-of-the-world stream ended without error when its control plane stopped")
	}

	cp2 := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()}})
	waitReady(t, cp2, 15*time.Second, "the second control plane")
	rec.start()
	runClient(t, delta, cp2.XDSAddr(), nil)
	runClient(t, sotw, cp2.XDSAddr(), nil)

	// State of the world: one response per type, with the versions the client already had.
	waitFor(t, sotw, "sotw: a response of every type from the second control plane", func(v xdsclient.View) bool {
		return v.Responses >= beforeSotW.Responses+int64(len(xdsclient.Types))
	})
	for _, typ := range xdsclient.Types {
		if got, want := sotw.View().Versions[typ], beforeSotW.Versions[typ]; got != want || want == "" {
			t.Errorf("sotw %s: version %q after the restart, %q before; want the same", typ, got, want)
		}
	}

	// Both streams are listed apart, though go-control-plane numbers each variant from 1.
	nodes := func() string {
		var n []string
		for _, c := range cp2.Clients() {
			n = append(n, c.Variant+":"+c.NodeID)
		}
		sort.Strings(n)
		return fmt.Sprint(n)
	}
	want := "[delta:envoy-delta sotw:envoy-sotw]"
	eventually.Saying(t, "the second control plane to list clients "+want, 10*time.Second, func() (bool, string) {
		got := nodes()
		return got == want, got
	})

	// Delta: after a load change, the only resource received since the reconnect is the
	// changed endpoints.
	put(t, cli, "/tether/instances/app/a2", instanceJSON("a2", 5002, "available", 480))
	w2 := endpoints(beforeDelta)[5002].GetLoadBalancingWeight().GetValue()
	waitFor(t, delta, "delta: the load change from the second control plane", func(v xdsclient.View) bool {
		return endpoints(v)[5002].GetLoadBalancingWeight().GetValue() < w2
	})
	appEndpoints := endpointsResource(beforeDelta, 5002)
	var got []string
	for _, u := range rec.updates() {
		for _, n := range u.Names {
			got = append(got, u.TypeURL+" "+n)
		}
		if len(u.Removed) > 0 {
			t.Errorf("delta: %s removed %v after the reconnect", u.TypeURL, u.Removed)
		}
	}
	if want := []string{resourcev3.EndpointType + " " + appEndpoints}; !slices.Equal(got, want) {
		t.Errorf("delta: resources received since the reconnect = %v; want only %v", got, want)
	}
	after := delta.View()
	for _, typ := range xdsclient.Types {
		for name, rv := range beforeDelta.ResourceVersions[typ] {
			if typ == resourcev3.EndpointType && name == appEndpoints {
				continue
			}
			if after.ResourceVersions[typ][name] != rv {
				t.Errorf("delta %s %s: version %q after the restart, %q before", typ, name, after.ResourceVersions[typ][name], rv)
			}
		}
	}
}

// TestEtcdOutageKeepsServing stops etcd for two seconds under connected Envoys: the last
// configuration stays served without a single push, a new Envoy connecting meanwhile gets all
// of it, the control plane stays ready, and once etcd is back a change arrives with at most a
// couple of pushes.
func TestEtcdOutageKeepsServing(t *testing.T) {
	srv := etcdtest.Start(t)
	seedRegistry(t, srv.Client(t))
	cp := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()}})
	old := []*xdsclient.Client{xdsclient.New(xdsclient.Delta, "old-delta", "default"), xdsclient.New(xdsclient.SotW, "old-sotw", "default")}
	var rec recorder // what the delta Envoy receives from the outage on
	old[0].OnUpdate = rec.record
	var sessions []*session
	for _, c := range old {
		sessions = append(sessions, runClient(t, c, cp.XDSAddr(), nil))
		waitFor(t, c, c.Node.Id+": full config", complete(3))
	}
	reference := old[0].View()
	snapshots := metric(t, cp, "tether_snapshots_total")
	responses := []int64{old[0].View().Responses, old[1].View().Responses}

	rec.start()
	srv.Stop()
	outage := time.Now()
	for _, variant := range []xdsclient.Variant{xdsclient.Delta, xdsclient.SotW} {
		c := xdsclient.New(variant, "new-"+string(variant), "default")
		runClient(t, c, cp.XDSAddr(), nil)
		waitFor(t, c, c.Node.Id+": full config during the outage", complete(3))
		if variant == xdsclient.Delta {
			v := c.View()
			for _, typ := range xdsclient.Types {
				if !maps.Equal(v.ResourceVersions[typ], reference.ResourceVersions[typ]) {
					t.Errorf("new Envoy during the outage: %s versions %v; want the last good %v", typ, v.ResourceVersions[typ], reference.ResourceVersions[typ])
				}
			}
		}
	}
	get(t, "http://"+cp.AdminAddr()+"/readyz", http.StatusOK)
	time.Sleep(time.Until(outage.Add(2 * time.Second))) // the outage itself lasts two seconds
	// Counters over the whole outage: no push, no response, to Envoys whose streams are up.
	if got := metric(t, cp, "tether_snapshots_total"); got != snapshots {
		t.Errorf("tether_snapshots_total went %v -> %v during the outage; want no push", snapshots, got)
	}
	for i, c := range old {
		sessions[i].running(t, c.Node.Id+" during the outage")
		if got := c.View().Responses; got != responses[i] {
			t.Errorf("%s received %d responses during the outage; want none", c.Node.Id, got-responses[i])
		}
		if n := len(endpoints(c.View())); n != 3 {
			t.Errorf("%s holds %d endpoints during the outage; want 3", c.Node.Id, n)
		}
	}

	srv.StartAgain(t)
	put(t, srv.Client(t), "/tether/instances/app/a2", instanceJSON("a2", 5002, "full", 500))
	for _, c := range old {
		waitFor(t, c, c.Node.Id+": the change after the outage", func(v xdsclient.View) bool {
			return endpoints(v)[5002].GetHealthStatus() == core.HealthStatus_DRAINING
		})
	}
	if pushes := metric(t, cp, "tether_snapshots_total") - snapshots; pushes < 1 || pushes > 2 {
		t.Errorf("%v pushes after etcd came back with one change; want 1 or 2", pushes)
	}
	// Delta: whatever the number of pushes, nothing but the changed endpoints was sent since
	// the outage began, and nothing removed.
	appEndpoints := endpointsResource(reference, 5002)
	for _, u := range rec.updates() {
		if len(u.Removed) > 0 {
			t.Errorf("delta Envoy: %s removed %v after the outage", u.TypeURL, u.Removed)
		}
		for _, n := range u.Names {
			if u.TypeURL != resourcev3.EndpointType || n != appEndpoints {
				t.Errorf("delta Envoy received %s %s after the outage; want only the changed endpoints %s", u.TypeURL, n, appEndpoints)
			}
		}
	}
}

// TestHostileValuesRejectedAlone writes every kind of hostile value at once, in one etcd
// transaction, beside good entries: the good ones are served, each bad key is rejected alone
// (in /debug/config and the metrics).
func TestHostileValuesRejectedAlone(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	cp := startCP(t, srv.Endpoints())
	c := connect(t, cp, xdsclient.Delta, "envoy-1", "default")
	good := map[string]string{
		"/tether/services/app":     serviceJSON,
		"/tether/instances/app/a1": instanceJSON("a1", 5001, "available", 1),
		"/tether/instances/app/a2": instanceJSON("a2", 5002, "available", 1),
		"/tether/instances/web/w1": instanceJSON("w1", 6001, "available", 1),
	}
	inst := func(id string, edit func(string) string) string { return edit(instanceJSON(id, 7000, "available", 1)) }
	repl := func(old, new string) func(string) string {
		return func(s string) string { return strings.Replace(s, old, new, 1) }
	}
	bad := map[string]string{
		"/tether/instances/app/hostname":   inst("hostname", repl(`"127.0.0.1"`, `"backend.internal"`)),
		"/tether/instances/app/notanip":    inst("notanip", repl(`"127.0.0.1"`, `"10.0.0.999; rm -rf /"`)),
		"/tether/instances/app/port0":      inst("port0", repl(`"port": 7000`, `"port": 0`)),
		"/tether/instances/app/port65536":  inst("port65536", repl(`"port": 7000`, `"port": 65536`)),
		"/tether/instances/app/x/../../a1": instanceJSON("a1", 7000, "available", 1),
		"/tether/instances/app/dup":        instanceJSON("a1", 7000, "available", 1), // claims a1's ID
		"/tether/services/../app":          serviceJSON,
		"/tether/services/web/evil":        serviceJSON,
		"/tether/instances/app/huge":       inst("huge", repl(`"zone"`, `"pad": "`+strings.Repeat("x", 1<<20)+`", "zone"`)),
		"/tether/instances/app/latin1":     inst("latin1", repl(`"eu-west-1a"`, "\"eu-west-\xe91a\"")),
		"/tether/instances/app/nested":     inst("nested", repl(`"zone"`, `"deep": `+strings.Repeat("[", 5000)+strings.Repeat("]", 5000)+`, "zone"`)),
		"/tether/instances/app/notjson":    "hello",
		"/tether/services/web":             `{"affinity": {"mode": "sticky"}, "domains": ["*"]}`,
		"/tether/instances/app/negative":   inst("negative", repl(`"sessions": 1`, `"sessions": -1`)),
	}
	var ops []clientv3.Op
	for k, v := range good {
		ops = append(ops, clientv3.OpPut(k, v))
	}
	for k, v := range bad {
		ops = append(ops, clientv3.OpPut(k, v))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
		t.Fatalf("write all at once: %v", err)
	}
	// web's configuration is rejected with no valid version before it: web is left out
	// (never served with the defaults), its good instance w1 with it.
	waitFor(t, c, "the good entries", func(v xdsclient.View) bool {
		eps := endpoints(v)
		return len(eps) == 2 && eps[5001] != nil && eps[5002] != nil && v.Resources[resourcev3.ClusterType]["tether_app"] != nil
	})
	if _, ok := c.View().Resources[resourcev3.ClusterType]["tether_web"]; ok {
		t.Error("web, whose only configuration is rejected, is served")
	}
	dbg := debugConfig(t, cp)
	for k := range bad {
		if _, ok := dbg.Rejected[k]; !ok {
			t.Errorf("%s is not in /debug/config's rejected map", k)
		}
	}
	for k := range good {
		if reason, ok := dbg.Rejected[k]; ok {
			t.Errorf("good entry %s rejected: %s", k, reason)
		}
	}
	if got := metric(t, cp, "tether_registry_rejected_entries"); got != float64(len(bad)) {
		t.Errorf("tether_registry_rejected_entries = %v; want %d", got, len(bad))
	}
	var counted float64
	for _, kind := range []string{"instance", "service", "unknown"} {
		counted += max(metric(t, cp, fmt.Sprintf(`tether_registry_rejected_entries_total{kind=%q}`, kind)), 0)
	}
	if counted != float64(len(bad)) {
		t.Errorf("tether_registry_rejected_entries_total sums to %v; want %d", counted, len(bad))
	}
	if eps := endpoints(c.View()); eps[7000] != nil {
		t.Error("an endpoint on port 7000 (only hostile entries use it) is served")
	}
}

// TestLargeRegistry serves 2,000 services of two instances each, one instance value at the
// 64 KiB limit and one a byte over it (rejected alone).
func TestLargeRegistry(t *testing.T) {
	const services = 2000
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var ops []clientv3.Op
	flush := func() {
		if len(ops) == 0 {
			return
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatalf("write the registry: %v", err)
		}
		ops = ops[:0]
	}
	for i := range services {
		name := fmt.Sprintf("svc-%04d", i)
		ops = append(ops, clientv3.OpPut("/tether/services/"+name, fmt.Sprintf(`{"domains": ["%s.example.com"]}`, name)))
		for j := range 2 {
			id := fmt.Sprintf("%s-%d", name, j)
			ops = append(ops, clientv3.OpPut("/tether/instances/"+name+"/"+id, instanceJSON(id, 10000+i*2+j, "available", i%400)))
		}
		if len(ops) >= 120 { // etcd allows 128 operations per transaction by default
			flush()
		}
	}
	flush()
	sized := func(id string, port, size int) string {
		v := strings.Replace(instanceJSON(id, port, "available", 1), `"zone"`, `"pad": "", "zone"`, 1)
		return strings.Replace(v, `"pad": ""`, `"pad": "`+strings.Repeat("x", size-len(v))+`"`, 1)
	}
	atLimit, overLimit := sized("big1", 9000, registry.MaxValueBytes), sized("big2", 9001, registry.MaxValueBytes+1)
	if len(atLimit) != registry.MaxValueBytes || len(overLimit) != registry.MaxValueBytes+1 {
		t.Fatalf("test values are %d and %d bytes", len(atLimit), len(overLimit))
	}
	put(t, cli, "/tether/instances/big/big1", atLimit)
	put(t, cli, "/tether/instances/big/big2", overLimit)

	// One service more than --max-services' default: the bound is TestRegistryLimits'.
	cp := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()}, MaxServices: services + 1})
	c := connect(t, cp, xdsclient.Delta, "envoy-1", "default")
	wctx, wcancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer wcancel()
	err := c.WaitFor(wctx, func(v xdsclient.View) bool {
		return len(v.Resources[resourcev3.ClusterType]) == services+1 && len(v.Resources[resourcev3.EndpointType]) == services+1 &&
			len(endpoints(v)) == 2*services+1
	})
	if err != nil {
		v := c.View()
		t.Fatalf("large registry not served: %v (clusters %d, endpoint resources %d, endpoints %d)", err,
			len(v.Resources[resourcev3.ClusterType]), len(v.Resources[resourcev3.EndpointType]), len(endpoints(v)))
	}
	eps := endpoints(c.View())
	if eps[9000] == nil || eps[9000].GetHealthStatus() != core.HealthStatus_HEALTHY {
		t.Error("the instance at the size limit is not served healthy")
	}
	if eps[9001] != nil {
		t.Error("the instance over the size limit is served")
	}
	// /debug/config renders every resource: too slow at this size under -race, so the
	// rejection is read from the metrics.
	if got := metric(t, cp, "tether_registry_rejected_entries"); got != 1 {
		t.Errorf("tether_registry_rejected_entries = %v; want 1 (the value over the limit)", got)
	}
}

// TestClockSkewDoesNotChangeWhatIsServed registers instances whose hosts' clocks are far off:
// updatedAt in 2099 and 1999 is served like a correct one, and a change of updatedAt alone
// changes nothing that is served.
func TestClockSkewDoesNotChangeWhatIsServed(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	skewed := func(id string, port int, at string) string {
		return strings.Replace(instanceJSON(id, port, "available", 100), "2026-11-22T15:40:00Z", at, 1)
	}
	now := time.Now().UTC().Format(time.RFC3339)
	put(t, cli, "/tether/instances/app/now", skewed("now", 5001, now))
	put(t, cli, "/tether/instances/app/future", skewed("future", 5002, "2099-01-01T00:00:00Z"))
	put(t, cli, "/tether/instances/app/past", skewed("past", 5003, "1999-01-01T00:00:00Z"))
	put(t, cli, "/tether/instances/web/w1", instanceJSON("w1", 6001, "available", 1))
	cp := startCP(t, srv.Endpoints())
	c := connect(t, cp, xdsclient.Delta, "envoy-1", "default")
	waitFor(t, c, "all instances", func(v xdsclient.View) bool { return len(endpoints(v)) == 4 })
	v := c.View()
	eps := endpoints(v)
	for _, port := range []uint32{5002, 5003} {
		if eps[port].GetHealthStatus() != eps[5001].GetHealthStatus() || eps[port].GetLoadBalancingWeight().GetValue() != eps[5001].GetLoadBalancingWeight().GetValue() {
			t.Errorf("port %d: health %v weight %d; want the same as the instance with a correct clock (%v, %d)", port,
				eps[port].GetHealthStatus(), eps[port].GetLoadBalancingWeight().GetValue(), eps[5001].GetHealthStatus(), eps[5001].GetLoadBalancingWeight().GetValue())
		}
	}
	if eps[5001].GetHealthStatus() != core.HealthStatus_HEALTHY {
		t.Errorf("health %v; want HEALTHY", eps[5001].GetHealthStatus())
	}

	// Only updatedAt changes (a clock jump); then a later change elsewhere marks the point by
	// which any push for the first would have arrived.
	appEndpoints := endpointsResource(v, 5001)
	put(t, cli, "/tether/instances/app/now", skewed("now", 5001, "2101-06-01T00:00:00Z"))
	put(t, cli, "/tether/instances/web/w1", instanceJSON("w1", 6001, "full", 1))
	waitFor(t, c, "the later change", func(v xdsclient.View) bool {
		return endpoints(v)[6001].GetHealthStatus() == core.HealthStatus_DRAINING
	})
	if got := c.View().ResourceVersions[resourcev3.EndpointType][appEndpoints]; got != v.ResourceVersions[resourcev3.EndpointType][appEndpoints] {
		t.Errorf("a change of updatedAt alone changed the served endpoints (version %s -> %s)", v.ResourceVersions[resourcev3.EndpointType][appEndpoints], got)
	}
}
