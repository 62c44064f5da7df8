package agent_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tetherlb/tether/agent"
	"github.com/tetherlb/tether/internal/agenttest"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/eventually"
	"github.com/tetherlb/tether/internal/syncbuf"
	"github.com/tetherlb/tether/registry"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func config(etcd *etcdtest.Server, b *agenttest.Backend, id string) agent.Config {
	return agent.Config{
		Etcd:   clientv3.Config{Endpoints: etcd.Endpoints(), DialTimeout: 2 * time.Second},
		Prefix: "/tether", Service: "app", ID: id, Address: "127.0.0.1", Port: b.Port,
		HealthURL: b.URL + "/healthcheck", SessionsURL: b.URL + "/sessions",
		LoadSource: agent.LoadHost, TTL: 2 * time.Second, Interval: 50 * time.Millisecond,
		Heartbeat: time.Second, DrainTimeout: 20 * time.Second, DrainSettle: 200 * time.Millisecond,
		ProbeTimeout: time.Second,
	}
}

// running is an agent started by a test.
type running struct {
	cancel context.CancelFunc
	skip   chan struct{}
	done   chan error
}

func start(t *testing.T, cfg agent.Config) *running {
	t.Helper()
	return startLogging(t, cfg, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel))
}

// startLogging is start with the agent's log going to log (a test that reads the log).
func startLogging(t *testing.T, cfg agent.Config, log zerolog.Logger) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, skip: make(chan struct{}), done: make(chan error, 1)}
	go func() { r.done <- agent.Run(ctx, cfg, log, r.skip) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.skip:
		default:
			close(r.skip)
		}
		select {
		case err := <-r.done:
			if err != nil {
				t.Logf("agent stopped: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("agent did not stop within 10s of cleanup")
		}
	})
	return r
}

// wait returns Run's result, failing after timeout.
func (r *running) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case err := <-r.done:
		r.done <- err // keep it for cleanup
		return err
	case <-time.After(timeout):
		t.Fatalf("agent still running after %s", timeout)
		return nil
	}
}

func state(s registry.InstanceState) func(*registry.Instance, int64) bool {
	return func(in *registry.Instance, _ int64) bool { return in != nil && in.State == s }
}

func gone(in *registry.Instance, _ int64) bool { return in == nil }

func countInstances(t *testing.T, cli *clientv3.Client) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, registry.InstancesPrefix("/tether"), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count
}

