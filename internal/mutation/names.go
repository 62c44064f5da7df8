package mutation

// The mutations the simulation must catch, each a break of one guarantee.
const (
	// FullUnhealthy serves a full or draining instance as UNHEALTHY instead of DRAINING, so
	// Envoy no longer honours its sessions (envoy-rules row 3).
	FullUnhealthy = "full-unhealthy"
	// GuardHoldsNothing lets the mass-disappearance guard hold nothing: a lease storm empties
	// a service at once.
	GuardHoldsNothing = "guard-holds-nothing"
	// PromoteAtOnce serves a new endpoint as its state says at once, skipping the first phase
	// of two-phase publication.
	PromoteAtOnce = "promote-at-once"
	// PeerSettleOnly waits for another replica that has not reported only the settle time,
	// not until it must have stepped down: a replica cut off from etcd longer than that has
	// Envoys without the new endpoint.
	PeerSettleOnly = "peer-settle-only"
)

// All lists every mutation.
var All = []string{FullUnhealthy, GuardHoldsNothing, PromoteAtOnce, PeerSettleOnly}
