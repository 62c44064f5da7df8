package agent

import (
	"fmt"
	"math"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/tetherlb/tether/registry"
)

// Hysteresis parameters.
const (
	// releaseFraction: a crossed threshold is released only when the metric falls below
	// threshold*(1-releaseFraction) (sessions: at least one session below).
	releaseFraction = 0.05
	// cpuSamplesToFull consecutive CPU samples over the threshold make the server full, so
	// that a single spike does not.
	cpuSamplesToFull = 3
	// healthFailuresToUnhealthy consecutive failed probes make the backend unhealthy; one
	// success makes it healthy again.
	healthFailuresToUnhealthy = 2
)

// latch is one threshold with hysteresis. Its reason is fixed when it trips, so that the
// published reason does not change with every sample.
type latch struct {
	on     bool
	over   int // consecutive samples over the threshold
	reason string
}

// update feeds one sample: trip when over for need samples in a row, release when below.
func (l *latch) update(over, below bool, need int, reason func() string) {
	if over {
		l.over++
	} else {
		l.over = 0
	}
	switch {
	case !l.on && l.over >= need:
		l.on, l.reason = true, reason()
	case l.on && below:
		l.on, l.reason = false, ""
	}
}

// admission decides whether the instance may take new sessions, from its load and its
// thresholds, with hysteresis.
type admission struct {
	th                        registry.Thresholds
	sessions, cpu, mem, memMB latch
}

// sessionRelease is the count at or below which a full-by-sessions server is available again.
func sessionRelease(maxSessions int) int {
	return maxSessions - max(1, int(math.Ceil(float64(maxSessions)*releaseFraction)))
}

// evaluate feeds one load sample and returns whether the server is full and why ("" when not).
func (a *admission) evaluate(l registry.Load) (bool, string) {
	t := a.th
	if t.MaxSessions > 0 {
		a.sessions.update(l.Sessions >= t.MaxSessions, l.Sessions <= sessionRelease(t.MaxSessions), 1,
			func() string { return fmt.Sprintf("sessions %d >= maxSessions %d", l.Sessions, t.MaxSessions) })
	}
	gauge := func(lt *latch, v, limit float64, need int, name, limitName, unit string) {
		if limit <= 0 {
			return
		}
		lt.update(v > limit, v < limit*(1-releaseFraction), need,
			func() string { return fmt.Sprintf("%s %.1f%s > %s %g%s", name, v, unit, limitName, limit, unit) })
	}
	gauge(&a.cpu, l.CPU, t.MaxCPU, cpuSamplesToFull, "cpu", "maxCPU", "%")
	gauge(&a.mem, l.Memory, t.MaxMemory, 1, "memory", "maxMemory", "%")
	gauge(&a.memMB, l.MemoryMB, t.MaxMemoryMB, 1, "memory", "maxMemoryMB", " MB")
	var reasons []string
	for _, lt := range []*latch{&a.sessions, &a.cpu, &a.mem, &a.memMB} {
		if lt.on {
			reasons = append(reasons, lt.reason)
		}
	}
	return len(reasons) > 0, strings.Join(reasons, "; ")
}

// healthTracker turns probe results into healthy/unhealthy: unhealthy after
// healthFailuresToUnhealthy failures in a row, healthy again after one success.
type healthTracker struct {
	failures int
	lastErr  string
}

// update records one probe (err nil = healthy) and reports health and, if unhealthy, why.
func (h *healthTracker) update(err error) (bool, string) {
	if err == nil {
		h.failures, h.lastErr = 0, ""
		return true, ""
	}
	h.failures++
	if h.failures == healthFailuresToUnhealthy {
		h.lastErr = "health check failed: " + err.Error()
	}
	if h.failures < healthFailuresToUnhealthy {
		return true, ""
	}
	return false, h.lastErr
}

// cleanReason makes a reason fit the registry: valid UTF-8, control characters as spaces, and
// at most registry.MaxReason bytes, cut on a character boundary with "...". A reason over the limit
// would fail validation and block every later write of the instance (its state included).
func cleanReason(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
	if len(s) <= registry.MaxReason {
		return s
	}
	const ellipsis = "..."
	cut := registry.MaxReason - len(ellipsis)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + ellipsis
}
