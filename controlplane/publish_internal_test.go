package controlplane

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/tetherlb/tether/controlplane/translate"
	"github.com/tetherlb/tether/registry"
)

// TestBurstIsCoalesced offers thousands of registry states back to back, as a burst of etcd
// events would: the publisher pushes at most once per quiet window (in practice once per
// maximum delay, since the burst never goes quiet) and ends on the newest state.
func TestBurstIsCoalesced(t *testing.T) {
	const quiet, maxDelay, changes = 10 * time.Millisecond, 100 * time.Millisecond, 2000
	m := newMetrics()
	p := newPublisher(zerolog.Nop(), m, newXDSCache(zerolog.Nop()), translate.Options{ListenPort: 10000}, quiet, maxDelay, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.run(ctx) }()
	defer func() { cancel(); <-done }()

	start := time.Now()
	var last *registry.State
	for i := range changes {
		in := registry.Instance{ID: "app-1", Address: "10.0.0.1", Port: 5000, State: registry.StateAvailable,
			Thresholds: registry.Thresholds{MaxSessions: changes}, Load: registry.Load{Sessions: i}}
		last = &registry.State{Revision: int64(i + 1), Services: map[string]*registry.Service{
			"app": {Name: "app", Config: registry.DefaultServiceConfig("app"), Instances: map[string]registry.Instance{"app-1": in}},
		}}
		p.offer(last)
		time.Sleep(100 * time.Microsecond) // a burst spread over a few hundred milliseconds
	}
	elapsed := time.Since(start)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if cur := p.snapshotNow(); cur != nil && cur.state == last {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the newest state was not published within 5 s of the burst's end")
		}
		time.Sleep(5 * time.Millisecond)
	}
	pushes := int(testutil.ToFloat64(m.snapshots))
	if bound := int(elapsed/quiet) + 2; pushes > bound {
		t.Errorf("%d changes in %s gave %d pushes, want at most %d (one per quiet window)", changes, elapsed, pushes, bound)
	}
	t.Logf("%d changes in %s: %d pushes (max delay %s)", changes, elapsed.Round(time.Millisecond), pushes, maxDelay)
}
