package controlplane

import (
	"context"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/eventually"
	"github.com/tetherlb/tether/registry"
)

// The replica link's pure parts, handed the time; TestReplicaLinkOverEtcd runs its writer and
// follower.

func TestSilentForAndRemember(t *testing.T) {
	for _, c := range []struct {
		settle, staleAfter, silent time.Duration
	}{
		{0, 0, DefaultPublishSettle},
		{2 * time.Second, 0, 2 * time.Second},
		{2 * time.Second, -time.Second, 2 * time.Second},
		{time.Second, 10 * time.Second, 12 * time.Second},             // step-down, its tick, a settle time
		{time.Second, time.Nanosecond, time.Second + time.Nanosecond}, // the tick rounds down
	} {
		if got := silentFor(c.settle, c.staleAfter); got != c.silent {
			t.Errorf("silentFor(%v, %v) = %v, want %v", c.settle, c.staleAfter, got, c.silent)
		}
	}
	// A gone replica is remembered as long as a silent one is waited for, at least as long as
	// an Envoy's reconnection.
	for _, c := range []struct {
		settle, staleAfter, remember time.Duration
	}{
		{time.Second, 0, envoyBackoffMax},
		{time.Minute, 0, time.Minute},
		{time.Second, time.Minute, time.Minute + 6*time.Second + time.Second},
	} {
		l := newReplicaLink(nil, "/tether", &net.TCPAddr{Port: 1}, c.settle, c.staleAfter, zerolog.Nop(), nil)
		if l.remember != c.remember || l.silent != silentFor(c.settle, c.staleAfter) {
			t.Errorf("settle %v, stale-after %v: remember %v, silent %v; want %v, %v", c.settle, c.staleAfter, l.remember, l.silent, c.remember, silentFor(c.settle, c.staleAfter))
		}
	}
}

