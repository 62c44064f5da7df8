package registry_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/registry"
)

// writeBetweenPages is the etcd client's KV with one write into the listed prefix after the
// first page is read: what a registry written to while it is listed looks like.
type writeBetweenPages struct {
	clientv3.KV
	gets  atomic.Int32
	write func()
}

func (w *writeBetweenPages) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	resp, err := w.KV.Get(ctx, key, opts...)
	if w.gets.Add(1) == 1 {
		w.write()
	}
	return resp, err
}

// A listing larger than a page reads every key, each once and in order, at the revision of
// its first page: a key written while it is read is not in it.
func TestListReadsPagesAtOneRevision(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx := context.Background()
	const n = 2500 // two full pages and part of a third
	for i := 0; i < n; i += 100 {
		var ops []clientv3.Op
		for j := i; j < i+100; j++ {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("/tether/instances/app/i%04d", j), "v"))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
	}
	mustPut(t, cli, "/tetherx/outside", "v") // shares the prefix's first letters, not its keys
	kv := &writeBetweenPages{KV: cli.KV}
	var during int64
	kv.write = func() { during = mustPut(t, cli, "/tether/instances/app/i9999", "v") }
	l, err := registry.List(ctx, kv, "/tether")
	if err != nil {
		t.Fatal(err)
	}
	if len(l.KVs) != n || l.Revision != during-1 {
		t.Fatalf("listed %d keys at revision %d, want %d at %d (before the write during the listing)", len(l.KVs), l.Revision, n, during-1)
	}
	for i, kv := range l.KVs {
		if want := fmt.Sprintf("/tether/instances/app/i%04d", i); string(kv.Key) != want {
			t.Fatalf("key %d is %s, want %s", i, kv.Key, want)
		}
	}
	if got := kv.gets.Load(); got != 3 {
		t.Errorf("%d requests, want 3 pages", got)
	}
}
