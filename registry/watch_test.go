package registry_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/eventually"
	"github.com/tetherlb/tether/internal/syncbuf"
	"github.com/tetherlb/tether/registry"
	clientv3 "go.etcd.io/etcd/client/v3"
)

const waitTimeout = 20 * time.Second

// wentBack is the watcher's warning of a listing below the applied revision or from another
// etcd cluster (a restore from a backup).
const wentBack = "etcd's revision went back or its cluster changed"

// watchRun is a Watcher running for one test, with everything it emitted.
type watchRun struct {
	w      *registry.Watcher
	log    *syncbuf.Buffer
	notify chan struct{}

	mu       sync.Mutex
	states   []*registry.State
	next     int // index of the first state waitFor has not consumed
	rejected []string
	events   int
}

func startWatcher(t *testing.T, cli *clientv3.Client, adjust ...func(*registry.WatchOptions)) *watchRun {
	t.Helper()
	r := &watchRun{log: &syncbuf.Buffer{}, notify: make(chan struct{}, 1)}
	opts := registry.WatchOptions{
		Prefix: "/tether",
		Logger: zerolog.New(r.log),
		OnReject: func(key string, _ error) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.rejected = append(r.rejected, key)
		},
		OnEvent: func(n int) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.events += n
		},
	}
	for _, a := range adjust {
		a(&opts)
	}
	r.w = registry.NewWatcher(cli, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- r.w.Run(ctx, func(st *registry.State) {
			r.mu.Lock()
			r.states = append(r.states, st)
			r.mu.Unlock()
			select {
			case r.notify <- struct{}{}:
			default:
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v after cancel, want nil", err)
			}
		case <-time.After(waitTimeout):
			t.Error("Run did not return after cancel")
		}
	})
	select {
	case <-r.w.Ready():
	case <-time.After(waitTimeout):
		t.Fatalf("watcher not ready after %s; log:\n%s", waitTimeout, r.log)
	}
	return r
}

// waitFor returns the first state, after those already consumed, for which ok holds.
func (r *watchRun) waitFor(t *testing.T, what string, ok func(*registry.State) bool) *registry.State {
	t.Helper()
	deadline := time.After(waitTimeout)
	for {
		r.mu.Lock()
		for r.next < len(r.states) {
			st := r.states[r.next]
			r.next++
			if ok(st) {
				r.mu.Unlock()
				return st
			}
		}
		r.mu.Unlock()
		select {
		case <-r.notify:
		case <-deadline:
			t.Fatalf("no state with %s after %s; log:\n%s", what, waitTimeout, r.log)
		}
	}
}

func (r *watchRun) all() []*registry.State {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*registry.State(nil), r.states...)
}

func (r *watchRun) rejectedKeys() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.rejected...)
}

func instance(st *registry.State, svc, id string) (registry.Instance, bool) {
	s := st.Services[svc]
	if s == nil {
		return registry.Instance{}, false
	}
	in, ok := s.Instances[id]
	return in, ok
}

func mustPut(t *testing.T, cli *clientv3.Client, key, val string, opts ...clientv3.OpOption) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	resp, err := cli.Put(ctx, key, val, opts...)
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	return resp.Header.Revision
}

func mustDelete(t *testing.T, cli *clientv3.Client, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if _, err := cli.Delete(ctx, key); err != nil {
		t.Fatalf("delete %s: %v", key, err)
	}
}

const (
	svcKey  = "/tether/services/app"
	instKey = "/tether/instances/app/app-7f3c"
)

