package registry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// DepartureScan bounds how many revisions before a first listing are read back for deleted
// instance keys. etcd's revisions carry no time: the scan is a bound on work, and the
// control plane bounds what it counts by time (the values' updatedAt). At the agents'
// default write rates (a heartbeat every 30 s, load changes) a registry of a thousand
// instances makes well under 20,000 revisions in the minute or two that matter.
const DepartureScan = 20000

// departureTimeout bounds the whole read of history at a first listing: the control plane
// must not wait for it longer before serving.
const departureTimeout = 10 * time.Second

// departures returns the instance keys deleted in the DepartureScan revisions up to rev that
// st (the listing at rev) does not hold, each with its last value. It
// reads etcd's history with a watch from the start of the scan (deletes only, with their
// previous values), caught up to rev by progress requests. A compacted start is moved up
// to the compaction revision: deletes before it cannot be known, and are not reported (the
// caller logs that). Values that fail to decode are left out: they could not be served.
func (w *Watcher) departures(ctx context.Context, rev int64, st *State) ([]Departure, int64, error) {
	from := max(rev-DepartureScan+1, 1)
	ctx, cancel := context.WithTimeout(ctx, departureTimeout)
	defer cancel()
	var compacted int64
	for {
		deps, err := w.scanDepartures(ctx, from, rev, st)
		var ce compactedError
		if errors.As(err, &ce) && ce.rev > from {
			compacted, from = ce.rev, ce.rev
			continue
		}
		return deps, compacted, err
	}
}

type compactedError struct{ rev int64 }

func (e compactedError) Error() string { return fmt.Sprintf("history compacted at revision %d", e.rev) }

func (w *Watcher) scanDepartures(ctx context.Context, from, rev int64, st *State) ([]Departure, error) {
	// A watch stream of its own (its context), so that its progress requests are answered
	// as soon as this watch alone has caught up.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	prefix := InstancesPrefix(w.opts.Prefix)
	wch := w.cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(from), clientv3.WithPrevKV(),
		clientv3.WithFilterPut(), clientv3.WithProgressNotify())
	last := map[string]Departure{} // by key: the newest delete up to rev
	var order []string
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("read deleted instances from revision %d: %w", from, ctx.Err())
		case <-poll.C:
			// etcd answers a progress request once the watch has sent every event up to the
			// revision in the answer's header.
			_ = w.cli.RequestProgress(wctx)
			continue
		case resp, open := <-wch:
			if !open {
				return nil, fmt.Errorf("read deleted instances from revision %d: watch closed", from)
			}
			if resp.CompactRevision != 0 {
				return nil, compactedError{rev: resp.CompactRevision}
			}
			if err := resp.Err(); err != nil {
				if errors.Is(err, rpctypes.ErrCompacted) {
					return nil, compactedError{rev: from + 1}
				}
				return nil, fmt.Errorf("read deleted instances from revision %d: %w", from, err)
			}
			for _, ev := range resp.Events {
				if ev.Type != clientv3.EventTypeDelete || ev.Kv.ModRevision > rev || ev.PrevKv == nil {
					continue
				}
				key := string(ev.Kv.Key)
				kind, svc, id, err := ParseKey(w.opts.Prefix, key)
				if err != nil || kind != KeyInstance {
					continue
				}
				in, err := DecodeInstance(svc, id, ev.PrevKv.Value)
				if err != nil || (!w.opts.AllowLoopback && IsLoopback(in.Address)) {
					continue
				}
				if _, seen := last[key]; !seen {
					order = append(order, key)
				}
				last[key] = Departure{Service: svc, Instance: in, Revision: ev.Kv.ModRevision, Created: ev.PrevKv.CreateRevision}
			}
			caughtUp := resp.IsProgressNotify() && resp.Header.Revision >= rev
			if n := len(resp.Events); n > 0 && resp.Events[n-1].Kv.ModRevision >= rev {
				caughtUp = true // events come in revision order
			}
			if !caughtUp {
				continue
			}
			var out []Departure
			for _, key := range order {
				d := last[key]
				if s := st.Services[d.Service]; s != nil {
					if _, back := s.Instances[d.Instance.ID]; back {
						continue
					}
				}
				out = append(out, d)
			}
			return out, nil
		}
	}
}
