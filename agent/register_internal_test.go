package agent

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/syncbuf"
	"github.com/tetherlb/tether/registry"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestRegistrationRidesOutLostLeases drives ensureRegistered, write, holder and stopLease
// against etcd, as the run loop does after each way of losing the key: a keep-alive lost on
// a lease etcd kept (the key rewritten in place), a lease that expired with its key (a new
// lease, a new key, the claim kept), a key taken by another lease, a lease etcd forgot
// before the keep-alive noticed.
func TestRegistrationRidesOutLostLeases(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	lcli := etcd.Client(t) // the agent's: closed before etcd stops, whose graceful stop waits for open keep-alive streams
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cfg := Config{Service: "app", ID: "app-1", Address: "10.0.0.1", Port: 8080, TTL: 10 * time.Second}
	r := &runner{
		cfg: cfg, prefix: "/tether/", key: registry.InstanceKey("/tether/", "app", "app-1"), log: zerolog.Nop(), cli: lcli,
		m: newMetrics("app", "app-1"), opTimeout: 2 * time.Second, hostname: "web1",
		lease: lease{cli: lcli, ttl: cfg.TTL, opTimeout: 2 * time.Second},
	}
	defer r.lease.stopKeepAlive()
	next := registry.Instance{ID: "app-1", Address: "10.0.0.1", Port: 8080, State: registry.StateAvailable}
	read := func() (in registry.Instance, lease clientv3.LeaseID, created, mod int64) {
		t.Helper()
		resp, err := cli.Get(ctx, r.key)
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) == 0 {
			return in, 0, 0, 0
		}
		in, err = registry.DecodeInstance("app", "app-1", resp.Kvs[0].Value)
		if err != nil {
			t.Fatal(err)
		}
		return in, clientv3.LeaseID(resp.Kvs[0].Lease), resp.Kvs[0].CreateRevision, resp.Kvs[0].ModRevision
	}
	registered := func(want bool) {
		t.Helper()
		g := testutil.ToFloat64(r.m.registered)
		if r.registered != want || r.m.isReg.Load() != want || (g == 1) != want {
			t.Fatalf("registered %v, metric %v (%v), want %v", r.registered, g, r.m.isReg.Load(), want)
		}
	}
	count := func(name string) float64 { return testutil.ToFloat64(r.m.writes.WithLabelValues(name)) }
	errs := func(op string) float64 { return testutil.ToFloat64(r.m.etcdErrors.WithLabelValues(op)) }

	if _, _, exists, err := r.holder(ctx); exists || err != nil {
		t.Fatalf("holder of no key: exists %v, %v", exists, err)
	}
	// The first instance of its service: its claim starts with its own key.
	if err := r.ensureRegistered(ctx, next); err != nil {
		t.Fatal(err)
	}
	registered(true)
	_, first, created, mod := read()
	claim := created
	if first == 0 || first != r.lease.ID() || r.claimSince != claim || r.current.ClaimSince != claim || count("register") != 1 {
		t.Fatalf("first registration: lease %x (ours %x), claim %d (current %d), want %d; %v registers", first, r.lease.ID(), r.claimSince, r.current.ClaimSince, claim, count("register"))
	}
	// A second instance inherits the oldest claim (not a younger key's, even one whose value
	// does not decode), and its registration says its warning.
	if _, err := cli.Put(ctx, registry.InstanceKey(r.prefix, "app", "app-9"), "not json"); err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	r2 := &runner{
		cfg: Config{Service: "app", ID: "app-2", Address: "10.0.0.2", Port: 8080}, prefix: r.prefix, log: zerolog.New(&logs), cli: cli,
		m: newMetrics("app", "app-2"), opTimeout: 2 * time.Second, warning: "a loopback address",
		lease: lease{cli: lcli, ttl: cfg.TTL, opTimeout: 2 * time.Second},
	}
	defer r2.lease.stopKeepAlive()
	if err := r2.ensureRegistered(ctx, registry.Instance{ID: "app-2", Address: "10.0.0.2", Port: 8080, State: registry.StateAvailable}); err != nil {
		t.Fatal(err)
	}
	if r2.claimSince != claim || r2.current.ClaimSince != claim || !strings.Contains(logs.String(), `"level":"warn","warning":"a loopback address"`) {
		t.Fatalf("second instance: claim %d (current %d), want %d; log %s", r2.claimSince, r2.current.ClaimSince, claim, logs.String())
	}
	if l, remaining, exists, err := r.holder(ctx); l != first || !exists || err != nil || remaining <= 0 || remaining > cfg.TTL {
		t.Fatalf("holder: %x, %v, %v, %v", l, remaining, exists, err)
	}

	// The keep-alive lost, the lease kept by etcd: the key is rewritten in place.
	r.lease.stopKeepAlive()
	<-r.lease.Done()
	r.lease.keepAliveLost()
	next.Load.Sessions = 3
	if err := r.ensureRegistered(ctx, next); err != nil {
		t.Fatal(err)
	}
	registered(true)
	in, l, c, m := read()
	if l != first || c != created || m <= mod || in.Load.Sessions != 3 || count("register") != 2 {
		t.Fatalf("after a lost keep-alive: lease %x (was %x), created %d (was %d), mod %d (was %d), %+v", l, first, c, created, m, mod, in.Load)
	}

	// The lease expired with its key: a new lease, a new key, the claim kept.
	if _, err := cli.Revoke(ctx, first); err != nil {
		t.Fatal(err)
	}
	<-r.lease.Done()
	r.lease.keepAliveLost()
	if err := r.ensureRegistered(ctx, next); err != nil {
		t.Fatal(err)
	}
	registered(true)
	in, second, c, _ := read()
	if second == first || second != r.lease.ID() || c <= created || in.ClaimSince != claim {
		t.Fatalf("after an expiry: lease %x (was %x), created %d, claim %d", second, first, c, in.ClaimSince)
	}

	// The key deleted while the lease lives: a write says the lease lost it, registration
	// creates it again.
	if _, err := cli.Delete(ctx, r.key); err != nil {
		t.Fatal(err)
	}
	if err := r.write(ctx, next, writeLoad); !errors.Is(err, registry.ErrLeaseLost) || errs("update") != 1 || count(writeLoad) != 0 {
		t.Fatalf("write of a deleted key: %v, %v update errors, %v load writes", err, errs("update"), count(writeLoad))
	}
	registered(false)
	if err := r.ensureRegistered(ctx, next); err != nil {
		t.Fatal(err)
	}
	registered(true)
	if err := r.write(ctx, next, writeLoad); err != nil || count(writeLoad) != 1 {
		t.Fatalf("write: %v, %v load writes", err, count(writeLoad))
	}

	// The key taken by another lease while registered and the keep-alive lost: not ours.
	other, err := cli.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	held := next
	held.Address = "10.0.0.9"
	if _, err := cli.Delete(ctx, r.key); err != nil {
		t.Fatal(err)
	}
	if err := registry.CreateInstance(ctx, cli, r.prefix, "app", held, other.ID); err != nil {
		t.Fatal(err)
	}
	r.lease.stopKeepAlive()
	<-r.lease.Done()
	r.lease.keepAliveLost()
	var heldLog strings.Builder
	r.log = zerolog.New(&heldLog)
	if err := r.ensureRegistered(ctx, next); !errors.Is(err, registry.ErrInstanceExists) || errs("create") != 1 {
		t.Fatalf("a key held by another lease: %v, %v create errors", err, errs("create"))
	}
	if strings.Contains(heldLog.String(), "cannot adopt") { // not adoptable is no error
		t.Fatalf("a key held by another server's agent: %s", heldLog.String())
	}
	r.log = zerolog.Nop()
	registered(false)
	if l, _, exists, err := r.holder(ctx); l != other.ID || !exists || err != nil {
		t.Fatalf("holder: %x, %v, %v; want %x", l, exists, err, other.ID)
	}
	if _, err := cli.Revoke(ctx, other.ID); err != nil {
		t.Fatal(err)
	}

	// The lease forgotten by etcd before the keep-alive noticed: the create fails, the lease
	// is dropped, the next attempt grants a new one.
	r.lease.stopKeepAlive()
	if _, err := cli.Revoke(ctx, r.lease.ID()); err != nil {
		t.Fatal(err)
	}
	if err := r.ensureRegistered(ctx, next); err == nil || r.lease.ID() != 0 || r.lease.Alive() || errs("create") != 2 {
		t.Fatalf("create under a forgotten lease: %v; lease %x, alive %v", err, r.lease.ID(), r.lease.Alive())
	}
	registered(false)
	if err := r.ensureRegistered(ctx, next); err != nil {
		t.Fatal(err)
	}
	registered(true)
	if err := registry.CreateInstance(ctx, cli, r.prefix, "app", registry.Instance{ID: "by-hand", Address: "10.0.0.3", Port: 1, State: registry.StateAvailable}, 0); err != nil {
		t.Fatal(err)
	}
	r.key = registry.InstanceKey(r.prefix, "app", "by-hand")
	if l, remaining, exists, err := r.holder(ctx); l != 0 || remaining != 0 || !exists || err != nil {
		t.Fatalf("holder of a key without a lease: %x, %v, %v, %v", l, remaining, exists, err)
	}
	r.key = registry.InstanceKey(r.prefix, "app", "app-1")

	// stopLease revokes: the key goes with it. With etcd down, the error is counted.
	r.stopLease(ctx)
	if _, l, _, _ := read(); l != 0 || errs("revoke") != 0 {
		t.Fatalf("after stopLease: key under lease %x, %v revoke errors", l, errs("revoke"))
	}
	if _, err := r.lease.renew(ctx); err != nil {
		t.Fatal(err)
	}
	r.lease.stopKeepAlive()
	lcli.Close()
	down := etcd.Client(t)
	r.cli, r.lease.cli, r.opTimeout, r.lease.opTimeout = down, down, 100*time.Millisecond, 100*time.Millisecond
	etcd.Stop()
	if _, _, _, err := r.holder(ctx); err == nil {
		t.Error("holder with etcd down: no error")
	}
	r.lease.keepAliveLost()
	if err := r.ensureRegistered(ctx, next); err == nil || errs("create") != 2 {
		t.Errorf("registration with etcd down: %v, %v create errors; want the lease's error, no create tried", err, errs("create"))
	}
	r.stopLease(ctx)
	if errs("revoke") != 1 {
		t.Errorf("%v revoke errors with etcd down, want 1", errs("revoke"))
	}
}

