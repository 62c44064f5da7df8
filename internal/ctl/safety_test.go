package ctl

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tetherlb/tether/agent"
	"github.com/tetherlb/tether/internal/agenttest"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/syncbuf"
	"github.com/tetherlb/tether/registry"
)

// testAgent is a real agent of service app run by a test, with its backend.
type testAgent struct {
	*agenttest.Agent
	backend *agenttest.Backend
}

// runAgent runs a real agent of service app reaching etcd at endpoint, its backend holding
// sessions; measured says whether it is given --sessions-url. It stops when the test ends.
func runAgent(t *testing.T, endpoint, id string, sessions int64, measured bool) *testAgent {
	t.Helper()
	b := agenttest.NewBackend(t)
	b.Sessions.Store(sessions)
	cfg := agent.Config{
		Etcd:   clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: time.Second},
		Prefix: "/tether", Service: "app", ID: id, Address: "127.0.0.1", Port: b.Port,
		Labels:    map[string]string{"version": "1"},
		HealthURL: b.URL + "/healthcheck", LoadSource: agent.LoadHost, TTL: 2 * time.Second,
		Interval: 50 * time.Millisecond, Heartbeat: time.Second, DrainTimeout: 20 * time.Second,
		DrainSettle: 200 * time.Millisecond, ProbeTimeout: time.Second,
	}
	if measured {
		cfg.SessionsURL = b.URL + "/sessions"
	}
	return &testAgent{Agent: agenttest.Run(t, cfg), backend: b}
}

// startWait runs `drain ARGS --wait` in the background; its exit code arrives on the channel.
func startWait(t *testing.T, etcd string, out, errb *syncbuf.Buffer, args ...string) <-chan int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return startDrain(ctx, out, errb, append(args, "--wait", "--etcd-endpoints", etcd)...)
}

// startDrain runs `drain ARGS` with no environment in the background; its exit code arrives
// on the channel.
func startDrain(ctx context.Context, out, errb *syncbuf.Buffer, args ...string) <-chan int {
	done := make(chan int, 1)
	go func() { done <- Drain(ctx, args, func(string) (string, bool) { return "", false }, out, errb) }()
	return done
}

// exitOf waits for a background command's exit code.
func exitOf(t *testing.T, done <-chan int, within time.Duration, out *syncbuf.Buffer) int {
	t.Helper()
	select {
	case code := <-done:
		return code
	case <-time.After(within):
		t.Fatalf("the command did not end within %s:\n%s", within, out.String())
		return -1
	}
}

// TestWaitIgnoresALapsedLease: a drained server holding 5 sessions whose agent is cut off
// from etcd: its lease lapses and the instance vanishes from the registry, which is not a
// finished drain. --wait must not say the agents can be stopped; it times out (exit 3)
// naming the instance that vanished.
func TestWaitIgnoresALapsedLease(t *testing.T) {
	f := start(t)
	proxy := etcdtest.NewProxy(t, f.etcd.ClientURL)
	runAgent(t, proxy.Endpoint, "x1", 5, true)
	runAgent(t, f.etcd.ClientURL, "b1", 0, true) // somewhere for new sessions to go
	etcdtest.WaitInstance(t, f.cli, "x1", 10*time.Second, "x1 registered", func(in *registry.Instance, _ int64) bool {
		return in != nil && in.Load.Sessions == 5
	})
	etcdtest.WaitInstance(t, f.cli, "b1", 10*time.Second, "b1 registered", func(in *registry.Instance, _ int64) bool { return in != nil })
	var out, errb syncbuf.Buffer
	done := startWait(t, f.etcd.ClientURL, &out, &errb, "app/x1", "--timeout", "8s")
	waitOutput(t, &out, "5 sessions on 1 drained instance (x1: 5)")
	proxy.Cut() // x1's lease lapses within its TTL (2 s); its server still holds 5 sessions
	etcdtest.WaitInstance(t, f.cli, "x1", 10*time.Second, "x1's lease lapsed", func(in *registry.Instance, _ int64) bool { return in == nil })
	code := exitOf(t, done, 20*time.Second, &out)
	if code != exitTimeout || strings.Contains(out.String(), "can be stopped") || !strings.Contains(errb.String(), "x1") {
		t.Errorf("--wait after x1's lease lapsed with 5 sessions: exit %d; want %d and no \"can be stopped\"\nstdout:\n%s\nstderr:\n%s",
			code, exitTimeout, out.String(), errb.String())
	}
}