func TestRegistrationWithAllFields(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	b := agenttest.NewBackend(t)
	b.Sessions.Store(3)
	cfg := config(etcd, b, "app-1")
	cfg.Zone = "eu-west-1a"
	cfg.Labels = map[string]string{"version": "1.4.2"}
	cfg.Thresholds = registry.Thresholds{MaxSessions: 500, MaxCPU: 100, MaxMemory: 100, MaxMemoryMB: 1 << 20}
	cfg.MetricsAddr = fmt.Sprintf("127.0.0.1:%d", etcdtest.FreePort(t))
	before := time.Now().UTC().Add(-time.Second)
	start(t, cfg)

	var leaseID int64
	in := etcdtest.WaitInstance(t, cli, "app-1", 5*time.Second, "registered", func(in *registry.Instance, lease int64) bool {
		leaseID = lease
		return in != nil && in.Load.Sessions == 3
	})
	if in.ID != "app-1" || in.Address != "127.0.0.1" || in.Port != cfg.Port || in.Zone != "eu-west-1a" ||
		in.Labels["version"] != "1.4.2" || in.Thresholds != cfg.Thresholds || in.State != registry.StateAvailable || in.Reason != "" {
		t.Fatalf("instance %+v does not match the config", in)
	}
	if in.Load.Memory <= 0 || in.Load.MemoryMB <= 0 {
		t.Errorf("load %+v: host memory not sampled", in.Load)
	}
	if in.Agent.Version != agent.Version || in.Agent.StartedAt.Before(before.Truncate(time.Second)) || in.UpdatedAt.Before(before) {
		t.Errorf("agent info %+v, updatedAt %s", in.Agent, in.UpdatedAt)
	}
	ttl, err := cli.TimeToLive(context.Background(), clientv3.LeaseID(leaseID))
	if err != nil || ttl.GrantedTTL != 2 {
		t.Errorf("lease %x: granted TTL %v, %v; want 2 (--ttl)", leaseID, ttl, err)
	}
	// The key reaches etcd (and the watch above) an instant before the agent records that
	// it is registered: ask until it says so, within a bound.
	for path, want := range map[string]string{"/healthz": "ok", "/metrics": `tether_agent_sessions 3`} {
		eventually.Saying(t, fmt.Sprintf("%s: 200 with %q", path, want), 5*time.Second, func() (bool, string) {
			resp, err := http.Get("http://" + cfg.MetricsAddr + path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return resp.StatusCode == 200 && strings.Contains(string(body), want), fmt.Sprintf("%d:\n%.2000s", resp.StatusCode, body)
		})
	}
}

// fakeCgroup is a cgroup v2 directory whose CPU and memory the test sets.
type fakeCgroup struct {
	dir  string
	busy atomic.Bool
	stop chan struct{}
	done chan struct{}
}

func newFakeCgroup(t *testing.T) *fakeCgroup {
	t.Helper()
	c := &fakeCgroup{dir: t.TempDir(), stop: make(chan struct{}), done: make(chan struct{})}
	c.write(t, "cpu.max", "100000 100000") // one core
	c.write(t, "memory.max", strconv.Itoa(1000<<20))
	c.write(t, "memory.stat", "inactive_file 0\n")
	c.setMemoryMB(t, 100)
	c.write(t, "cpu.stat", "usage_usec 0\n")
	// While busy, CPU usage grows faster than wall time: the sampler reads 100%.
	go func() {
		defer close(c.done)
		var usec int64
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-c.stop:
				return
			case <-tick.C:
				if c.busy.Load() {
					usec += 100_000
					_ = os.WriteFile(filepath.Join(c.dir, "cpu.stat"), []byte(fmt.Sprintf("usage_usec %d\n", usec)), 0o644)
				}
			}
		}
	}()
	t.Cleanup(func() { close(c.stop); <-c.done })
	return c
}