// TestCheckHeldWaitsForTheHoldersTTL: a key held by another lease is waited for its
// remaining TTL plus heldMargin, then the ID is held; a key gone is retried at once; a key
// under no lease is held at once; a failed read is waited out.
func TestCheckHeldWaitsForTheHoldersTTL(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r := &runner{cfg: Config{Service: "app", ID: "app-1"}, prefix: "/tether/", key: registry.InstanceKey("/tether/", "app", "app-1"),
		log: zerolog.Nop(), cli: cli, opTimeout: 2 * time.Second}
	var held time.Time
	if wait, err := r.checkHeld(ctx, &held, time.Second); wait != 0 || err != nil || !held.IsZero() {
		t.Fatalf("no key: wait %v, %v, until %v", wait, err, held)
	}
	g, err := cli.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	in := registry.Instance{ID: "app-1", Address: "10.0.0.1", Port: 1, State: registry.StateAvailable}
	if err := registry.CreateInstance(ctx, cli, r.prefix, "app", in, g.ID); err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	if wait, err := r.checkHeld(ctx, &held, time.Second); wait == 0 || err != nil {
		t.Fatalf("held: wait %v, %v", wait, err)
	}
	// TimeToLive rounds down: 29 or 30 s left, and a margin of 2 s.
	if lo, hi := before.Add(29*time.Second+2*time.Second), time.Now().Add(30*time.Second+2*time.Second); held.Before(lo) || held.After(hi) {
		t.Fatalf("held until %v, want between %v and %v", held, lo, hi)
	}
	until := held
	if wait, err := r.checkHeld(ctx, &held, time.Second); wait == 0 || err != nil || held != until {
		t.Fatalf("held again within the TTL: wait %v, %v, until %v (was %v)", wait, err, held, until)
	}
	held = time.Now().Add(-time.Millisecond)
	if wait, err := r.checkHeld(ctx, &held, time.Second); wait == 0 || !errors.Is(err, ErrIDHeld) || !strings.Contains(err.Error(), `"app-1"`) {
		t.Fatalf("held past the TTL: wait %v, %v", wait, err)
	}
	if _, err := cli.Put(ctx, r.key, "{}"); err != nil { // the same key, now under no lease
		t.Fatal(err)
	}
	if wait, err := r.checkHeld(ctx, &time.Time{}, time.Second); wait == 0 || !errors.Is(err, ErrIDHeld) || !strings.Contains(err.Error(), "without a lease") {
		t.Fatalf("a key under no lease: wait %v, %v", wait, err)
	}
	etcd.Stop()
	r.opTimeout = 100 * time.Millisecond
	held = time.Time{}
	if wait, err := r.checkHeld(ctx, &held, time.Second); wait == 0 || err != nil || !held.IsZero() {
		t.Fatalf("etcd down: wait %v, %v, until %v", wait, err, held)
	}
}

