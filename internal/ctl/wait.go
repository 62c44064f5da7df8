package ctl

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tetherlb/tether/internal/etcdconn"
	"github.com/tetherlb/tether/internal/overview"
	"github.com/tetherlb/tether/registry"
)

// watchRetry is the pause before the departures' watch starts again after it failed.
const watchRetry = time.Second

// wait polls the registry until every instance the drain selected since fromRev (the
// registry's revision when the drain was written) is done, printing the count each time it
// changes. An instance is done when it has written since the drain (a ModRevision after the
// drain's) and reports a measured count of zero sessions, or when its agent deregistered it
// with such a count (its last value marked leaving). An instance whose count is unknown, or
// that vanished otherwise (a lapsed lease, a key removed by hand, a rejected value), is never
// done: its server may still hold sessions.
func (c *command) wait(ctx context.Context, name string, d registry.Drain, timeout time.Duration, fromRev int64, initial []string) (int, error) {
	key := registry.DrainKey(c.prefix, c.svc, name)
	deadline := time.Now().Add(timeout)
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	deps := followDepartures(wctx, c.cli, c.prefix, c.svc, fromRev+1)
	expected := map[string]bool{}
	for _, id := range initial {
		expected[id] = true
	}
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	last := ""
	for {
		snap, err := c.read(ctx)
		switch {
		case err != nil && ctx.Err() != nil:
			// A read cut by Ctrl-C is no warning, and there is nothing to look at: the select
			// below ends the wait.
		case err != nil:
			fmt.Fprintf(c.stderr, "warning: %v; trying again\n", err)
		default:
			drainRev, ok := snap.mods[key]
			if !ok {
				return exitFailure, fmt.Errorf("drain %s of %s was removed while waiting", name, c.svc)
			}
			for _, id := range matched(snap.st, c.svc, d) {
				expected[id] = true
			}
			r := progress(snap, c.prefix, c.svc, d, drainRev, slices.Sorted(maps.Keys(expected)), deps.departed)
			if r.line != last {
				fmt.Fprintf(c.stdout, "%s %s\n", time.Now().Format(time.TimeOnly), r.line)
				last = r.line
			}
			if r.done {
				fmt.Fprintf(c.stdout, "no sessions left on %s: its agents can be stopped\n", c.what(d))
				return exitOK, nil
			}
			if r.lagging {
				deps.requestProgress()
			}
			if !time.Now().Before(deadline) {
				return exitTimeout, fmt.Errorf("timed out after %s with %s left on %s (%s)", timeout, overview.Plural(r.sessions, "session"), c.what(d), strings.Join(r.pending, "; "))
			}
		}
		select {
		case <-ctx.Done():
			return exitInterrupted, errors.New("stopped waiting; the drain stays in place (run the same command again to wait again)")
		case <-tick.C:
		}
	}
}

// report is where a drain stands for --wait.
type report struct {
	line     string
	sessions int      // sessions counted on the drained instances
	pending  []string // what keeps each instance that is not done, in words
	done     bool
	lagging  bool // a vanished instance's last value is not known yet
}

// departedFunc returns the value instance id's key held when it was deleted, at or before
// revision rev. ok is false when no deletion is known; lagging when the events up to rev
// have not all been read yet.
type departedFunc func(id string, rev int64) (last departure, ok, lagging bool)

// progress says where the drain stands at snap for the instances of ids, every instance
// the drain selected since it was written (see wait).
func progress(snap *snapshot, prefix, svc string, d registry.Drain, drainRev int64, ids []string, departed departedFunc) report {
	if len(ids) == 0 {
		return report{line: "no drained instance left in the registry", done: true}
	}
	var r report
	var parts []string
	note := func(part string, done bool) {
		parts = append(parts, part)
		if !done {
			r.pending = append(r.pending, part)
		}
	}
	listed := 0
	s := snap.st.Services[svc]
	for _, id := range ids {
		key := registry.InstanceKey(prefix, svc, id)
		in, present := registry.Instance{}, false
		if s != nil {
			in, present = s.Instances[id]
		}
		switch {
		case present && !d.Matches(&in):
			continue // its labels changed: the drain no longer holds it
		case present:
			listed++
			r.sessions += in.Load.Sessions
			switch {
			case snap.mods[key] <= drainRev:
				note(fmt.Sprintf("%s: %s, not reported since the drain", id, short(in.Load)), false)
			case !in.Load.SessionsKnown():
				note(fmt.Sprintf("%s: unknown (its agent has no --sessions-url, or its sessions probe fails)", id), false)
			default:
				note(fmt.Sprintf("%s: %d", id, in.Load.Sessions), in.Load.Sessions == 0)
			}
		case snap.st.Rejected[key] != "":
			listed++
			note(fmt.Sprintf("%s: its value is rejected, sessions unknown", id), false)
		default:
			listed++
			last, ok, lagging := departed(id, snap.st.Revision)
			r.lagging = r.lagging || lagging
			switch {
			case lagging:
				note(fmt.Sprintf("%s: gone from the registry, reading its last value", id), false)
			case ok && last.valid && last.in.LeftEmpty():
				note(fmt.Sprintf("%s: deregistered with no session left", id), true)
			case ok && last.valid && last.in.Leaving:
				note(fmt.Sprintf("%s: deregistered with %s (its drain was cut short)", id, count(last.in.Load)), false)
			case ok && last.valid:
				note(fmt.Sprintf("%s: gone without deregistering (a lapsed lease, or removed by hand) with %s when last seen", id, count(last.in.Load)), false)
			default:
				note(fmt.Sprintf("%s: gone without deregistering, sessions unknown", id), false)
			}
		}
	}
	r.done = len(r.pending) == 0
	r.line = fmt.Sprintf("%s on %s (%s)", overview.Plural(r.sessions, "session"), overview.Plural(listed, "drained instance"), strings.Join(parts, ", "))
	return r
}

