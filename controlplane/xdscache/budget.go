package xdscache

import (
	"slices"
	"time"
)

// A budget of response bytes in flight, all streams together.
//
// gRPC encodes a response when the server sends it and holds the encoding until the Envoy
// has read it: one copy per stream, since each carries its own nonce. When etcd delivers
// hundreds of changes at once, one push carries hundreds of assignments to every Envoy, and a
// heap profile at (10,000 instances, 1,000 Envoys) showed 308 MB of such encodings over a
// 180 MB live heap. The budget serves a burst in waves instead: a response is sent only while
// the bytes sent and not yet answered (ACK or NACK) stay within MaxInflightBytes; the others
// wait their turn, in arrival order, armed. What waits is a watcher's pending names, not a
// response: when its turn comes it is built from the newest state, so no stale version is
// ever queued, and a watcher is in the queue at most once. A response larger than the whole
// budget goes when nothing else is in flight; an Envoy that does not answer gives its bytes
// back after InflightTimeout, as an initial-sync slot is freed after SlotTimeout.

// Defaults of Options.
const (
	// DefaultMaxInflightBytes: at (10,000 instances, 1,000 Envoys) a first configuration is
	// about 4 MB and a burst of 500 changes about 2 MB per Envoy; 64 MiB keeps some 30 of them,
	// or 64 smaller pushes, on their way at once. Measured (docs/performance.md): bursts of 500
	// changes reached 1,000 Envoys as fast as without a budget; 256 MiB was no faster.
	DefaultMaxInflightBytes = 64 << 20
	// DefaultInflightTimeout: an Envoy that does not answer in 10 s gives its bytes back.
	DefaultInflightTimeout = 10 * time.Second
)

// BudgetStats is the state of the byte budget, for metrics.
type BudgetStats struct {
	Max      int64 // MaxInflightBytes; <= 0: no budget
	InFlight int64 // bytes sent and not yet answered
	Waiting  int   // watchers waiting for room
	Waited   uint64
	TimedOut uint64 // charges released by InflightTimeout, not by an answer
	Peak     int64  // largest InFlight so far
}

// budget is the cache's byte budget (under Cache.mu).
type budget struct {
	BudgetStats
	queue []*watcher
	turn  *watcher // the watcher pump is answering: it may go ahead of the queue
}

// Budget returns the state of the byte budget.
func (c *Cache) Budget() BudgetStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.budget.BudgetStats
	s.Waiting = len(c.budget.queue)
	return s
}

// grpcBuffer is what gRPC holds for a response of n bytes until it is written: its default
// buffer pool (google.golang.org/grpc/mem, v1.85) hands the encoder the smallest of 256 B,
// 4 KiB, 16 KiB, 32 KiB and 1 MiB that fits the message and its 5-byte header, and a buffer
// of the exact size beyond 1 MiB. A heap profile at (10,000 instances, 1,000 Envoys) showed
// 202 MB of 1 MiB buffers under a budget of 64 MiB counted in message bytes: the pushes of a
// stream of changes are tens to hundreds of KB per Envoy, each in a 1 MiB buffer.
func grpcBuffer(n int64) int64 {
	n += 5
	for _, tier := range []int64{256, 4 << 10, 16 << 10, 32 << 10, 1 << 20} {
		if n <= tier {
			return tier
		}
	}
	return n
}

// admit reports whether w may send a response of size bytes (as grpcBuffer holds them) now;
// if not, w waits its turn. Watchers already waiting go first, so that a large response is
// not passed forever by small ones.
func (c *Cache) admit(w *watcher, size int64) bool {
	b := &c.budget
	if b.Max <= 0 {
		return true
	}
	mine := b.turn == w
	if (len(b.queue) == 0 || mine) && (b.InFlight == 0 || b.InFlight+size <= b.Max) {
		return true
	}
	if !w.waiting {
		w.waiting = true
		if mine {
			// Keeps its place at the head; its wait is counted already.
			b.queue = slices.Insert(b.queue, 0, w)
		} else {
			b.Waited++
			b.queue = append(b.queue, w)
		}
	}
	return false
}

// behind reports whether w must wait behind others for the budget, and queues it if so:
// before its response is built, which a push would otherwise do for every waiting watcher
// only to find it waits.
func (c *Cache) behind(w *watcher) bool {
	b := &c.budget
	if b.Max <= 0 || b.turn == w || (len(b.queue) == 0 && !w.waiting) {
		return false
	}
	if !w.waiting {
		w.waiting = true
		b.Waited++
		b.queue = append(b.queue, w)
	}
	return true
}

// charge counts a response of size bytes sent to w until its answer.
func (c *Cache) charge(w *watcher, size int64) {
	b := &c.budget
	if b.Max <= 0 {
		return
	}
	now := time.Now()
	if w.charged == 0 {
		// The oldest unanswered response dates the charge: a stream that keeps changing its
		// subscription without answering does not push its timeout back.
		w.chargedAt = now
		if w.chargeTimer == nil {
			w.chargeTimer = time.AfterFunc(c.opts.InflightTimeout, func() { c.chargeExpired(w) })
		} else {
			w.chargeTimer.Reset(c.opts.InflightTimeout)
		}
	}
	w.charged += size
	b.InFlight += size
	b.Peak = max(b.Peak, b.InFlight)
}

// chargeExpired releases w's bytes when its oldest unanswered response has waited
// InflightTimeout.
func (c *Cache) chargeExpired(w *watcher) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if w.charged == 0 {
		return
	}
	if left := c.opts.InflightTimeout - time.Since(w.chargedAt); left > 0 {
		w.chargeTimer.Reset(left) // charged again after an answer: not due yet
		return
	}
	c.budget.TimedOut++
	c.release(w)
}

// release gives back w's bytes (its answer came, its stream closed, its response was dropped
// or timed out) and lets waiting watchers go.
func (c *Cache) release(w *watcher) {
	if w.charged > 0 {
		c.uncharge(w)
		c.pumpBudget()
	}
}

// uncharge gives back w's bytes without answering anyone.
func (c *Cache) uncharge(w *watcher) {
	c.budget.InFlight -= w.charged
	w.charged = 0
	w.chargeTimer.Stop() // set by charge with the first byte charged
}

// pumpBudget answers waiting watchers in order while they fit.
func (c *Cache) pumpBudget() {
	b := &c.budget
	for range len(b.queue) + 1 {
		if len(b.queue) == 0 || b.turn != nil {
			return
		}
		w := b.queue[0]
		b.queue[0] = nil
		b.queue = b.queue[1:]
		w.waiting = false
		if !w.armed || w.removed {
			continue // its next arming asks again
		}
		b.turn = w
		c.respond(w)
		b.turn = nil
		if w.waiting {
			return // it did not fit: it is back at the head
		}
	}
}

// dropWaiting takes a closed stream's watcher out of the queue.
func (c *Cache) dropWaiting(w *watcher) {
	if !w.waiting {
		return
	}
	w.waiting = false
	c.budget.queue = slices.DeleteFunc(c.budget.queue, func(x *watcher) bool { return x == w })
}