// TestWaitNeverCallsUnknownSessionsDone: an agent without --sessions-url cannot count the
// sessions its server holds (20 here). Neither --wait, `drains` nor the monitor may call it
// safe to stop.
func TestWaitNeverCallsUnknownSessionsDone(t *testing.T) {
	f := start(t)
	etcd := f.etcd.ClientURL
	runAgent(t, etcd, "x1", 20, false)
	runAgent(t, etcd, "b1", 0, true)
	etcdtest.WaitInstance(t, f.cli, "x1", 10*time.Second, "x1 registered", func(in *registry.Instance, _ int64) bool { return in != nil })
	etcdtest.WaitInstance(t, f.cli, "b1", 10*time.Second, "b1 registered", func(in *registry.Instance, _ int64) bool { return in != nil })
	var out, errb syncbuf.Buffer
	done := startWait(t, etcd, &out, &errb, "app/x1", "--timeout", "3s")
	code := exitOf(t, done, 20*time.Second, &out)
	if code != exitTimeout || strings.Contains(out.String(), "can be stopped") || !strings.Contains(out.String()+errb.String(), "unknown") {
		t.Errorf("--wait on an agent without --sessions-url: exit %d; want %d, sessions unknown and no \"can be stopped\"\nstdout:\n%s\nstderr:\n%s",
			code, exitTimeout, out.String(), errb.String())
	}
	if r := runCmd(t, etcd, nil, "drains"); r.code != 0 || !strings.Contains(r.stdout, "unknown") {
		t.Errorf("drains shows no unknown session count: %+v", r)
	}
	// The monitor's drains card says "safe to stop" from /api/state: the unknown count must
	// be there for it.
	var st struct {
		Drains []map[string]any `json:"drains"`
	}
	f.getAPIState(t, &st)
	if len(st.Drains) != 1 || !strings.Contains(toJSON(st.Drains[0]["sessionsUnknown"]), "x1") {
		t.Errorf("/api/state drains %v: want x1 among sessionsUnknown", st.Drains)
	}
}

func toJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// TestWaitCountsOnlyAnEmptyDeliberateLeaveAsDone: an agent stopped at once (a second signal)
// while its server holds 3 sessions deregisters on purpose, but with 3 sessions: not done.
// One that deregisters after its sessions ended is.
func TestWaitCountsOnlyAnEmptyDeliberateLeaveAsDone(t *testing.T) {
	f := start(t)
	etcd := f.etcd.ClientURL
	x1 := runAgent(t, etcd, "x1", 3, true)
	runAgent(t, etcd, "b1", 0, true)
	etcdtest.WaitInstance(t, f.cli, "x1", 10*time.Second, "x1 registered", func(in *registry.Instance, _ int64) bool {
		return in != nil && in.Load.Sessions == 3
	})
	etcdtest.WaitInstance(t, f.cli, "b1", 10*time.Second, "b1 registered", func(in *registry.Instance, _ int64) bool { return in != nil })
	var out, errb syncbuf.Buffer
	done := startWait(t, etcd, &out, &errb, "app/x1", "--timeout", "4s")
	waitOutput(t, &out, "3 sessions on 1 drained instance (x1: 3)")
	x1.StopNow()
	etcdtest.WaitInstance(t, f.cli, "x1", 10*time.Second, "x1 deregistered", func(in *registry.Instance, _ int64) bool { return in == nil })
	if code := exitOf(t, done, 20*time.Second, &out); code != exitTimeout || strings.Contains(out.String(), "can be stopped") {
		t.Errorf("--wait after x1 left with 3 sessions: exit %d; want %d\nstdout:\n%s\nstderr:\n%s", code, exitTimeout, out.String(), errb.String())
	}

	y1 := runAgent(t, etcd, "y1", 2, true)
	etcdtest.WaitInstance(t, f.cli, "y1", 10*time.Second, "y1 registered", func(in *registry.Instance, _ int64) bool {
		return in != nil && in.Load.Sessions == 2
	})
	var out2, errb2 syncbuf.Buffer
	done = startWait(t, etcd, &out2, &errb2, "app/y1", "--timeout", "20s")
	waitOutput(t, &out2, "2 sessions on 1 drained instance (y1: 2)")
	y1.Stop() // a stop: it drains, and leaves once its sessions end
	y1.backend.Sessions.Store(0)
	if code := exitOf(t, done, 25*time.Second, &out2); code != exitOK || !strings.Contains(out2.String(), "can be stopped") {
		t.Errorf("--wait after y1 left with no sessions: exit %d; want 0\nstdout:\n%s\nstderr:\n%s", code, out2.String(), errb2.String())
	}
}

