package registry

import (
	"context"
	"fmt"
	"maps"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Follow keeps set up to date with the values under pfx (a replica's reports, a service's
// drains): it lists them, then applies the watch's events from the listing's revision,
// handing set a fresh map by name (the key less pfx) after the listing and after each watch
// response, and calling ok after each. decode turns a value into an entry; a value it
// refuses is left out, replacing any earlier entry of that name. Follow returns when the
// listing or the watch fails, or ctx ends; the caller retries.
func Follow[T any](ctx context.Context, cli *clientv3.Client, pfx string, decode func(name string, value []byte) (T, bool), set func(map[string]T), ok func()) error {
	lctx, cancel := context.WithTimeout(ctx, listTimeout)
	resp, err := cli.Get(lctx, pfx, clientv3.WithPrefix())
	cancel()
	if err != nil {
		return fmt.Errorf("list %s: %w", pfx, err)
	}
	cur := map[string]T{}
	take := func(key, value []byte, deleted bool) {
		name := string(key[len(pfx):])
		if !deleted {
			if v, good := decode(name, value); good {
				cur[name] = v
				return
			}
		}
		delete(cur, name)
	}
	for _, kv := range resp.Kvs {
		take(kv.Key, kv.Value, false)
	}
	ok()
	set(maps.Clone(cur))
	wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer wcancel()
	for wr := range cli.Watch(wctx, pfx, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1)) {
		if err := wr.Err(); err != nil {
			return fmt.Errorf("watch %s: %w", pfx, err)
		}
		ok()
		for _, ev := range wr.Events {
			take(ev.Kv.Key, ev.Kv.Value, ev.Type == clientv3.EventTypeDelete)
		}
		set(maps.Clone(cur))
	}
	return fmt.Errorf("watch %s: channel closed", pfx)
}
