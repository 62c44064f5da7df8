package registry

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tetherlb/tether/internal/etcdconn"
)

// Watcher timings and sizes.
const (
	listTimeout = 15 * time.Second // one page of a listing, etcd's client waits for a connection
	// maxHistory bounds how many earlier versions of a rejected service configuration are
	// read back looking for a valid one.
	maxHistory = 64
	// DefaultProgressInterval is how often the watcher reads etcd's revision: an etcd
	// restored from an older backup stands below the revision already applied.
	DefaultProgressInterval = 5 * time.Second
)

// WatchOptions configure a Watcher.
type WatchOptions struct {
	Prefix string // normalized, e.g. "/tether"
	Logger zerolog.Logger
	// OnReject is called once per rejected value (metrics hook); may be nil.
	OnReject func(key string, err error)
	// OnEvent is called with the number of etcd events of each watch response (metrics); may be nil.
	OnEvent func(n int)
	// AllowLoopback accepts instances registered on loopback addresses (127.0.0.0/8, ::1).
	// Without it they are rejected: Envoy would connect to itself. For demos and tests.
	AllowLoopback bool
	// DenyCIDRs are ranges no instance may be served in (--deny-backend-cidr).
	DenyCIDRs []netip.Prefix
	// ProgressInterval is how often etcd's revision is read to notice a restore from an
	// older backup; 0 means DefaultProgressInterval.
	ProgressInterval time.Duration
}

// Watcher turns the registry under a prefix into a stream of consistent States.
type Watcher struct {
	cluster   uint64 // etcd cluster ID of the last listing; only Run's goroutine uses it
	cli       *clientv3.Client
	opts      WatchOptions
	ready     chan struct{}
	readyOnce sync.Once
	// base and confirmed: confirmed is base's monotonic offset of the last confirmation (see
	// Confirmed), 0 for none.
	base      time.Time
	confirmed atomic.Int64
}

// NewWatcher returns a Watcher of opts.Prefix; Run starts it.
func NewWatcher(cli *clientv3.Client, opts WatchOptions) *Watcher {
	return &Watcher{cli: cli, opts: opts, ready: make(chan struct{}), base: time.Now()}
}

// Confirmed returns when the watcher last confirmed that it is current: the start of the
// newest linearizable read of etcd's revision (a listing, or the check every
// ProgressInterval) whose revision the watcher had applied, or has since. Zero before the
// first listing. A watcher cut off from etcd stops confirming: its State may be stale.
func (w *Watcher) Confirmed() time.Time {
	d := w.confirmed.Load()
	if d == 0 {
		return time.Time{}
	}
	return w.base.Add(time.Duration(d))
}

// confirm records a confirmation of a read started at.
func (w *Watcher) confirm(at time.Time) {
	d := max(int64(at.Sub(w.base)), 1)
	for {
		old := w.confirmed.Load()
		if old >= d || w.confirmed.CompareAndSwap(old, d) {
			return
		}
	}
}

// reading is one linearizable read of etcd's revision, started at.
type reading struct {
	at  time.Time
	rev int64
}

// Ready is closed once the first full listing has been emitted.
func (w *Watcher) Ready() <-chan struct{} { return w.ready }

// errCompacted says that the watch must start again from a new listing.
var errCompacted = errors.New("watch revision compacted")

// errRestored says that etcd's history no longer follows what was applied (a restore from a
// backup, or another cluster behind the same endpoints): the watch must list again.
var errRestored = errors.New("etcd revision went back or cluster changed")

// buildOptions returns the options of the watcher's state builder; ctx bounds the reads of
// etcd's history.
func (w *Watcher) buildOptions(ctx context.Context) buildOptions {
	return buildOptions{prefix: w.opts.Prefix, reject: w.opts.OnReject, log: w.opts.Logger,
		allowLoopback: w.opts.AllowLoopback, denyCIDRs: w.opts.DenyCIDRs,
		lastValidConfig: func(key, svc string, created, mod int64) (ServiceConfig, bool, error) {
			return w.lastValidConfig(ctx, key, svc, created, mod)
		}}
}

// lastValidConfig reads back the versions of a service configuration key older than mod, of
// the incarnation created at created, and returns the newest one that validates. A compacted
// history finds none; so does a key with more than maxHistory invalid versions since.
func (w *Watcher) lastValidConfig(ctx context.Context, key, svc string, created, mod int64) (ServiceConfig, bool, error) {
	rev := mod - 1
	for range maxHistory {
		if rev < created || rev <= 0 {
			return ServiceConfig{}, false, nil
		}
		gctx, cancel := context.WithTimeout(ctx, listTimeout)
		resp, err := w.cli.Get(gctx, key, clientv3.WithRev(rev))
		cancel()
		if errors.Is(err, rpctypes.ErrCompacted) {
			return ServiceConfig{}, false, nil
		}
		if err != nil {
			return ServiceConfig{}, false, fmt.Errorf("read %s at revision %d: %w", key, rev, err)
		}
		if len(resp.Kvs) == 0 || resp.Kvs[0].CreateRevision != created {
			return ServiceConfig{}, false, nil
		}
		kv := resp.Kvs[0]
		if cfg, err := DecodeServiceConfig(svc, kv.Value); err == nil {
			return cfg, true, nil
		}
		rev = kv.ModRevision - 1
	}
	return ServiceConfig{}, false, nil
}

