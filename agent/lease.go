package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/tetherlb/tether/registry"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// lease is the agent's etcd lease with its keep-alive, in the manner of etcd's
// concurrency.Session, except that a lost keep-alive does not end it: after an etcd outage
// longer than the TTL the client gives up on a lease the server may have kept, so renew
// tries the same lease first and grants a new one only when etcd no longer knows it.
type lease struct {
	cli       *clientv3.Client
	ttl       time.Duration
	opTimeout time.Duration

	id    clientv3.LeaseID // 0: none
	alive bool             // a keep-alive runs for id
	lost  <-chan struct{}  // closed when that keep-alive ends
	stop  context.CancelFunc
}

// ID is the current lease, 0 when there is none.
func (l *lease) ID() clientv3.LeaseID { return l.id }

// Alive reports whether the lease is kept alive.
func (l *lease) Alive() bool { return l.alive }

// Done is closed when the keep-alive ends; nil (never ready) while none runs.
func (l *lease) Done() <-chan struct{} { return l.lost }

// keepAliveLost records that Done was closed: the lease must be renewed.
func (l *lease) keepAliveLost() { l.lost, l.alive = nil, false }

// renew makes the lease live: the current one if etcd still knows it, else a new one, and
// starts its keep-alive. expired reports that etcd had forgotten the current lease, with
// the keys bound to it.
func (l *lease) renew(ctx context.Context) (expired bool, err error) {
	if l.id != 0 {
		octx, cancel := context.WithTimeout(ctx, l.opTimeout)
		_, err := l.cli.KeepAliveOnce(octx, l.id)
		cancel()
		switch {
		case err == nil:
			return false, l.keepAlive()
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			l.id, expired = 0, true
		default:
			return false, fmt.Errorf("renew lease %x: %w", int64(l.id), err)
		}
	}
	octx, cancel := context.WithTimeout(ctx, l.opTimeout)
	defer cancel()
	g, err := l.cli.Grant(octx, int64(l.ttl/time.Second))
	if err != nil {
		return expired, fmt.Errorf("grant lease: %w", err)
	}
	l.id = g.ID
	return expired, l.keepAlive()
}

func (l *lease) keepAlive() error {
	l.stopKeepAlive()
	kctx, cancel := context.WithCancel(context.Background())
	ch, err := l.cli.KeepAlive(kctx, l.id)
	if err != nil {
		cancel()
		return fmt.Errorf("keep lease %x alive: %w", int64(l.id), err)
	}
	lost := make(chan struct{})
	go func() {
		for range ch { // drain the responses; the channel closes when the lease is lost
		}
		close(lost)
	}()
	l.stop, l.lost, l.alive = cancel, lost, true
	return nil
}

func (l *lease) stopKeepAlive() {
	if l.stop != nil {
		l.stop()
		l.stop = nil
	}
}

// forget drops a lease etcd no longer knows, so that the next renew grants a new one.
func (l *lease) forget() {
	l.stopKeepAlive()
	l.id, l.alive, l.lost = 0, false, nil
}

// revoke ends the keep-alive and revokes the lease, which deletes every key bound to it.
func (l *lease) revoke(ctx context.Context) error {
	l.stopKeepAlive()
	id := l.id
	l.id, l.alive = 0, false
	if id == 0 {
		return nil
	}
	octx, cancel := context.WithTimeout(ctx, l.opTimeout)
	defer cancel()
	if _, err := l.cli.Revoke(octx, id); err != nil {
		return fmt.Errorf("revoke lease %x: %w", int64(id), err)
	}
	return nil
}

// renewLease renews r's lease; an expired one took the instance key with it.
func (r *runner) renewLease(ctx context.Context) error {
	old := r.lease.ID()
	expired, err := r.lease.renew(ctx)
	if expired {
		r.log.Warn().Str("lease", fmt.Sprintf("%x", int64(old))).Msg("lease expired; the instance key is gone, registering again")
		r.registered = false
		r.m.setRegistered(false)
	}
	return err
}

