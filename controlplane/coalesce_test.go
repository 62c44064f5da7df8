package controlplane

import (
	"testing"
	"time"
)

const (
	testQuiet = 10 * time.Millisecond
	testMax   = 100 * time.Millisecond
)

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func ms(n float64) time.Duration { return time.Duration(n * float64(time.Millisecond)) }

func TestCoalescerDue(t *testing.T) {
	type step struct {
		change bool          // a change at `at`, else a push ending at `at`
		at     time.Duration // after t0
	}
	cases := []struct {
		name    string
		steps   []step
		due     time.Duration // after t0
		pending bool
	}{
		{"nothing changed", nil, 0, false},
		{"the first change ever is pushed at once", []step{{true, ms(5)}}, ms(5), true},
		{"a change a quiet window after the last push is pushed at once",
			[]step{{false, 0}, {true, testQuiet}}, testQuiet, true},
		{"a lone change long after the last push is pushed at once",
			[]step{{false, 0}, {true, time.Hour}}, time.Hour, true},
		{"a change within the window waits for the window's quiet",
			[]step{{false, 0}, {true, ms(2)}}, ms(2) + testQuiet, true},
		{"each further change restarts the quiet window",
			[]step{{false, 0}, {true, ms(2)}, {true, ms(9)}}, ms(9) + testQuiet, true},
		{"the first unpushed change waits at most max",
			[]step{{false, 0}, {true, ms(1)}, {true, ms(50)}, {true, ms(95)}}, ms(1) + testMax, true},
		{"a push takes every change with it", []step{{true, 0}, {true, ms(1)}, {false, ms(3)}}, 0, false},
		{"a change right after a push that ended late waits for the window",
			[]step{{true, 0}, {false, ms(400)}, {true, ms(401)}}, ms(401) + testQuiet, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := coalescer{quiet: testQuiet, max: testMax}
			for _, s := range tc.steps {
				if s.change {
					c.change(t0.Add(s.at))
				} else {
					c.pushed(t0.Add(s.at))
				}
			}
			due, pending := c.due()
			if pending != tc.pending || (pending && !due.Equal(t0.Add(tc.due))) {
				t.Errorf("due() = %v after t0, pending %v; want %v, pending %v", due.Sub(t0), pending, tc.due, tc.pending)
			}
		})
	}
}

func TestCoalescerDiscardKeepsTheLeadingEdge(t *testing.T) {
	c := coalescer{quiet: testQuiet, max: testMax}
	c.change(t0)
	c.pushed(t0)
	c.change(t0.Add(ms(1))) // a wake-up for a state the push already held
	c.discard()
	if _, pending := c.due(); pending {
		t.Fatal("discard left changes pending")
	}
	c.change(t0.Add(testQuiet))
	if due, _ := c.due(); !due.Equal(t0.Add(testQuiet)) {
		t.Errorf("a change a window after the last real push is due %v after t0, want at once (%v)", due.Sub(t0), testQuiet)
	}
}

func TestCoalescerPromotion(t *testing.T) {
	c := coalescer{quiet: testQuiet, max: testMax}
	c.change(t0)
	c.pushed(t0.Add(ms(1)))
	c.promote(t0.Add(ms(2))) // every Envoy ACKed the push a millisecond after it
	if due, ok := c.due(); !ok || !due.Equal(t0.Add(ms(2))) {
		t.Errorf("a promotion right after a push is due %v after t0 (pending %v), want at once (2ms)", due.Sub(t0), ok)
	}
	c.pushed(t0.Add(ms(3)))
	if _, ok := c.due(); ok {
		t.Error("the push left the promotion pending")
	}
	// Registry changes waiting in the window take a promotion with them: it is no reason to
	// push them early.
	c.change(t0.Add(ms(4)))
	c.promote(t0.Add(ms(5)))
	if due, _ := c.due(); !due.Equal(t0.Add(ms(4) + testQuiet)) {
		t.Errorf("a promotion with a change waiting is due %v after t0, want the change's %v", due.Sub(t0), ms(4)+testQuiet)
	}
	c.discard()
	if _, ok := c.due(); ok {
		t.Error("discard left the promotion pending")
	}
}

