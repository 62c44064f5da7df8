package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/tetherlb/tether/controlplane"
	"github.com/tetherlb/tether/controlplane/admin"
	"github.com/tetherlb/tether/internal/cptest"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/eventually"
	"github.com/tetherlb/tether/internal/overview"
	"github.com/tetherlb/tether/internal/syncbuf"
	"github.com/tetherlb/tether/internal/xdsclient"
	"github.com/tetherlb/tether/registry"
)

func init() { pollInterval = 20 * time.Millisecond }

type result struct {
	code           int
	stdout, stderr string
}

// runCmd runs the command args[0] (drain, drains, status, service) against etcd with env
// as the environment.
func runCmd(t *testing.T, etcd string, env map[string]string, args ...string) result {
	t.Helper()
	return run(t, env, append(args, "--etcd-endpoints", etcd)...)
}

// run runs the command args[0] with the rest of args and env as the environment.
func run(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	var out, errb syncbuf.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	code := Commands[args[0]](ctx, args[1:], lookup, &out, &errb)
	return result{code, out.String(), errb.String()}
}

func putInstance(t *testing.T, cli *clientv3.Client, id string, port int, version string, state registry.InstanceState, sessions int) {
	t.Helper()
	in := registry.Instance{ID: id, Address: "127.0.0.1", Port: port, Labels: map[string]string{"version": version},
		Thresholds: registry.Thresholds{MaxSessions: 100}, Load: registry.Load{Sessions: sessions},
		State: state, UpdatedAt: time.Now().UTC()}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, registry.InstanceKey("/tether", "app", id), string(b)); err != nil {
		t.Fatal(err)
	}
}

// eachHealth calls f with the instance ID and EDS health of every endpoint of the assignments.
func eachHealth(assignments map[string]proto.Message, f func(id, health string)) {
	for _, m := range assignments {
		for _, l := range m.(*endpointv3.ClusterLoadAssignment).GetEndpoints() {
			for _, e := range l.GetLbEndpoints() {
				f(e.GetEndpoint().GetHostname(), e.GetHealthStatus().String())
			}
		}
	}
}

// health returns the EDS health of every endpoint of the view, by instance ID.
func health(v xdsclient.View) map[string]string {
	out := map[string]string{}
	eachHealth(v.Resources[resourcev3.EndpointType], func(id, h string) { out[id] = h })
	return out
}

// fixture is a control plane on a test etcd with one real ADS client.
type fixture struct {
	etcd *etcdtest.Server
	cli  *clientv3.Client
	cp   *controlplane.ControlPlane
	xds  *xdsclient.Client

	mu   sync.Mutex
	seen map[string][]string // instance ID -> every EDS health it was given, in order
}

func start(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{etcd: etcdtest.Start(t), seen: map[string][]string{}}
	f.cli = f.etcd.Client(t)
	f.cp = cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: f.etcd.Endpoints()}})
	f.xds = xdsclient.New(xdsclient.Delta, "envoy-1", "default")
	f.xds.OnUpdate = func(u xdsclient.Update) {
		if u.TypeURL != resourcev3.EndpointType {
			return
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		eachHealth(u.Resources, func(id, h string) { f.seen[id] = append(f.seen[id], h) })
	}
	conn, err := grpc.NewClient(f.cp.XDSAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	xctx, xcancel := context.WithCancel(context.Background())
	// A stream that fails ends every WaitFor on the client at once with its error.
	done := f.xds.Start(xctx, conn)
	t.Cleanup(func() {
		xcancel()
		if err := <-done; err != nil {
			t.Logf("xDS client stopped: %v", err)
		}
		conn.Close()
	})
	return f
}

// waitHealth waits until the client holds the given EDS health for each instance ("" = absent).
func (f *fixture) waitHealth(t *testing.T, what string, want map[string]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	err := f.xds.WaitFor(ctx, func(v xdsclient.View) bool {
		h := health(v)
		for id, s := range want {
			if h[id] != s {
				return false
			}
		}
		return true
	})
	if err != nil {
		t.Fatalf("%s: %v; Envoy holds %v, want %v", what, err, health(f.xds.View()), want)
	}
}

func (f *fixture) apiState(t *testing.T) admin.MonitorState {
	t.Helper()
	var ms admin.MonitorState
	f.getAPIState(t, &ms)
	return ms
}

// getAPIState decodes the control plane's /api/state into v.
func (f *fixture) getAPIState(t *testing.T, v any) {
	t.Helper()
	resp, err := http.Get("http://" + f.cp.AdminAddr() + "/api/state")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decode /api/state: %v\n%s", err, b)
	}
}

