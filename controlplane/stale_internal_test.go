package controlplane

import (
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
