package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/tetherlb/tether/internal/etcdconn"
	"github.com/tetherlb/tether/internal/mutation"
	"github.com/tetherlb/tether/registry"
)

// replicaLink shares what this replica's Envoys hold with the other replicas, through etcd
// (registry.Replica). Replicas read the same registry, but each promotes a new endpoint on
// its own Envoys' ACKs: an Envoy on another replica that has not taken the endpoint in yet
// would move a session placed there. So each replica writes, under its own lease, the
// revision its Envoys hold (Held) and the one it waits for (Wants), and an endpoint is
// promoted only once every other live replica holds its revision, or its settle time is over.
//
// Writes are few: a replica writes when what it wants changes (an endpoint enters or leaves
// its first phase: one write per promotion round), and its Held only while another replica
// wants more than it last wrote. A group of replicas with nothing in a first phase writes
// nothing. A replica that cannot write (a read-only etcd role) logs it once and promotes on its
// own Envoys' ACKs; the others then do not know of it.
type replicaLink struct {
	cli    *clientv3.Client
	prefix string
	name   string
	host   string
	log    zerolog.Logger
	onPeer func() // a peer's report changed: re-evaluate promotions

	// remember is how long a replica whose report left etcd is still waited for, at what
	// it last reported: its lease lapsed in an etcd outage (it comes back with a new one), or
	// it stopped and its Envoys are reconnecting elsewhere, serving what they hold meanwhile
	// (as phaser.gone remembers Envoys). An endpoint waits for it at most silent anyway. A
	// restarted replica's report has the same name and replaces the remembered one at once.
	remember time.Duration
	// silent is how long an endpoint waits for a replica that has not reported holding it
	// (silentFor): until that replica has stepped down, if it is cut off from etcd, and its
	// Envoys have had a settle time to move to a current replica.
	silent time.Duration

	mu      sync.Mutex
	peers   map[string]registry.Replica // by name, this replica left out
	gone    map[string]goneReplica      // reports that left etcd, by name
	held    int64                       // to write
	wants   int64
	written registry.Replica // last written
	dirty   chan struct{}
}

// replicaTTL is the lease of a replica's report: a replica that died stops holding others'
// promotions back after it (promotions wait at most --publish-settle anyway).
const replicaTTL = 10

// goneReplica is a replica whose report left etcd: what it held, and until when it counts.
type goneReplica struct {
	held  int64
	until time.Time
}

// silentFor is replicaLink.silent for a settle time (--publish-settle) and a step-down bound
// (--stale-after; 0: off). A replica that has not reported holding an endpoint by its settle
// time is either slow to write or cut off from etcd: a live replica's Envoys answer, or are
// let go as lagging, within its own settle time. Cut off, it has not seen the endpoint, and
// its Envoys, which users reach, do not hold it: promoting then would move the users it
// places there when they cross to those Envoys. Such a replica last confirmed etcd's
// revision before the endpoint was written (had it confirmed a later one, its watch would
// hold the endpoint), so it steps down (stale.go) within staleAfter of the endpoint's start
// plus its check's tick (staleAfter/10), closing its Envoys' streams; they reconnect to a
// current replica, which serves them the endpoint. One settle time more lets them move. With
// --stale-after off a cut-off replica never steps down, and waiting longer would gain
// nothing: the settle time alone bounds the wait.
func silentFor(settle, staleAfter time.Duration) time.Duration {
	settle = settleOrDefault(settle)
	if staleAfter <= 0 || mutation.On(mutation.PeerSettleOnly) {
		return settle
	}
	return staleAfter + staleAfter/10 + settle
}