func (c *fakeCgroup) write(t *testing.T, name, v string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(c.dir, name), []byte(v), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (c *fakeCgroup) setMemoryMB(t *testing.T, mb int) {
	c.write(t, "memory.current", strconv.Itoa(mb<<20))
}

func TestThresholdsCrossedAndBack(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	b := agenttest.NewBackend(t)
	cg := newFakeCgroup(t)
	cfg := config(etcd, b, "app-1")
	cfg.LoadSource, cfg.CgroupDir = agent.LoadCgroup, cg.dir
	cfg.AvailableURL = b.URL + "/available"
	cfg.Thresholds = registry.Thresholds{MaxSessions: 100, MaxCPU: 80, MaxMemory: 70, MaxMemoryMB: 500}
	start(t, cfg)
	etcdtest.WaitInstance(t, cli, "app-1", 5*time.Second, "available at start", state(registry.StateAvailable))

	full := func(what, reason string) {
		t.Helper()
		in := etcdtest.WaitInstance(t, cli, "app-1", 5*time.Second, what, state(registry.StateFull))
		if !strings.Contains(in.Reason, reason) {
			t.Fatalf("%s: reason %q, want it to name %q", what, in.Reason, reason)
		}
	}
	back := func(what string) {
		t.Helper()
		etcdtest.WaitInstance(t, cli, "app-1", 5*time.Second, what, state(registry.StateAvailable))
	}

	b.Sessions.Store(100)
	full("sessions at maxSessions", "sessions 100 >= maxSessions 100")
	w := etcdtest.WatchInstance(t, cli, "app-1")
	b.Sessions.Store(97) // inside the hysteresis band: stays full for several samples
	if in := w.Next(t, 5*time.Second, "sessions 97 published", func(in *registry.Instance, _ int64) bool {
		return in != nil && in.Load.Sessions == 97
	}, state(registry.StateFull)); in.State != registry.StateFull {
		t.Fatalf("sessions 97 (inside the hysteresis band) published as %s; want still full", in.State)
	}
	// Ten samples at 97: every value written since 100, 97 included, is full.
	b.WaitSamples(t, 10, 5*time.Second)
	w.Quiet(t, "full at 97 for ten samples", state(registry.StateFull))
	b.Sessions.Store(95)
	back("sessions released at 95")

	cg.setMemoryMB(t, 750) // 75% of the cgroup's 1000 MB, and over 500 MB
	full("memory over maxMemory", "maxMemory 70%")
	cg.setMemoryMB(t, 520) // 52%: memory% released, still over maxMemoryMB
	full("memory over maxMemoryMB", "maxMemoryMB 500")
	cg.setMemoryMB(t, 400)
	back("memory released")

	cg.busy.Store(true)
	full("cpu over maxCPU", "maxCPU 80%")
	cg.busy.Store(false)
	back("cpu released")

	b.Avail.Store(http.StatusServiceUnavailable)
	full("application veto", "application says unavailable")
	b.Avail.Store(http.StatusOK)
	back("application available again")

	b.Health.Store(http.StatusInternalServerError)
	in := etcdtest.WaitInstance(t, cli, "app-1", 5*time.Second, "health failing", state(registry.StateUnhealthy))
	if in.Reason != "health check failed: status 500" {
		t.Errorf("unhealthy reason %q", in.Reason)
	}
	b.Health.Store(http.StatusOK)
	back("healthy again")
}

func TestDrainWaitsForSessions(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	b := agenttest.NewBackend(t)
	b.Sessions.Store(3)
	cfg := config(etcd, b, "app-1")
	r := start(t, cfg)
	var leaseID int64
	etcdtest.WaitInstance(t, cli, "app-1", 5*time.Second, "registered", func(in *registry.Instance, lease int64) bool {
		leaseID = lease
		return in != nil && in.State == registry.StateAvailable
	})
	w := etcdtest.WatchInstance(t, cli, "app-1")
	r.cancel()
	in := w.Next(t, 5*time.Second, "draining", state(registry.StateDraining), state(registry.StateAvailable))
	if in.Reason == "" || in.Load.Sessions != 3 {
		t.Errorf("draining instance %+v: want a reason and the 3 sessions", in)
	}
	// Sessions remain: for ten samples the instance stays, draining, and the agent runs.
	b.WaitSamples(t, 10, 5*time.Second)
	select {
	case err := <-r.done:
		t.Fatalf("agent stopped (%v) while 3 sessions were open", err)
	default:
	}
	w.Quiet(t, "draining with 3 sessions open", state(registry.StateDraining))
	b.Sessions.Store(0)
	if err := r.wait(t, 5*time.Second); err != nil {
		t.Fatalf("Run: %v", err)
	}
	w.Next(t, time.Second, "removed", gone, state(registry.StateDraining))
	ttl, err := cli.TimeToLive(context.Background(), clientv3.LeaseID(leaseID))
	if err != nil || ttl.TTL != -1 {
		t.Errorf("lease after drain: %+v, %v; want revoked (TTL -1)", ttl, err)
	}
}

// A session opened just before the signal, after the last sample, must keep the instance:
// the drain decides on a sample taken after "draining" reached etcd, not the stale one.
func TestDrainDecidesOnFreshSample(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	b := agenttest.NewBackend(t)
	cfg := config(etcd, b, "app-1")
	cfg.Thresholds.MaxSessions = 10 // a one-session change is past the dead band: written
	cfg.Interval = 500 * time.Millisecond
	r := start(t, cfg)
	etcdtest.WaitInstance(t, cli, "app-1", 5*time.Second, "registered with no session", func(in *registry.Instance, _ int64) bool {
		return in != nil && in.State == registry.StateAvailable && in.Load.Sessions == 0
	})
	b.Sessions.Store(1)
	r.cancel()
	etcdtest.WaitInstance(t, cli, "app-1", 5*time.Second, "draining with the session opened before the signal", func(in *registry.Instance, _ int64) bool {
		return in != nil && in.State == registry.StateDraining && in.Load.Sessions == 1
	})
	select {
	case err := <-r.done:
		t.Fatalf("agent stopped (%v) with a session open", err)
	default:
	}
	b.Sessions.Store(0)
	if err := r.wait(t, 5*time.Second); err != nil {
		t.Fatalf("Run: %v", err)
	}
	etcdtest.WaitInstance(t, cli, "app-1", time.Second, "removed once the session ended", gone)
}

func TestDrainTimeoutAndSkip(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	b := agenttest.NewBackend(t)
	b.Sessions.Store(3)

	cfg := config(etcd, b, "timeout")
	cfg.DrainTimeout = 700 * time.Millisecond
	r := start(t, cfg)
	etcdtest.WaitInstance(t, cli, "timeout", 5*time.Second, "registered", state(registry.StateAvailable))
	w := etcdtest.WatchInstance(t, cli, "timeout")
	r.cancel()
	w.Next(t, 5*time.Second, "draining", state(registry.StateDraining), state(registry.StateAvailable))
	if err := r.wait(t, 5*time.Second); err != nil {
		t.Fatalf("Run after drain timeout: %v", err)
	}
	w.Next(t, time.Second, "removed after the drain timeout", gone, state(registry.StateDraining))

	cfg = config(etcd, b, "skip")
	cfg.DrainTimeout = time.Hour
	r = start(t, cfg)
	etcdtest.WaitInstance(t, cli, "skip", 5*time.Second, "registered", state(registry.StateAvailable))
	w = etcdtest.WatchInstance(t, cli, "skip")
	r.cancel()
	w.Next(t, 5*time.Second, "draining", state(registry.StateDraining), state(registry.StateAvailable))
	close(r.skip)
	if err := r.wait(t, 5*time.Second); err != nil {
		t.Fatalf("Run after skip: %v", err)
	}
	w.Next(t, time.Second, "removed after the second signal", gone, state(registry.StateDraining))
}

func TestEtcdOutageAndLostLease(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	b := agenttest.NewBackend(t)
	cfg := config(etcd, b, "app-1")
	start(t, cfg)
	etcdtest.WaitInstance(t, cli, "app-1", 5*time.Second, "registered", state(registry.StateAvailable))

	// An outage longer than the TTL: the client gives up on the lease; the server keeps it.
	etcd.Stop()
	time.Sleep(cfg.TTL + time.Second)
	b.Sessions.Store(42)
	etcd.StartAgain(t)
	etcdtest.WaitInstance(t, cli, "app-1", 15*time.Second, "updated after the outage", func(in *registry.Instance, _ int64) bool {
		return in != nil && in.Load.Sessions == 42
	})

	// The lease revoked under the agent: the key goes, the agent registers again.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, registry.InstanceKey("/tether", "app", "app-1"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get: %v", err)
	}
	old := resp.Kvs[0].Lease
	if _, err := cli.Revoke(ctx, clientv3.LeaseID(old)); err != nil {
		t.Fatal(err)
	}
	etcdtest.WaitInstance(t, cli, "app-1", 10*time.Second, "registered again under a new lease", func(in *registry.Instance, lease int64) bool {
		return in != nil && lease != old && lease != 0
	})

	// The key deleted by hand: re-created.
	if _, err := cli.Delete(ctx, registry.InstanceKey("/tether", "app", "app-1")); err != nil {
		t.Fatal(err)
	}
	b.Sessions.Store(7)
	etcdtest.WaitInstance(t, cli, "app-1", 10*time.Second, "re-created after deletion", func(in *registry.Instance, _ int64) bool {
		return in != nil && in.Load.Sessions == 7
	})
	if n := countInstances(t, cli); n != 1 {
		t.Fatalf("%d instance keys, want 1: no duplicates", n)
	}
}