func (f *fixture) seenOf(id string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.seen[id]...)
}

// TestDrainByIDLabelUndoAndLater drives the commands against a control plane on a real etcd
// with a real ADS client: a drained instance is DRAINING for Envoy (an unhealthy one stays
// UNHEALTHY), --undo brings it back, a label drain selects a whole version, an instance that
// registers under a drain is DRAINING from its first push, and /api/state and `drains` show
// which drain, since when and the sessions left.
func TestDrainByIDLabelUndoAndLater(t *testing.T) {
	f := start(t)
	etcd := f.etcd.ClientURL
	putInstance(t, f.cli, "a1", 5001, "1", registry.StateAvailable, 5)
	putInstance(t, f.cli, "a2", 5002, "1", registry.StateFull, 3)
	putInstance(t, f.cli, "u1", 5003, "1", registry.StateUnhealthy, 0)
	putInstance(t, f.cli, "b1", 5004, "2", registry.StateAvailable, 0)
	f.waitHealth(t, "registered", map[string]string{"a1": "HEALTHY", "a2": "DRAINING", "u1": "UNHEALTHY", "b1": "HEALTHY"})

	// By ID.
	r := runCmd(t, etcd, nil, "drain", "app/b1", "--reason", "disk swap")
	if r.code != 0 || !strings.Contains(r.stdout, "drained app/b1 (drain b1)") {
		t.Fatalf("drain app/b1: %+v", r)
	}
	f.waitHealth(t, "b1 drained", map[string]string{"b1": "DRAINING", "a1": "HEALTHY"})
	ms := f.apiState(t)
	b1 := findInstance(t, ms, "b1")
	if b1.State != registry.StateDraining || b1.Drain == nil || b1.Drain.Name != "b1" || b1.Drain.Since.IsZero() ||
		b1.Reason != registry.OperatorDrainReason("b1") || b1.Envoy == nil || b1.Envoy.Health != "DRAINING" {
		t.Errorf("/api/state b1: %+v drain %+v envoy %+v", b1.Instance, b1.Drain, b1.Envoy)
	}
	if len(ms.Drains) != 1 || ms.Drains[0].Reason != "disk swap" || strings.Join(ms.Drains[0].Matched, ",") != "b1" || ms.Summary.Drained != 1 {
		t.Errorf("/api/state drains %+v, summary %+v", ms.Drains, ms.Summary)
	}
	// Draining it again is no error and keeps the first createdAt.
	if r := runCmd(t, etcd, nil, "drain", "app/b1"); r.code != 0 || !strings.Contains(r.stdout, "already drained since") {
		t.Errorf("second drain: %+v", r)
	}
	if r := runCmd(t, etcd, nil, "drain", "app/b1", "--undo"); r.code != 0 || !strings.Contains(r.stdout, "undrained app/b1") {
		t.Fatalf("undo: %+v", r)
	}
	f.waitHealth(t, "b1 back", map[string]string{"b1": "HEALTHY"})

	// By label: the unhealthy instance stays UNHEALTHY; the other version is untouched.
	r = runCmd(t, etcd, nil, "drain", "app", "--label", "version=1")
	if r.code != 0 || !strings.Contains(r.stdout, "3 instances (a1, a2, u1) keep their 8 sessions") || r.stderr != "" {
		t.Fatalf("drain by label: %+v", r)
	}
	f.waitHealth(t, "version 1 drained", map[string]string{"a1": "DRAINING", "a2": "DRAINING", "u1": "UNHEALTHY", "b1": "HEALTHY"})

	// An instance registering under the drain is DRAINING from its very first push.
	putInstance(t, f.cli, "a3", 5005, "1", registry.StateAvailable, 0)
	f.waitHealth(t, "a3 registered drained", map[string]string{"a3": "DRAINING"})
	if slices.ContainsFunc(f.seenOf("a3"), func(h string) bool { return h != "DRAINING" }) {
		t.Errorf("a3 was given %v: it must never be HEALTHY under the drain", f.seenOf("a3"))
	}

	// Undoing the instance alone names the label drain that holds it.
	if r := runCmd(t, etcd, nil, "drain", "app/a1", "--undo"); r.code != 2 || !strings.Contains(r.stderr, "drain version=1") {
		t.Errorf("undo of an instance drained by label: %+v", r)
	}
	r = runCmd(t, etcd, nil, "drains")
	if r.code != 0 || !strings.Contains(r.stdout, "version=1") || !strings.Contains(r.stdout, "a1,a2,a3,u1") || !strings.Contains(r.stdout, "labels version=1") {
		t.Errorf("drains: %+v", r)
	}
	ms = f.apiState(t)
	if a3 := findInstance(t, ms, "a3"); a3.Drain == nil || a3.Drain.Name != "version=1" || a3.State != registry.StateDraining {
		t.Errorf("/api/state a3: %+v %+v", a3.Instance, a3.Drain)
	}
	if u1 := findInstance(t, ms, "u1"); u1.Drain == nil || u1.State != registry.StateUnhealthy {
		t.Errorf("/api/state u1: %+v %+v", u1.Instance, u1.Drain)
	}

	// A bad drain written by hand is rejected alone: it drains nothing, the others stand.
	if _, err := f.cli.Put(context.Background(), "/tether/drains/app/bad", `{"instance":"b1","labels":{"version":"2"}}`); err != nil {
		t.Fatal(err)
	}
	if _, err := f.cli.Put(context.Background(), "/tether/drains/app/b1", `{"instance":"b1"}`); err != nil {
		t.Fatal(err)
	}
	// A drain by hand whose name the command would use for another selection is not replaced.
	if _, err := f.cli.Put(context.Background(), "/tether/drains/app/a2", `{"labels":{"version":"1"}}`); err != nil {
		t.Fatal(err)
	}
	// (--force: no instance is left available for new sessions at this point.)
	if r := runCmd(t, etcd, nil, "drain", "app/a2", "--force"); r.code != 2 || !strings.Contains(r.stderr, "/tether/drains/app/a2 selects labels version=1, not instance a2") {
		t.Errorf("drain over a hand-written drain of the same name: %+v", r)
	}
	if _, err := f.cli.Delete(context.Background(), "/tether/drains/app/a2"); err != nil {
		t.Fatal(err)
	}
	f.waitHealth(t, "good drain after the bad one", map[string]string{"b1": "DRAINING", "a1": "DRAINING"})
	if _, err := f.cli.Delete(context.Background(), "/tether/drains/app/b1"); err != nil {
		t.Fatal(err)
	}
	f.waitHealth(t, "b1 back", map[string]string{"b1": "HEALTHY", "a1": "DRAINING"})
	if r := runCmd(t, etcd, nil, "drains"); !strings.Contains(r.stderr, "/tether/drains/app/bad is not a valid drain") {
		t.Errorf("drains does not warn about the bad drain: %+v", r)
	}

	if r := runCmd(t, etcd, nil, "drain", "app", "--label", "version=1", "--undo"); r.code != 0 || !strings.Contains(r.stdout, "a1, a2, a3, u1 may take new sessions again") {
		t.Fatalf("undo label: %+v", r)
	}
	f.waitHealth(t, "version 1 back", map[string]string{"a1": "HEALTHY", "a2": "DRAINING", "a3": "HEALTHY", "u1": "UNHEALTHY"})
}