// short is a load's session count as a number, or "unknown".
func short(l registry.Load) string {
	if !l.SessionsKnown() {
		return "unknown"
	}
	return strconv.Itoa(l.Sessions)
}

// count is a load's session count in words: "3 sessions", or "sessions unknown".
func count(l registry.Load) string {
	if !l.SessionsKnown() {
		return "sessions unknown"
	}
	return overview.Plural(l.Sessions, "session")
}

// departure is the last value of a deleted instance key.
type departure struct {
	rev   int64 // the deletion's
	in    registry.Instance
	valid bool // the value was in etcd's history and valid
}

// departures follows the deletions of one service's instance keys from a revision on, with
// the value each key held when it was deleted (etcd's PrevKV): only that value tells an
// agent that deregistered on purpose, and with how many sessions, from a lapsed lease.
type departures struct {
	cli *clientv3.Client
	ctx context.Context // the watch's: a progress request reaches the watch only with it

	mu   sync.Mutex
	last map[string]departure // by instance ID; a key written again is taken out
	rev  int64                // every event up to rev has been applied
	lost bool                 // etcd's history was compacted under the watch: later deletions are unknown
}

// followDepartures starts following from revision from until ctx ends.
func followDepartures(ctx context.Context, cli *clientv3.Client, prefix, svc string, from int64) *departures {
	d := &departures{cli: cli, ctx: clientv3.WithRequireLeader(ctx), last: map[string]departure{}, rev: from - 1}
	go d.run(registry.InstancesPrefix(prefix)+svc+"/", svc)
	return d
}

// run watches until the context ends, starting again after a failure from the first event
// not yet applied; after a compaction of that revision it gives up (lost).
func (d *departures) run(key, svc string) {
	for d.ctx.Err() == nil {
		err := d.follow(key, svc)
		if errors.Is(err, rpctypes.ErrCompacted) {
			d.mu.Lock()
			d.lost = true
			d.mu.Unlock()
			return
		}
		etcdconn.Sleep(d.ctx, watchRetry)
	}
}

func (d *departures) follow(key, svc string) error {
	d.mu.Lock()
	from := d.rev + 1
	d.mu.Unlock()
	for wr := range d.cli.Watch(d.ctx, key, clientv3.WithPrefix(), clientv3.WithRev(from), clientv3.WithPrevKV()) {
		if err := wr.Err(); err != nil {
			return err
		}
		d.mu.Lock()
		for _, ev := range wr.Events {
			id := string(ev.Kv.Key[len(key):])
			if ev.Type == clientv3.EventTypeDelete {
				dep := departure{rev: ev.Kv.ModRevision}
				if ev.PrevKv != nil {
					in, err := registry.DecodeInstance(svc, id, ev.PrevKv.Value)
					dep.in, dep.valid = in, err == nil
				}
				d.last[id] = dep
			} else {
				delete(d.last, id)
			}
			d.rev = max(d.rev, ev.Kv.ModRevision)
		}
		if wr.IsProgressNotify() {
			// etcd sends a requested progress notification once the watch has sent every
			// event up to the revision in its header.
			d.rev = max(d.rev, wr.Header.Revision)
		}
		d.mu.Unlock()
	}
	return errors.New("watch closed")
}

// departed implements departedFunc.
func (d *departures) departed(id string, rev int64) (departure, bool, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.lost {
		return departure{}, false, false
	}
	if d.rev < rev {
		return departure{}, false, true
	}
	dep, ok := d.last[id]
	if ok && dep.rev > rev {
		ok = false // deleted after the snapshot asked about: not what it saw
	}
	return dep, ok, false
}

// requestProgress asks etcd to tell the watch how far it has sent events, so that a
// vanished instance's last value is known without waiting for another event.
func (d *departures) requestProgress() {
	ctx, cancel := context.WithTimeout(d.ctx, 5*time.Second)
	defer cancel()
	_ = d.cli.RequestProgress(ctx) // a failure leaves the instance pending until the next try
}
