package controlplane

import "time"

// coalescer decides when registry changes are pushed. It is leading-edge: a change that
// arrives when no push has happened for a quiet window is pushed at once, so a lone change
// costs only translation and send. Changes that follow within the window are held and pushed
// together once the registry has been quiet for the window, but never later than max after
// the first of them. Every push therefore starts at least quiet after the previous one ended
// (pushes per second stay below 1/quiet, about 1/max under a continuous stream), and the
// push that ends a burst holds its newest state.
//
// A promotion (two-phase publication: every Envoy has ACKed a new endpoint) is pushed at once,
// unless registry changes are waiting, which take it with them. It follows the ACKs of a push
// and carries no registry change, so it brings no endpoint of its own to promote: promotions
// add at most one push per push that brought new endpoints, and never hold a registry change
// back beyond its own window.
//
// It keeps no clock of its own: every call is given the time, which makes it a pure state
// machine (tests drive it with made-up times) and leaves timers to its caller.
type coalescer struct {
	quiet, max time.Duration

	lastPush    time.Time // when the last push ended; zero before the first
	first, last time.Time // the first and newest unpushed change; first zero: none
	promoteAt   time.Time // when an unpushed promotion was asked for; zero: none
}

// promote records a promotion asked for at now.
func (c *coalescer) promote(now time.Time) {
	if c.promoteAt.IsZero() {
		c.promoteAt = now
	}
}

// change records a change seen at now.
func (c *coalescer) change(now time.Time) {
	if c.first.IsZero() {
		c.first = now
	}
	c.last = now
}

// due returns when the unpushed changes must be pushed; ok is false when there are none.
// A due time not after now means at once.
func (c *coalescer) due() (at time.Time, ok bool) {
	if c.first.IsZero() {
		return c.promoteAt, !c.promoteAt.IsZero()
	}
	if c.lastPush.IsZero() || c.first.Sub(c.lastPush) >= c.quiet {
		return c.first, true // the first change after a quiet period: leading edge
	}
	return earliest(c.last.Add(c.quiet), c.first.Add(c.max)), true
}

// pushed records that a push ended at now holding every change and promotion recorded
// before it.
func (c *coalescer) pushed(now time.Time) {
	c.lastPush = now
	c.discard()
}

// discard forgets the unpushed changes and promotion without counting a push: they turned out
// to be already held by the last push.
func (c *coalescer) discard() {
	c.first, c.last, c.promoteAt = time.Time{}, time.Time{}, time.Time{}
}

// earliest returns the earlier of a and b, a zero time standing for none.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}
