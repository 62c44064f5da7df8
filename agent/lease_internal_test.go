package agent

import (
	"context"
	"testing"
	"time"

	"github.com/tetherlb/tether/internal/etcdtest"
)

// TestLeaseRenewKeepsOrReplaces drives the lease against etcd: a grant of the TTL, a renew
// that keeps a lease etcd still knows, one that grants a new lease (and says so) when etcd
// forgot it, a keep-alive whose end is seen on Done, and a revoke that removes it.
func TestLeaseRenewKeepsOrReplaces(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli := etcd.Client(t)
	lcli := etcd.Client(t) // the lease's: closed before etcd stops, whose graceful stop waits for open keep-alive streams
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l := lease{cli: lcli, ttl: 7 * time.Second, opTimeout: 2 * time.Second}
	if l.ID() != 0 || l.Alive() || l.Done() != nil {
		t.Fatalf("a new lease: id %x, alive %v, done %v", l.ID(), l.Alive(), l.Done())
	}
	if err := l.revoke(ctx); err != nil {
		t.Fatalf("revoking no lease: %v", err)
	}
	expired, err := l.renew(ctx)
	if err != nil || expired || l.ID() == 0 || !l.Alive() || l.Done() == nil {
		t.Fatalf("first renew: expired %v, %v; id %x, alive %v", expired, err, l.ID(), l.Alive())
	}
	first := l.ID()
	ttl, err := cli.TimeToLive(ctx, first)
	if err != nil || ttl.GrantedTTL != 7 {
		t.Fatalf("granted TTL %d, %v; want 7", ttl.GrantedTTL, err)
	}

	// A lost keep-alive: renew keeps the lease etcd still knows.
	l.stopKeepAlive()
	select {
	case <-l.Done():
	case <-ctx.Done():
		t.Fatal("Done not closed when the keep-alive stopped")
	}
	l.keepAliveLost()
	if l.Alive() || l.Done() != nil || l.ID() != first {
		t.Fatalf("after keepAliveLost: alive %v, done %v, id %x", l.Alive(), l.Done(), l.ID())
	}
	if expired, err := l.renew(ctx); err != nil || expired || l.ID() != first || !l.Alive() {
		t.Fatalf("renew of a known lease: expired %v, %v; id %x (was %x), alive %v", expired, err, l.ID(), first, l.Alive())
	}

	// Revoked under it: Done closes; renew grants another and reports the expiry.
	if _, err := cli.Revoke(ctx, first); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.Done():
	case <-ctx.Done():
		t.Fatal("Done not closed when the lease was revoked")
	}
	l.keepAliveLost()
	if expired, err := l.renew(ctx); err != nil || !expired || l.ID() == first || l.ID() == 0 || !l.Alive() {
		t.Fatalf("renew of a revoked lease: expired %v, %v; id %x (was %x), alive %v", expired, err, l.ID(), first, l.Alive())
	}
	second := l.ID()

	// forget drops it: the next renew grants a third, reporting no expiry.
	l.forget()
	if l.ID() != 0 || l.Alive() || l.Done() != nil {
		t.Fatalf("after forget: id %x, alive %v", l.ID(), l.Alive())
	}
	if expired, err := l.renew(ctx); err != nil || expired || l.ID() == second || l.ID() == 0 {
		t.Fatalf("renew after forget: expired %v, %v; id %x", expired, err, l.ID())
	}
	third := l.ID()
	if err := l.revoke(ctx); err != nil || l.ID() != 0 || l.Alive() {
		t.Fatalf("revoke: %v; id %x, alive %v", err, l.ID(), l.Alive())
	}
	if ttl, err := cli.TimeToLive(ctx, third); err != nil || ttl.TTL != -1 {
		t.Fatalf("the revoked lease's TTL %d, %v; want -1 (gone)", ttl.TTL, err)
	}
	// The second lease was left to etcd (forget does not revoke): still there.
	if ttl, err := cli.TimeToLive(ctx, second); err != nil || ttl.TTL <= 0 {
		t.Fatalf("the forgotten lease's TTL %d, %v; want it left alone", ttl.TTL, err)
	}

	// etcd gone: renew and revoke fail with an error, not a hang past opTimeout.
	lcli.Close()
	l.cli, l.id, l.opTimeout = etcd.Client(t), second, 100*time.Millisecond
	etcd.Stop()
	if _, err := l.renew(ctx); err == nil || l.ID() != second {
		t.Errorf("renew with etcd down: %v, id %x; want an error, the lease kept", err, l.ID())
	}
	l.forget()
	if _, err := l.renew(ctx); err == nil {
		t.Error("a grant with etcd down: no error")
	}
	l.id = second
	if err := l.revoke(ctx); err == nil || l.ID() != 0 {
		t.Errorf("revoke with etcd down: %v, id %x; want an error, the lease dropped", err, l.ID())
	}
}