func TestDuplicateID(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	b := agenttest.NewBackend(t)
	cfg := config(etcd, b, "app-1")
	start(t, cfg)
	var first int64
	etcdtest.WaitInstance(t, cli, "app-1", 5*time.Second, "first agent registered", func(in *registry.Instance, lease int64) bool {
		first = lease
		return in != nil
	})
	second := start(t, cfg)
	err := second.wait(t, 10*time.Second)
	if !errors.Is(err, agent.ErrIDHeld) || !strings.Contains(err.Error(), `"app-1"`) {
		t.Fatalf("second agent: %v, want ErrIDHeld naming the id", err)
	}
	etcdtest.WaitInstance(t, cli, "app-1", time.Second, "first agent's key untouched", func(in *registry.Instance, lease int64) bool {
		return in != nil && lease == first
	})
}

func TestRestartWaitsForCrashedAgentsLease(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	b := agenttest.NewBackend(t)
	cfg := config(etcd, b, "app-1")
	// A crashed agent: its key under a lease nobody keeps alive.
	dead := keyOfAnotherLease(t, cli, 2, registry.Instance{ID: "app-1", Address: "127.0.0.1", Port: 1, State: registry.StateAvailable})
	r := start(t, cfg)
	etcdtest.WaitInstance(t, cli, "app-1", 10*time.Second, "registered once the dead lease expired", func(in *registry.Instance, lease int64) bool {
		return in != nil && lease != int64(dead) && in.Port == cfg.Port
	})
	select {
	case err := <-r.done:
		t.Fatalf("agent stopped: %v", err)
	default:
	}
}