func TestWatcherFollowsChanges(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	mustPut(t, cli, svcKey, exampleService)
	rev := mustPut(t, cli, instKey, exampleInstance)

	r := startWatcher(t, cli)
	first := r.waitFor(t, "the docs/design.md example", func(st *registry.State) bool { _, ok := instance(st, "app", "app-7f3c"); return ok })
	if first.Revision != rev || !first.Services["app"].Configured || first.Services["app"].Revision != rev {
		t.Errorf("first state revision %d, service %+v; want revision %d, configured", first.Revision, first.Services["app"], rev)
	}
	if in, _ := instance(first, "app", "app-7f3c"); in.Address != "10.0.0.5" || in.Load.Sessions != 120 {
		t.Errorf("instance %+v", in)
	}

	rev = mustPut(t, cli, instKey, withField(t, exampleInstance, "state", "full"))
	st := r.waitFor(t, "state full", func(st *registry.State) bool {
		in, _ := instance(st, "app", "app-7f3c")
		return in.State == registry.StateFull
	})
	if st.Revision != rev || st.Services["app"].Revision != rev {
		t.Errorf("state revision %d, service revision %d, want %d", st.Revision, st.Services["app"].Revision, rev)
	}

	mustPut(t, cli, instKey, withField(t, exampleInstance, "load", map[string]any{"sessions": 7, "cpu": 12.5}))
	r.waitFor(t, "the new load", func(st *registry.State) bool {
		in, _ := instance(st, "app", "app-7f3c")
		return in.Load.Sessions == 7 && in.Load.CPU == 12.5
	})

	mustPut(t, cli, "/tether/instances/app/b2", withField(t, withField(t, exampleInstance, "id", "b2"), "comingSoon", true))
	r.waitFor(t, "the instance with an unknown field", func(st *registry.State) bool { _, ok := instance(st, "app", "b2"); return ok })

	mustDelete(t, cli, instKey)
	st = r.waitFor(t, "the instance deleted", func(st *registry.State) bool { _, ok := instance(st, "app", "app-7f3c"); return !ok })
	if _, ok := instance(st, "app", "b2"); !ok {
		t.Error("deleting one instance removed another")
	}
	mustDelete(t, cli, svcKey)
	st = r.waitFor(t, "the config deleted", func(st *registry.State) bool { return st.Services["app"] != nil && !st.Services["app"].Configured })
	if st.Services["app"].Config.Affinity.CookieName != "tether-app" {
		t.Errorf("config after delete %+v, want the defaults", st.Services["app"].Config)
	}
	if len(r.rejectedKeys()) != 0 {
		t.Errorf("rejected %v, want none", r.rejectedKeys())
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.events != 5 {
		t.Errorf("OnEvent counted %d events, want the 5 writes after the listing", r.events)
	}
}

func TestWatcherRejectsBadEntriesAlone(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	mustPut(t, cli, instKey, exampleInstance)
	mustPut(t, cli, "/tether/instances/app/bad", `{"id":"bad","address":"nowhere","port":5000,"state":"available"}`)
	r := startWatcher(t, cli)
	st := r.waitFor(t, "the good instance", func(st *registry.State) bool { _, ok := instance(st, "app", "app-7f3c"); return ok })
	if _, ok := instance(st, "app", "bad"); ok || !strings.Contains(st.Rejected["/tether/instances/app/bad"], "not an IP address") {
		t.Errorf("bad instance served or not recorded: %+v %v", st.Services["app"], st.Rejected)
	}

	// A key outside the schema.
	mustPut(t, cli, "/tether/stray", "x")
	r.waitFor(t, "the stray key rejected", func(st *registry.State) bool { return st.Rejected["/tether/stray"] != "" })

	// A bad update keeps the last good value.
	mustPut(t, cli, instKey, withField(t, exampleInstance, "port", 0))
	st = r.waitFor(t, "the bad update rejected", func(st *registry.State) bool { return st.Rejected[instKey] != "" })
	if in, ok := instance(st, "app", "app-7f3c"); !ok || in.Port != 5000 {
		t.Errorf("after a bad update the instance is %+v %v; want the last good value", in, ok)
	}
	if !strings.Contains(r.log.String(), "keeping the last valid value") {
		t.Error("keeping the last good value was not logged")
	}
	// Deleting the key clears its rejection.
	mustDelete(t, cli, "/tether/instances/app/bad")
	st = r.waitFor(t, "the bad key deleted", func(st *registry.State) bool { _, ok := st.Rejected["/tether/instances/app/bad"]; return !ok })
	if _, ok := instance(st, "app", "app-7f3c"); !ok {
		t.Error("the good instance went away")
	}
	want := []string{"/tether/instances/app/bad", "/tether/stray", instKey}
	if got := r.rejectedKeys(); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("OnReject got %v, want %v", got, want)
	}
	if !strings.Contains(r.log.String(), `"key":"/tether/stray"`) {
		t.Error("the rejection log does not name the key")
	}
}

func TestWatcherLeaseExpiry(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	r := startWatcher(t, cli)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	lease, err := cli.Grant(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, cli, instKey, exampleInstance, clientv3.WithLease(lease.ID))
	r.waitFor(t, "the leased instance", func(st *registry.State) bool { _, ok := instance(st, "app", "app-7f3c"); return ok })
	st := r.waitFor(t, "the lease expired", func(st *registry.State) bool { _, ok := instance(st, "app", "app-7f3c"); return !ok })
	if len(st.Services) != 0 {
		t.Errorf("services %v, want none: app had no config", st.Services)
	}
}

