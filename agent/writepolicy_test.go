package agent

import (
	"testing"
	"time"

	"github.com/tetherlb/tether/registry"
)

func TestWriteReasonDeadBand(t *testing.T) {
	base := registry.Instance{State: registry.StateAvailable, Thresholds: registry.Thresholds{MaxSessions: 500, MaxMemoryMB: 1000},
		Load: registry.Load{Sessions: 100, CPU: 40, Memory: 50, MemoryMB: 500}}
	hb := 30 * time.Second
	cases := []struct {
		name  string
		edit  func(*registry.Instance)
		since time.Duration
		want  string
	}{
		{"unchanged", func(*registry.Instance) {}, time.Second, ""},
		{"heartbeat", func(*registry.Instance) {}, hb, writeHeartbeat},
		{"state", func(i *registry.Instance) { i.State = registry.StateFull; i.Reason = "x" }, 0, writeState},
		{"reason only", func(i *registry.Instance) { i.Reason = "y" }, 0, writeState},
		{"sessions inside band", func(i *registry.Instance) { i.Load.Sessions = 109 }, 0, ""},
		{"sessions past band (2% of 500)", func(i *registry.Instance) { i.Load.Sessions = 110 }, 0, writeLoad},
		{"sessions down past band", func(i *registry.Instance) { i.Load.Sessions = 90 }, 0, writeLoad},
		{"cpu inside band", func(i *registry.Instance) { i.Load.CPU = 44.9 }, 0, ""},
		{"cpu past band", func(i *registry.Instance) { i.Load.CPU = 45 }, 0, writeLoad},
		{"memory past band", func(i *registry.Instance) { i.Load.Memory = 44 }, 0, writeLoad},
		{"memoryMB inside band", func(i *registry.Instance) { i.Load.MemoryMB = 549 }, 0, ""},
		{"memoryMB past band", func(i *registry.Instance) { i.Load.MemoryMB = 550 }, 0, writeLoad},
		{"timestamp only", func(i *registry.Instance) { i.UpdatedAt = time.Now() }, 0, ""},
	}
	for _, c := range cases {
		next := base
		c.edit(&next)
		if got := writeReason(base, next, c.since, hb); got != c.want {
			t.Errorf("%s: writeReason = %q, want %q", c.name, got, c.want)
		}
	}
}

func TestSessionStep(t *testing.T) {
	for _, c := range []struct{ max, want int }{{0, 5}, {10, 1}, {100, 2}, {500, 10}, {1000, 20}} {
		if got := sessionStep(c.max); got != c.want {
			t.Errorf("sessionStep(%d) = %d, want %d", c.max, got, c.want)
		}
	}
}