// Two agents on one host with the default --metrics-addr, beside something that holds the
// first port of the range: each serves /metrics on its own free port and publishes it.
func TestMetricsAutoPortPerAgent(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	b := agenttest.NewBackend(t)
	first := fmt.Sprintf("127.0.0.1:%d", agent.MetricsPortFirst)
	if l, err := net.Listen("tcp", first); err == nil { // else something already holds it
		t.Cleanup(func() { l.Close() })
	}
	seen := map[string]string{}
	for _, id := range []string{"app-1", "app-2"} {
		cfg := config(etcd, b, id)
		cfg.MetricsAddr = agent.MetricsAuto
		start(t, cfg)
		in := etcdtest.WaitInstance(t, cli, id, 5*time.Second, id+" registered", state(registry.StateAvailable))
		addr := in.Agent.Metrics
		ap, err := netip.ParseAddrPort(addr)
		if err != nil || addr == first || ap.Port() < agent.MetricsPortFirst || ap.Port() >= agent.MetricsPortFirst+agent.MetricsPortCount {
			t.Fatalf("%s: agent.metrics %q, want a free port of the range other than the busy %s", id, addr, first)
		}
		if other, dup := seen[addr]; dup {
			t.Fatalf("%s and %s both publish %s", other, id, addr)
		}
		seen[addr] = id
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := `instance="` + id + `"`; !strings.Contains(string(body), want) {
			t.Errorf("%s: /metrics at %s lacks %s", id, addr, want)
		}
	}
}

// With an etcd user, the client authenticates at start: an agent started before etcd must
// wait for it, as without a user, and a wrong password must stop it at once.
func TestWaitsForEtcdWithAuth(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.WithFastPasswords())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	admin := etcd.Client(t)
	if _, err := admin.UserAdd(ctx, "root", "root-pw"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.UserGrantRole(ctx, "root", "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.AuthEnable(ctx); err != nil {
		t.Fatal(err)
	}
	etcd.Stop()

	b := agenttest.NewBackend(t)
	cfg := config(etcd, b, "app-1")
	cfg.Etcd.Username, cfg.Etcd.Password, cfg.Etcd.DialTimeout = "root", "root-pw", 300*time.Millisecond
	var logs syncbuf.Buffer
	done := make(chan error, 1)
	runCtx, stop := context.WithCancel(context.Background())
	go func() { done <- agent.Run(runCtx, cfg, zerolog.New(&logs), nil) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Logf("agent stopped: %v", err)
		}
	})
	eventually.Saying(t, "a retry logged", 10*time.Second, func() (bool, string) {
		select {
		case err := <-done:
			done <- err // for the cleanup
			t.Fatalf("agent stopped while etcd was down: %v", err)
		default:
		}
		return strings.Contains(logs.String(), "etcd not reachable yet"), "\n" + logs.String()
	})
	etcd.StartAgain(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: etcd.Endpoints(), Username: "root", Password: "root-pw", DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	etcdtest.WaitInstance(t, cli, "app-1", 15*time.Second, "registered once etcd is up", state(registry.StateAvailable))

	wrong := config(etcd, b, "app-2")
	wrong.Etcd.Username, wrong.Etcd.Password = "root", "not-the-password"
	r := start(t, wrong)
	if err := r.wait(t, 10*time.Second); err == nil || !strings.Contains(err.Error(), "authentication failed") {
		t.Fatalf("wrong password: %v, want an authentication error at once", err)
	}
}