// Run lists the prefix, emits the first State, then watches from the next revision and emits
// a new State after each watch response that changed anything. It returns nil when ctx ends,
// and retries etcd errors meanwhile with exponential backoff (100ms to 5s); while etcd is
// unreachable nothing is emitted and the last State stands. A compacted watch revision, or an
// etcd that went back to an older revision (restored from a backup) or to another cluster,
// makes it list again and emit the listed State. emit is called from Run's goroutine; the States it
// receives are never modified afterwards and must not be modified by the receiver. Run must
// not be called twice at once.
func (w *Watcher) Run(ctx context.Context, emit func(*State)) error {
	var cur *State // the last emitted State
	var rev int64  // revision up to which every event has been applied
	relist := true
	var b etcdconn.Backoff
	for {
		var err error
		if relist {
			var st *State
			var cluster uint64
			started := time.Now()
			if st, cluster, err = w.list(ctx, cur); err == nil {
				w.confirm(started) // the listing is a linearizable read, and st is at its revision
				if st.Revision < rev || (w.cluster != 0 && cluster != w.cluster) {
					w.opts.Logger.Warn().Int64("revision", st.Revision).Int64("applied", rev).
						Msg("etcd's revision went back or its cluster changed (restored from a backup?): serving what it holds now")
				}
				if cur == nil {
					w.readDepartures(ctx, st)
				}
				cur, rev, relist = st, st.Revision, false
				b.Reset()
				w.cluster = cluster
				emit(cur)
				w.readyOnce.Do(func() { close(w.ready) })
				w.opts.Logger.Info().Int64("revision", rev).Int("services", len(cur.Services)).
					Int("rejected", len(cur.Rejected)).Msg("registry listed")
			}
		}
		if err == nil {
			err = w.watch(ctx, &cur, &rev, emit, b.Reset)
			relist = errors.Is(err, errCompacted) || errors.Is(err, errRestored)
		}
		if ctx.Err() != nil {
			return nil
		}
		if relist {
			w.opts.Logger.Warn().Err(err).Int64("revision", rev).Msg("registry watch cannot resume; listing again")
			continue
		}
		delay := b.Next()
		w.opts.Logger.Warn().Err(err).Dur("retry_in", delay).Msg("registry watch failed; keeping the last state")
		if !etcdconn.Sleep(ctx, delay) {
			return nil
		}
	}
}

// readDepartures sets st.Departures from etcd's history before the first listing. A later
// listing (after a compaction or a restore) needs none: the watcher's user has seen the
// previous State, and what the listing lacks of it is what went meanwhile. A history that
// cannot be read is logged: the control plane then starts with no memory of what went
// before it, as before Departures existed.
func (w *Watcher) readDepartures(ctx context.Context, st *State) {
	deps, compacted, err := w.departures(ctx, st.Revision, st)
	if err != nil {
		w.opts.Logger.Warn().Err(err).Int64("revision", st.Revision).
			Msg("cannot read which instances left the registry before this start; instances lost in a lease storm just before it are not held")
		return
	}
	if compacted != 0 {
		w.opts.Logger.Warn().Int64("revision", st.Revision).Int64("compacted", compacted).
			Msg("etcd's history is compacted: instances that left the registry before the compaction revision are unknown to this start and not held")
	}
	st.Departures = deps
}

// list reads the whole prefix at one revision and builds its State; prev is the State it
// replaces (nil at first).
func (w *Watcher) list(ctx context.Context, prev *State) (*State, uint64, error) {
	l, err := List(ctx, w.cli, w.opts.Prefix)
	if err != nil {
		return nil, 0, err
	}
	st, err := rebuildState(w.buildOptions(ctx), l.Revision, l.KVs, prev)
	if err != nil {
		return nil, 0, fmt.Errorf("list %s: %w", w.opts.Prefix+"/", err)
	}
	return st, l.ClusterID, nil
}

