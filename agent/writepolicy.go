package agent

import (
	"math"
	"time"

	"github.com/tetherlb/tether/registry"
)

// Dead band: load changes smaller than these are not written until the heartbeat.
const (
	sessionStepFraction = 0.02 // of maxSessions
	sessionStepDefault  = 5    // sessions, when maxSessions is unlimited
	percentStep         = 5.0  // points of CPU or memory percent
	memoryMBStep        = 0.05 // of maxMemoryMB
)

// Write reasons, also the label of tether_agent_etcd_writes_total.
const (
	writeState     = "state"
	writeLoad      = "load"
	writeHeartbeat = "heartbeat"
	writeLeaving   = "leaving" // the last value, before a deliberate deregistration
	writeDrain     = "drain"   // a drain changed while draining: drain --wait needs a fresh value
)

// sessionStep is the session-count change worth a write.
func sessionStep(maxSessions int) int {
	if maxSessions <= 0 {
		return sessionStepDefault
	}
	return max(1, int(math.Ceil(float64(maxSessions)*sessionStepFraction)))
}

// writeReason says why next must be written given the last written value, or "" when the
// change is inside the dead band and the heartbeat is not due. A state or reason change is
// written at once; load only when it moved past the dead band; anything at the heartbeat.
func writeReason(last, next registry.Instance, sinceLast, heartbeat time.Duration) string {
	if last.State != next.State || last.Reason != next.Reason {
		return writeState
	}
	d := func(a, b float64) float64 { return math.Abs(a - b) }
	th := next.Thresholds
	step := sessionStep(th.MaxSessions)
	if next.State == registry.StateDraining {
		step = 1 // every session that ends is news to whoever waits for the drain (drain --wait)
	}
	switch {
	case last.Thresholds != th,
		last.Load.SessionsUnknown != next.Load.SessionsUnknown,
		d(float64(last.Load.Sessions), float64(next.Load.Sessions)) >= float64(step),
		d(last.Load.CPU, next.Load.CPU) >= percentStep,
		d(last.Load.Memory, next.Load.Memory) >= percentStep,
		th.MaxMemoryMB > 0 && d(last.Load.MemoryMB, next.Load.MemoryMB) >= th.MaxMemoryMB*memoryMBStep:
		return writeLoad
	}
	if sinceLast >= heartbeat {
		return writeHeartbeat
	}
	return ""
}