func TestWatcherSharesUnchangedServices(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	mustPut(t, cli, instKey, exampleInstance)
	mustPut(t, cli, "/tether/instances/web/w1", withField(t, exampleInstance, "id", "w1"))
	r := startWatcher(t, cli)
	before := r.waitFor(t, "both services", func(st *registry.State) bool { return len(st.Services) == 2 })
	mustPut(t, cli, "/tether/instances/web/w1", withField(t, withField(t, exampleInstance, "id", "w1"), "state", "draining"))
	after := r.waitFor(t, "web draining", func(st *registry.State) bool {
		in, _ := instance(st, "web", "w1")
		return in.State == registry.StateDraining
	})
	if after.Services["app"] != before.Services["app"] {
		t.Error("unchanged service app has a new *Service")
	}
	if after.Services["web"] == before.Services["web"] {
		t.Error("changed service web kept its *Service")
	}
	if in, _ := instance(before, "web", "w1"); in.State != registry.StateAvailable {
		t.Errorf("an emitted state changed afterwards: web/w1 is %s", in.State)
	}
}

func TestWatcherRelistsAfterCompaction(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	p := etcdtest.NewProxy(t, srv.ClientURL)
	wcli := p.Client(t)

	mustPut(t, cli, instKey, exampleInstance)
	mustPut(t, cli, "/tether/instances/web/w1", withField(t, exampleInstance, "id", "w1"))
	r := startWatcher(t, wcli)
	before := r.waitFor(t, "the first instances", func(st *registry.State) bool { return len(st.Services) == 2 })

	p.SetCut(true)
	mustPut(t, cli, "/tether/instances/app/a2", withField(t, exampleInstance, "id", "a2"))
	mustDelete(t, cli, instKey)
	rev := mustPut(t, cli, "/tether/junk", "x")
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("compact: %v", err)
	}
	p.SetCut(false)

	st := r.waitFor(t, "a2 and not app-7f3c", func(st *registry.State) bool {
		_, a2 := instance(st, "app", "a2")
		_, old := instance(st, "app", "app-7f3c")
		return a2 && !old
	})
	if st.Revision < rev || st.Rejected["/tether/junk"] == "" {
		t.Errorf("re-listed state at revision %d (want >= %d), rejected %v", st.Revision, rev, st.Rejected)
	}
	if st.Services["web"] != before.Services["web"] {
		t.Error("the re-list replaced unchanged service web")
	}
	if st.Services["app"].Revision != st.Revision {
		t.Errorf("changed service app has revision %d, want the list's %d", st.Services["app"].Revision, st.Revision)
	}
	if !strings.Contains(r.log.String(), "listing again") {
		t.Errorf("the watcher did not re-list; log:\n%s", r.log)
	}
	if strings.Contains(r.log.String(), wentBack) {
		t.Errorf("a compaction taken for a restore; log:\n%s", r.log)
	}
	if from := fmt.Sprintf("from revision %d (compacted at", before.Revision+1); !strings.Contains(r.log.String(), from) {
		t.Errorf("the compacted watch not logged as %q; log:\n%s", from, r.log)
	}
	// The watch goes on after the re-list.
	mustPut(t, cli, "/tether/instances/app/a3", withField(t, exampleInstance, "id", "a3"))
	r.waitFor(t, "a3", func(st *registry.State) bool { _, ok := instance(st, "app", "a3"); return ok })
}

func TestWatcherSurvivesEtcdRestart(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	mustPut(t, cli, instKey, exampleInstance)
	mustPut(t, cli, "/tether/instances/web/w1", withField(t, exampleInstance, "id", "w1"))
	r := startWatcher(t, cli)
	r.waitFor(t, "both instances", func(st *registry.State) bool { return len(st.Services) == 2 })

	broke := etcdtest.ConnectionBreaks(t, cli)
	srv.Restart(t)
	mustPut(t, cli, "/tether/instances/app/a2", withField(t, exampleInstance, "id", "a2"))
	r.waitFor(t, "the instance written after the restart", func(st *registry.State) bool { _, ok := instance(st, "app", "a2"); return ok })
	select {
	case <-broke: // the watch lived through an outage its client saw, not a restart it missed
	case <-time.After(waitTimeout):
		t.Fatal("the client's connection never left the ready state across the restart")
	}

	for i, st := range r.all() {
		_, a := instance(st, "app", "app-7f3c")
		_, w := instance(st, "web", "w1")
		if !a || !w {
			t.Errorf("state %d (revision %d) lacks instances that were never deleted", i, st.Revision)
		}
	}
}

func TestWatcherWaitsForEtcd(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	mustPut(t, cli, instKey, exampleInstance)
	srv.Stop()
	w := registry.NewWatcher(cli, registry.WatchOptions{Prefix: "/tether", Logger: zerolog.Nop()})
	ctx, cancel := context.WithCancel(context.Background())
	emitted := make(chan *registry.State, 10)
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, func(st *registry.State) { emitted <- st }) }()
	select {
	case st := <-emitted:
		t.Fatalf("emitted a state (revision %d) while etcd was down", st.Revision)
	case <-w.Ready():
		t.Fatal("ready while etcd was down")
	case <-time.After(500 * time.Millisecond):
	}
	srv.StartAgain(t)
	select {
	case st := <-emitted:
		if _, ok := instance(st, "app", "app-7f3c"); !ok {
			t.Errorf("first state after etcd came up lacks the instance: %+v", st.Services)
		}
	case <-time.After(waitTimeout):
		t.Fatal("no state after etcd came back")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run returned %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Run did not return after cancel")
	}
}

