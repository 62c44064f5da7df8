package agent_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tetherlb/tether/internal/agenttest"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/eventually"
	"github.com/tetherlb/tether/internal/syncbuf"
	"github.com/tetherlb/tether/registry"
)

// TestUnknownSessionsAndLeavingMark: an agent that cannot count sessions (no --sessions-url,
// or a failing sessions probe) says so in its value rather than publishing 0; an agent that
// stops marks its last value as leaving, with its final load, before it deletes the key, so
// that the control plane and drain --wait tell its departure from a lapsed lease.
func TestUnknownSessionsAndLeavingMark(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	b := agenttest.NewBackend(t)
	b.Sessions.Store(20)
	cfg := config(etcd, b, "blind")
	cfg.SessionsURL = ""
	cfg.DrainTimeout = 300 * time.Millisecond
	var logs syncbuf.Buffer
	r := startLogging(t, cfg, zerolog.New(&logs))
	etcdtest.WaitInstance(t, cli, "blind", 5*time.Second, "registered with its sessions unknown", func(in *registry.Instance, _ int64) bool {
		return in != nil && in.State == registry.StateAvailable && in.Load.SessionsUnknown && !in.Leaving
	})
	w := etcdtest.WatchInstance(t, cli, "blind")
	r.cancel()
	in := w.Next(t, 5*time.Second, "marked leaving", func(in *registry.Instance, _ int64) bool { return in != nil && in.Leaving },
		func(in *registry.Instance, _ int64) bool { return in != nil && !in.Leaving })
	if in.State != registry.StateDraining || !in.Load.SessionsUnknown || in.LeftEmpty() {
		t.Errorf("leaving value %+v: want draining, sessions unknown, not left empty", in)
	}
	w.Next(t, 5*time.Second, "removed after the mark", gone, func(in *registry.Instance, _ int64) bool { return in != nil && in.Leaving })
	if err := r.wait(t, 5*time.Second); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if !strings.Contains(logs.String(), "draining: no --sessions-url, so waiting the whole drain timeout; signal again to stop now") {
		t.Errorf("the drain's log line does not say it waits the whole timeout:\n%s", logs.String())
	}

	// A failing sessions probe: unknown until it answers again, then the count.
	b2 := agenttest.NewBackend(t)
	b2.Sessions.Store(4)
	cfg2 := config(etcd, b2, "probed")
	cfg2.SessionsURL = b2.URL + "/nothing-here"
	start(t, cfg2)
	etcdtest.WaitInstance(t, cli, "probed", 5*time.Second, "sessions unknown while the probe fails", func(in *registry.Instance, _ int64) bool {
		return in != nil && in.Load.SessionsUnknown
	})
	// A sessions probe that answers: the count, known.
	start(t, config(etcd, b2, "counted"))
	etcdtest.WaitInstance(t, cli, "counted", 5*time.Second, "sessions counted", func(in *registry.Instance, _ int64) bool {
		return in != nil && in.Load.Sessions == 4 && !in.Load.SessionsUnknown
	})
}

// TestDrainSettleStartsWhenDrainingIsWritten: the sample that may find no sessions left is
// taken --drain-settle after "draining" reached etcd, never counted from the signal: with etcd
// unreachable at the signal for longer than the settle time, the agent must still leave the
// control planes the settle time to stop sending new sessions after they see "draining".
func TestDrainSettleStartsWhenDrainingIsWritten(t *testing.T) {
	const settle = time.Second
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	b := agenttest.NewBackend(t)
	cfg := config(etcd, b, "app-1")
	cfg.DrainSettle = settle
	// etcd extends the lease by its TTL when it starts again: the key goes by the agent alone.
	// It outlives the gRPC client's reconnection backoff; the agent's etcd calls time out
	// after min(TTL/2, 5s).
	cfg.TTL = 20 * time.Second
	r := start(t, cfg)
	etcdtest.WaitInstance(t, cli, "app-1", 5*time.Second, "registered", state(registry.StateAvailable))
	etcd.Stop()
	r.cancel() // the signal: "draining" cannot be written yet
	// Long enough for the agent's write of "draining" to time out (5 s) and for a settle
	// timer started then to run out while etcd is still away.
	time.Sleep(5*time.Second + 2*settle)
	etcd.StartAgain(t)
	// A new client: the first one may still be in gRPC's reconnection backoff when the agent
	// writes, and miss the settle time it is to measure.
	cli = etcd.Client(t)
	key := registry.InstanceKey("/tether", "app", "app-1")
	// The agent writes "draining", samples --drain-settle later, finds no sessions and marks
	// the instance leaving (then waits the settle time again and deletes the key).
	var drainingAt, leavingAt time.Time
	eventually.True(t, "the instance marked leaving once etcd is back", 20*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		resp, err := cli.Get(ctx, key)
		if err != nil {
			return false // the client reconnecting
		}
		if len(resp.Kvs) == 0 {
			t.Fatal("the key went before the agent marked it leaving")
		}
		var in registry.Instance
		if err := json.Unmarshal(resp.Kvs[0].Value, &in); err != nil || in.State != registry.StateDraining {
			return false
		}
		switch {
		case in.Leaving:
			leavingAt = time.Now()
		case drainingAt.IsZero():
			drainingAt = time.Now()
		}
		return !leavingAt.IsZero()
	})
	if drainingAt.IsZero() {
		t.Fatal("the instance was marked leaving without being seen draining first: the sample that found no sessions was not taken after draining reached etcd")
	}
	if gap := leavingAt.Sub(drainingAt); gap < settle/2 {
		t.Fatalf("marked leaving %v after draining was first seen in etcd, want the settle time %v", gap, settle)
	}
	if err := r.wait(t, 10*time.Second); err != nil {
		t.Fatalf("agent: %v", err)
	}
}