func findInstance(t *testing.T, ms admin.MonitorState, id string) statusInstance {
	t.Helper()
	for _, s := range ms.Services {
		for _, in := range s.Instances {
			if in.ID == id {
				return in
			}
		}
	}
	t.Fatalf("/api/state lacks instance %s", id)
	return statusInstance{}
}

// TestWaitReturnsAtZeroSessions: --wait prints the falling count and returns 0 once every
// drained instance has reported since the drain with no sessions; it gives up with exit code
// 3 at --timeout.
func TestWaitReturnsAtZeroSessions(t *testing.T) {
	f := start(t)
	etcd := f.etcd.ClientURL
	putInstance(t, f.cli, "a1", 5001, "1", registry.StateAvailable, 5)
	putInstance(t, f.cli, "a2", 5002, "1", registry.StateAvailable, 3)
	putInstance(t, f.cli, "b1", 5003, "2", registry.StateAvailable, 7)
	f.waitHealth(t, "registered", map[string]string{"a1": "HEALTHY", "a2": "HEALTHY", "b1": "HEALTHY"})

	var out, errb syncbuf.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := startDrain(ctx, &out, &errb, "app", "--label", "version=1", "--wait", "--timeout", "20s", "--etcd-endpoints", etcd)
	waitOutput(t, &out, "8 sessions on 2 drained instances")
	f.waitHealth(t, "drained", map[string]string{"a1": "DRAINING", "a2": "DRAINING", "b1": "HEALTHY"})
	// a1's 0 is news; a2 has not reported since the drain: not done yet, even at 3+0.
	putInstance(t, f.cli, "a1", 5001, "1", registry.StateDraining, 0)
	waitOutput(t, &out, "3 sessions on 2 drained instances (a1: 0, a2: 3, not reported since the drain)")
	// a2's last report was before the drain: a stale 0 must not end the wait.
	select {
	case code := <-done:
		t.Fatalf("--wait returned %d with a2 not reported since the drain:\n%s", code, out.String())
	default:
	}
	putInstance(t, f.cli, "a2", 5002, "1", registry.StateDraining, 1)
	waitOutput(t, &out, "1 session on 2 drained instances (a1: 0, a2: 1)")
	putInstance(t, f.cli, "a2", 5002, "1", registry.StateDraining, 0)
	if code := exitOf(t, done, 15*time.Second, &out); code != 0 || !strings.Contains(out.String(), "no sessions left on the instances of app with labels version=1") {
		t.Errorf("--wait: exit %d\n%s\n%s", code, out.String(), errb.String())
	}
	t.Logf("--wait printed:\n%s", out.String())

	// Timeout: b1 keeps its sessions.
	r := runCmd(t, etcd, nil, "drain", "app/b1", "--wait", "--timeout", "300ms", "--force") // b1 is the last available
	if r.code != 3 || !strings.Contains(r.stderr, "timed out after 300ms with 7 sessions left") {
		t.Errorf("--wait timeout: %+v", r)
	}
}