func TestReplicaName(t *testing.T) {
	l := newReplicaLink(nil, "/tether", &net.TCPAddr{Port: 18000}, time.Second, 0, zerolog.Nop(), nil)
	if !strings.HasSuffix(l.name, "-18000") || registry.ValidateReplicaName(l.name) != nil {
		t.Errorf("name %q: want the host and -18000, a valid replica name", l.name)
	}
	if l := newReplicaLink(nil, "/tether", &net.UnixAddr{Name: "/x", Net: "unix"}, time.Second, 0, zerolog.Nop(), nil); !strings.HasSuffix(l.name, "-0") {
		t.Errorf("name %q on a Unix socket: want the port 0", l.name)
	}
	long := strings.Repeat("a", 39)
	for in, want := range map[string]string{
		"":                            "cp",
		"azAZ09-._":                   "azAZ09-._",
		"`{@[/:":                      "cp",
		"a b/c":                       "abc",
		"-x":                          "cp-x",
		"_x":                          "cp_x",
		".x":                          "cp.x",
		"z":                           "z",
		"Z":                           "Z",
		"0":                           "0",
		"9":                           "9",
		"A":                           "A",
		long + "bc":                   long + "b",
		"/" + long + "bcd":            long + "b",
		"é" + strings.Repeat("x", 50): strings.Repeat("x", 40),
	} {
		if got := sanitizeName(in); got != want {
			t.Errorf("sanitizeName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestReplicaLinkBookkeeping(t *testing.T) {
	var nilLink *replicaLink
	if _, _, ok := nilLink.peersHeld(time.Now()); ok || nilLink.known(time.Now()) != nil || nilLink.wanted() {
		t.Fatal("a nil link (no replicas) reports peers")
	}
	nilLink.recall([]string{"x"}, time.Now())
	nilLink.report(1, 1)

	t0 := time.Unix(1000, 0)
	l := newReplicaLink(nil, "/tether", &net.TCPAddr{Port: 1}, time.Second, 0, zerolog.Nop(), nil)
	if _, _, ok := l.peersHeld(t0); ok || len(l.known(t0)) != 0 {
		t.Fatal("a link with no peer reports one")
	}
	l.peers = map[string]registry.Replica{"b": {Held: 5}, "c": {Held: 3, Wants: 4}}
	if low, who, ok := l.peersHeld(t0); !ok || low != 3 || who != "c" {
		t.Errorf("peersHeld = %d, %q, %v; want 3, c", low, who, ok)
	}
	l.gone["d"] = goneReplica{held: 1, until: t0.Add(time.Second)}
	if low, who, ok := l.peersHeld(t0); !ok || low != 1 || who != "d" {
		t.Errorf("with d gone at 1: peersHeld = %d, %q, %v; want 1, d", low, who, ok)
	}
	if got := l.known(t0.Add(time.Second - 1)); !slices.Equal(got, []string{"b", "c", "d"}) {
		t.Errorf("known just before d's time = %v, want b c d", got)
	}
	if got := l.known(t0.Add(time.Second)); !slices.Equal(got, []string{"b", "c"}) {
		t.Errorf("known at d's time = %v, want b c", got)
	}
	if low, _, _ := l.peersHeld(t0.Add(time.Second - 1)); low != 1 {
		t.Errorf("just before d's time the lowest held is %d, want d's 1", low)
	}
	if low, _, _ := l.peersHeld(t0.Add(time.Second)); low != 3 || len(l.gone) != 0 {
		t.Errorf("at d's time: lowest held %d, %d gone; want 3 and d forgotten", low, len(l.gone))
	}

	// The last run's replicas: neither this one nor a live one is remembered as gone.
	l.recall([]string{l.name, "b", "e"}, t0)
	if len(l.gone) != 1 || l.gone["e"] != (goneReplica{held: -1, until: t0.Add(l.remember)}) {
		t.Errorf("recalled %v, want e alone, holding nothing until %v", l.gone, t0.Add(l.remember))
	}
	if low, who, _ := l.peersHeld(t0.Add(l.remember - 1)); low != -1 || who != "e" {
		t.Errorf("a recalled replica holds %d (%q), want -1 (e)", low, who)
	}

	// wanted: a peer waits for more than this replica last wrote.
	l.gone = map[string]goneReplica{}
	l.written = registry.Replica{Held: 4}
	if l.wanted() {
		t.Error("wanted with c waiting for 4 and 4 written")
	}
	l.written.Held = 3
	if !l.wanted() {
		t.Error("not wanted with c waiting for 4 and 3 written")
	}
}

func TestReplicaLinkWritesWhenDue(t *testing.T) {
	l := newReplicaLink(nil, "/tether", &net.TCPAddr{Port: 1}, time.Second, 0, zerolog.Nop(), nil)
	kicked := func() bool {
		select {
		case <-l.dirty:
			return true
		default:
			return false
		}
	}
	l.report(-1, 0)
	if !kicked() {
		t.Fatal("the first report does not wake the writer")
	}
	l.written = registry.Replica{Held: 0}
	l.report(0, 0)
	if kicked() {
		t.Fatal("an unchanged report wakes the writer")
	}
	l.report(2, 0) // nobody waits for it
	if kicked() || l.held != 2 {
		t.Fatalf("a new held nobody waits for: woke the writer or not kept (held %d)", l.held)
	}
	l.report(-1, 0)
	if l.held != 2 {
		t.Fatalf("report(-1) changed held to %d", l.held)
	}
	l.report(0, 0)
	if l.held != 0 {
		t.Fatalf("report(0) left held at %d", l.held)
	}
	l.report(-1, 3)
	if !kicked() || l.wants != 3 {
		t.Fatal("a new wants does not wake the writer")
	}
	l.written = registry.Replica{Held: 0, Wants: 3}
	l.peers = map[string]registry.Replica{"b": {Wants: 1}}
	l.report(1, 3)
	if !kicked() {
		t.Fatal("a held another replica waits for does not wake the writer")
	}
	l.written.Held = 1
	l.report(2, 3)
	if kicked() {
		t.Fatal("a held no replica waits for (b wants 1, 1 written) wakes the writer")
	}

	// setPeers: a report that left is remembered at its held; one back is live again.
	calls := 0
	l.onPeer = func() { calls++ }
	l.written = registry.Replica{Held: 2, Wants: 3}
	l.held = 3 // a write due only once some peer wants more than 2
	l.peers = map[string]registry.Replica{"b": {Held: 7}, "c": {Held: 8}}
	l.gone["d"] = goneReplica{held: 1, until: time.Now().Add(time.Hour)}
	before := time.Now()
	l.setPeers(map[string]registry.Replica{"c": {Held: 8}, "d": {Held: 9, Wants: 9}})
	g, ok := l.gone["b"]
	if !ok || g.held != 7 || g.until.Before(before.Add(l.remember)) || g.until.After(time.Now().Add(l.remember)) {
		t.Errorf("b left: gone %v, want held 7 until now + %v", l.gone, l.remember)
	}
	if _, ok := l.gone["d"]; ok || len(l.gone) != 1 {
		t.Errorf("d reported again but is still gone: %v", l.gone)
	}
	if k := kicked(); calls != 1 || !k {
		t.Errorf("setPeers called onPeer %d times, woke the writer: %v; want once, and woken (d wants 9)", calls, k)
	}

	// decode: its own report and bad ones are left out.
	if _, ok := l.decode(l.name, []byte(`{"held":1}`)); ok {
		t.Error("its own report decoded as a peer's")
	}
	if _, ok := l.decode("b", []byte(`{"held":-1}`)); ok {
		t.Error("a report holding -1 decoded")
	}
	if r, ok := l.decode("b", []byte(`{"held":4,"wants":5}`)); !ok || r.Held != 4 || r.Wants != 5 {
		t.Errorf("decode = %+v, %v; want held 4, wants 5", r, ok)
	}
}

// TestReplicaLinkOverEtcd: two links on one etcd write their reports under a lease, follow
// each other's, write a held another waits for, rewrite their report under a new lease when
// theirs is lost, and revoke it when they stop: the other remembers them at what they held.
func TestReplicaLinkOverEtcd(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	start := func(port int) (*replicaLink, context.CancelFunc, chan struct{}) {
		l := newReplicaLink(srv.Client(t), "/tether", &net.TCPAddr{Port: port}, time.Minute, 0, zerolog.Nop(), nil)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); l.run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		return l, cancel, done
	}
	a, stopA, doneA := start(1)
	b, _, _ := start(2)
	report := func(name string) (registry.Replica, int64, bool) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := cli.Get(ctx, registry.ReplicaKey("/tether", name))
		if err != nil || len(resp.Kvs) == 0 {
			return registry.Replica{}, 0, false
		}
		r, err := registry.DecodeReplica(name, resp.Kvs[0].Value)
		return r, resp.Kvs[0].Lease, err == nil
	}
	peer := func(l *replicaLink, name string) registry.Replica {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.peers[name]
	}
	eventually.True(t, "each link follows the other's first report", 15*time.Second, func() bool {
		return slices.Equal(a.known(time.Now()), []string{b.name}) && slices.Equal(b.known(time.Now()), []string{a.name})
	})
	if r, _, ok := report(a.name); !ok || r.Host != a.host || r.Held != 0 || r.Wants != 0 {
		t.Fatalf("a's first report: %+v, %v", r, ok)
	}

	a.report(3, 5)
	eventually.True(t, "b sees a want 5", 15*time.Second, func() bool { return peer(b, a.name) == registry.Replica{Held: 3, Wants: 5, Host: a.host} })
	if !b.wanted() {
		t.Fatal("b not wanted while a waits for 5")
	}
	b.report(4, 0)
	eventually.True(t, "a sees b hold 4", 15*time.Second, func() bool { return peer(a, b.name).Held == 4 })

	// A bad report is left out; a good one written after it shows it was read.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, registry.ReplicaKey("/tether", "bad"), `{"held":-2}`); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, registry.ReplicaKey("/tether", "zz"), `{"held":9}`); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, "b follows zz", 15*time.Second, func() bool { return peer(b, "zz").Held == 9 })
	if got := b.known(time.Now()); !slices.Equal(got, []string{a.name, "zz"}) {
		t.Fatalf("b knows %v, want %s and zz", got, a.name)
	}

	// a's lease lost: it writes its report again under a new one.
	_, lease, _ := report(a.name)
	if _, err := cli.Revoke(ctx, clientv3.LeaseID(lease)); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, "a's report back under a new lease", 15*time.Second, func() bool {
		r, l, ok := report(a.name)
		return ok && l != lease && r.Held == 3 && r.Wants == 5
	})

	stopA()
	<-doneA
	// Revoked, not lapsed: a lease of replicaTTL (10 s) kept alive every third of it has at
	// least 6.6 s left when a stops.
	eventually.True(t, "a's report revoked as it stops", 5*time.Second, func() bool {
		_, _, ok := report(a.name)
		return !ok
	})
	eventually.True(t, "b remembers a at what it held", 15*time.Second, func() bool {
		low, who, ok := b.peersHeld(time.Now())
		b.mu.Lock()
		_, gone := b.gone[a.name]
		b.mu.Unlock()
		return ok && low == 3 && who == a.name && gone && slices.Contains(b.known(time.Now()), a.name)
	})
}