// TestDrainRefusesWhatMovesUsers: draining a server of a source-ip service moves its users
// (Envoy's hash ring leaves out a DRAINING host), and a drain that leaves no available
// instance sends every new user the overload reply. Both are refused without --force,
// saying what would happen, and nothing is written; with --force they are written, with the
// consequence on stderr and no claim that users keep their sessions.
func TestDrainRefusesWhatMovesUsers(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	etcd := srv.ClientURL
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg := registry.DefaultServiceConfig("ip")
	cfg.Affinity.Mode = registry.AffinitySourceIP
	cfg.LBPolicy = registry.LBRingHash
	if err := registry.PutServiceConfig(ctx, cli, "/tether", "ip", cfg); err != nil {
		t.Fatal(err)
	}
	for i, id := range []string{"i1", "i2"} {
		in := registry.Instance{ID: id, Address: "127.0.0.1", Port: 6001 + i, State: registry.StateAvailable,
			Load: registry.Load{Sessions: 4}, UpdatedAt: time.Now().UTC()}
		b, _ := json.Marshal(in)
		if _, err := cli.Put(ctx, registry.InstanceKey("/tether", "ip", id), string(b)); err != nil {
			t.Fatal(err)
		}
	}
	putInstance(t, cli, "a1", 5001, "1", registry.StateAvailable, 3)
	putInstance(t, cli, "a2", 5002, "1", registry.StateFull, 3)

	drained := func(service string) int64 {
		resp, err := cli.Get(ctx, registry.ServiceDrainsPrefix("/tether", service), clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		return resp.Count
	}
	r := runCmd(t, etcd, nil, "drain", "ip/i1")
	if r.code != exitUsage || !strings.Contains(r.stderr, "source-ip") || !strings.Contains(r.stderr, "--force") || drained("ip") != 0 {
		t.Errorf("drain of a source-ip server: %+v, %d drains written; want exit 2 naming source-ip and --force, nothing written", r, drained("ip"))
	}
	r = runCmd(t, etcd, nil, "drain", "ip/i1", "--force")
	if r.code != exitOK || strings.Contains(r.stdout, "keep") || !strings.Contains(r.stderr, "move") || drained("ip") != 1 {
		t.Errorf("forced drain of a source-ip server: %+v; want exit 0, a warning that its users move, no \"keep\"", r)
	}

	r = runCmd(t, etcd, nil, "drain", "app/a1")
	if r.code != exitUsage || !strings.Contains(r.stderr, "no other instance of app is available") || !strings.Contains(r.stderr, "--force") || drained("app") != 0 {
		t.Errorf("drain of app's last available server: %+v; want exit 2 naming --force, nothing written", r)
	}
	r = runCmd(t, etcd, nil, "drain", "app/a1", "--force")
	if r.code != exitOK || !strings.Contains(r.stderr, "overload reply") || drained("app") != 1 {
		t.Errorf("forced drain of app's last available server: %+v; want exit 0 and the warning", r)
	}
}