func waitOutput(t *testing.T, b *syncbuf.Buffer, want string) {
	t.Helper()
	eventually.Saying(t, fmt.Sprintf("output with %q", want), 15*time.Second, func() (bool, string) {
		return strings.Contains(b.String(), want), "\n" + b.String()
	})
}

// TestDrainErrors: clear errors, with exit code 2, for mistakes; a selector that matches
// nothing is written with a warning; a drain leaving no instance available needs --force.
func TestDrainErrors(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	putInstance(t, cli, "a1", 5001, "1", registry.StateAvailable, 0)
	etcd := srv.ClientURL
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"drain", "nope/x"}, 2, `unknown service "nope": it has no configuration and no instance under /tether (known services: app)`},
		{[]string{"drain", "nope/x", "--prefix", "/empty"}, 2, "(known services: none)"},
		{[]string{"drain", "app/a1", "--request-timeout", "0s"}, 2, "--request-timeout: 0s must be positive"},
		{[]string{"drain", "app"}, 2, "is a whole service"},
		{[]string{"drain", "app", "--label", "version"}, 2, "invalid value \"version\" for flag -label: \"version\" is not KEY=VALUE, e.g. version=1.4.1\nsee tether-controlplane drain -h\n"},
		{[]string{"drain", "app", "--label", "-v=1"}, 2, `label key "-v"`},
		{[]string{"drain", "app", "--label", "v=1", "--label", "v=2"}, 2, "given twice"},
		{[]string{"drain", "app", "--label", "v=1,v=2"}, 2, "given twice"},
		{[]string{"drain", "app", "--label", "version=1,zone"}, 2, `"zone" is not KEY=VALUE`},
		{[]string{"drain", "app/a1", "--label", "v=1"}, 2, "names one instance"},
		{[]string{"drain", "app/a 1"}, 2, "instance id"},
		{[]string{"drain", "App/a1"}, 2, "service name"},
		{[]string{"drain", "app/a1", "--undo", "--wait"}, 2, "do not go together"},
		{[]string{"drain", "app/a1", "--undo"}, 2, "app/a1 is not drained"},
		{[]string{"drain", "app/a1", "app/a2"}, 2, "give one target"},
		{[]string{"drains", "app", "web"}, 2, "unexpected argument"},
		{[]string{"drain", "app", "--label", "version=9"}, 0, "warning: no instance of app has labels version=9 now; instances that register with them will start drained (instances of app carry version=1 (1))"},
		{[]string{"drain", "app", "--label", "verison=1"}, 0, "(its instances carry no such label key; their keys: version)"},
		{[]string{"drain", "app/later"}, 0, "warning: no instance app/later is registered now; it will start drained"},
		{[]string{"drain", "newsvc/x", "--force"}, 0, "warning"},
		{[]string{"drain", "app/a1"}, 2, "no other instance of app is available for new sessions now"},
		{[]string{"drain", "app/a1", "--force"}, 0, "warning (--force): no other instance of app is available for new sessions now"},
	}
	for _, c := range cases {
		r := runCmd(t, etcd, nil, c.args...)
		if r.code != c.code || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d and %q", c.args, r.code, r.stderr, c.code, c.want)
		}
	}
	// An invalid value under the command's name drains nothing: the command replaces it.
	if _, err := cli.Put(context.Background(), "/tether/drains/app/zz", `{"instance":`); err != nil {
		t.Fatal(err)
	}
	if r := runCmd(t, etcd, nil, "drain", "app/zz"); r.code != 0 || !strings.Contains(r.stdout, "drained app/zz") {
		t.Errorf("drain over an invalid value: %+v", r)
	}
	if r := runCmd(t, etcd, nil, "drain", "app/zz", "--undo"); r.code != 0 {
		t.Errorf("undo: %+v", r)
	}
	port := etcdtest.FreePort(t)
	r := runCmd(t, fmt.Sprintf("127.0.0.1:%d", port), nil, "drain", "app/a1", "--etcd-dial-timeout", "200ms", "--request-timeout", "500ms")
	if r.code != 1 || !strings.Contains(r.stderr, "etcd") {
		t.Errorf("unreachable etcd: %+v", r)
	}
}