// A probe error longer than the registry's reason limit (a long URL) must still be
// published, cut to the limit, without the URL's query (a token): before, every write of the
// instance failed validation and it stayed "available" with its backend dead.
func TestLongProbeErrorIsPublishedShortAndWithoutQuery(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	b := agenttest.NewBackend(t)
	cfg := config(etcd, b, "app-1")
	cfg.HealthURL = fmt.Sprintf("http://127.0.0.1:%d/%s?token=s3cret", etcdtest.FreePort(t), strings.Repeat("a", 700))
	start(t, cfg)
	in := etcdtest.WaitInstance(t, cli, "app-1", 10*time.Second, "unhealthy", state(registry.StateUnhealthy))
	if len(in.Reason) > 512 || !strings.HasPrefix(in.Reason, "health check failed: ") || !strings.HasSuffix(in.Reason, "...") {
		t.Errorf("reason (%d bytes) %q: want the health error cut to 512 bytes", len(in.Reason), in.Reason)
	}
	if strings.Contains(in.Reason, "s3cret") || strings.Contains(in.Reason, "token") {
		t.Errorf("reason %q shows the URL's query", in.Reason)
	}
}

// An agent whose key was taken by another agent (another lease) while it was cut off stops
// as a duplicate id at start does, once that lease has outlived its TTL, instead of retrying
// for ever.
func TestIDTakenWhileCutOffStops(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	b := agenttest.NewBackend(t)
	cfg := config(etcd, b, "app-1")
	var logs syncbuf.Buffer
	r := startLogging(t, cfg, zerolog.New(&logs))
	etcdtest.WaitInstance(t, cli, "app-1", 5*time.Second, "registered", state(registry.StateAvailable))

	// Another agent takes the key: the first finds it at its next write.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	other, err := cli.Grant(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.KeepAlive(ctx, other.ID); err != nil {
		t.Fatal(err)
	}
	key := registry.InstanceKey("/tether", "app", "app-1")
	val := instanceValue(t, registry.Instance{ID: "app-1", Address: "127.0.0.2", Port: 9, State: registry.StateAvailable})
	if _, err := cli.Put(ctx, key, val, clientv3.WithLease(other.ID)); err != nil {
		t.Fatal(err)
	}
	err = r.wait(t, 20*time.Second)
	if !errors.Is(err, agent.ErrIDHeld) || !strings.Contains(err.Error(), `"app-1"`) {
		t.Fatalf("agent cut off from its id: %v, want ErrIDHeld naming the id", err)
	}
	// Meanwhile (the holder's TTL and a margin, 4 s) it tried again at most every 250 ms,
	// not in a busy loop.
	if n := strings.Count(logs.String(), "cannot write the instance to etcd"); n > 40 {
		t.Errorf("%d failed writes while the id was held: the agent does not wait between them", n)
	}
	etcdtest.WaitInstance(t, cli, "app-1", time.Second, "the other agent's key untouched", func(in *registry.Instance, lease int64) bool {
		return in != nil && lease == int64(other.ID) && in.Address == "127.0.0.2"
	})
}

