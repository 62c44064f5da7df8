package winsvc_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tetherlb/tether/agent"
	"github.com/tetherlb/tether/internal/agenttest"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/winsvc"
	"github.com/tetherlb/tether/registry"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// scm plays the Service Control Manager: it sends requests and records the reports.
type scm struct {
	requests chan winsvc.Request
	mu       sync.Mutex
	reports  []winsvc.Status
	changed  chan struct{}
	exit     chan uint32
}

func serve(t *testing.T, run winsvc.RunFunc, opt winsvc.Options) *scm {
	t.Helper()
	s := &scm{requests: make(chan winsvc.Request), changed: make(chan struct{}, 1), exit: make(chan uint32, 1)}
	opt.Log = zerolog.New(zerolog.NewTestWriter(t))
	go func() {
		s.exit <- winsvc.Serve(s.requests, func(st winsvc.Status) {
			s.mu.Lock()
			s.reports = append(s.reports, st)
			s.mu.Unlock()
			select {
			case s.changed <- struct{}{}:
			default:
			}
		}, run, opt)
	}()
	return s
}

func (s *scm) last() winsvc.Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reports[len(s.reports)-1]
}

// waitFor waits until the last report satisfies cond.
func (s *scm) waitFor(t *testing.T, what string, cond func(winsvc.Status) bool) winsvc.Status {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		s.mu.Lock()
		n := len(s.reports)
		s.mu.Unlock()
		if n > 0 && cond(s.last()) {
			return s.last()
		}
		select {
		case <-s.changed:
		case <-deadline:
			t.Fatalf("%s: not reported within 10s; reports %+v", what, s.reports)
		}
	}
}

func (s *scm) send(t *testing.T, r winsvc.Request) {
	t.Helper()
	select {
	case s.requests <- r:
	case <-time.After(5 * time.Second):
		t.Fatalf("request %v not taken within 5s", r)
	}
}

func (s *scm) exitCode(t *testing.T) uint32 {
	t.Helper()
	select {
	case c := <-s.exit:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("service did not exit within 10s")
		return 0
	}
}

type fixture struct {
	cli     *clientv3.Client
	backend *agenttest.Backend
	cfg     agent.Config
}

// newFixture is a real agent's configuration against an embedded etcd and an HTTP backend.
func newFixture(t *testing.T) *fixture {
	etcd := etcdtest.Start(t)
	b := agenttest.NewBackend(t)
	f := &fixture{cli: etcd.Client(t), backend: b}
	f.cfg = agent.Config{
		Etcd:   clientv3.Config{Endpoints: etcd.Endpoints(), DialTimeout: 2 * time.Second},
		Prefix: "/tether", Service: "app", ID: "win-1", Address: "127.0.0.1", Port: b.Port,
		SessionsURL: b.URL + "/sessions", LoadSource: agent.LoadHost,
		TTL: 2 * time.Second, Interval: 50 * time.Millisecond, Heartbeat: time.Second,
		DrainTimeout: time.Minute, DrainSettle: 50 * time.Millisecond, ProbeTimeout: time.Second,
	}
	return f
}

func (f *fixture) run(log zerolog.Logger) winsvc.RunFunc {
	return func(ctx context.Context, skip <-chan struct{}) error { return agent.Run(ctx, f.cfg, log, skip) }
}

// state polls the instance key until it is in state want ("" = gone).
func (f *fixture) state(t *testing.T, want registry.InstanceState) {
	t.Helper()
	etcdtest.WaitInstance(t, f.cli, "win-1", 10*time.Second, fmt.Sprintf("instance state %q", want), func(in *registry.Instance, _ int64) bool {
		if in == nil {
			return want == ""
		}
		return in.State == want
	})
}

// A service stop drains like SIGTERM: StopPending with a growing checkpoint while sessions
// remain, then the instance is removed and the service exits 0.
func TestStopDrainsThenExits0(t *testing.T) {
	f := newFixture(t)
	f.backend.Sessions.Store(2)
	s := serve(t, f.run(zerolog.New(zerolog.NewTestWriter(t))), winsvc.Options{WaitHint: 100 * time.Millisecond, ShutdownGrace: time.Hour})
	s.waitFor(t, "running", func(st winsvc.Status) bool { return st.State == winsvc.Running })
	f.state(t, registry.StateAvailable)
	s.send(t, winsvc.Stop)
	f.state(t, registry.StateDraining)
	s.waitFor(t, "stop pending with progress", func(st winsvc.Status) bool {
		return st.State == winsvc.StopPending && st.CheckPoint >= 3 && st.WaitHint == 100*time.Millisecond
	})
	s.send(t, winsvc.Interrogate) // answered with the current status, changes nothing
	f.state(t, registry.StateDraining)
	f.backend.Sessions.Store(0)
	if code := s.exitCode(t); code != winsvc.ExitOK {
		t.Fatalf("exit code %d, want 0", code)
	}
	if st := s.last(); st.State != winsvc.Stopped {
		t.Errorf("last report %+v, want stopped", st)
	}
	f.state(t, "")
}

// Windows shutting down: the drain starts at once and its wait ends after ShutdownGrace,
// sessions or not. (No second stop request can end it: Windows refuses every control to a
// stopping service but the shutdown ones it accepts.)
func TestShutdownBoundsTheDrain(t *testing.T) {
	f := newFixture(t)
	f.backend.Sessions.Store(5)
	s := serve(t, f.run(zerolog.New(zerolog.NewTestWriter(t))), winsvc.Options{WaitHint: time.Second, ShutdownGrace: 300 * time.Millisecond})
	s.waitFor(t, "running", func(st winsvc.Status) bool { return st.State == winsvc.Running })
	f.state(t, registry.StateAvailable)
	s.send(t, winsvc.Shutdown)
	f.state(t, registry.StateDraining)
	if code := s.exitCode(t); code != winsvc.ExitOK {
		t.Fatalf("exit code %d, want 0", code)
	}
	f.state(t, "")

	f.cfg.DrainTimeout = time.Hour
	// Windows shutting down during a drain an operator's stop began: bounded by the grace too.
	s = serve(t, f.run(zerolog.New(zerolog.NewTestWriter(t))), winsvc.Options{WaitHint: time.Second, ShutdownGrace: 300 * time.Millisecond})
	f.state(t, registry.StateAvailable)
	s.send(t, winsvc.Stop)
	f.state(t, registry.StateDraining)
	s.send(t, winsvc.Shutdown)
	if code := s.exitCode(t); code != winsvc.ExitOK {
		t.Fatalf("exit code after a shutdown during a drain %d, want 0", code)
	}
	f.state(t, "")
}

// An agent that cannot run (here: another live agent holds its ID) stops the service with
// exit code 1, without any request.
func TestFailureExits1(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() { first <- agent.Run(ctx, f.cfg, zerolog.Nop(), nil) }()
	t.Cleanup(func() {
		cancel()
		if err := <-first; err != nil {
			t.Logf("first agent stopped: %v", err)
		}
	})
	f.state(t, registry.StateAvailable)
	s := serve(t, f.run(zerolog.Nop()), winsvc.Options{})
	if code := s.exitCode(t); code != winsvc.ExitFailure {
		t.Fatalf("exit code %d, want 1", code)
	}
	if st := s.last(); st.State != winsvc.Stopped {
		t.Errorf("last report %+v, want stopped", st)
	}
	if err := ctx.Err(); errors.Is(err, context.Canceled) {
		t.Fatal("first agent stopped")
	}
}
