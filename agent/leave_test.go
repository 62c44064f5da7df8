package agent_test

import (
	"testing"
	"time"

	"github.com/tetherlb/tether/internal/agenttest"
	"github.com/tetherlb/tether/internal/etcdtest"
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
	r := start(t, cfg)
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

	// A failing sessions probe: unknown until it answers again, then the count.
	b2 := agenttest.NewBackend(t)
	b2.Sessions.Store(4)
	cfg2 := config(etcd, b2, "probed")
	cfg2.SessionsURL = b2.URL + "/nothing-here"
	start(t, cfg2)
	etcdtest.WaitInstance(t, cli, "probed", 5*time.Second, "sessions unknown while the probe fails", func(in *registry.Instance, _ int64) bool {
		return in != nil && in.Load.SessionsUnknown
	})
}