// TestDrainFlagsFromTheEnvironment: every flag of the drain command reads TETHER_<FLAG>, as
// reference.md promises, and is read from it before the command uses it: the selection and
// the note, and the checks of --undo, --wait and --timeout.
func TestDrainFlagsFromTheEnvironment(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	putInstance(t, cli, "a1", 5001, "1", registry.StateAvailable, 0)
	putInstance(t, cli, "b1", 5002, "2", registry.StateAvailable, 0)
	env := map[string]string{"TETHER_LABEL": "version=1", "TETHER_REASON": "from the environment"}
	if r := runCmd(t, srv.ClientURL, env, "drain", "app"); r.code != 0 {
		t.Fatalf("drain app with TETHER_LABEL: %+v", r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, registry.DrainKey("/tether", "app", "version=1"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("the drain version=1: %v, %d keys", err, len(resp.Kvs))
	}
	d, err := registry.DecodeDrain("app", "version=1", resp.Kvs[0].Value)
	if err != nil || d.Labels["version"] != "1" || len(d.Labels) != 1 || d.Reason != "from the environment" {
		t.Errorf("drain written: %+v, %v", d, err)
	}
	for _, c := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"TETHER_UNDO": "true", "TETHER_WAIT": "true"}, "do not go together"},
		{map[string]string{"TETHER_WAIT": "true", "TETHER_TIMEOUT": "0s"}, "--timeout: 0s must be positive"},
		{map[string]string{"TETHER_REASON": strings.Repeat("x", registry.MaxReason+1)}, "--reason: over"},
	} {
		if r := runCmd(t, srv.ClientURL, c.env, "drain", "app/a1"); r.code != 2 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("drain app/a1 with %v: exit %d, stderr %q; want exit 2 and %q", c.env, r.code, r.stderr, c.want)
		}
	}
}

