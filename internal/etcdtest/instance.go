package etcdtest

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherlb/tether/internal/eventually"
	"github.com/tetherlb/tether/registry"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// InstanceCond judges one value of an instance key: in is nil when the key is absent, lease
// is the lease it was written under.
type InstanceCond func(in *registry.Instance, lease int64) bool

// WaitInstance polls the instance key of id (service "app" under "/tether", as the agents in
// tests register) until cond holds or timeout passes, and returns the value that satisfied it.
// An invalid value fails the test: an agent wrote what the control plane would reject.
func WaitInstance(t testing.TB, cli *clientv3.Client, id string, timeout time.Duration, what string, cond InstanceCond) *registry.Instance {
	t.Helper()
	key := registry.InstanceKey("/tether", "app", id)
	var last *registry.Instance
	eventually.Saying(t, what, timeout, func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		resp, err := cli.Get(ctx, key)
		if err != nil {
			return false, err.Error()
		}
		last = nil
		var lease int64
		if len(resp.Kvs) == 1 {
			in, derr := registry.DecodeInstance("app", id, resp.Kvs[0].Value)
			if derr != nil {
				t.Fatalf("agent wrote an invalid instance: %v\n%s", derr, resp.Kvs[0].Value)
			}
			last, lease = &in, resp.Kvs[0].Lease
		}
		return cond(last, lease), fmt.Sprintf("%+v", last)
	})
	return last
}

// instanceEvent is one value the instance key took (in nil: deleted).
type instanceEvent struct {
	in    *registry.Instance
	lease int64
}

// InstanceWatch records every value an instance key takes after it starts: unlike polling,
// it misses no state, however briefly the key holds it.
type InstanceWatch struct {
	id     string
	cli    *clientv3.Client
	ctx    context.Context // the watch's: RequestProgress reaches the watch only with it
	events chan instanceEvent
	rev    atomic.Int64 // revision up to which the watch has delivered every event
}

// WatchInstance starts recording the instance key of id (service "app" under "/tether")
// from the current revision on; the watch ends with the test.
func WatchInstance(t testing.TB, cli *clientv3.Client, id string) *InstanceWatch {
	t.Helper()
	key := registry.InstanceKey("/tether", "app", id)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	gctx, gcancel := context.WithTimeout(ctx, 5*time.Second)
	resp, err := cli.Get(gctx, key)
	gcancel()
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	w := &InstanceWatch{id: id, cli: cli, ctx: clientv3.WithRequireLeader(ctx), events: make(chan instanceEvent, 10000)}
	wch := cli.Watch(w.ctx, key, clientv3.WithRev(resp.Header.Revision+1))
	go func() {
		defer close(w.events)
		for wr := range wch {
			for _, ev := range wr.Events {
				e := instanceEvent{lease: ev.Kv.Lease}
				if ev.Type == clientv3.EventTypePut {
					in, err := registry.DecodeInstance("app", id, ev.Kv.Value)
					if err != nil {
						t.Errorf("agent wrote an invalid instance: %v\n%s", err, ev.Kv.Value)
						continue
					}
					e.in = &in
				}
				w.events <- e
			}
			w.rev.Store(max(w.rev.Load(), wr.Header.Revision))
		}
	}()
	return w
}

// Next returns the first recorded value for which cond holds; every value before it must
// satisfy meanwhile (nil: anything goes).
func (w *InstanceWatch) Next(t testing.TB, timeout time.Duration, what string, cond, meanwhile InstanceCond) *registry.Instance {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case e, ok := <-w.events:
			if !ok {
				t.Fatalf("%s: the watch of %s ended", what, w.id)
			}
			if cond(e.in, e.lease) {
				return e.in
			}
			if meanwhile != nil && !meanwhile(e.in, e.lease) {
				t.Fatalf("%s: before it, %s took the value %+v", what, w.id, e.in)
			}
		case <-deadline:
			t.Fatalf("%s: not seen within %s", what, timeout)
		}
	}
}

// Quiet checks that every value the key took up to now satisfies cond.
func (w *InstanceWatch) Quiet(t testing.TB, what string, cond InstanceCond) {
	t.Helper()
	// Catch up: etcd's current revision, then a progress notification at or past it.
	ctx, cancel := context.WithTimeout(w.ctx, 5*time.Second)
	defer cancel()
	resp, err := w.cli.Get(ctx, "/tether/none")
	if err != nil {
		t.Fatalf("%s: read the revision: %v", what, err)
	}
	for w.rev.Load() < resp.Header.Revision {
		if err := w.cli.RequestProgress(w.ctx); err != nil {
			t.Fatalf("%s: request watch progress: %v", what, err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: the watch did not reach revision %d", what, resp.Header.Revision)
		case <-time.After(20 * time.Millisecond):
		}
	}
	for {
		select {
		case e := <-w.events:
			if !cond(e.in, e.lease) {
				t.Fatalf("%s: %s took the value %+v", what, w.id, e.in)
			}
		default:
			return
		}
	}
}
