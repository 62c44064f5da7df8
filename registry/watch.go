package registry

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Watcher timings and sizes.
const (
	backoffMin  = 100 * time.Millisecond
	backoffMax  = 5 * time.Second
	listTimeout = 15 * time.Second // one page of a listing, etcd's client waits for a connection
	listPage    = 1000             // keys per page of a listing
)

// WatchOptions configure a Watcher.
type WatchOptions struct {
	Prefix string // normalized, e.g. "/tether"
	Logger zerolog.Logger
	// OnReject is called once per rejected value (metrics hook); may be nil.
	OnReject func(key string, err error)
	// OnEvent is called with the number of etcd events of each watch response (metrics); may be nil.
	OnEvent func(n int)
}

// Watcher turns the registry under a prefix into a stream of consistent States.
type Watcher struct {
	cli       *clientv3.Client
	opts      WatchOptions
	ready     chan struct{}
	readyOnce sync.Once
}

// NewWatcher returns a Watcher of opts.Prefix; Run starts it.
func NewWatcher(cli *clientv3.Client, opts WatchOptions) *Watcher {
	return &Watcher{cli: cli, opts: opts, ready: make(chan struct{})}
}

// Ready is closed once the first full listing has been emitted.
func (w *Watcher) Ready() <-chan struct{} { return w.ready }

// errCompacted says that the watch must start again from a new listing.
var errCompacted = errors.New("watch revision compacted")

// Run lists the prefix, emits the first State, then watches from the next revision and emits
// a new State after each watch response that changed anything. It returns nil when ctx ends,
// and retries etcd errors meanwhile with exponential backoff (100ms to 5s); while etcd is
// unreachable nothing is emitted and the last State stands. A compacted watch revision makes
// it list again and emit the listed State. emit is called from Run's goroutine; the States it
// receives are never modified afterwards and must not be modified by the receiver. Run must
// not be called twice at once.
func (w *Watcher) Run(ctx context.Context, emit func(*State)) error {
	var cur *State // the last emitted State
	var rev int64  // revision up to which every event has been applied
	relist := true
	delay := backoffMin
	for {
		var err error
		if relist {
			var st *State
			if st, err = w.list(ctx, cur); err == nil {
				cur, rev, relist, delay = st, st.Revision, false, backoffMin
				emit(cur)
				w.readyOnce.Do(func() { close(w.ready) })
				w.opts.Logger.Info().Int64("revision", rev).Int("services", len(cur.Services)).
					Int("rejected", len(cur.Rejected)).Msg("registry listed")
			}
		}
		if err == nil {
			err = w.watch(ctx, &cur, &rev, emit, func() { delay = backoffMin })
			relist = errors.Is(err, errCompacted)
		}
		if ctx.Err() != nil {
			return nil
		}
		if relist {
			w.opts.Logger.Warn().Err(err).Int64("revision", rev).Msg("registry watch behind compaction; listing again")
			continue
		}
		w.opts.Logger.Warn().Err(err).Dur("retry_in", delay).Msg("registry watch failed; keeping the last state")
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		delay = min(2*delay, backoffMax)
	}
}

// list reads the whole prefix at one revision and builds its State; prev is the State it
// replaces (nil at first).
func (w *Watcher) list(ctx context.Context, prev *State) (*State, error) {
	start, end := w.opts.Prefix+"/", clientv3.GetPrefixRangeEnd(w.opts.Prefix+"/")
	var kvs []*mvccpb.KeyValue
	var rev int64
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(listPage)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		pctx, cancel := context.WithTimeout(ctx, listTimeout)
		resp, err := w.cli.Get(pctx, start, opts...)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("list %s at revision %d: %w", start, rev, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		kvs = append(kvs, resp.Kvs...)
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	return rebuildState(w.opts.Prefix, rev, kvs, prev, w.opts.OnReject, w.opts.Logger), nil
}

// watch follows the prefix from *rev+1, applying each response to *cur and emitting the
// result, until the watch fails; ok is called after each good response. It returns
// errCompacted (wrapped) when *rev+1 is no longer available.
func (w *Watcher) watch(ctx context.Context, cur **State, rev *int64, emit func(*State), ok func()) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	key := w.opts.Prefix + "/"
	wch := w.cli.Watch(wctx, key, clientv3.WithPrefix(), clientv3.WithRev(*rev+1), clientv3.WithProgressNotify())
	for resp := range wch {
		if resp.CompactRevision != 0 || errors.Is(resp.Err(), rpctypes.ErrCompacted) {
			return fmt.Errorf("watch %s from revision %d (compacted at %d): %w", key, *rev+1, resp.CompactRevision, errCompacted)
		}
		if err := resp.Err(); err != nil {
			return fmt.Errorf("watch %s from revision %d: %w", key, *rev+1, err)
		}
		ok()
		if resp.IsProgressNotify() {
			*rev = max(*rev, resp.Header.Revision)
			continue
		}
		if len(resp.Events) == 0 {
			continue
		}
		if w.opts.OnEvent != nil {
			w.opts.OnEvent(len(resp.Events))
		}
		next, changed := applyEvents(w.opts.Prefix, *cur, resp.Events, w.opts.OnReject, w.opts.Logger)
		*rev = max(*rev, resp.Events[len(resp.Events)-1].Kv.ModRevision)
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
