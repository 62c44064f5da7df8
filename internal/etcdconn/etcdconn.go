// Package etcdconn creates the etcd client of both binaries. Without a user, clientv3.New
// returns at once and the first requests wait for etcd; with --etcd-user it authenticates
// within the dial timeout and fails when etcd is not up yet. Dial makes both wait alike:
// it retries with backoff until etcd answers, and gives up only on errors a retry cannot
// mend (a wrong password, a bad configuration).
package etcdconn

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Backoff bounds between two attempts (jittered in [d/2, d)).
const (
	BackoffMin = 100 * time.Millisecond
	BackoffMax = 5 * time.Second
)

// Dial returns a client for cfg, retrying while etcd is unreachable until ctx ends.
// onRetry, when not nil, is told each failed attempt and the wait before the next.
func Dial(ctx context.Context, cfg clientv3.Config, onRetry func(err error, wait time.Duration)) (*clientv3.Client, error) {
	d := BackoffMin
	for {
		cli, err := clientv3.New(cfg)
		if err == nil {
			return cli, nil
		}
		if permanent(err) || ctx.Err() != nil {
			return nil, err
		}
		wait := d/2 + rand.N(d/2)
		if onRetry != nil {
			onRetry(err, wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, errors.Join(ctx.Err(), err)
		case <-t.C:
		}
		d = min(2*d, BackoffMax)
	}
}

// permanent reports errors that retrying cannot mend.
func permanent(err error) bool {
	for _, p := range []error{
		rpctypes.ErrAuthFailed, rpctypes.ErrPermissionDenied, rpctypes.ErrUserEmpty, rpctypes.ErrUserNotFound,
		rpctypes.ErrInvalidAuthToken, rpctypes.ErrInvalidAuthMgmt, clientv3.ErrNoAvailableEndpoints,
		clientv3.ErrOldCluster, clientv3.ErrMutuallyExclusiveCfg,
	} {
		if errors.Is(err, p) {
			return true
		}
	}
	return false
}