// ensureRegistered makes sure the instance key exists under a live lease, writing next.
func (r *runner) ensureRegistered(ctx context.Context, next registry.Instance) error {
	if !r.lease.Alive() {
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
	r.inheritClaim(octx)
	next.ClaimSince = r.claimSince
	r.current.ClaimSince = r.claimSince
	created, err := registry.CreateInstanceRev(octx, r.cli, r.prefix, r.cfg.Service, next, r.lease.ID())
	if err != nil {
		r.m.etcdErrors.WithLabelValues("create").Inc()
		r.checkLease(err)
		if !errors.Is(err, registry.ErrInstanceExists) {
			return err
		}
		// Held by another lease: a crashed predecessor on this server is taken over at once.
		adopted, aerr := r.adopt(ctx, next)
		if aerr != nil {
			r.log.Warn().Err(aerr).Msg("cannot adopt the key")
		}
		if !adopted {
			return err
		}
	}
	if r.claimSince == 0 && created > 0 {
		// The first of its service: the claim starts with this key, and this agent keeps
		// it when it registers again (a lost lease, a lease storm).
		r.claimSince = created
		r.current.ClaimSince = created
	}
	r.registered, r.written, r.writtenAt = true, next, time.Now()
	r.m.setRegistered(true)
	r.m.writes.WithLabelValues("register").Inc()
	r.backoff.Reset()
	ev := r.log.Info()
	if r.warning != "" {
		ev = r.log.Warn().Str("warning", r.warning)
	}
	ev.Str("lease", fmt.Sprintf("%x", int64(r.lease.ID()))).Str("address", r.cfg.Address).Int("port", r.cfg.Port).
		Str("state", string(next.State)).Msg("instance registered")
	return nil
}

// write updates the instance key under the lease; ErrLeaseLost marks the instance unregistered.
func (r *runner) write(ctx context.Context, next registry.Instance, cause string) error {
	octx, cancel := context.WithTimeout(ctx, r.opTimeout)
	defer cancel()
	err := registry.UpdateInstance(octx, r.cli, r.prefix, r.cfg.Service, next, r.lease.ID())
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
	r.backoff.Reset()
	return nil
}

// checkLease forgets the lease when etcd no longer knows it, so that the next attempt
// grants a new one.
func (r *runner) checkLease(err error) {
	if !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return
	}
	r.lease.forget()
	r.registered = false
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
	if err := r.lease.revoke(ctx); err != nil {
		r.m.etcdErrors.WithLabelValues("revoke").Inc()
		r.log.Warn().Err(err).Dur("ttl", r.cfg.TTL).Msg("cannot revoke the lease; it expires after its TTL")
	}
}

// inheritClaim takes the oldest claim among the service's live instances
// (registry.Instance.Claim), so that a service's claim to its routes passes from its old
// instances to new ones through a rolling deploy. An instance value that does not decode
// counts by its key's create revision. A failed read keeps the claim this agent has: the
// registration goes on, at worst as a younger claim.
func (r *runner) inheritClaim(ctx context.Context) {
	resp, err := r.cli.Get(ctx, registry.InstanceKey(r.prefix, r.cfg.Service, ""), clientv3.WithPrefix())
	if err != nil {
		r.log.Warn().Err(err).Msg("cannot read the service's other instances; registering without inheriting their claim")
		return
	}
	oldest := r.claimSince
	for _, kv := range resp.Kvs { // its own key too: a crashed predecessor's claim is the service's
		var in registry.Instance
		_ = json.Unmarshal(kv.Value, &in)
		if c := in.Claim(kv.CreateRevision); c > 0 && (oldest == 0 || c < oldest) {
			oldest = c
		}
	}
	if oldest != r.claimSince {
		r.log.Info().Int64("claimSince", oldest).Msg("inheriting the service's claim to its routes from its live instances")
		r.claimSince = oldest
	}
}
