package agent_test

import (
	"context"
	"testing"
	"time"

	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/registry"
)

// TestAgentReportsOperatorDrain: an agent whose instance an operator's drain selects reports
// it as draining with the drain in its reason, writes every session that ends while drained,
// keeps running at zero sessions (only its own shutdown deregisters it), and reports
// available again when the drain is removed. An agent starting under a drain starts drained.
func TestAgentReportsOperatorDrain(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	b := newBackend(t)
	b.sessions.Store(40)
	cfg := config(t, etcd, b, "app-1")
	cfg.Labels = map[string]string{"version": "1"}
	cfg.Heartbeat = time.Hour // writes come from state changes and the dead band only
	r := start(t, cfg)
	waitKey(t, cli, "app-1", 5*time.Second, "registered", state(registry.StateAvailable))

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	other := registry.Drain{Instance: "app-9"}
	if _, _, err := registry.PutDrain(ctx, cli, "/tether", "app", "app-9", other); err != nil {
		t.Fatal(err)
	}
	d := registry.Drain{Labels: map[string]string{"version": "1"}, CreatedAt: time.Now().UTC()}
	if _, _, err := registry.PutDrain(ctx, cli, "/tether", "app", "version=1", d); err != nil {
		t.Fatal(err)
	}
	in := waitKey(t, cli, "app-1", 5*time.Second, "drained", state(registry.StateDraining))
	if in.Reason != registry.OperatorDrainReason("version=1") || in.Load.Sessions != 40 {
		t.Errorf("drained instance: reason %q, sessions %d", in.Reason, in.Load.Sessions)
	}
	// Without the drain, one session less is inside the dead band (5) and the heartbeat is an
	// hour away: a write of 39 shows the drained agent writes every change.
	b.sessions.Store(39)
	waitKey(t, cli, "app-1", 5*time.Second, "39 sessions written", func(in *registry.Instance, _ int64) bool {
		return in != nil && in.Load.Sessions == 39 && in.State == registry.StateDraining
	})
	b.sessions.Store(0)
	waitKey(t, cli, "app-1", 5*time.Second, "0 sessions written", func(in *registry.Instance, _ int64) bool {
		return in != nil && in.Load.Sessions == 0 && in.State == registry.StateDraining
	})

	// A second agent of the same version registers while the drain stands: it reports drained.
	b2 := newBackend(t)
	cfg2 := config(t, etcd, b2, "app-2")
	cfg2.Labels = map[string]string{"version": "1"}
	start(t, cfg2)
	waitKey(t, cli, "app-2", 5*time.Second, "late instance drained", state(registry.StateDraining))

	select {
	case err := <-r.done:
		t.Fatalf("a drained agent at zero sessions stopped (%v); only its own shutdown may deregister it", err)
	default:
	}
	if ok, err := registry.DeleteDrain(ctx, cli, "/tether", "app", "version=1"); err != nil || !ok {
		t.Fatalf("undo: %v %v", ok, err)
	}
	in = waitKey(t, cli, "app-1", 5*time.Second, "undrained", state(registry.StateAvailable))
	if in.Reason != "" {
		t.Errorf("undrained instance keeps reason %q", in.Reason)
	}
	waitKey(t, cli, "app-2", 5*time.Second, "late instance undrained", state(registry.StateAvailable))
}
