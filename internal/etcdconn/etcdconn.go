// Package etcdconn creates the etcd client of both binaries. Without a user, clientv3.New
// returns at once and the first requests wait for etcd; with --etcd-user it authenticates
// within the dial timeout and fails when etcd is not up yet. Dial makes both wait alike:
// it retries with backoff until etcd answers, and gives up only on errors a retry cannot
// mend (a wrong password, a bad configuration).
package etcdconn

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Backoff bounds between two attempts (jittered in [d/2, d)).
const (
	BackoffMin = 100 * time.Millisecond
	BackoffMax = 5 * time.Second
)

// Backoff is the capped exponential backoff with jitter of every retry loop against etcd:
// each delay is drawn from [d/2, d), d doubling from BackoffMin up to Max (BackoffMax when
// zero), so that agents cut off together do not come back in step. The zero value is ready.
type Backoff struct {
	Max time.Duration
	n   int
}

// Next returns the wait before the next attempt.
func (b *Backoff) Next() time.Duration {
	d := min(BackoffMin<<min(b.n, 16), cmp.Or(b.Max, BackoffMax))
	b.n++
	return d/2 + rand.N(d/2)
}

// Reset starts the waits again from the shortest, after a success.
func (b *Backoff) Reset() { b.n = 0 }

// Sleep waits d, or until ctx ends; it reports whether d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Dial returns a client for cfg, retrying while etcd is unreachable until ctx ends.
// onRetry is told each failed attempt and the wait before the next.
func Dial(ctx context.Context, cfg clientv3.Config, onRetry func(err error, wait time.Duration)) (*clientv3.Client, error) {
	var b Backoff
	for {
		cli, err := clientv3.New(cfg)
		if err == nil {
			return cli, nil
		}
		if permanent(err) || ctx.Err() != nil {
			return nil, err
		}
		wait := b.Next()
		onRetry(err, wait)
		if !Sleep(ctx, wait) {
			return nil, errors.Join(ctx.Err(), err)
		}
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

// Open returns a client for a one-shot command (status, drain, drains, service) bound to
// ctx, once an endpoint accepts a connection (see Reachable): etcd being down is then said at
// once and plainly, not as a request's "context deadline exceeded".
func Open(ctx context.Context, cfg clientv3.Config) (*clientv3.Client, error) {
	if err := Reachable(ctx, cfg.Endpoints, cfg.DialTimeout); err != nil {
		return nil, err
	}
	cfg.Context = ctx
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd client for %v: %w", cfg.Endpoints, err)
	}
	return cli, nil
}

// Reachable dials each endpoint (a TCP or unix connection, nothing more) and returns nil as
// soon as one accepts; otherwise an error naming every endpoint with what went wrong and the
// likely cause. A refused connection comes back at once, where the etcd client would wait for
// its whole request timeout and then say only "context deadline exceeded". timeout bounds
// each dial.
func Reachable(ctx context.Context, endpoints []string, timeout time.Duration) error {
	if len(endpoints) == 0 {
		return errors.New("no etcd endpoint given (--etcd-endpoints)")
	}
	var errs []error
	for _, ep := range endpoints {
		network, addr := dialTarget(ep)
		var d net.Dialer
		dctx, cancel := context.WithTimeout(ctx, timeout)
		c, err := d.DialContext(dctx, network, addr)
		cancel()
		if err == nil {
			_ = c.Close()
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		errs = append(errs, fmt.Errorf("%s: %s", addr, cause(err, timeout)))
	}
	what := "etcd endpoint"
	if len(endpoints) > 1 {
		what = "etcd endpoints"
	}
	return fmt.Errorf("no %s reachable (%w): check --etcd-endpoints, and that etcd (or the control plane with its embedded etcd) runs there", what, errors.Join(errs...))
}

// dialTarget splits an endpoint as the etcd client takes it (host:port, http://, https://,
// unix://, unixs://) into a network and an address.
func dialTarget(ep string) (network, addr string) {
	if u, err := url.Parse(ep); err == nil && strings.Contains(ep, "://") {
		switch u.Scheme {
		case "unix", "unixs":
			return "unix", u.Host + u.Path
		default:
			return "tcp", u.Host
		}
	}
	return "tcp", ep
}

// cause says in a few words why a dial failed.
func cause(err error, timeout time.Duration) string {
	var dnsErr *net.DNSError
	switch {
	case refused(err):
		return "connection refused, nothing listens on that port"
	case errors.As(err, &dnsErr):
		return fmt.Sprintf("host %q not found", dnsErr.Name)
	case errors.Is(err, context.DeadlineExceeded), os.IsTimeout(err):
		return fmt.Sprintf("no answer within %s (a wrong address, or a firewall dropping the connection)", timeout)
	case errors.Is(err, os.ErrNotExist):
		return "no such socket file"
	}
	return err.Error()
}

// refused reports a refused connection: ECONNREFUSED, or Windows' WSAECONNREFUSED (10061),
// which syscall.ECONNREFUSED does not match there.
func refused(err error) bool {
	var errno syscall.Errno
	return errors.Is(err, syscall.ECONNREFUSED) || (errors.As(err, &errno) && errno == 10061)
}
