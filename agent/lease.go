package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/tetherlb/tether/registry"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Re-registration backoff bounds.
const (
	backoffMin = 100 * time.Millisecond
	backoffMax = 5 * time.Second
)

// backoff is capped exponential backoff with jitter: each delay is drawn from [d/2, d) with
// d doubling from backoffMin up to backoffMax.
type backoff struct{ n int }

func (b *backoff) next() time.Duration {
	d := min(backoffMin<<min(b.n, 16), backoffMax)
	b.n++
	return d/2 + rand.N(d/2)
}

func (b *backoff) reset() { b.n = 0 }

// renewLease gets a live lease: the current one if etcd still knows it (after an outage
// longer than the TTL the client gives up on a lease the server may have kept), else a new one.
// It starts the keep-alive stream; the lease's loss closes r.leaseLost.
func (r *runner) renewLease(ctx context.Context) error {
	if r.lease != 0 {
		octx, cancel := context.WithTimeout(ctx, r.opTimeout)
		_, err := r.cli.KeepAliveOnce(octx, r.lease)
		cancel()
		switch {
		case err == nil:
			return r.keepAlive(r.lease)
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			r.log.Warn().Str("lease", fmt.Sprintf("%x", int64(r.lease))).Msg("lease expired; the instance key is gone, registering again")
			r.lease, r.registered = 0, false
			r.m.setRegistered(false)
		default:
			return fmt.Errorf("renew lease %x: %w", int64(r.lease), err)
		}
	}
	octx, cancel := context.WithTimeout(ctx, r.opTimeout)
	defer cancel()
	g, err := r.cli.Grant(octx, int64(r.cfg.TTL/time.Second))
	if err != nil {
		return fmt.Errorf("grant lease: %w", err)
	}
	r.lease = g.ID
	return r.keepAlive(g.ID)
}

func (r *runner) keepAlive(id clientv3.LeaseID) error {
	if r.stopKeepAlive != nil {
		r.stopKeepAlive()
	}
	kctx, cancel := context.WithCancel(context.Background())
	ch, err := r.cli.KeepAlive(kctx, id)
	if err != nil {
		cancel()
		return fmt.Errorf("keep lease %x alive: %w", int64(id), err)
	}
	lost := make(chan struct{})
	go func() {
		for range ch { // drain the responses; the channel closes when the lease is lost
		}
		close(lost)
	}()
	r.stopKeepAlive, r.leaseLost, r.leaseAlive = cancel, lost, true
	return nil
}

// ensureRegistered makes sure the instance key exists under a live lease, writing next.
func (r *runner) ensureRegistered(ctx context.Context, next registry.Instance) error {
	if !r.leaseAlive {
		if err := r.renewLease(ctx); err != nil {
			return err
		}
	}
	if r.registered { // kept lease after a lost keep-alive: check the key is still ours
		if err := r.write(ctx, next, "register"); err == nil || !errors.Is(err, registry.ErrLeaseLost) {
			return err
		}
	}
	octx, cancel := context.WithTimeout(ctx, r.opTimeout)
	defer cancel()
	if err := registry.CreateInstance(octx, r.cli, r.prefix, r.cfg.Service, next, r.lease); err != nil {
		r.m.etcdErrors.WithLabelValues("create").Inc()
		r.checkLease(err)
		return err
	}
	r.registered, r.written, r.writtenAt = true, next, time.Now()
	r.m.setRegistered(true)
	r.m.writes.WithLabelValues("register").Inc()
	r.backoff.reset()
	r.log.Info().Str("lease", fmt.Sprintf("%x", int64(r.lease))).Str("address", r.cfg.Address).Int("port", r.cfg.Port).
		Str("state", next.State).Msg("instance registered")
	return nil
}

// write updates the instance key under the lease; ErrLeaseLost marks the instance unregistered.
func (r *runner) write(ctx context.Context, next registry.Instance, cause string) error {
	octx, cancel := context.WithTimeout(ctx, r.opTimeout)
	defer cancel()
	err := registry.UpdateInstance(octx, r.cli, r.prefix, r.cfg.Service, next, r.lease)
	if err != nil {
		r.m.etcdErrors.WithLabelValues("update").Inc()
		if errors.Is(err, registry.ErrLeaseLost) {
			r.registered = false
			r.m.setRegistered(false)
		}
		r.checkLease(err)
		return err
	}
	r.written, r.writtenAt = next, time.Now()
	r.m.writes.WithLabelValues(cause).Inc()
	r.backoff.reset()
	return nil
}

// checkLease forgets the lease when etcd no longer knows it, so that the next attempt
// grants a new one.
func (r *runner) checkLease(err error) {
	if !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return
	}
	if r.stopKeepAlive != nil {
		r.stopKeepAlive()
		r.stopKeepAlive = nil
	}
	r.lease, r.leaseAlive, r.leaseLost, r.registered = 0, false, nil, false
	r.m.setRegistered(false)
}

// holder returns the lease holding the instance key and its remaining TTL (exists false when
// the key is gone).
func (r *runner) holder(ctx context.Context) (lease clientv3.LeaseID, remaining time.Duration, exists bool, err error) {
	octx, cancel := context.WithTimeout(ctx, r.opTimeout)
	defer cancel()
	resp, err := r.cli.Get(octx, r.key)
	if err != nil {
		return 0, 0, false, fmt.Errorf("get %s: %w", r.key, err)
	}
	if len(resp.Kvs) == 0 {
		return 0, 0, false, nil
	}
	lease = clientv3.LeaseID(resp.Kvs[0].Lease)
	if lease == 0 {
		return 0, 0, true, nil
	}
	ttl, err := r.cli.TimeToLive(octx, lease)
	if err != nil {
		return lease, 0, true, fmt.Errorf("lease %x of %s: %w", int64(lease), r.key, err)
	}
	return lease, time.Duration(max(ttl.TTL, 0)) * time.Second, true, nil
}

// stopLease ends the keep-alive and revokes the lease, which deletes any key bound to it.
func (r *runner) stopLease(ctx context.Context) {
	if r.stopKeepAlive != nil {
		r.stopKeepAlive()
		r.stopKeepAlive = nil
	}
	if r.lease == 0 {
		return
	}
	octx, cancel := context.WithTimeout(ctx, r.opTimeout)
	defer cancel()
	if _, err := r.cli.Revoke(octx, r.lease); err != nil {
		r.m.etcdErrors.WithLabelValues("revoke").Inc()
		r.log.Warn().Err(err).Dur("ttl", r.cfg.TTL).Msg("cannot revoke the lease; it expires after its TTL")
	}
	r.lease, r.leaseAlive = 0, false
}