// simulate drives a coalescer as the publish loop does, with changes at the given offsets and
// pushes that each take cost, and returns when each push started and, per change, how long
// it waited for the push that held it.
func simulate(changes []time.Duration, cost time.Duration) (pushes []time.Duration, waits []time.Duration) {
	c := coalescer{quiet: testQuiet, max: testMax}
	waits = make([]time.Duration, len(changes))
	held := 0 // changes[:held] are pushed
	now := time.Duration(0)
	for i := 0; i < len(changes) || held < len(changes); {
		due, pending := c.due()
		dueAt := due.Sub(t0)
		if i < len(changes) && (!pending || changes[i] < dueAt) {
			now = max(now, changes[i])
			c.change(t0.Add(now))
			i++
			continue
		}
		now = max(now, dueAt)
		pushes = append(pushes, now)
		for ; held < i; held++ {
			waits[held] = now - changes[held]
		}
		now += cost
		c.pushed(t0.Add(now))
	}
	return pushes, waits
}

// TestCoalescerUnderAContinuousStream: a change every 100 us for 2 s never leaves the quiet
// window, so the pushes come at the maximum delay: no fewer (no change waits longer than max),
// no more (a burst stays cheap), and the last push holds the last change.
func TestCoalescerUnderAContinuousStream(t *testing.T) {
	const n, gap, cost = 20000, 100 * time.Microsecond, 2 * time.Millisecond
	changes := make([]time.Duration, n)
	for i := range changes {
		changes[i] = time.Duration(i) * gap
	}
	pushes, waits := simulate(changes, cost)
	span := changes[n-1]
	if lo, hi := int(span/(testMax+cost)), int(span/testMax)+2; len(pushes) < lo || len(pushes) > hi {
		t.Errorf("%d changes over %v gave %d pushes, want between %d and %d (one per max delay)", n, span, len(pushes), lo, hi)
	}
	for i, w := range waits {
		if w > testMax+cost || w < 0 {
			t.Fatalf("change %d at %v waited %v, want at most max (%v) plus a push (%v)", i, changes[i], w, testMax, cost)
		}
	}
	if pushes[0] != 0 {
		t.Errorf("the burst's first change was pushed after %v, want at once", pushes[0])
	}
	if last := pushes[len(pushes)-1]; last < changes[n-1] || last > changes[n-1]+testQuiet {
		t.Errorf("the last push at %v does not end the burst (last change at %v, quiet %v)", last, changes[n-1], testQuiet)
	}
}

// TestCoalescerSpacedChanges: changes spaced by more than the quiet window are each pushed
// at once, and changes closer than the window never give more than one push per window.
func TestCoalescerSpacedChanges(t *testing.T) {
	for _, gap := range []time.Duration{testQuiet + ms(1), 3 * testQuiet, time.Second} {
		changes := []time.Duration{0, gap, 2 * gap, 3 * gap}
		pushes, waits := simulate(changes, ms(0.5))
		if len(pushes) != len(changes) {
			t.Errorf("gap %v: %d pushes for %d changes, want one each", gap, len(pushes), len(changes))
		}
		for i, w := range waits {
			if w != 0 {
				t.Errorf("gap %v: change %d waited %v, want 0", gap, i, w)
			}
		}
	}
	for _, gap := range []time.Duration{ms(1), ms(4), testQuiet - ms(1)} {
		changes := make([]time.Duration, 200)
		for i := range changes {
			changes[i] = time.Duration(i) * gap
		}
		pushes, _ := simulate(changes, ms(0.5))
		for i := 1; i < len(pushes); i++ {
			if d := pushes[i] - pushes[i-1]; d < testQuiet {
				t.Fatalf("gap %v: pushes %d and %d only %v apart, want at least the quiet window %v", gap, i-1, i, d, testQuiet)
			}
		}
	}
}
