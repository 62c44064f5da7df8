package controlplane

import (
	"context"
	"testing"
	"time"

	"github.com/tetherlb/tether/registry"
)

// The default bound is three of the watcher's reads of etcd's revision (one slow or lost
// read is not enough to step down), and the step-down check looks ten times a bound, never
// with a ticker of zero (a --stale-after of a few nanoseconds is accepted).
func TestStaleBoundAndItsCheck(t *testing.T) {
	d := DefaultConfig()
	if d.StaleAfter != 3*registry.DefaultProgressInterval || progressInterval(d.StaleAfter) != registry.DefaultProgressInterval {
		t.Errorf("default --stale-after %v, read every %v; want three reads of %v", d.StaleAfter, progressInterval(d.StaleAfter), registry.DefaultProgressInterval)
	}
	for _, c := range []struct{ bound, want time.Duration }{
		{15 * time.Second, 1500 * time.Millisecond},
		{time.Second, 100 * time.Millisecond},
		{50 * time.Millisecond, 10 * time.Millisecond},
		{1, 10 * time.Millisecond},
	} {
		if got := staleCheckEvery(c.bound); got != c.want {
			t.Errorf("a bound of %v checked every %v, want %v", c.bound, got, c.want)
		}
	}
}

// A negative --stale-after turns the step-down off: the replica is never stale, whatever its
// watcher last confirmed (it is not even asked), and no check runs.
func TestNegativeStaleAfterChecksNothing(t *testing.T) {
	off := &ControlPlane{cfg: Config{StaleAfter: -time.Second}} // no watcher: reading it would panic
	if age, stale := off.unconfirmedFor(time.Now()); age != 0 || stale {
		t.Errorf("--stale-after -1s: unconfirmed for %v, stale %v; want 0, false", age, stale)
	}
	done := make(chan struct{})
	go func() {
		off.watchConfirmation(context.Background())
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("--stale-after -1s: the step-down check runs")
	}
}
