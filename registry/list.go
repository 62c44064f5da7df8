package registry

import (
	"context"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// listPage is the number of keys read per request of a listing.
const listPage = 1000

// Listing is the registry's keys read at one etcd revision.
type Listing struct {
	KVs      []*mvccpb.KeyValue
	Revision int64
	// ClusterID is the etcd cluster that answered; a restored backup answers with another.
	ClusterID uint64
}

// List reads every key under prefix at one revision, listPage keys per request so that a
// large registry never makes one huge etcd response; each request is bounded by listTimeout
// as well as by ctx.
func List(ctx context.Context, kv clientv3.KV, prefix string) (Listing, error) {
	start, end := prefix+"/", clientv3.GetPrefixRangeEnd(prefix+"/")
	var l Listing
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(listPage)}
		if l.Revision != 0 {
			opts = append(opts, clientv3.WithRev(l.Revision))
		}
		pctx, cancel := context.WithTimeout(ctx, listTimeout)
		resp, err := kv.Get(pctx, start, opts...)
		cancel()
		if err != nil {
			return Listing{}, fmt.Errorf("list %s at revision %d: %w", start, l.Revision, err)
		}
		if l.Revision == 0 {
			l.Revision, l.ClusterID = resp.Header.Revision, resp.Header.ClusterId
		}
		l.KVs = append(l.KVs, resp.Kvs...)
		if !resp.More || len(resp.Kvs) == 0 {
			return l, nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}