// newReplicaLink returns the link of the replica serving xDS on xds, for a settle time and
// a step-down bound (see silentFor).
func newReplicaLink(cli *clientv3.Client, prefix string, xds net.Addr, settle, staleAfter time.Duration, log zerolog.Logger, onPeer func()) *replicaLink {
	silent := silentFor(settle, staleAfter)
	// A replica whose lease lapsed because it is cut off is remembered until it has stepped
	// down and its Envoys moved, as a live silent one is waited for.
	remember := max(rememberFor(settle), silent)
	host, _ := os.Hostname()
	// The name is the host and the xDS port: unique among live replicas (two on one host
	// listen on two ports), and the same after a restart, so that a restarted replica's new
	// report replaces its old one at once instead of being remembered as gone.
	port := "0"
	if ta, ok := xds.(*net.TCPAddr); ok {
		port = strconv.Itoa(ta.Port)
	}
	name := sanitizeName(host) + "-" + port
	return &replicaLink{cli: cli, prefix: prefix, name: name, host: host, log: log, onPeer: onPeer, remember: remember, silent: silent,
		peers: map[string]registry.Replica{}, gone: map[string]goneReplica{}, dirty: make(chan struct{}, 1), written: registry.Replica{Held: -1}}
}

// sanitizeName keeps the characters an instance ID may hold (registry.ValidateInstanceID).
func sanitizeName(s string) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s) && len(out) < 40; i++ {
		c := s[i]
		if isAlnum(c) || c == '-' || c == '.' || c == '_' {
			out = append(out, c)
		}
	}
	if len(out) == 0 || !isAlnum(out[0]) {
		out = append([]byte("cp"), out...)
	}
	return string(out)
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// peersHeld returns the lowest Held of the other replicas (live, or gone within remember),
// with the name of one that holds it, and false when there is none.
func (l *replicaLink) peersHeld(now time.Time) (int64, string, bool) {
	if l == nil {
		return 0, "", false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var low int64
	var who string
	found := false
	take := func(name string, held int64) {
		if !found || held < low {
			low, who, found = held, name, true
		}
	}
	for name, p := range l.peers {
		take(name, p.Held)
	}
	for name, g := range l.gone {
		if !now.Before(g.until) {
			delete(l.gone, name)
			continue
		}
		take(name, g.held)
	}
	return low, who, found
}

// known returns the names of the other replicas, live or gone within remember, sorted (for
// the memory file).
func (l *replicaLink) known(now time.Time) []string {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	out := slices.Collect(maps.Keys(l.peers))
	for name, g := range l.gone {
		if now.Before(g.until) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// recall remembers the replicas of the last run's memory as gone, holding nothing new, until
// they report again or remember passes: when every replica was down as a server joined, the
// first one back must not promote it on its own Envoys while another's serve without it.
func (l *replicaLink) recall(names []string, now time.Time) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, name := range names {
		if _, live := l.peers[name]; !live && name != l.name {
			l.gone[name] = goneReplica{held: -1, until: now.Add(l.remember)}
		}
	}
}

// wanted reports whether another replica waits for more than this one last wrote: the
// phaser then works out what its Envoys hold even with nothing of its own to promote.
func (l *replicaLink) wanted() bool {
	if l == nil {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.peerWantsLocked()
}

func (l *replicaLink) peerWantsLocked() bool {
	for _, p := range l.peers {
		if p.Wants > l.written.Held {
			return true
		}
	}
	return false
}

// report sets what this replica's Envoys hold (held < 0: unchanged) and what it waits for;
// the writer decides whether that is worth a write. It never blocks (the phaser calls it
// under its lock).
func (l *replicaLink) report(held, wants int64) {
	if l == nil {
		return
	}
	l.mu.Lock()
	if held >= 0 {
		l.held = held
	}
	l.wants = wants
	l.kickUnlock()
}

// kickUnlock releases l.mu and wakes the writer when a write is due.
func (l *replicaLink) kickUnlock() {
	need := l.needWriteLocked()
	l.mu.Unlock()
	if need {
		wake(l.dirty)
	}
}

// needWriteLocked: the first report, a change of Wants, or a Held that some peer waits for
// and that moved since the last write.
func (l *replicaLink) needWriteLocked() bool {
	return l.written.Held < 0 || l.wants != l.written.Wants || (l.held != l.written.Held && l.peerWantsLocked())
}

// run keeps this replica's report in etcd and follows the others' until ctx ends.
func (l *replicaLink) run(ctx context.Context) {
	go l.follow(ctx)
	for ctx.Err() == nil {
		err := l.serve(ctx)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, rpctypes.ErrPermissionDenied) {
			l.log.Warn().Err(err).Str("key", registry.ReplicaKey(l.prefix, l.name)).
				Msg("this replica cannot write its report (its etcd role is read-only on the prefix; examples/etcd-roles.sh grants readwrite on replicas/): it promotes new servers on its own Envoys' ACKs, and other replicas do not wait for its Envoys")
			return
		}
		l.log.Warn().Err(err).Msg("replica report: retrying")
		etcdconn.Sleep(ctx, time.Second)
	}
}

// serve writes the report under a fresh lease until the lease is lost or ctx ends.
func (l *replicaLink) serve(ctx context.Context) error {
	s, err := concurrency.NewSession(l.cli, concurrency.WithTTL(replicaTTL), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("lease for the replica report: %w", err)
	}
	defer func() {
		// Revoked at once, so that the others stop waiting for this replica's Envoys; with a
		// context of its own, since ctx has usually ended by now. Session.Close would use the
		// session's context, and wait a whole TTL for an etcd that does not answer.
		s.Orphan()
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		_, _ = l.cli.Revoke(rctx, s.Lease())
		cancel()
	}()
	key := registry.ReplicaKey(l.prefix, l.name)
	l.mu.Lock()
	l.written = registry.Replica{Held: -1} // the key is new under this lease
	l.mu.Unlock()
	for {
		l.mu.Lock()
		need := l.needWriteLocked()
		r := registry.Replica{Held: max(l.held, 0), Wants: l.wants, Host: l.host}
		l.mu.Unlock()
		if need {
			b, err := json.Marshal(r)
			if err != nil {
				return fmt.Errorf("encode replica report: %w", err)
			}
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err = l.cli.Put(wctx, key, string(b), clientv3.WithLease(s.Lease()))
			cancel()
			if err != nil {
				return fmt.Errorf("write %s: %w", key, err)
			}
			l.mu.Lock()
			l.written = r
			l.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.Done():
			return fmt.Errorf("lease of %s lost", key)
		case <-l.dirty:
		}
	}
}

// follow lists and watches the other replicas' reports until ctx ends, relisting after a
// compaction or a broken watch.
func (l *replicaLink) follow(ctx context.Context) {
	pfx := registry.ReplicasPrefix(l.prefix)
	for ctx.Err() == nil {
		err := registry.Follow(ctx, l.cli, pfx, l.decode, l.setPeers, func() {})
		if ctx.Err() != nil {
			return
		}
		l.log.Debug().Err(err).Msg("replica reports: relisting")
		etcdconn.Sleep(ctx, time.Second)
	}
}

// decode reads one report; its own and bad ones are left out.
func (l *replicaLink) decode(name string, raw []byte) (registry.Replica, bool) {
	if name == l.name {
		return registry.Replica{}, false
	}
	r, err := registry.DecodeReplica(name, raw)
	if err != nil {
		l.log.Warn().Err(err).Str("replica", name).Msg("replica report rejected; not waiting for that replica")
		return r, false
	}
	return r, true
}

func (l *replicaLink) setPeers(peers map[string]registry.Replica) {
	now := time.Now()
	l.mu.Lock()
	for name, p := range l.peers {
		if _, still := peers[name]; !still {
			l.gone[name] = goneReplica{held: p.Held, until: now.Add(l.remember)}
		}
	}
	for name := range peers {
		delete(l.gone, name)
	}
	l.peers = peers
	l.kickUnlock()
	if l.onPeer != nil {
		l.onPeer()
	}
}