// TestOperatorRole: with the roles of examples/etcd-roles.sh, the operator user drains and
// undrains with the command, the agent user cannot.
func TestOperatorRole(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithFastPasswords())
	admin := srv.Client(t)
	putInstance(t, admin, "a1", 5001, "1", registry.StateAvailable, 0)
	etcdtest.ApplyRolesScript(t, admin, "../../examples/etcd-roles.sh", registry.DefaultPrefix, map[string]string{
		"ROOT_PASSWORD": "root-pw-1", "CONTROLPLANE_PASSWORD": "cp-pw-2", "AGENT_PASSWORD": "agent-pw-3", "OPERATOR_PASSWORD": "op-pw-4",
	})
	as := func(user, pw string) map[string]string {
		return map[string]string{"TETHER_ETCD_USER": user, "TETHER_ETCD_PASSWORD": pw}
	}
	op := as("tether-operator", "op-pw-4")
	if r := runCmd(t, srv.ClientURL, op, "drain", "app/a1", "--force"); r.code != 0 { // a1 is app's only instance
		t.Fatalf("operator drains: %+v", r)
	}
	if r := runCmd(t, srv.ClientURL, op, "drains"); r.code != 0 || !strings.Contains(r.stdout, "a1") {
		t.Errorf("operator lists: %+v", r)
	}
	if r := runCmd(t, srv.ClientURL, as("tether-agent", "agent-pw-3"), "drain", "app/a1", "--undo"); r.code != 1 || !strings.Contains(r.stderr, "permission denied") {
		t.Errorf("agent undoes a drain: %+v; want permission denied", r)
	}
	if r := runCmd(t, srv.ClientURL, as("tether-controlplane", "cp-pw-2"), "drain", "app", "--label", "version=1", "--force"); r.code != 1 || !strings.Contains(r.stderr, "permission denied") {
		t.Errorf("control plane writes a drain: %+v; want permission denied", r)
	}
	if r := runCmd(t, srv.ClientURL, op, "drain", "app/a1", "--undo"); r.code != 0 {
		t.Errorf("operator undoes: %+v", r)
	}
}

type statusInstance = overview.Instance