// The watcher confirms that it is current by its periodic linearizable read of etcd's
// revision, also when etcd's revision runs ahead of the prefix (writes elsewhere in etcd:
// a progress notification says when the watch has caught up), and stops confirming while
// etcd is unreachable.
func TestWatcherConfirmsItsRevision(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	r := startWatcher(t, cli, func(o *registry.WatchOptions) { o.ProgressInterval = 100 * time.Millisecond })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The bound is generous: after etcd restarts, the client's reconnect backoff and the
	// watcher's own retry come first, and a loaded CI machine stretches both.
	confirmedAfter := func(what string, since time.Time) {
		t.Helper()
		eventually.Saying(t, fmt.Sprintf("%s: confirmed after %v", what, since), 15*time.Second, func() (bool, string) {
			c := r.w.Confirmed()
			return c.After(since), fmt.Sprintf("last confirmed %v", c)
		})
	}
	confirmedAfter("quiet registry", time.Now())
	for i := range 5 { // etcd's revision moves on outside the prefix
		if _, err := cli.Put(ctx, "/elsewhere/k", strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	confirmedAfter("revision ahead of the prefix", time.Now())

	srv.Stop()
	time.Sleep(300 * time.Millisecond) // a read started before the stop may still confirm
	stopped := r.w.Confirmed()
	time.Sleep(time.Second)
	if got := r.w.Confirmed(); !got.Equal(stopped) {
		t.Errorf("confirmed at %v while etcd was down", got)
	}
	srv.StartAgain(t)
	confirmedAfter("etcd back", time.Now())
}

// One watch response that deletes an unconfigured service's last instance and then puts a
// new one (here one transaction; etcd also batches separate writes into one response): the
// service left the builder's state and came back in the same batch. Before, the builder
// took the service for its own copy still and dereferenced nil: the control plane panicked
// (the simulation's seed 9).
func TestWatcherServiceGoneAndBackInOneResponse(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	mustPut(t, cli, "/tether/instances/app/old", withField(t, exampleInstance, "id", "old"))
	r := startWatcher(t, cli)
	r.waitFor(t, "instance old", func(st *registry.State) bool { _, ok := instance(st, "app", "old"); return ok })
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if _, err := cli.Txn(ctx).Then(clientv3.OpDelete("/tether/instances/app/old"),
		clientv3.OpPut("/tether/instances/app/new", withField(t, exampleInstance, "id", "new"))).Commit(); err != nil {
		t.Fatal(err)
	}
	st := r.waitFor(t, "instance new", func(st *registry.State) bool { _, ok := instance(st, "app", "new"); return ok })
	if _, ok := instance(st, "app", "old"); ok {
		t.Error("the deleted instance is still listed")
	}
}

// writeBeforeSecondGet is the etcd client's KV with one write outside the prefix just before
// its second Get: the watcher's first reading of etcd's revision (its first is the listing's
// only page) then finds etcd ahead of what the watch has applied.
type writeBeforeSecondGet struct {
	clientv3.KV
	gets   atomic.Int32
	listed atomic.Pointer[time.Time] // when the listing's page was read
	write  func()
}

func (w *writeBeforeSecondGet) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	n := w.gets.Add(1)
	if n == 2 {
		w.write()
	}
	resp, err := w.KV.Get(ctx, key, opts...)
	if n == 1 {
		now := time.Now()
		w.listed.Store(&now)
	}
	return resp, err
}

// A reading of etcd's revision ahead of the applied one (writes outside the prefix) is
// confirmed once the watch has caught up to exactly that revision (a progress notification
// says so), not only at the next reading, an interval later.
func TestWatcherConfirmsAReadingOnceCaughtUp(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	wcli := srv.Client(t)
	kv := &writeBeforeSecondGet{KV: wcli.KV, write: func() {
		if _, err := cli.Put(context.Background(), "/elsewhere/k", "v"); err != nil {
			t.Error(err) // on the watcher's goroutine
		}
	}}
	wcli.KV = kv
	r := startWatcher(t, wcli, func(o *registry.WatchOptions) { o.ProgressInterval = time.Hour })
	eventually.Saying(t, "the first reading confirmed", 10*time.Second, func() (bool, string) {
		listed := kv.listed.Load()
		return listed != nil && r.w.Confirmed().After(*listed), fmt.Sprintf("confirmed at %v, listed at %v, %d reads", r.w.Confirmed(), listed, kv.gets.Load())
	})
}