// watch follows the prefix from *rev+1, applying each response to *cur and emitting the
// result, until the watch fails; ok is called after each good response. It returns
// errCompacted (wrapped) when *rev+1 is no longer available, and errRestored (wrapped) when
// etcd answers from another cluster or stands at a revision below *rev: a restored backup
// would otherwise leave the watch waiting for revisions that will mean something else (etcd
// sends no progress notification to a watch that starts beyond its revision).
func (w *Watcher) watch(ctx context.Context, cur **State, rev *int64, emit func(*State), ok func()) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	key := w.opts.Prefix + "/"
	wch := w.cli.Watch(wctx, key, clientv3.WithPrefix(), clientv3.WithRev(*rev+1), clientv3.WithProgressNotify())

	var applied atomic.Int64
	applied.Store(*rev)
	restored := make(chan error, 1)
	readings := make(chan reading, 1)
	go w.checkRestoredEvery(wctx, w.cluster, &applied, restored, readings)
	var pending reading // a reading beyond the applied revision, confirmed once the watch reaches it
	advanced := func() {
		if pending.rev != 0 && *rev >= pending.rev {
			w.confirm(pending.at)
			pending = reading{}
		}
	}

	bo := w.buildOptions(ctx)
	for {
		var resp clientv3.WatchResponse
		var open bool
		select {
		case err := <-restored:
			return fmt.Errorf("watch %s: %w", key, err)
		case r := <-readings:
			if r.rev <= *rev {
				w.confirm(r.at)
				continue
			}
			// etcd is ahead (events on their way, or writes outside the prefix): confirmed once
			// the watch has delivered up to r.rev; a progress notification says when.
			pending = r
			_ = w.cli.RequestProgress(wctx)
			continue
		case resp, open = <-wch:
		}
		if !open {
			break
		}
		if resp.CompactRevision != 0 || errors.Is(resp.Err(), rpctypes.ErrCompacted) {
			return fmt.Errorf("watch %s from revision %d (compacted at %d): %w", key, *rev+1, resp.CompactRevision, errCompacted)
		}
		if err := resp.Err(); err != nil {
			return fmt.Errorf("watch %s from revision %d: %w", key, *rev+1, err)
		}
		if w.cluster != 0 && resp.Header.ClusterId != 0 && resp.Header.ClusterId != w.cluster {
			return fmt.Errorf("watch %s: etcd cluster %x, listed from %x: %w", key, resp.Header.ClusterId, w.cluster, errRestored)
		}
		ok()
		if resp.IsProgressNotify() {
			*rev = max(*rev, resp.Header.Revision)
			applied.Store(*rev)
			advanced()
			continue
		}
		if len(resp.Events) == 0 {
			continue
		}
		if w.opts.OnEvent != nil {
			w.opts.OnEvent(len(resp.Events))
		}
		next, changed, err := applyEvents(bo, *cur, resp.Events)
		if err != nil {
			return fmt.Errorf("watch %s: %w", key, err)
		}
		*rev = max(*rev, resp.Events[len(resp.Events)-1].Kv.ModRevision)
		applied.Store(*rev)
		advanced()
		if changed {
			*cur = next
			emit(next)
			w.opts.Logger.Debug().Int64("revision", next.Revision).Int("events", len(resp.Events)).Msg("registry changed")
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("watch %s: %w", key, err)
	}
	return fmt.Errorf("watch %s from revision %d: channel closed", key, *rev+1)
}

// checkRestoredEvery reads etcd's revision every ProgressInterval until ctx ends, and sends
// errRestored (wrapped) on found when it is below the applied one or the cluster changed.
// The read is linearizable, so it is never below a revision etcd has committed: only a
// restore (or another cluster behind the endpoints) makes it go back. Failed reads are
// left to the watch, which sees the same outage.
// Each good read is also sent on readings (the newest replaces an unread one), for Confirmed.
func (w *Watcher) checkRestoredEvery(ctx context.Context, cluster uint64, applied *atomic.Int64, found chan<- error, readings chan reading) {
	every := w.opts.ProgressInterval
	if every <= 0 {
		every = DefaultProgressInterval
	}
	t := time.NewTicker(every)
	defer t.Stop()
	// The first comparison is at once: a watch (re)created on an etcd restored meanwhile
	// must not wait an interval, in which the restored etcd's writes could carry its revision
	// past the applied one, where no comparison tells any more.
	for first := true; ; first = false {
		if !first {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
		// The applied revision is read before etcd is: the watch applies events while the read
		// is on its way, and a revision applied after the read started may be above the read's
		// answer without anything having gone back.
		a := applied.Load()
		started := time.Now()
		gctx, cancel := context.WithTimeout(ctx, min(listTimeout, every))
		resp, err := w.cli.Get(gctx, w.opts.Prefix+"/", clientv3.WithCountOnly())
		cancel()
		if err != nil {
			continue
		}
		var why error
		if resp.Header.Revision < a {
			why = fmt.Errorf("etcd at revision %d, below the %d applied: %w", resp.Header.Revision, a, errRestored)
		} else if cluster != 0 && resp.Header.ClusterId != cluster {
			why = fmt.Errorf("etcd cluster %x, listed from %x: %w", resp.Header.ClusterId, cluster, errRestored)
		}
		if why != nil {
			found <- why
			return
		}
		// The newest replaces an unread one; this goroutine is the only sender, so once the
		// buffer of one is emptied the send cannot block.
		select {
		case <-readings:
		default:
		}
		readings <- reading{at: started, rev: resp.Header.Revision}
	}
}