// TestDescribeSourceIPSaysUsersMove: a drained source-ip server is served DRAINING and so
// leaves Envoy's hash ring, which holds healthy hosts only (envoy-rules row 12): its users
// move at once. The drain must not promise that it keeps them.
func TestDescribeSourceIPSaysUsersMove(t *testing.T) {
	st := &registry.State{Services: map[string]*registry.Service{}}
	for _, mode := range []registry.AffinityMode{registry.AffinityCookie, registry.AffinitySourceIP} {
		cfg := registry.DefaultServiceConfig("app")
		cfg.Affinity.Mode = mode
		st.Services["app"] = &registry.Service{Name: "app", Config: cfg, Instances: map[string]registry.Instance{
			"a1": {ID: "a1", State: registry.StateAvailable, Load: registry.Load{Sessions: 4}},
			"a2": {ID: "a2", State: registry.StateFull, Load: registry.Load{Sessions: 3}},
		}}
		for _, ids := range [][]string{{"a1"}, {"a1", "a2"}} {
			got := describe(st, "app", ids)
			keeps := strings.Contains(got, "keep")
			if mode == registry.AffinitySourceIP && (keeps || !strings.Contains(got, "move")) {
				t.Errorf("source-ip, %v: %q; want no promise to keep sessions, and that its users move", ids, got)
			}
			if mode == registry.AffinityCookie && !keeps {
				t.Errorf("cookie, %v: %q; want that it keeps its sessions", ids, got)
			}
		}
	}
}