// TestSyncAndDeregister: sync writes a changed state (and says so), nothing when nothing
// changed, an operator drain's report once; deregister marks the instance leaving, leaves
// the control planes DrainSettle to see it, deletes the key and revokes the lease.
func TestSyncAndDeregister(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var logs syncbuf.Buffer
	cfg := Config{Service: "app", ID: "app-1", Address: "10.0.0.1", Port: 8080, TTL: 10 * time.Second, Heartbeat: time.Hour,
		DrainSettle: 300 * time.Millisecond, SessionsURL: "http://127.0.0.1:1/sessions"}
	r := &runner{
		cfg: cfg, prefix: "/tether/", key: registry.InstanceKey("/tether/", "app", "app-1"), log: zerolog.New(&logs), cli: cli,
		m: newMetrics("app", "app-1"), opTimeout: 2 * time.Second, failing: map[string]bool{},
		lease: lease{cli: cli, ttl: cfg.TTL, opTimeout: 2 * time.Second},
	}
	defer r.lease.stopKeepAlive()
	count := func(name string) float64 { return testutil.ToFloat64(r.m.writes.WithLabelValues(name)) }
	r.current = r.instance()
	r.current.State = registry.StateAvailable
	if err := r.sync(ctx); err != nil || !r.registered {
		t.Fatalf("first sync: %v, registered %v", err, r.registered)
	}
	r.current.State, r.current.Reason = registry.StateFull, "sessions 10 >= 10"
	if err := r.sync(ctx); err != nil || count(writeState) != 1 || strings.Count(logs.String(), "state changed") != 1 {
		t.Fatalf("a state change: %v, %v state writes, log %s", err, count(writeState), logs.String())
	}
	r.current.Load.CPU = 0.1 // inside the dead band
	if err := r.sync(ctx); err != nil || count(writeLoad) != 0 || count(writeState) != 1 || strings.Count(logs.String(), "state changed") != 1 {
		t.Fatalf("nothing to write: %v, %v load writes, %v state writes, log %s", err, count(writeLoad), count(writeState), logs.String())
	}
	r.reportDrain = true
	for range 2 {
		if err := r.sync(ctx); err != nil || count(writeDrain) != 1 || r.reportDrain || strings.Count(logs.String(), "state changed") != 1 {
			t.Fatalf("a drain's report: %v, %v drain writes, reportDrain %v", err, count(writeDrain), r.reportDrain)
		}
	}

	r.draining = true // as at the signal
	w := cli.Watch(ctx, r.key)
	start := time.Now()
	if err := r.deregister(ctx, "test"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < cfg.DrainSettle {
		t.Errorf("deregister took %v: the leaving mark was not given DrainSettle (%v) before the key went\n%s", d, cfg.DrainSettle, logs.String())
	}
	var leaving, deleted bool
	for !deleted {
		select {
		case resp := <-w:
			for _, ev := range resp.Events {
				if ev.Type == clientv3.EventTypeDelete {
					deleted = true
					continue
				}
				in, err := registry.DecodeInstance("app", "app-1", ev.Kv.Value)
				leaving = err == nil && in.Leaving && in.State == registry.StateDraining
			}
		case <-ctx.Done():
			t.Fatal("the key was not deleted")
		}
	}
	if !leaving || r.registered || r.lease.ID() != 0 || testutil.ToFloat64(r.m.etcdErrors.WithLabelValues("delete")) != 0 || count(writeLeaving) != 1 {
		t.Fatalf("deregister: last value leaving %v, registered %v, lease %x, %v delete errors", leaving, r.registered, r.lease.ID(),
			testutil.ToFloat64(r.m.etcdErrors.WithLabelValues("delete")))
	}
	if !strings.Contains(logs.String(), `"why":"test","sessions":0,"message":"drain finished; removing the instance"`) {
		t.Errorf("the drain's end does not say the sessions left:\n%s", logs.String())
	}
	r.cfg.SessionsURL, r.cfg.DrainSettle = "", 0
	if err := r.sync(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.deregister(ctx, "again"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), `"why":"again","message":"drain finished`) {
		t.Errorf("without --sessions-url the drain's end names no session count:\n%s", logs.String())
	}
}