// TestReplicaLinkRelistsAfterCompaction: a watch of the reports that cannot resume (its
// revision compacted while the link was cut off from etcd) is followed by a new listing, which
// has what was written meanwhile.
func TestReplicaLinkRelistsAfterCompaction(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	p := etcdtest.NewProxy(t, srv.ClientURL)
	wcli := p.Client(t)
	l := newReplicaLink(wcli, "/tether", &net.TCPAddr{Port: 2}, time.Minute, 0, zerolog.Nop(), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); l.follow(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	held := func(name string) int64 {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.peers[name].Held
	}
	put := func(key, value string) int64 {
		t.Helper()
		pctx, pcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer pcancel()
		resp, err := cli.Put(pctx, key, value)
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	put(registry.ReplicaKey("/tether", "x"), `{"held":1}`)
	eventually.True(t, "the link follows x", 15*time.Second, func() bool { return held("x") == 1 })

	p.SetCut(true)
	put(registry.ReplicaKey("/tether", "x"), `{"held":2}`)
	put(registry.ReplicaKey("/tether", "y"), `{"held":3}`)
	rev := put("/tether/junk", "x")
	cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer ccancel()
	if _, err := cli.Compact(cctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("compact: %v", err)
	}
	p.SetCut(false)
	eventually.True(t, "the link lists again: x at 2, y at 3", 15*time.Second, func() bool { return held("x") == 2 && held("y") == 3 })
}