// TestDrainMessages: -h does not send the reader to -h; an undo of a label drain that does
// not exist reads as English; Ctrl-C during --wait is not an etcd failure (exit 130, the
// drain stays).
func TestDrainMessages(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	putInstance(t, cli, "a1", 5001, "1", registry.StateAvailable, 0)
	putInstance(t, cli, "a2", 5002, "2", registry.StateAvailable, 5)
	var out, errb syncbuf.Buffer
	if code := Drain(context.Background(), []string{"-h"}, func(string) (string, bool) { return "", false }, &out, &errb); code != 0 || strings.Contains(errb.String(), "see tether-controlplane drain -h") {
		t.Errorf("drain -h: exit %d, it refers to itself:\n%s", code, errb.String())
	}
	if r := runCmd(t, srv.ClientURL, nil, "drain", "app", "--label", "version=9", "--undo"); r.code != 2 || !strings.Contains(r.stderr, "version=9 are not drained") {
		t.Errorf("undo of no label drain: %+v; want \"... are not drained\"", r)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wout, werr syncbuf.Buffer
	done := startDrain(ctx, &wout, &werr, "app/a2", "--wait", "--etcd-endpoints", srv.ClientURL)
	waitOutput(t, &wout, "5 sessions")
	cancel()
	if code := exitOf(t, done, 10*time.Second, &wout); code != 130 || !strings.Contains(werr.String(), "the drain stays in place") || strings.Contains(werr.String(), "context canceled") {
		t.Errorf("Ctrl-C during --wait: exit %d, %q; want 130 saying the drain stays", code, werr.String())
	}
}

// TestUndoAndWaitEndings: --undo of one label drain removes that drain alone, not another
// label drain of the service; --wait fails (exit 1) when its drain is removed meanwhile and
// reports an interruption (exit 130), never success: a script stopping agents on exit 0
// would cut users off.
func TestUndoAndWaitEndings(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	etcd := srv.ClientURL
	putInstance(t, cli, "a1", 5001, "1", registry.StateAvailable, 5)
	putInstance(t, cli, "b1", 5002, "2", registry.StateAvailable, 4)
	putInstance(t, cli, "c1", 5003, "3", registry.StateAvailable, 0)
	for _, v := range []string{"version=2", "version=1"} {
		if r := runCmd(t, etcd, nil, "drain", "app", "--label", v); r.code != 0 {
			t.Fatalf("drain %s: %+v", v, r)
		}
	}
	if r := runCmd(t, etcd, nil, "drain", "app", "--label", "version=1", "--undo"); r.code != 0 {
		t.Fatalf("undo version=1: %+v", r)
	}
	keys := func() []string {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := cli.Get(ctx, registry.ServiceDrainsPrefix("/tether", "app"), clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, kv := range resp.Kvs {
			out = append(out, string(kv.Key))
		}
		return out
	}
	if got := keys(); len(got) != 1 || got[0] != registry.DrainKey("/tether", "app", "version=2") {
		t.Fatalf("after undoing version=1 the drains are %v, want version=2's alone", got)
	}

	// --wait on b1's drain (4 sessions): ended by its removal, then by an interruption.
	waitOn := func(end func(cancel context.CancelFunc)) (int, string) {
		var out, errb syncbuf.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		done := startDrain(ctx, &out, &errb, "app", "--label", "version=2", "--wait", "--timeout", "25s", "--etcd-endpoints", etcd)
		waitOutput(t, &out, "4 sessions on 1 drained instance")
		end(cancel)
		return exitOf(t, done, 20*time.Second, &out), errb.String()
	}
	code, stderr := waitOn(func(context.CancelFunc) {
		if _, err := cli.Delete(context.Background(), registry.DrainKey("/tether", "app", "version=2")); err != nil {
			t.Fatal(err)
		}
	})
	if code != exitFailure || !strings.Contains(stderr, "drain version=2 of app was removed while waiting") {
		t.Errorf("--wait with its drain removed: exit %d, stderr %q; want %d", code, stderr, exitFailure)
	}
	code, stderr = waitOn(func(cancel context.CancelFunc) { cancel() })
	if code != exitInterrupted || !strings.Contains(stderr, "stopped waiting; the drain stays in place") {
		t.Errorf("--wait interrupted: exit %d, stderr %q; want %d", code, stderr, exitInterrupted)
	}
	if got := keys(); len(got) != 1 {
		t.Errorf("an interrupted --wait left drains %v, want its drain in place", got)
	}
}

// TestCtrlCDuringAReadOfWait: Ctrl-C that cuts one of --wait's etcd reads ends the wait with
// exit 130, like one that comes between reads; the cut read left nothing to look at, which
// once dereferenced a nil snapshot. Reads are made back to back so that a cancel lands in
// one; the repetitions make that all but certain.
func TestCtrlCDuringAReadOfWait(t *testing.T) {
	old := pollInterval
	pollInterval = time.Microsecond
	t.Cleanup(func() { pollInterval = old })
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	putInstance(t, cli, "a1", 5001, "1", registry.StateAvailable, 0)
	putInstance(t, cli, "a2", 5002, "2", registry.StateAvailable, 5)
	for i := range 20 {
		ctx, cancel := context.WithCancel(context.Background())
		var wout, werr syncbuf.Buffer
		done := startDrain(ctx, &wout, &werr, "app/a2", "--wait", "--etcd-endpoints", srv.ClientURL)
		waitOutput(t, &wout, "5 sessions")
		time.Sleep(time.Duration(i) * 100 * time.Microsecond)
		cancel()
		if code := exitOf(t, done, 10*time.Second, &wout); code != 130 || strings.Contains(werr.String(), "warning") {
			t.Fatalf("run %d: Ctrl-C during --wait: exit %d, %q; want 130 and no warning (a read cut by Ctrl-C is no failure)", i, code, werr.String())
		}
	}
}

// TestWaitSaysItRetriesWhileEtcdIsDown: a read that fails while nobody interrupted --wait is
// said (the operator sees why nothing moves) and retried: once etcd is back the wait goes on
// and ends when the drained instance reports no session.
func TestWaitSaysItRetriesWhileEtcdIsDown(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	putInstance(t, cli, "a1", 5001, "1", registry.StateAvailable, 0)
	putInstance(t, cli, "a2", 5002, "2", registry.StateAvailable, 5)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wout, werr syncbuf.Buffer
	done := startDrain(ctx, &wout, &werr, "app/a2", "--wait", "--request-timeout", "500ms", "--etcd-endpoints", srv.ClientURL)
	waitOutput(t, &wout, "5 sessions")
	srv.Stop()
	waitOutput(t, &werr, "; trying again")
	srv.StartAgain(t)
	putInstance(t, srv.Client(t), "a2", 5002, "2", registry.StateDraining, 0)
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("--wait across an etcd outage: exit %d\n%s\n%s", code, wout.String(), werr.String())
		}
	case <-ctx.Done():
		t.Fatalf("--wait did not end once etcd was back and a2 had no session:\n%s\n%s", wout.String(), werr.String())
	}
}