func instanceValue(t *testing.T, in registry.Instance) string {
	t.Helper()
	in.UpdatedAt = time.Now().UTC()
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A restarted agent adopts its predecessor's key only when that predecessor is provably
// gone and was the same server: same host, same address and port, its process no longer
// running. A predecessor whose process still runs (a second agent started by mistake) or
// another server's key is waited for, as a live agent's: never taken over.
func TestRestartAdoptsOnlyADeadPredecessorsKey(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Skip("no host name:", err)
	}
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	b := agenttest.NewBackend(t)
	dead, live := agent.DeadAndLivePIDs(t)
	past := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	i := 0
	for _, tc := range []struct {
		name    string
		address string
		agent   registry.AgentInfo
		adopt   bool
	}{
		{"dead process, same server", "127.0.0.1", registry.AgentInfo{Host: host, PID: dead, StartedAt: past}, true},
		{"live process, same server", "127.0.0.1", registry.AgentInfo{Host: host, PID: live, StartedAt: past}, false},
		{"dead process, another address", "127.0.0.2", registry.AgentInfo{Host: host, PID: dead, StartedAt: past}, false},
		{"dead process, another host", "127.0.0.1", registry.AgentInfo{Host: host + "-other", PID: dead, StartedAt: past}, false},
		{"no process recorded", "127.0.0.1", registry.AgentInfo{StartedAt: past}, false},
	} {
		i++
		t.Run(tc.name, func(t *testing.T) {
			id := "adopt-" + strconv.Itoa(i)
			cfg := config(etcd, b, id)
			// A crashed agent's key: its lease nobody keeps alive.
			old := registry.Instance{ID: id, Address: tc.address, Port: cfg.Port, State: registry.StateAvailable, Agent: tc.agent}
			dead := keyOfAnotherLease(t, cli, 3, old)
			w := etcdtest.WatchInstance(t, cli, id)
			start(t, cfg)
			ours := func(in *registry.Instance, lease int64) bool {
				return in != nil && lease != int64(dead) && in.Agent.PID == os.Getpid()
			}
			if tc.adopt {
				w.Next(t, 2*time.Second, "adopted at once", ours, func(in *registry.Instance, _ int64) bool { return in != nil })
				return
			}
			w.Next(t, 10*time.Second, "registered after the old lease expired", ours, func(in *registry.Instance, lease int64) bool {
				return lease == int64(dead) || in == nil // the old key untouched until it expires
			})
		})
	}
}

// TestAddressThatDoesNotAnswerIsNotAvailable: the README's one-host example without
// --address registers an address the app (on 127.0.0.1 only) does not answer on. The agent
// checks address:port itself: the instance is unhealthy with the reason, never available,
// and the log says so loudly.
func TestAddressThatDoesNotAnswerIsNotAvailable(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("needs 127.0.0.2 routed to loopback (Linux)")
	}
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	b := agenttest.NewBackend(t) // listens on 127.0.0.1 only
	cfg := config(etcd, b, "elsewhere")
	cfg.Address = "127.0.0.2"
	var logs syncbuf.Buffer
	startLogging(t, cfg, zerolog.New(&logs))
	etcdtest.WaitInstance(t, cli, "elsewhere", 10*time.Second, "registered", func(in *registry.Instance, _ int64) bool { return in != nil })
	b.WaitSamples(t, 5, 5*time.Second)
	in := etcdtest.WaitInstance(t, cli, "elsewhere", time.Second, "read again", func(in *registry.Instance, _ int64) bool { return in != nil })
	if in.State != registry.StateUnhealthy || !strings.Contains(in.Reason, "127.0.0.2:") || !strings.Contains(in.Reason, "--address") {
		t.Errorf("instance %s (%q); want unhealthy, saying 127.0.0.2:%d does not answer and naming --address", in.State, in.Reason, b.Port)
	}
	if !strings.Contains(logs.String(), `"level":"error"`) || !strings.Contains(logs.String(), "does not answer") {
		t.Errorf("log has no error saying the address does not answer:\n%s", logs.String())
	}

	// The same agent with the address the app listens on is available.
	cfg = config(etcd, b, "here")
	start(t, cfg)
	etcdtest.WaitInstance(t, cli, "here", 10*time.Second, "available", func(in *registry.Instance, _ int64) bool {
		return in != nil && in.State == registry.StateAvailable
	})
}

