package controlplane

import (
	"fmt"
	"time"

	"github.com/tetherlb/tether/registry"
)

// DefaultVanishGrace is how long an instance that left the registry without its agent marking
// it leaving stays in the configuration, as DRAINING. It covers the moments an agent is away
// while its server still serves: a lost lease re-registered at the agent's next keep-alive (a
// third of the default 10 s TTL, plus a round trip), and an agent restarted by its service
// manager just after its crashed predecessor's lease lapsed (a restart within the lease adopts
// the key and leaves no gap). Short, because for a server that really died its users lose
// their sessions anyway, and in strict mode they see "server gone" only after it.
const DefaultVanishGrace = 5 * time.Second

// vanishGrace keeps an instance that vanished from the registry without its agent marking it
// leaving (its lease lapsed, its key was deleted) in the configuration for grace, served as
// DRAINING: its sticky sessions still reach it, no new session is sent to a server that may be
// dead. It comes back from the registry as it is written as soon as the agent registers again.
// An instance its stopping agent marked leaving was deregistered on purpose and goes at once.
//
// It runs after the removal guard, on what the guard serves: instances the guard holds are
// not gone, and the guard counts removals as the agents made them.
//
// Like the coalescer, it keeps no clock: apply is given the time, and returns when the next
// held instance is due to go.
type vanishGrace struct {
	grace time.Duration
	// lookback bounds which departures of a first state are kept (see recentDeparture).
	lookback time.Duration

	lastIn *registry.State // the last state given to apply
	held   kept
}

func newVanishGrace(grace time.Duration) *vanishGrace {
	return &vanishGrace{grace: grace, held: kept{}}
}

// apply returns next with the instances still within their grace added back, and when the
// next of them is due to go (zero: none). Calls must come with non-decreasing now. (A grace
// of zero or less is no vanishGrace at all: the publisher has none.)
func (g *vanishGrace) apply(next *registry.State, now time.Time) (*registry.State, time.Time) {
	prev := g.lastIn
	g.lastIn = next
	if prev == nil {
		// The first state: instances deleted just before this control plane started were
		// not seen go, and their agents may be about to come back; they get the grace from
		// now, as if seen now (the guard, before, holds those of a mass removal).
		for name, deps := range departedBy(next, now, g.lookback) {
			before := beforeDepartures(name, next.Services[name], deps)
			for _, d := range deps {
				g.keep(name, before, d.Instance, now)
			}
		}
	} else {
		// Only a service whose pointer changed can have lost instances (copy-on-write).
		for name, ps := range prev.Services {
			ns := next.Services[name]
			if ns == ps {
				continue
			}
			for id, in := range ps.Instances {
				if ns != nil {
					if _, ok := ns.Instances[id]; ok {
						continue
					}
				}
				// Deregistered by its stopping agent, which marked its last value leaving: the
				// grace must not delay that. An operator-drained instance whose lease lapses is
				// draining, not leaving, and keeps the grace.
				if in.Leaving {
					continue
				}
				g.keep(name, ps, in, now)
			}
		}
	}
	return g.held.serve(next, now, func(string, string) {})
}

// keep holds in, an instance of svc (as last seen) that left the registry, for the grace.
func (g *vanishGrace) keep(name string, svc *registry.Service, in registry.Instance, now time.Time) {
	in.State = registry.StateDraining
	in.Reason = fmt.Sprintf("left the registry without draining: kept %s for its agent to come back", g.grace)
	g.held.keep(name, svc, in, now.Add(g.grace))
}
