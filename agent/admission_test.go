package agent

import (
	"errors"
	"strings"
	"testing"

	"github.com/tetherlb/tether/registry"
)

func TestSessionsHysteresis(t *testing.T) {
	a := admission{th: registry.Thresholds{MaxSessions: 100}}
	steps := []struct {
		sessions int
		full     bool
	}{
		{50, false}, {99, false}, {100, true}, {99, true}, {96, true}, {100, true}, {95, false}, {99, false}, {101, true}, {0, false},
	}
	for i, s := range steps {
		full, reason := a.evaluate(registry.Load{Sessions: s.sessions})
		if full != s.full {
			t.Fatalf("step %d: sessions %d: full=%v, want %v", i, s.sessions, full, s.full)
		}
		if full && !strings.HasPrefix(reason, "sessions ") || !full && reason != "" {
			t.Fatalf("step %d: reason %q", i, reason)
		}
	}
}

func TestSessionsHysteresisSmallLimit(t *testing.T) {
	a := admission{th: registry.Thresholds{MaxSessions: 2}}
	for i, s := range []struct {
		n    int
		full bool
	}{{1, false}, {2, true}, {1, false}} {
		if full, _ := a.evaluate(registry.Load{Sessions: s.n}); full != s.full {
			t.Fatalf("step %d: %d sessions of max 2: full=%v, want %v", i, s.n, full, s.full)
		}
	}
}

func TestReasonFixedWhileFull(t *testing.T) {
	a := admission{th: registry.Thresholds{MaxSessions: 500}}
	_, r1 := a.evaluate(registry.Load{Sessions: 512})
	if r1 != "sessions 512 >= maxSessions 500" {
		t.Fatalf("reason %q", r1)
	}
	if _, r2 := a.evaluate(registry.Load{Sessions: 530}); r2 != r1 {
		t.Fatalf("reason changed to %q while still full: every change would be a write", r2)
	}
}

func TestCPUNeedsConsecutiveSamples(t *testing.T) {
	a := admission{th: registry.Thresholds{MaxCPU: 80}}
	seq := []struct {
		cpu  float64
		full bool
	}{
		{95, false}, {95, false}, {50, false}, // a spike: not full
		{90, false}, {90, false}, {90, true}, // three in a row
		{79, true}, {76.1, true}, {75.9, false}, // released below 80*0.95 = 76
	}
	for i, s := range seq {
		full, reason := a.evaluate(registry.Load{CPU: s.cpu})
		if full != s.full {
			t.Fatalf("step %d: cpu %g: full=%v, want %v", i, s.cpu, full, s.full)
		}
		if full && reason != "cpu 90.0% > maxCPU 80%" {
			t.Fatalf("step %d: reason %q", i, reason)
		}
	}
}

func TestMemoryThresholds(t *testing.T) {
	a := admission{th: registry.Thresholds{MaxMemory: 70, MaxMemoryMB: 1000}}
	if full, _ := a.evaluate(registry.Load{Memory: 69, MemoryMB: 900}); full {
		t.Fatal("full below both thresholds")
	}
	full, reason := a.evaluate(registry.Load{Memory: 71, MemoryMB: 1200})
	if !full || reason != "memory 71.0% > maxMemory 70%; memory 1200.0 MB > maxMemoryMB 1000 MB" {
		t.Fatalf("full=%v reason=%q", full, reason)
	}
	full, reason = a.evaluate(registry.Load{Memory: 60, MemoryMB: 960})
	if !full || reason != "memory 1200.0 MB > maxMemoryMB 1000 MB" {
		t.Fatalf("after memory%% released, MB still in band: full=%v reason=%q", full, reason)
	}
	if full, _ := a.evaluate(registry.Load{Memory: 60, MemoryMB: 949}); full {
		t.Fatal("still full below both release levels")
	}
}

// TestThresholdsAreExact: a gauge at its limit is not over it, and one exactly at the
// release level is not below it: the server stays full until the value is under that level.
func TestThresholdsAreExact(t *testing.T) {
	a := admission{th: registry.Thresholds{MaxMemory: 70}}
	if full, reason := a.evaluate(registry.Load{Memory: 70}); full {
		t.Fatalf("full at the limit: %q", reason)
	}
	if full, _ := a.evaluate(registry.Load{Memory: 70.1}); !full {
		t.Fatal("not full over the limit")
	}
	release := 70 * (1 - releaseFraction)
	if full, _ := a.evaluate(registry.Load{Memory: release}); !full {
		t.Fatalf("released at the release level %g; want released below it", release)
	}
	if full, _ := a.evaluate(registry.Load{Memory: release - 0.1}); full {
		t.Fatal("still full below the release level")
	}
}

func TestUnlimitedNeverFull(t *testing.T) {
	var a admission
	if full, reason := a.evaluate(registry.Load{Sessions: 1e6, CPU: 100, Memory: 100, MemoryMB: 1e6}); full {
		t.Fatalf("zero thresholds made the server full: %s", reason)
	}
}

func TestHealthTracker(t *testing.T) {
	var h healthTracker
	fail := errors.New("status 500")
	if ok, _ := h.update(fail); !ok {
		t.Fatal("unhealthy after one failure")
	}
	ok, reason := h.update(fail)
	if ok || reason != "health check failed: status 500" {
		t.Fatalf("after two failures: ok=%v reason=%q", ok, reason)
	}
	if ok, r2 := h.update(errors.New("timeout")); ok || r2 != reason {
		t.Fatalf("third failure: ok=%v reason=%q, want the first reason kept", ok, r2)
	}
	if ok, _ := h.update(nil); !ok {
		t.Fatal("not healthy after a success")
	}
}