// TestLoopbackAddressIsFlagged: a control plane refuses an instance on a loopback address
// unless started with --allow-loopback-backends; the agent's log and /healthz say so.
func TestLoopbackAddressIsFlagged(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	b := agenttest.NewBackend(t)
	cfg := config(etcd, b, "lo")
	cfg.MetricsAddr = fmt.Sprintf("127.0.0.1:%d", etcdtest.FreePort(t))
	var logs syncbuf.Buffer
	startLogging(t, cfg, zerolog.New(&logs))
	etcdtest.WaitInstance(t, cli, "lo", 10*time.Second, "registered", func(in *registry.Instance, _ int64) bool { return in != nil })
	// The key reaches etcd an instant before the agent logs its registration: read the log
	// until the line is there, within a bound.
	var registered string
	eventually.Saying(t, "the registration logged", 5*time.Second, func() (bool, string) {
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, "instance registered") {
				registered = l
			}
		}
		return registered != "", "\n" + logs.String()
	})
	if !strings.Contains(registered, "--allow-loopback-backends") {
		t.Errorf("the registration log line does not say a control plane refuses a loopback address:\n%s", logs.String())
	}
	resp, err := http.Get("http://" + cfg.MetricsAddr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "--allow-loopback-backends") {
		t.Errorf("/healthz: %s %q; want 200 with the loopback warning", resp.Status, body)
	}
}

// TestStopWhileTheIDIsHeld: an agent stopped while it waits for another lease's key to
// expire returns nil (it was stopped, not refused), at once.
func TestStopWhileTheIDIsHeld(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	b := agenttest.NewBackend(t)
	cfg := config(etcd, b, "app-1")
	// Another server's key: never adopted, waited for.
	keyOfAnotherLease(t, cli, 60, registry.Instance{ID: "app-1", Address: "127.0.0.2", Port: 1, State: registry.StateAvailable})
	cfg.MetricsAddr = fmt.Sprintf("127.0.0.1:%d", etcdtest.FreePort(t))
	var logs syncbuf.Buffer
	r := startLogging(t, cfg, zerolog.New(&logs))
	eventually.Saying(t, "the agent waiting for the holder's lease", 5*time.Second, func() (bool, string) {
		return strings.Contains(logs.String(), "held by another lease"), logs.String()
	})
	// It tries again at the backoff's pace, at most 250 ms apart: not in a busy loop. Each
	// attempt counts a failed create; the first five waits take 600 ms at least.
	attempts := func() float64 {
		resp, err := http.Get("http://" + cfg.MetricsAddr + "/metrics")
		if err != nil {
			return 0
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		for _, l := range strings.Split(string(body), "\n") {
			if v, ok := strings.CutPrefix(l, `tether_agent_etcd_errors_total{op="create"} `); ok {
				f, _ := strconv.ParseFloat(v, 64)
				return f
			}
		}
		return 0
	}
	first := attempts()
	since := time.Now()
	eventually.True(t, "five more attempts", 10*time.Second, func() bool { return attempts() >= first+5 })
	if d := time.Since(since); d < 300*time.Millisecond {
		t.Errorf("five attempts in %v: the agent does not wait between them", d)
	}
	r.cancel()
	if err := r.wait(t, 5*time.Second); err != nil {
		t.Fatalf("Run stopped while the id is held: %v, want nil", err)
	}
	if !strings.Contains(logs.String(), "stopped before the instance was registered") {
		t.Errorf("the log does not say the agent stopped before it registered:\n%s", logs.String())
	}
}

// keyOfAnotherLease writes in as an instance key of the service app under a new lease of ttl
// seconds that nothing keeps alive: a crashed agent's key, or another server's.
func keyOfAnotherLease(t *testing.T, cli *clientv3.Client, ttl int64, in registry.Instance) clientv3.LeaseID {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l, err := cli.Grant(ctx, ttl)
	if err != nil {
		t.Fatal(err)
	}
	if err := registry.CreateInstance(ctx, cli, "/tether", "app", in, l.ID); err != nil {
		t.Fatal(err)
	}
	return l.ID
}
